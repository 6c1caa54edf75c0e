// CUDA kernels of cuda/kernels.h. Each thread converts elements with the functions of
// transforms/element.h — the CPU path's own arithmetic — so results are bit-identical to it.
#include "cuda/kernels.h"

#include <cuda_runtime.h>

#include "cuda/errors.h"
#include "transforms/element.h"

namespace ckpt::cuda {

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail_cuda(what, cudaGetErrorString(e));
}

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// The scale of grid entry g as float32: a number (F32, BF16) or an exponent byte (U8, E8M0).
__device__ float scale_at(const void* scales, DType t, uint64_t g) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(scales)[g];
    case DType::BF16: return elem::bf16_to_float(static_cast<const uint16_t*>(scales)[g]);
    case DType::F16: return elem::f16_to_float(static_cast<const uint16_t*>(scales)[g]);
    default: return elem::e8m0_to_float(static_cast<const uint8_t*>(scales)[g]);
  }
}

// Element i of a source as float32: an FP8 code decoded, or a BF16/F16/F32 value widened.
__device__ float load(const void* src, DType t, uint64_t i) {
  switch (t) {
    case DType::F8_E4M3: return elem::e4m3_to_float(static_cast<const uint8_t*>(src)[i]);
    case DType::F8_E5M2: return elem::e5m2_to_float(static_cast<const uint8_t*>(src)[i]);
    case DType::BF16: return elem::bf16_to_float(static_cast<const uint16_t*>(src)[i]);
    case DType::F16: return elem::f16_to_float(static_cast<const uint16_t*>(src)[i]);
    default: return static_cast<const float*>(src)[i];
  }
}

// Equal dtypes are copied bit for bit (a NaN's payload survives, as in the CPU's cast_run): the
// element travels as its raw bits, widened to 32.
__device__ uint32_t load_bits(const void* src, DType t, uint64_t i) {
  return t == DType::F32 ? static_cast<const uint32_t*>(src)[i] : static_cast<const uint16_t*>(src)[i];
}
__device__ void store_bits(void* dst, DType t, uint64_t i, uint32_t b) {
  if (t == DType::F32) static_cast<uint32_t*>(dst)[i] = b;
  else static_cast<uint16_t*>(dst)[i] = static_cast<uint16_t>(b);
}

// The scale of source element (r, c): grid arithmetic in 32 bits (convert() checks that it fits),
// since 64-bit division is a software routine on the GPU.
__device__ float scale_of(const Convert& d, uint32_t r, uint32_t c) {
  const uint32_t gr = (static_cast<uint32_t>(d.row_phase) + r) / static_cast<uint32_t>(d.block_rows);
  const uint32_t gc = (static_cast<uint32_t>(d.col_phase) + c) / static_cast<uint32_t>(d.block_cols);
  return scale_at(d.scales, d.scale_dtype, uint64_t{gr} * d.grid_cols + gc);
}

// A decoded FP8 value `w` under scale `s` as a 16-bit output (BF16 or F16).
__device__ uint16_t out16(const Convert& d, float w, float s) {
  const float v = elem::mul(w, s);
  return d.out == DType::BF16 ? elem::float_to_bf16(v) : elem::float_to_f16(v);
}

// The 256 codes of the rectangle's FP8 format, decoded once per thread block into shared memory
// (by the same element functions): a lookup then replaces each element's decoding.
__device__ void decode_table(const Convert& d, float* table) {
  const uint32_t threads = blockDim.x * blockDim.y;
  for (uint32_t k = threadIdx.y * blockDim.x + threadIdx.x; k < 256; k += threads)
    table[k] = d.src_dtype == DType::F8_E4M3 ? elem::e4m3_to_float(static_cast<uint8_t>(k))
                                              : elem::e5m2_to_float(static_cast<uint8_t>(k));
  __syncthreads();
}

// The output bits of source element (r, c) of a rectangle.
__device__ uint32_t element_bits(const Convert& d, uint32_t r, uint32_t c) {
  const uint64_t i = uint64_t{r} * d.src_stride + c;
  if (!d.scales && d.src_dtype == d.out) return load_bits(d.src, d.src_dtype, i);
  float v = load(d.src, d.src_dtype, i);
  if (d.scales) v = elem::mul(v, scale_of(d, r, c));
  switch (d.out) {
    case DType::BF16: return elem::float_to_bf16(v);
    case DType::F16: return elem::float_to_f16(v);
    default: return elem::f2u(v);
  }
}

// The generic kernel, for every Convert: one thread per element of a 32×32 tile; the tile goes
// through shared memory when transposed, so that both the source reads and the output writes
// are coalesced.
constexpr int kTile = 32;

__global__ void convert_kernel(Convert d) {
  __shared__ uint32_t tile[kTile][kTile + 1];  // +1: no bank conflicts on the transposed read
  const uint64_t r = blockIdx.y * uint64_t{kTile} + threadIdx.y;
  const uint64_t c = blockIdx.x * uint64_t{kTile} + threadIdx.x;
  const bool in = r < d.rows && c < d.cols;
  const uint32_t b = in ? element_bits(d, static_cast<uint32_t>(r), static_cast<uint32_t>(c)) : 0u;
  if (!d.transpose) {
    if (in) store_bits(d.dst, d.out, r * d.dst_stride + c, b);
    return;
  }
  tile[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  const uint64_t tr = blockIdx.x * uint64_t{kTile} + threadIdx.y;  // output row = input column
  const uint64_t tc = blockIdx.y * uint64_t{kTile} + threadIdx.x;  // output column = input row
  if (tr < d.cols && tc < d.rows) store_bits(d.dst, d.out, tr * d.dst_stride + tc, tile[threadIdx.x][threadIdx.y]);
}

// The FP8 -> 16-bit kernels below move runs of 16 codes: one 16-byte load, two 16-byte stores,
// where the rectangle's pointers and strides allow (`aligned`); the scale is looked up once per
// run where its 16 elements share one (`uniform`). Elsewhere — ragged edges, odd strides — the
// same threads go element by element, so any rectangle is right.
constexpr uint32_t kRun = 16;

__device__ uint8_t byte_of(const uint4& v, int k) {
  const uint32_t w = k < 4 ? v.x : k < 8 ? v.y : k < 12 ? v.z : v.w;
  return static_cast<uint8_t>(w >> (8 * (k % 4)));
}

__device__ void store_run(uint16_t* dst, const uint32_t (&pairs)[kRun / 2]) {
  reinterpret_cast<uint4*>(dst)[0] = make_uint4(pairs[0], pairs[1], pairs[2], pairs[3]);
  reinterpret_cast<uint4*>(dst)[1] = make_uint4(pairs[4], pairs[5], pairs[6], pairs[7]);
}

// Untransposed: a thread per run of a row; a warp covers 32 consecutive runs (512 codes).
__global__ void fp8_rows_kernel(Convert d, bool aligned, bool uniform) {
  __shared__ float decoded[256];
  decode_table(d, decoded);
  const uint32_t r = blockIdx.y * blockDim.y + threadIdx.y;
  const uint32_t c0 = (blockIdx.x * blockDim.x + threadIdx.x) * kRun;
  if (r >= d.rows || c0 >= d.cols) return;
  const uint8_t* src = static_cast<const uint8_t*>(d.src) + uint64_t{r} * d.src_stride + c0;
  uint16_t* dst = static_cast<uint16_t*>(d.dst) + uint64_t{r} * d.dst_stride + c0;
  if (aligned && c0 + kRun <= d.cols) {
    const uint4 in = *reinterpret_cast<const uint4*>(src);
    const float su = uniform ? scale_of(d, r, c0) : 0.0f;
    uint32_t pairs[kRun / 2];
#pragma unroll
    for (int k = 0; k < static_cast<int>(kRun); k += 2) {
      const uint16_t lo = out16(d, decoded[byte_of(in, k)], uniform ? su : scale_of(d, r, c0 + k));
      const uint16_t hi = out16(d, decoded[byte_of(in, k + 1)], uniform ? su : scale_of(d, r, c0 + k + 1));
      pairs[k / 2] = lo | static_cast<uint32_t>(hi) << 16;
    }
    store_run(dst, pairs);
    return;
  }
  for (uint32_t c = c0; c < c0 + kRun && c < d.cols; ++c) dst[c - c0] = out16(d, decoded[src[c - c0]], scale_of(d, r, c));
}

// Transposed (an expert into its slot): 256 threads per 64×64 tile. Each thread converts one run
// of an input row into shared memory, then writes one run of an output row (an input column).
constexpr uint32_t kBig = 64;

// The second half of a transposing tile: each thread writes one run of an output row (an input
// column) from the tile, 16-byte stores where aligned.
__device__ void store_transposed(const Convert& d, const uint16_t (&tile)[kBig][kBig + 2], bool aligned) {
  const uint32_t r0 = blockIdx.y * kBig, c0 = blockIdx.x * kBig, t = threadIdx.x;
  const uint32_t j = t / 4, i0 = (t % 4) * kRun, out_row = c0 + j, out_col = r0 + i0;
  if (out_row >= d.cols || out_col >= d.rows) return;
  uint16_t* dst = static_cast<uint16_t*>(d.dst) + uint64_t{out_row} * d.dst_stride + out_col;
  if (aligned && out_col + kRun <= d.rows) {
    uint32_t pairs[kRun / 2];
#pragma unroll
    for (int k = 0; k < static_cast<int>(kRun); k += 2)
      pairs[k / 2] = tile[i0 + k][j] | static_cast<uint32_t>(tile[i0 + k + 1][j]) << 16;
    store_run(dst, pairs);
    return;
  }
  for (uint32_t k = 0; k < kRun && out_col + k < d.rows; ++k) dst[k] = tile[i0 + k][j];
}

__global__ void fp8_transpose_kernel(Convert d, bool aligned, bool uniform) {
  __shared__ uint16_t tile[kBig][kBig + 2];  // +2: the column reads spread over the banks
  __shared__ float decoded[256];
  decode_table(d, decoded);
  const uint32_t r0 = blockIdx.y * kBig, c0 = blockIdx.x * kBig, t = threadIdx.x;
  const uint32_t i = t / 4, j0 = (t % 4) * kRun, r = r0 + i, c = c0 + j0;
  if (r < d.rows && c < d.cols) {
    const uint8_t* src = static_cast<const uint8_t*>(d.src) + uint64_t{r} * d.src_stride + c;
    if (aligned && c + kRun <= d.cols) {
      const uint4 in = *reinterpret_cast<const uint4*>(src);
      const float su = uniform ? scale_of(d, r, c) : 0.0f;
#pragma unroll
      for (int k = 0; k < static_cast<int>(kRun); ++k)
        tile[i][j0 + k] = out16(d, decoded[byte_of(in, k)], uniform ? su : scale_of(d, r, c + k));
    } else {
      for (uint32_t k = 0; k < kRun && c + k < d.cols; ++k)
        tile[i][j0 + k] = out16(d, decoded[src[k]], scale_of(d, r, c + k));
    }
  }
  __syncthreads();
  store_transposed(d, tile, aligned);
}

// A 16-bit transpose with no conversion (BF16 -> BF16, F16 -> F16: experts out of their slots).
__global__ void copy16_transpose_kernel(Convert d, bool aligned) {
  __shared__ uint16_t tile[kBig][kBig + 2];
  const uint32_t r0 = blockIdx.y * kBig, c0 = blockIdx.x * kBig, t = threadIdx.x;
  const uint32_t i = t / 4, j0 = (t % 4) * kRun, r = r0 + i, c = c0 + j0;
  if (r < d.rows && c < d.cols) {
    const uint16_t* src = static_cast<const uint16_t*>(d.src) + uint64_t{r} * d.src_stride + c;
    if (aligned && c + kRun <= d.cols) {
      const uint4 a = reinterpret_cast<const uint4*>(src)[0], b = reinterpret_cast<const uint4*>(src)[1];
      const uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
      for (int k = 0; k < static_cast<int>(kRun); ++k) tile[i][j0 + k] = static_cast<uint16_t>(w[k / 2] >> (16 * (k % 2)));
    } else {
      for (uint32_t k = 0; k < kRun && c + k < d.cols; ++k) tile[i][j0 + k] = src[k];
    }
  }
  __syncthreads();
  store_transposed(d, tile, aligned);
}

// Block 128×128 export: one thread block per scale block; the finite amax by a shared-memory
// reduction over bit patterns (non-negative floats order as their bits), then the codes.
__global__ void quantize_block_kernel(Quantize q) {
  __shared__ uint32_t best[256];
  const uint64_t r0 = blockIdx.y * uint64_t{128}, c0 = blockIdx.x * uint64_t{128};
  const uint64_t r1 = min(q.rows, r0 + 128), c1 = min(q.cols, c0 + 128);
  uint32_t m = 0;
  for (uint64_t i = threadIdx.x; i < (r1 - r0) * (c1 - c0); i += blockDim.x) {
    const uint64_t r = r0 + i / (c1 - c0), c = c0 + i % (c1 - c0);
    m = max(m, elem::f2u(elem::finite_abs(q.src[r * q.cols + c])));
  }
  best[threadIdx.x] = m;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) best[threadIdx.x] = max(best[threadIdx.x], best[threadIdx.x + s]);
    __syncthreads();
  }
  const float scale = elem::fp8_block_scale(elem::u2f(best[0]));
  for (uint64_t i = threadIdx.x; i < (r1 - r0) * (c1 - c0); i += blockDim.x) {
    const uint64_t r = r0 + i / (c1 - c0), c = c0 + i % (c1 - c0);
    q.codes[r * q.cols + c] = elem::float_to_e4m3_saturate(elem::div(q.src[r * q.cols + c], scale));
  }
  if (threadIdx.x == 0) static_cast<float*>(q.scales)[blockIdx.y * gridDim.x + blockIdx.x] = scale;
}

// MXFP8 1×32 export: one warp per 32-element group, the amax by warp shuffles.
__global__ void quantize_mx_kernel(Quantize q, uint64_t groups_per_row) {
  const uint64_t group = blockIdx.x * uint64_t{blockDim.x / 32} + threadIdx.x / 32;
  if (group >= q.rows * groups_per_row) return;
  const uint64_t r = group / groups_per_row, c = (group % groups_per_row) * 32 + threadIdx.x % 32;
  const bool in = c < q.cols;
  const float x = in ? q.src[r * q.cols + c] : 0.0f;
  uint32_t m = elem::f2u(elem::finite_abs(x));
  for (int s = 16; s > 0; s /= 2) m = max(m, __shfl_xor_sync(0xFFFFFFFFu, m, s));
  const uint8_t e = elem::mx_scale_byte(elem::u2f(m));
  if (in) q.codes[r * q.cols + c] = elem::float_to_e4m3_saturate(elem::div(x, elem::e8m0_to_float(e)));
  if (threadIdx.x % 32 == 0) static_cast<uint8_t*>(q.scales)[group] = e;
}

__global__ void quantize_per_tensor_kernel(Quantize q) {
  const uint64_t i = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x;
  if (i >= q.rows * q.cols) return;
  q.codes[i] = elem::float_to_e4m3_saturate(elem::div(q.src[i], *static_cast<const float*>(q.scales)));
}

__global__ void amax_kernel(const float* x, uint64_t n, uint32_t* out) {
  uint32_t m = 0;
  for (uint64_t i = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; i < n; i += uint64_t{gridDim.x} * blockDim.x)
    m = max(m, elem::f2u(elem::finite_abs(x[i])));
  for (int s = 16; s > 0; s /= 2) m = max(m, __shfl_xor_sync(0xFFFFFFFFu, m, s));
  if (threadIdx.x % 32 == 0) atomicMax(out, m);
}

uint32_t blocks_of(uint64_t n, uint64_t per) { return static_cast<uint32_t>((n + per - 1) / per); }

// Bytes per element of the dtypes a Convert holds (the formats library is host-only).
uint64_t dtype_bytes(DType t) { return t == DType::F32 ? 4 : t == DType::F8_E4M3 || t == DType::F8_E5M2 ? 1 : 2; }

}  // namespace

bool convertible(DType src, bool scaled, DType scale_dtype, DType out) {
  const bool out_ok = out == DType::BF16 || out == DType::F16 || out == DType::F32;
  if (scaled)
    return out_ok && (src == DType::F8_E4M3 || src == DType::F8_E5M2) &&
           (scale_dtype == DType::F32 || scale_dtype == DType::BF16 || scale_dtype == DType::F16 ||
            scale_dtype == DType::U8 || scale_dtype == DType::F8_E8M0);
  return out_ok && (src == DType::BF16 || src == DType::F16 || src == DType::F32);
}

void convert(const Convert& c, void* stream) {
  if (c.rows == 0 || c.cols == 0) return;
  constexpr uint64_t k32 = 1ull << 32;
  if (!convertible(c.src_dtype, c.scales != nullptr, c.scale_dtype, c.out))
    fail_cuda("convert", "no conversion between these dtypes");
  if (c.scales && (c.block_rows == 0 || c.block_cols == 0 || c.row_phase + c.rows >= k32 ||
                   c.col_phase + c.cols >= k32 || c.block_rows >= k32 || c.block_cols >= k32))
    fail_cuda("convert", "a scale grid outside the kernel's 32-bit range");
  if (c.cols >= k32) fail_cuda("convert", "a rectangle wider than the kernel's 32-bit range");
  // FP8 to a 16-bit output and 16-bit transposes have the run kernels; the rest the generic one.
  const bool out16 = c.out == DType::BF16 || c.out == DType::F16;
  const bool copy16 = !c.scales && c.src_dtype == c.out && out16 && c.transpose;
  const bool runs = (c.scales && out16) || copy16;
  const auto at16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool aligned = at16(c.src) && (c.src_stride * dtype_bytes(c.src_dtype)) % 16 == 0 && at16(c.dst) &&
                       c.dst_stride % 8 == 0;
  const bool uniform = c.scales && ((c.block_cols % kRun == 0 && c.col_phase % kRun == 0) ||
                                    c.col_phase + c.cols <= c.block_cols);
  const uint64_t rows_per_block = !runs ? kTile : c.transpose ? kBig : 8;
  // Grid y is limited to 65535 blocks: taller rectangles go in bands.
  const uint64_t band_rows = 65535ull * rows_per_block;
  for (uint64_t r0 = 0; r0 < c.rows; r0 += band_rows) {
    Convert band = c;
    band.rows = c.rows - r0 < band_rows ? c.rows - r0 : band_rows;
    band.row_phase = c.row_phase + r0;
    band.src = static_cast<const uint8_t*>(c.src) + r0 * c.src_stride * dtype_bytes(c.src_dtype);
    band.dst = static_cast<uint8_t*>(c.dst) +
               (c.transpose ? r0 : r0 * c.dst_stride) * dtype_bytes(c.out);
    if (!runs) {
      const dim3 block(kTile, kTile), grid(blocks_of(band.cols, kTile), blocks_of(band.rows, kTile));
      convert_kernel<<<grid, block, 0, as_stream(stream)>>>(band);
    } else if (c.transpose) {
      const dim3 grid(blocks_of(band.cols, kBig), blocks_of(band.rows, kBig));
      if (copy16) copy16_transpose_kernel<<<grid, kBig * kBig / kRun, 0, as_stream(stream)>>>(band, aligned);
      else fp8_transpose_kernel<<<grid, kBig * kBig / kRun, 0, as_stream(stream)>>>(band, aligned, uniform);
    } else {
      const dim3 block(32, 8), grid(blocks_of(blocks_of(band.cols, kRun), 32), blocks_of(band.rows, 8));
      fp8_rows_kernel<<<grid, block, 0, as_stream(stream)>>>(band, aligned, uniform);
    }
    check(cudaGetLastError(), "convert");
  }
}

void quantize(const Quantize& q, void* stream) {
  if (q.rows == 0 || q.cols == 0) return;
  switch (q.scheme) {
    case ScaleScheme::Block:
      quantize_block_kernel<<<dim3(blocks_of(q.cols, 128), blocks_of(q.rows, 128)), 256, 0, as_stream(stream)>>>(q);
      break;
    case ScaleScheme::Mx: {
      const uint64_t groups = (q.cols + kMxBlock - 1) / kMxBlock;
      quantize_mx_kernel<<<blocks_of(q.rows * groups, 8), 256, 0, as_stream(stream)>>>(q, groups);
      break;
    }
    case ScaleScheme::PerTensor:
      quantize_per_tensor_kernel<<<blocks_of(q.rows * q.cols, 256), 256, 0, as_stream(stream)>>>(q);
      break;
  }
  check(cudaGetLastError(), "quantize");
}

void copy_async(void* dst, const void* src, uint64_t len, void* stream) {
  check(cudaMemcpyAsync(dst, src, len, cudaMemcpyDeviceToDevice, as_stream(stream)), "device copy");
}

void amax_finite(const float* x, uint64_t n, float* out, void* stream) {
  check(cudaMemsetAsync(out, 0, sizeof(float), as_stream(stream)), "amax");
  if (n == 0) return;
  const uint32_t blocks = blocks_of(n, 256) < 1024 ? blocks_of(n, 256) : 1024;
  amax_kernel<<<blocks, 256, 0, as_stream(stream)>>>(x, n, reinterpret_cast<uint32_t*>(out));
  check(cudaGetLastError(), "amax");
}

}  // namespace ckpt::cuda
