// Private to transforms/: the row-segment loop shared by every ISA variant. Each variant
// supplies `Span::run(src, n, scale, dst)`, which converts n elements under one scale; this
// walks the scale blocks of a segment that may start mid-block (`phase`).
//
// Code included here is compiled once per instruction set, so it must not call inline functions
// shared with baseline translation units (std::min included): the linker keeps one copy of such a
// function, possibly an AVX-512 one, which would then run on CPUs without AVX-512.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ckpt::detail {

template <typename Span, typename Out>
void dequant_row(const uint8_t* src, size_t n, const float* scales, size_t block, size_t phase,
                 void* dst_v) {
  Out* dst = static_cast<Out*>(dst_v);
  size_t j = 0;
  size_t len = n < block - phase ? n : block - phase;
  for (size_t b = 0; j < n; ++b) {
    Span::run(src + j, len, scales[b], dst + j);
    j += len;
    len = block < n - j ? block : n - j;
  }
}

}  // namespace ckpt::detail
