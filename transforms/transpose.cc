#include "transforms/transpose.h"

#include <cstdint>
#include <cstring>

namespace ckpt {

namespace {

// Blocks of 16×16 keep both the rows read and the rows written within a few cache lines each.
template <typename T>
void transpose_blocked(const T* src, size_t rows, size_t cols, size_t ss, T* dst, size_t ds) {
  constexpr size_t B = 16;
  for (size_t r0 = 0; r0 < rows; r0 += B) {
    const size_t r1 = r0 + B < rows ? r0 + B : rows;
    for (size_t c0 = 0; c0 < cols; c0 += B) {
      const size_t c1 = c0 + B < cols ? c0 + B : cols;
      for (size_t c = c0; c < c1; ++c)
        for (size_t r = r0; r < r1; ++r) dst[c * ds + r] = src[r * ss + c];
    }
  }
}

}  // namespace

void transpose_tile(const void* src, size_t rows, size_t cols, size_t src_stride, void* dst,
                    size_t dst_stride, size_t elem) {
  if (elem == 2)
    transpose_blocked(static_cast<const uint16_t*>(src), rows, cols, src_stride, static_cast<uint16_t*>(dst), dst_stride);
  else if (elem == 4)
    transpose_blocked(static_cast<const uint32_t*>(src), rows, cols, src_stride, static_cast<uint32_t*>(dst), dst_stride);
  else
    transpose_blocked(static_cast<const uint8_t*>(src), rows, cols, src_stride, static_cast<uint8_t*>(dst), dst_stride);
}

}  // namespace ckpt
