// Vectorised dequantization kernels with run-time instruction-set dispatch.
//
// The dequantization primitive is a row segment: for j in [0, n)
//     dst[j] = round(float32(decode(src[j])) * scales[(phase + j) / block])
// which covers all three schemes of SPEC §2 — per-tensor (one scale, block = whole row),
// 128×128 blocks (block = 128, the scale row picked by the caller) and MXFP8 (block = 32) — and
// ragged edges. Every ISA variant produces the same bits as the scalar one (tested over all 256
// codes); `kernels()` is the widest the CPU supports unless `use_isa` chose another (the command
// line does so for the environment variable CKPT_ISA = scalar | avx2 | avx512).
// The 16-bit tile transpose of the group node is dispatched the same way (AVX-512: whole
// destination lines per store).
// The FP8 export primitives (quantize, abs_max) are bit-identical to their scalar rules in
// transforms/quantize.h on every ISA.
// BF16 and F16 outputs (F16 only on scalar) are looked up, not computed, once a thread has met a
// scale twice: it keeps a table of the 256 finished outputs per scale value, built by the
// arithmetic path itself, so results do not depend on which path ran. A thread holds up to 512
// tables (about 300 KB) per format and output type it converts, for as long as it lives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "formats/dtype.h"
#include "transforms/fp8.h"

namespace ckpt {

enum class Isa : uint8_t { Scalar, Avx2, Avx512 };
std::string_view isa_name(Isa isa);

using DequantRowFn = void (*)(const uint8_t* src, size_t n, const float* scales, size_t block,
                              size_t phase, void* dst);
// The same primitive over `rows` rows that share their scales (rows of one block band): row r
// reads src + r * src_stride and writes dst + r * dst_stride (strides in elements). A thread's
// table for a scale is looked up once per scale block for all the rows.
using DequantRowsFn = void (*)(const uint8_t* src, size_t src_stride, size_t rows, size_t n, const float* scales,
                               size_t block, size_t phase, void* dst, size_t dst_stride);
// FP8 export (transforms/quantize.h has the rules): codes[j] = float_to_e4m3_saturate(x[j] / scale),
// and the max |x[j]| over the finite x[j], from `init`.
using QuantizeFn = void (*)(const float* x, size_t n, float scale, uint8_t* codes);
using AbsMaxFn = float (*)(const float* x, size_t n, float init);
// The same two over `rows` rows of n BF16 values, `stride` elements apart (codes rows
// `codes_stride` apart): one call per block. Each value is widened exactly inside the kernel, so
// a BF16 source (every native checkpoint's) is never stored as float32.
using QuantizeBf16Fn = void (*)(const uint16_t* x, size_t rows, size_t n, size_t stride, float scale, uint8_t* codes,
                                size_t codes_stride);
using AbsMaxBf16Fn = float (*)(const uint16_t* x, size_t rows, size_t n, size_t stride, float init);
// MXFP8 export of one row of n BF16 values: per group of 32 (the last may be shorter) its e8m0
// byte from the group's finite amax, then its codes under that scale (quantize.h's rules).
using QuantizeMxBf16Fn = void (*)(const uint16_t* x, size_t n, uint8_t* codes, uint8_t* scales);
// dst(c, r) = src(r, c) for a [rows × cols] tile of 16-bit elements, strides in elements
// (transforms/transpose.h).
using Transpose16Fn = void (*)(const uint16_t* src, size_t rows, size_t cols, size_t src_stride, uint16_t* dst,
                               size_t dst_stride);

struct KernelTable {
  Isa isa;
  DequantRowFn dequant[2][3];  // [Fp8][OutType]
  DequantRowsFn dequant_rows[2][3];
  QuantizeFn quantize;
  AbsMaxFn abs_max;
  QuantizeBf16Fn quantize_bf16;
  AbsMaxBf16Fn abs_max_bf16;
  QuantizeMxBf16Fn quantize_mx_bf16;
  Transpose16Fn transpose16;
  DequantRowFn get(Fp8 f, OutType o) const {
    return dequant[static_cast<int>(f)][static_cast<int>(o)];
  }
  DequantRowsFn get_rows(Fp8 f, OutType o) const {
    return dequant_rows[static_cast<int>(f)][static_cast<int>(o)];
  }
};

const KernelTable& kernels();
// Makes `kernels()` the table of `isa`, process-wide; false (nothing changes) when this CPU lacks it.
bool use_isa(Isa isa);
std::optional<Isa> parse_isa(std::string_view name);
// The table for one ISA, or nullptr when this CPU (or this build) lacks it.
const KernelTable* kernels_for(Isa isa);
std::vector<Isa> supported_isas();

}  // namespace ckpt
