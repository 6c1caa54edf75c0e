// Scalar numerics, bit-exact with PyTorch on CPU (SPEC §2). These are the reference the SIMD
// kernels are tested against, and the tail path of every kernel.
//   e4m3fn: bias 7, no infinities, 0x7F/0xFF are NaN, subnormals mant * 2^-9, max 448.
//   e5m2:   bias 15, IEEE-like: exponent 31 is inf (mant 0) or NaN, subnormals mant * 2^-16.
//   e8m0:   a raw exponent byte, 2^(e-127); 255 gives +inf as torch.exp2 does.
//   float -> bf16: NaN -> 0x7FC0, otherwise round to nearest even on the upper 16 bits.
//   float -> f16:  IEEE round to nearest even; NaN stays NaN (quiet, payload's top bits kept).
#pragma once

#include <bit>
#include <cstdint>

namespace ckpt {

enum class Fp8 : uint8_t { E4M3, E5M2 };

float fp8_to_float(uint8_t code, Fp8 format);
float e8m0_to_float(uint8_t e);

inline float bits_to_float(uint32_t b) { return std::bit_cast<float>(b); }
inline uint32_t float_to_bits(float f) { return std::bit_cast<uint32_t>(f); }

inline uint16_t float_to_bf16(float f) {
  const uint32_t b = float_to_bits(f);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  return static_cast<uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}
inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

uint16_t float_to_f16(float f);
float f16_to_float(uint16_t h);

}  // namespace ckpt
