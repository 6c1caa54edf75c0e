// Scalar numerics, bit-exact with PyTorch on CPU (SPEC §2). These are the reference the SIMD
// kernels are tested against, and the tail path of every kernel; the arithmetic itself is
// transforms/element.h, which the CUDA kernels share.
//   e4m3fn: bias 7, no infinities, 0x7F/0xFF are NaN, subnormals mant * 2^-9, max 448.
//   e5m2:   bias 15, IEEE-like: exponent 31 is inf (mant 0) or NaN, subnormals mant * 2^-16.
//   e8m0:   a raw exponent byte, 2^(e-127); 255 gives +inf as torch.exp2 does.
//   float -> bf16: NaN -> 0x7FC0, otherwise round to nearest even on the upper 16 bits.
//   float -> f16:  IEEE round to nearest even; NaN stays NaN (quiet, payload's top bits kept).
#pragma once

#include <bit>
#include <cstdint>

#include "transforms/element.h"

namespace ckpt {


inline float fp8_to_float(uint8_t code, Fp8 format) {
  return format == Fp8::E4M3 ? elem::e4m3_to_float(code) : elem::e5m2_to_float(code);
}
inline float e8m0_to_float(uint8_t e) { return elem::e8m0_to_float(e); }

inline float bits_to_float(uint32_t b) { return std::bit_cast<float>(b); }
inline uint32_t float_to_bits(float f) { return std::bit_cast<uint32_t>(f); }

inline uint16_t float_to_bf16(float f) { return elem::float_to_bf16(f); }
inline float bf16_to_float(uint16_t h) { return elem::bf16_to_float(h); }
inline uint16_t float_to_f16(float f) { return elem::float_to_f16(f); }
inline float f16_to_float(uint16_t h) { return elem::f16_to_float(h); }

}  // namespace ckpt
