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

// The output bits of source element (r, c) of a rectangle. Grid arithmetic in 32 bits (convert()
// checks that it fits): 64-bit division is a software routine on the GPU.
__device__ uint32_t element_bits(const Convert& d, uint32_t r, uint32_t c) {
  const uint64_t i = uint64_t{r} * d.src_stride + c;
  if (!d.scales && d.src_dtype == d.out) return load_bits(d.src, d.src_dtype, i);
  float v = load(d.src, d.src_dtype, i);
  if (d.scales) {
    const uint32_t gr = (static_cast<uint32_t>(d.row_phase) + r) / static_cast<uint32_t>(d.block_rows);
    const uint32_t gc = (static_cast<uint32_t>(d.col_phase) + c) / static_cast<uint32_t>(d.block_cols);
    v = elem::mul(v, scale_at(d.scales, d.scale_dtype, uint64_t{gr} * d.grid_cols + gc));
  }
  switch (d.out) {
    case DType::BF16: return elem::float_to_bf16(v);
    case DType::F16: return elem::float_to_f16(v);
    default: return elem::f2u(v);
  }
}

// One thread per element of a 32×32 tile; the tile goes through shared memory when transposed,
// so that both the source reads and the output writes are coalesced.
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
  // Grid y is limited to 65535 blocks: taller rectangles go in bands.
  constexpr uint64_t kBandRows = 65535ull * kTile;
  for (uint64_t r0 = 0; r0 < c.rows; r0 += kBandRows) {
    Convert band = c;
    band.rows = c.rows - r0 < kBandRows ? c.rows - r0 : kBandRows;
    band.row_phase = c.row_phase + r0;
    band.src = static_cast<const uint8_t*>(c.src) + r0 * c.src_stride * dtype_bytes(c.src_dtype);
    band.dst = static_cast<uint8_t*>(c.dst) +
               (c.transpose ? r0 : r0 * c.dst_stride) * dtype_bytes(c.out);
    const dim3 block(kTile, kTile), grid(blocks_of(band.cols, kTile), blocks_of(band.rows, kTile));
    convert_kernel<<<grid, block, 0, as_stream(stream)>>>(band);
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
