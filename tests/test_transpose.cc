// transpose_tile against the definition dst(c, r) = src(r, c), for every shape up to 19×19 (full
// register blocks, ragged edges, and both together) and both element sizes, with strides wider
// than the tile and nothing written outside it; and every instruction set's 16-bit kernel on
// tiles of up to 70 rows (the AVX-512 kernel's 32-row blocks and their edges), with destinations
// aligned to cache lines (whole-line stores) and not.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "transforms/kernels.h"
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

// kernel(src, rows, cols) into a destination `ds` elements per row whose first element sits
// `offset` elements past a 64-byte boundary; true when it matches the definition and nothing
// outside the tile changed.
bool transpose16_matches(ckpt::Transpose16Fn kernel, size_t rows, size_t cols, size_t ds, size_t offset) {
  const size_t ss = cols + 1;
  std::vector<uint16_t> src(rows * ss + 1);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint16_t>(i * 2654435761u);
  std::vector<uint16_t> buf(cols * ds + 64, 0xBEEF);
  const size_t lead = (64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64 / 2;
  uint16_t* dst = buf.data() + lead + offset;
  kernel(src.data(), rows, cols, ss, dst, ds);
  const size_t first = lead + offset;
  for (size_t i = 0; i < buf.size(); ++i) {
    const size_t c = (i - first) / ds, r = (i - first) % ds;
    const bool inside = i >= first && c < cols && r < rows;
    if (buf[i] != (inside ? src[r * ss + c] : uint16_t{0xBEEF})) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("transpose_tile matches the definition for 2- and 4-byte elements", "[transpose]") {
  check_all_shapes<uint16_t>();
  check_all_shapes<uint32_t>();
}

TEST_CASE("16-bit transpose kernels of every instruction set match the definition", "[transpose]") {
  for (ckpt::Isa isa : ckpt::supported_isas())
    for (size_t rows = 0; rows <= 70; ++rows)
      for (size_t cols : {0, 1, 7, 8, 9, 16, 19}) {
        INFO("isa " << ckpt::isa_name(isa) << " rows " << rows << " cols " << cols);
        const ckpt::Transpose16Fn kernel = ckpt::kernels_for(isa)->transpose16;
        REQUIRE(transpose16_matches(kernel, rows, cols, rows + 5, 0));  // unaligned rows
        REQUIRE(transpose16_matches(kernel, rows, cols, 96, 0));        // every row on a line boundary
        REQUIRE(transpose16_matches(kernel, rows, cols, 96, 8));        // rows aligned to each other only
      }
}
