// The device side of ckptconv (issue #12): CUDA kernels for the transforms of SPEC §2, callable
// from host code that includes no CUDA header. Every element goes through transforms/element.h,
// the same functions the CPU path runs, so results are bit-identical to it.
//
// All pointers are device pointers; `stream` is a cudaStream_t (nullptr: the default stream).
// Launch errors come back as ckpt::Error (kind Io, naming the kernel and CUDA's message).
#pragma once

#include <cstdint>

#include "formats/dtype.h"
#include "transforms/element.h"
#include "transforms/scale_scheme.h"

namespace ckpt::cuda {

// A dequantization of an FP8 matrix: dst(r, c) = round(decode(src(r, c)) * scale(r, c)), with
// scale(r, c) = scales[(r / block_rows) * grid_cols + c / block_cols] read as `scale_dtype`
// (F32 or BF16 numbers, or U8/F8_E8M0 exponents). Per-tensor: block_rows = rows, block_cols =
// cols, grid_cols = 1. With `transpose`, dst(c, r) is written instead (an expert into its slot
// of a grouped tensor): dst is then cols × rows with row stride dst_stride.
struct Dequant {
  const uint8_t* src = nullptr;
  uint64_t rows = 0, cols = 0, src_stride = 0;  // elements
  Fp8 format = Fp8::E4M3;
  const void* scales = nullptr;
  DType scale_dtype = DType::F32;
  uint64_t block_rows = 128, block_cols = 128, grid_cols = 1;
  void* dst = nullptr;
  DType out = DType::BF16;  // BF16, F16 or F32
  uint64_t dst_stride = 0;  // elements
  bool transpose = false;
};
void dequantize(const Dequant& d, void* stream);

// FP8 export (--quantize real) of a row-major float32 matrix: codes and scales by the rules of
// transforms/quantize.h — block 128×128 (scales: F32 grid), MXFP8 1×32 (scales: exponent bytes),
// or per-tensor (`scales` holds the one F32 scale, computed by the caller from amax_finite).
struct Quantize {
  const float* src = nullptr;
  uint64_t rows = 0, cols = 0;
  ScaleScheme scheme = ScaleScheme::Block;
  uint8_t* codes = nullptr;
  void* scales = nullptr;
};
void quantize(const Quantize& q, void* stream);

// max |x| over the finite elements of n floats, into *out (device memory).
void amax_finite(const float* x, uint64_t n, float* out, void* stream);

}  // namespace ckpt::cuda
