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

#include <cstddef>
#include <cstdint>

#include "transforms/element.h"

namespace ckpt {

// e4m3fn encoding for --quantize real: round to nearest even, saturate to ±448 (±inf too);
// NaN -> 0x7F with the sign kept (0xFF for a negative NaN).
inline uint8_t float_to_e4m3_saturate(float x) { return elem::float_to_e4m3_saturate(x); }

// torch's plain cast float32 -> float8_e4m3fn (upstream to_hf(quantization=True)): round to
// nearest even; a magnitude that rounds past 448 (|x| > 464), ±inf and NaN give 0x7F | sign.
inline uint8_t float_to_e4m3_torch(float x) { return elem::float_to_e4m3_torch(x); }

// max |x[j]| over the finite ones of n float32 values (NaN and ±inf are skipped), starting from
// `init` (pass a previous result to extend a block over several rows); 0 when none is finite.
// abs_max runs the CPU's widest kernel (transforms/kernels.h); abs_max_scalar is the rule.
float abs_max(const float* x, size_t n, float init = 0.0f);
float abs_max_scalar(const float* x, size_t n, float init);

// Block / per-tensor scale of SPEC §2: float32 amax / 448 (amax 0 -> 1).
inline float fp8_block_scale(float amax) { return elem::fp8_block_scale(amax); }

// MXFP8 e8m0 scale byte of a finite amax >= 0: floor(log2(amax)) - 8 clamped to [-127, 127],
// stored +127 (amax 0 -> 127).
inline uint8_t mx_scale_byte(float amax) { return elem::mx_scale_byte(amax); }

// Quantizes n values under one scale: codes[j] = float_to_e4m3_saturate(x[j] / scale), the
// division in float32, with the CPU's widest kernel. For MXFP8 pass e8m0_to_float(mx_scale_byte(amax)).
void quantize_span(const float* x, size_t n, float scale, uint8_t* codes);

// quantize_span and abs_max over `rows` rows of n BF16 values, `stride` elements apart (codes
// rows `codes_stride` apart), each value widened exactly to float32 first; abs_max_rows is the
// max over all rows. The *_scalar functions are the rules the kernels are tested against.
void quantize_rows(const uint16_t* bf16, size_t rows, size_t n, size_t stride, float scale, uint8_t* codes,
                   size_t codes_stride);
float abs_max_rows(const uint16_t* bf16, size_t rows, size_t n, size_t stride, float init = 0.0f);
void quantize_rows_scalar(const uint16_t* bf16, size_t rows, size_t n, size_t stride, float scale, uint8_t* codes,
                          size_t codes_stride);
float abs_max_rows_scalar(const uint16_t* bf16, size_t rows, size_t n, size_t stride, float init);

// MXFP8 export of a row of n BF16 values: for each group of 32 (kMxBlock; the last may be
// shorter), scales[g] = mx_scale_byte(its finite amax) and its codes under e8m0_to_float of it.
void quantize_mx_row(const uint16_t* bf16, size_t n, uint8_t* codes, uint8_t* scales);

// The placeholder cast: codes[j] = float_to_e4m3_torch(x[j]) (identity scale).
void cast_span_torch(const float* x, size_t n, uint8_t* codes);
void cast_span_torch(const uint16_t* bf16, size_t n, uint8_t* codes);

}  // namespace ckpt
