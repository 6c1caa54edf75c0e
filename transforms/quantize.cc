#include "transforms/quantize.h"

#include "transforms/kernels.h"

#include <algorithm>

namespace ckpt {

float abs_max(const float* x, size_t n, float init) { return kernels().abs_max(x, n, init); }

float abs_max_scalar(const float* x, size_t n, float init) {
  // Non-negative floats order as their bit patterns, and every finite magnitude is below the
  // pattern of +inf: an integer max over the masked patterns skips NaN and ±inf without a branch,
  // so the loop vectorises.
  uint32_t m = std::bit_cast<uint32_t>(init);
  for (size_t j = 0; j < n; ++j) {
    const uint32_t a = std::bit_cast<uint32_t>(x[j]) & 0x7FFFFFFFu;
    const uint32_t finite = a < 0x7F800000u ? a : 0u;
    m = finite > m ? finite : m;
  }
  return std::bit_cast<float>(m);
}

uint8_t mx_scale_byte(float amax) {
  if (!(amax > 0.0f)) return 127;  // 0, or (never from abs_max) a NaN
  if (std::isinf(amax)) return 127 + 127;
  // std::ilogb is the exact floor(log2(|amax|)) of a finite nonzero float, subnormals included.
  const int e = std::clamp(std::ilogb(amax) - 8, -127, 127);
  return static_cast<uint8_t>(e + 127);
}

void quantize_span(const float* x, size_t n, float scale, uint8_t* codes) { kernels().quantize(x, n, scale, codes); }

void cast_span_torch(const float* x, size_t n, uint8_t* codes) {
  for (size_t j = 0; j < n; ++j) codes[j] = float_to_e4m3_torch(x[j]);
}

}  // namespace ckpt
