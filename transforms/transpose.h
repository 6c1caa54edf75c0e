// Cache-blocked transposition of a small row-major tile: dst(c, r) = src(r, c) for a
// [rows × cols] tile of `elem`-byte elements (2 or 4), with row strides in elements. The group
// node uses it to lay experts' [out, in] weights into the [in, out] slots of grouped tensors.
#pragma once

#include <cstddef>

namespace ckpt {

void transpose_tile(const void* src, size_t rows, size_t cols, size_t src_stride, void* dst,
                    size_t dst_stride, size_t elem);

}  // namespace ckpt
