// Cache-blocked transposition of a small row-major tile: dst(c, r) = src(r, c) for a
// [rows × cols] tile of `elem`-byte elements (2 or 4), with row strides in elements. The group
// node uses it to lay experts' [out, in] weights into the [in, out] slots of grouped tensors.
// 16-bit tiles go through the chosen instruction set's kernel (transforms/kernels.h).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ckpt {

void transpose_tile(const void* src, size_t rows, size_t cols, size_t src_stride, void* dst,
                    size_t dst_stride, size_t elem);

// The baseline 16-bit kernel (SSE2 8×8 register blocks): the scalar and AVX2 kernel tables', and
// the AVX-512 kernel's for the edges of a tile its 32-row blocks do not cover.
void transpose16_sse2(const uint16_t* src, size_t rows, size_t cols, size_t src_stride, uint16_t* dst,
                      size_t dst_stride);

}  // namespace ckpt
