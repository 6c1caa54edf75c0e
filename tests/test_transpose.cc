// transpose_tile against the definition dst(c, r) = src(r, c), for every shape up to 19×19 (full
// register blocks, ragged edges, and both together) and both element sizes, with strides wider
// than the tile and nothing written outside it.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "transforms/transpose.h"

namespace {

template <typename T>
void check_all_shapes() {
  for (size_t rows = 0; rows <= 19; ++rows)
    for (size_t cols = 0; cols <= 19; ++cols) {
      const size_t ss = cols + 3, ds = rows + 5;
      std::vector<T> src(rows * ss + 1), dst(cols * ds + 1, T(0xBEEF));
      for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<T>(i * 2654435761u);
      ckpt::transpose_tile(src.data(), rows, cols, ss, dst.data(), ds, sizeof(T));
      for (size_t c = 0; c < cols; ++c)
        for (size_t r = 0; r < ds; ++r) {
          INFO("rows " << rows << " cols " << cols << " c " << c << " r " << r);
          REQUIRE(dst[c * ds + r] == (r < rows ? src[r * ss + c] : T(0xBEEF)));
        }
    }
}

}  // namespace

TEST_CASE("transpose_tile matches the definition for 2- and 4-byte elements", "[transpose]") {
  check_all_shapes<uint16_t>();
  check_all_shapes<uint32_t>();
}
