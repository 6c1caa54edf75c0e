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

// One rectangle of a piece (pipeline/plan.h) converted into place: dst(r, c) = convert(src(r, c))
// for r < rows, c < cols, or dst(c, r) with `transpose` (an expert into its slot of a grouped
// tensor, or back out of it). With `scales`, src is FP8 (`src_dtype` F8_E4M3 or F8_E5M2) and the
// value is round(decode(src) * scale(r, c)), scale(r, c) = scales[((row_phase + r) / block_rows) *
// grid_cols + (col_phase + c) / block_cols] read as `scale_dtype` (F32, BF16 or F16 numbers, or
// U8/F8_E8M0 exponents): the phases place the rectangle on its scale grid, whose first staged row
// `scales` points to. Without scales it is a cast from BF16, F16 or F32 (the bits copied when the
// dtypes are equal, as the CPU's cast_run does). `out` is BF16, F16 or F32; strides in elements.
// A per-tensor scale is a grid of one block: block_rows and block_cols the whole matrix, grid_cols 1.
struct Convert {
  const void* src = nullptr;
  DType src_dtype = DType::F8_E4M3;
  uint64_t rows = 0, cols = 0, src_stride = 0;
  const void* scales = nullptr;
  DType scale_dtype = DType::F32;
  uint64_t block_rows = 128, block_cols = 128, grid_cols = 1;
  uint64_t row_phase = 0, col_phase = 0;
  void* dst = nullptr;
  DType out = DType::BF16;
  uint64_t dst_stride = 0;
  bool transpose = false;
};
void convert(const Convert& c, void* stream);

// Whether `convert` takes this source (with or without scales) and output dtype.
bool convertible(DType src, bool scaled, DType scale_dtype, DType out);

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

// `len` bytes from device memory to device memory, in the order of `stream` (a device sink's copy).
void copy_async(void* dst, const void* src, uint64_t len, void* stream);

// max |x| over the finite elements of n floats, into *out (device memory).
void amax_finite(const float* x, uint64_t n, float* out, void* stream);

}  // namespace ckpt::cuda
