#include "transforms/quantize.h"

#include "transforms/kernels.h"

#include <algorithm>

namespace ckpt {

float abs_max(const float* x, size_t n, float init) { return kernels().abs_max(x, n, init); }

float abs_max_scalar(const float* x, size_t n, float init) {
  // Non-negative floats order as their bit patterns, and every finite magnitude is below the
  // pattern of +inf: an integer max over the masked patterns skips NaN and ±inf without a branch,
  // so the loop vectorises.
  uint32_t m = elem::f2u(init) & 0x7FFFFFFFu;
  for (size_t j = 0; j < n; ++j) {
    const uint32_t a = elem::f2u(elem::finite_abs(x[j]));
    m = a > m ? a : m;
  }
  return elem::u2f(m);
}

void quantize_span(const float* x, size_t n, float scale, uint8_t* codes) { kernels().quantize(x, n, scale, codes); }

void cast_span_torch(const float* x, size_t n, uint8_t* codes) {
  for (size_t j = 0; j < n; ++j) codes[j] = float_to_e4m3_torch(x[j]);
}

}  // namespace ckpt
