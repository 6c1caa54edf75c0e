// The per-element arithmetic of SPEC §2, written once for every place that runs it: the CPU's
// scalar path and kernel tails (transforms/fp8.h and transforms/quantize.h call these), and the
// CUDA kernels (cuda/), where CKPT_HD makes each function `__host__ __device__`. One definition,
// so the CPU and GPU paths cannot drift apart; the exhaustive numerics tests (every FP8 code,
// every BF16 and F16 pattern, a brute-force e4m3 encoder) check them on the CPU.
//   e4m3fn: bias 7, no infinities, 0x7F/0xFF are NaN, subnormals mant * 2^-9, max 448.
//   e5m2:   bias 15, IEEE-like: exponent 31 is inf (mant 0) or NaN, subnormals mant * 2^-16.
//   e8m0:   a raw exponent byte, 2^(e-127); 255 gives +inf as torch.exp2 does.
//   float -> bf16: NaN -> 0x7FC0, otherwise round to nearest even on the upper 16 bits.
//   float -> f16:  IEEE round to nearest even; NaN stays NaN (quiet, payload's top bits kept).
//   float -> e4m3 (export): round to nearest even; `saturate` clamps to ±448 (±inf too) and
//   keeps NaN as 0x7F | sign; `torch` (a plain cast) makes anything past 464, ±inf and NaN
//   0x7F | sign.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define CKPT_HD __host__ __device__ __forceinline__
#else
#define CKPT_HD inline
#endif

namespace ckpt {
enum class Fp8 : uint8_t { E4M3, E5M2 };
}  // namespace ckpt

namespace ckpt::elem {

CKPT_HD float u2f(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, 4);
  return f;
#endif
}

CKPT_HD uint32_t f2u(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
#endif
}

// ---- decoding (exact) ----

CKPT_HD float e4m3_to_float(uint8_t code) {
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24, mag = code & 0x7Fu;
  if (mag == 0x7F) return u2f(sign | 0x7FC00000u);
  const uint32_t e = mag >> 3, m = mag & 7u;
  if (e == 0) return u2f(sign | f2u(static_cast<float>(m) * u2f(0x3B000000u)));  // m * 2^-9
  return u2f(sign | ((e + 120u) << 23) | (m << 20));
}

CKPT_HD float e5m2_to_float(uint8_t code) {
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24, mag = code & 0x7Fu;
  const uint32_t e = mag >> 2, m = mag & 3u;
  if (e == 31) return u2f(sign | (m != 0 ? 0x7FC00000u : 0x7F800000u));
  if (e == 0) return u2f(sign | f2u(static_cast<float>(m) * u2f(0x37800000u)));  // m * 2^-16
  return u2f(sign | ((e + 112u) << 23) | (m << 21));
}

// 2^-127 is a float32 subnormal; every other exponent is a plain bit pattern (255 -> +inf).
CKPT_HD float e8m0_to_float(uint8_t e) { return e == 0 ? u2f(0x00400000u) : u2f(static_cast<uint32_t>(e) << 23); }

CKPT_HD float bf16_to_float(uint16_t h) { return u2f(static_cast<uint32_t>(h) << 16); }

CKPT_HD float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0x1F) return u2f(sign | 0x7F800000u | (m << 13));
  if (e == 0) return u2f(sign | f2u(static_cast<float>(m) * u2f(0x33800000u)));  // m * 2^-24
  return u2f(sign | ((e + 112u) << 23) | (m << 13));
}

// ---- arithmetic with the CPU's NaNs ----
// x86 (SSE/AVX) multiplies and divides return a NaN operand quieted, the first one when both are,
// and for an invalid operation (inf * 0, 0 / 0, inf / inf) the default NaN 0xFFC00000; a GPU
// returns 0x7FFFFFFF for all of these. F16 and F32 outputs keep a NaN's sign and payload bits,
// so the device kernels multiply and divide through these, which are the CPU's own results.
CKPT_HD bool is_nan(float x) { return (f2u(x) & 0x7FFFFFFFu) > 0x7F800000u; }

CKPT_HD float x86_nan_of(float a, float b) {
  if (is_nan(a)) return u2f(f2u(a) | 0x00400000u);
  if (is_nan(b)) return u2f(f2u(b) | 0x00400000u);
  return u2f(0xFFC00000u);
}

CKPT_HD float mul(float a, float b) {
  const float r = a * b;
  return is_nan(r) ? x86_nan_of(a, b) : r;
}

CKPT_HD float div(float a, float b) {
  const float r = a / b;
  return is_nan(r) ? x86_nan_of(a, b) : r;
}

// ---- rounding to 16-bit outputs ----

CKPT_HD uint16_t float_to_bf16(float f) {
  const uint32_t b = f2u(f);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  return static_cast<uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

CKPT_HD uint16_t float_to_f16(float f) {
  const uint32_t b = f2u(f);
  const uint16_t sign = static_cast<uint16_t>((b >> 16) & 0x8000u);
  const uint32_t abs = b & 0x7FFFFFFFu;
  if (abs > 0x7F800000u)  // NaN: quiet it, keep the payload's top bits, as F16C does
    return static_cast<uint16_t>(sign | 0x7E00u | ((abs >> 13) & 0x3FFu));
  if (abs >= 0x477FF000u) return sign | 0x7C00u;  // rounds to or past 65520: infinity
  const int32_t exp = static_cast<int32_t>(abs >> 23) - 127;
  if (exp >= -14) {  // normal half
    const uint32_t r = abs + 0xFFFu + ((abs >> 13) & 1u) - (112u << 23);
    return sign | static_cast<uint16_t>(r >> 13);
  }
  if (exp < -25) return sign;  // below half the smallest subnormal
  // Subnormal half: shift the full significand and round to nearest even.
  const uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u;
  const int shift = -exp - 14 + 13;  // 14..24
  const uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  return sign | static_cast<uint16_t>(q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u));
}

// ---- FP8 export ----

// Round-to-nearest-even code of a finite (or infinite) magnitude given as float32 bits `a`
// (sign cleared, not NaN), on an e4m3 grid continued upwards: 0x7E is 448, 0x7F would be 480,
// anything larger is > 0x7F. The caller decides what a code above 0x7E means.
CKPT_HD uint32_t e4m3_magnitude_code(uint32_t a) {
  constexpr uint32_t kMinNormal = 0x3C800000u;   // 2^-6, smallest e4m3 normal
  constexpr uint32_t kHalfMinSub = 0x3A800000u;  // 2^-10, half the smallest subnormal 2^-9
  if (a >= kMinNormal) {
    // Rebias the exponent from 127 to 7; the code is then bits [20, 31) rounded at bit 20.
    const uint32_t t = a - ((127u - 7u) << 23);
    const uint32_t keep = t >> 20, rest = t & 0xFFFFFu;
    return keep + ((rest > 0x80000u || (rest == 0x80000u && (keep & 1u))) ? 1u : 0u);
  }
  if (a <= kHalfMinSub) return 0;  // at most half a step: 0 (2^-10 is a tie, 0 is even)
  // Subnormal e4m3: the value in units of 2^-9 is sig * 2^(exp - 150 + 9), exp in [117, 120].
  const uint32_t exp = a >> 23;
  const uint32_t sig = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 150u - 9u - exp;  // 21..24
  const uint32_t keep = sig >> shift, rest = sig & ((1u << shift) - 1u), half = 1u << (shift - 1);
  return keep + ((rest > half || (rest == half && (keep & 1u))) ? 1u : 0u);
}

CKPT_HD uint8_t float_to_e4m3_saturate(float x) {
  const uint32_t b = f2u(x);
  const uint8_t sign = static_cast<uint8_t>((b >> 24) & 0x80u);
  const uint32_t a = b & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return sign | 0x7Fu;
  const uint32_t c = e4m3_magnitude_code(a);
  return sign | static_cast<uint8_t>(c > 0x7Eu ? 0x7Eu : c);
}

CKPT_HD uint8_t float_to_e4m3_torch(float x) {
  const uint32_t b = f2u(x);
  const uint8_t sign = static_cast<uint8_t>((b >> 24) & 0x80u);
  const uint32_t a = b & 0x7FFFFFFFu;
  if (a >= 0x7F800000u) return sign | 0x7Fu;
  const uint32_t c = e4m3_magnitude_code(a);
  return sign | static_cast<uint8_t>(c > 0x7Eu ? 0x7Fu : c);
}

// |x| when x is finite, else 0: the term of an export's amax (SPEC §2, non-finite values).
CKPT_HD float finite_abs(float x) {
  const uint32_t a = f2u(x) & 0x7FFFFFFFu;
  return u2f(a < 0x7F800000u ? a : 0u);
}

// Block / per-tensor export scale: float32 amax / 448 (amax 0 -> 1).
CKPT_HD float fp8_block_scale(float amax) { return amax == 0.0f ? 1.0f : amax / 448.0f; }

CKPT_HD int count_leading_zeros(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __clz(static_cast<int>(v));
#else
  return v == 0 ? 32 : __builtin_clz(v);
#endif
}

// MXFP8 e8m0 scale byte of an amax >= 0 (OCP MX): floor(log2(amax)) — read exactly from the
// float's exponent, or for a float32 subnormal from its highest mantissa bit — minus 8, clamped
// to [-127, 127], stored +127; amax 0 -> 127, +inf -> 254.
CKPT_HD uint8_t mx_scale_byte(float amax) {
  if (!(amax > 0.0f)) return 127;
  const uint32_t b = f2u(amax);
  if (b >= 0x7F800000u) return 127 + 127;
  const uint32_t e = b >> 23;
  const int log2 = e != 0 ? static_cast<int>(e) - 127 : (31 - count_leading_zeros(b & 0x7FFFFFu)) - 149;
  const int s = log2 - 8 < -127 ? -127 : log2 - 8 > 127 ? 127 : log2 - 8;
  return static_cast<uint8_t>(s + 127);
}

}  // namespace ckpt::elem
