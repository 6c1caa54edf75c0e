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

void quantize_rows(const uint16_t* bf16, size_t rows, size_t n, size_t stride, float scale, uint8_t* codes,
                   size_t codes_stride) {
  kernels().quantize_bf16(bf16, rows, n, stride, scale, codes, codes_stride);
}

float abs_max_rows(const uint16_t* bf16, size_t rows, size_t n, size_t stride, float init) {
  return kernels().abs_max_bf16(bf16, rows, n, stride, init);
}

void quantize_rows_scalar(const uint16_t* bf16, size_t rows, size_t n, size_t stride, float scale, uint8_t* codes,
                          size_t codes_stride) {
  for (size_t r = 0; r < rows; ++r)
    for (size_t j = 0; j < n; ++j)
      codes[r * codes_stride + j] = float_to_e4m3_saturate(elem::bf16_to_float(bf16[r * stride + j]) / scale);
}

// Widening is a shift, so the float32 rule holds over the widened patterns.
float abs_max_rows_scalar(const uint16_t* bf16, size_t rows, size_t n, size_t stride, float init) {
  uint32_t m = elem::f2u(init) & 0x7FFFFFFFu;
  for (size_t r = 0; r < rows; ++r)
    for (size_t j = 0; j < n; ++j) {
      const uint32_t a = elem::f2u(elem::finite_abs(elem::bf16_to_float(bf16[r * stride + j])));
      m = a > m ? a : m;
    }
  return elem::u2f(m);
}

void quantize_mx_row(const uint16_t* bf16, size_t n, uint8_t* codes, uint8_t* scales) {
  kernels().quantize_mx_bf16(bf16, n, codes, scales);
}

void cast_span_torch(const float* x, size_t n, uint8_t* codes) {
  for (size_t j = 0; j < n; ++j) codes[j] = float_to_e4m3_torch(x[j]);
}

void cast_span_torch(const uint16_t* bf16, size_t n, uint8_t* codes) {
  for (size_t j = 0; j < n; ++j) codes[j] = float_to_e4m3_torch(elem::bf16_to_float(bf16[j]));
}

}  // namespace ckpt
