#include "transforms/quantize.h"

#include <algorithm>

namespace ckpt {

float abs_max(const float* x, size_t n, float init) {
  float m = init;
  if (std::isnan(m)) return m;
  for (size_t j = 0; j < n; ++j) {
    const float a = std::fabs(x[j]);
    if (std::isnan(a)) return a;
    m = a > m ? a : m;
  }
  return m;
}

uint8_t mx_scale_byte(float amax) {
  if (std::isnan(amax)) return 255;
  if (amax == 0.0f) return 127;
  if (std::isinf(amax)) return 127 + 127;
  // std::ilogb is the exact floor(log2(|amax|)) of a finite nonzero float, subnormals included.
  const int e = std::clamp(std::ilogb(amax) - 8, -127, 127);
  return static_cast<uint8_t>(e + 127);
}

void quantize_span(const float* x, size_t n, float scale, uint8_t* codes) {
  for (size_t j = 0; j < n; ++j) codes[j] = float_to_e4m3_saturate(x[j] / scale);
}

void cast_span_torch(const float* x, size_t n, uint8_t* codes) {
  for (size_t j = 0; j < n; ++j) codes[j] = float_to_e4m3_torch(x[j]);
}

}  // namespace ckpt
