// FP8 e4m3fn *encoding* for export (SPEC §2 "Real quantization on export" and
// "--quantize placeholder"). Decoding lives in transforms/fp8.h.
//
// Contract (all arithmetic in float32, bit-exact with the conformance reference):
//   * Rounding. Both encoders round |x| to nearest, ties to even, on the e4m3fn grid (subnormal
//     step 2^-9, normals 1.mmm * 2^(e-7)), and keep the sign bit (-0 -> 0x80).
//   * float_to_e4m3_saturate (--quantize real): a magnitude that rounds past 448 becomes 448
//     (0x7E | sign); ±inf -> ±448; NaN -> 0x7F | sign (0xFF for a negative NaN).
//   * float_to_e4m3_torch (--quantize placeholder, torch's `x.to(torch.float8_e4m3fn)`): the
//     same rounding as if 480 were a code, and the code 0x7F | sign that "480" would take is
//     NaN. So |x| <= 464 (464 is the tie between 448 and 480 and goes to even 448) encodes
//     normally, |x| > 464, ±inf and NaN give 0x7F | sign (0xFF when negative).
//   * Block amax: abs_max() over the *finite* float32 values of the block (BF16/F16 widened
//     exactly); NaN and ±inf are skipped, so one bad element never poisons its block, and a
//     block with no finite element has amax 0 (SPEC §2, non-finite values). amax is therefore
//     always finite.
//   * fp8_block_scale (block 128×128 and per-tensor): float32 `amax / 448.0f`; amax 0 -> 1.0f.
//   * mx_scale_byte (MXFP8 1×32, OCP MX): floor(log2(amax)) taken exactly from the float's
//     exponent (subnormals included), minus 8, clamped to [-127, 127], stored +127; amax 0 -> 127.
//   * Under a finite scale a NaN element stays NaN (0x7F | sign) and ±inf saturates to ±448.
//   * quantize_span: codes[j] = float_to_e4m3_saturate(x[j] / scale), one correctly rounded
//     float32 division. For MXFP8 pass scale = e8m0_to_float(byte): dividing by a power of two is
//     exact-then-rounded-once, so it equals multiplying by 2^-(byte-127).
// The conformance data (m2, m2_rule, deepseek block; mistral per-tensor; m3, m3vl MXFP8; m3
// placeholder) is reproduced bit for bit by these rules; see tests/test_quantize.cc.
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace ckpt {

namespace quant_detail {

// Round-to-nearest-even code of a finite (or infinite) magnitude given as float32 bits `a`
// (sign cleared, not NaN), on an e4m3 grid continued upwards: 0x7E is 448, 0x7F would be 480,
// anything larger is > 0x7F. The caller decides what a code above 0x7E means.
inline uint32_t e4m3_magnitude_code(uint32_t a) {
  constexpr uint32_t kMinNormal = 0x3C800000u;  // 2^-6, smallest e4m3 normal
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

}  // namespace quant_detail

// e4m3fn encoding for --quantize real: round to nearest even, saturate to ±448 (±inf too);
// NaN -> 0x7F with the sign kept (0xFF for a negative NaN).
inline uint8_t float_to_e4m3_saturate(float x) {
  const uint32_t b = std::bit_cast<uint32_t>(x);
  const uint8_t sign = static_cast<uint8_t>((b >> 24) & 0x80u);
  const uint32_t a = b & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return sign | 0x7Fu;
  const uint32_t c = quant_detail::e4m3_magnitude_code(a);
  return sign | static_cast<uint8_t>(c > 0x7Eu ? 0x7Eu : c);
}

// torch's plain cast float32 -> float8_e4m3fn (upstream to_hf(quantization=True)): round to
// nearest even; a magnitude that rounds past 448 (|x| > 464), ±inf and NaN give 0x7F | sign.
inline uint8_t float_to_e4m3_torch(float x) {
  const uint32_t b = std::bit_cast<uint32_t>(x);
  const uint8_t sign = static_cast<uint8_t>((b >> 24) & 0x80u);
  const uint32_t a = b & 0x7FFFFFFFu;
  if (a >= 0x7F800000u) return sign | 0x7Fu;
  const uint32_t c = quant_detail::e4m3_magnitude_code(a);
  return sign | static_cast<uint8_t>(c > 0x7Eu ? 0x7Fu : c);
}

// max |x[j]| over the finite ones of n float32 values (NaN and ±inf are skipped), starting from
// `init` (pass a previous result to extend a block over several rows); 0 when none is finite.
// abs_max runs the CPU's widest kernel (transforms/kernels.h); abs_max_scalar is the rule.
float abs_max(const float* x, size_t n, float init = 0.0f);
float abs_max_scalar(const float* x, size_t n, float init);

// Block / per-tensor scale of SPEC §2: float32 amax / 448 (amax 0 -> 1).
inline float fp8_block_scale(float amax) { return amax == 0.0f ? 1.0f : amax / 448.0f; }

// MXFP8 e8m0 scale byte of a finite amax >= 0: floor(log2(amax)) - 8 clamped to [-127, 127],
// stored +127 (amax 0 -> 127).
uint8_t mx_scale_byte(float amax);

// Quantizes n values under one scale: codes[j] = float_to_e4m3_saturate(x[j] / scale), the
// division in float32, with the CPU's widest kernel. For MXFP8 pass e8m0_to_float(mx_scale_byte(amax)).
void quantize_span(const float* x, size_t n, float scale, uint8_t* codes);

// The placeholder cast: codes[j] = float_to_e4m3_torch(x[j]) (identity scale).
void cast_span_torch(const float* x, size_t n, uint8_t* codes);

}  // namespace ckpt
