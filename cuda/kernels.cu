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
    default: return elem::e8m0_to_float(static_cast<const uint8_t*>(scales)[g]);
  }
}

__device__ void store(void* dst, DType out, uint64_t i, float v) {
  switch (out) {
    case DType::BF16: static_cast<uint16_t*>(dst)[i] = elem::float_to_bf16(v); break;
    case DType::F16: static_cast<uint16_t*>(dst)[i] = elem::float_to_f16(v); break;
    default: static_cast<float*>(dst)[i] = v; break;
  }
}

// One thread per element of a 32×32 tile; the tile goes through shared memory when transposed,
// so that both the FP8 reads and the output writes are coalesced.
constexpr int kTile = 32;

__global__ void dequant_kernel(Dequant d) {
  __shared__ float tile[kTile][kTile + 1];  // +1: no bank conflicts on the transposed read
  const uint64_t r = blockIdx.y * uint64_t{kTile} + threadIdx.y;
  const uint64_t c = blockIdx.x * uint64_t{kTile} + threadIdx.x;
  float v = 0.0f;
  if (r < d.rows && c < d.cols) {
    const uint8_t code = d.src[r * d.src_stride + c];
    const float w = d.format == Fp8::E4M3 ? elem::e4m3_to_float(code) : elem::e5m2_to_float(code);
    v = w * scale_at(d.scales, d.scale_dtype, (r / d.block_rows) * d.grid_cols + c / d.block_cols);
  }
  if (!d.transpose) {
    if (r < d.rows && c < d.cols) store(d.dst, d.out, r * d.dst_stride + c, v);
    return;
  }
  tile[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  const uint64_t tr = blockIdx.x * uint64_t{kTile} + threadIdx.y;  // output row = input column
  const uint64_t tc = blockIdx.y * uint64_t{kTile} + threadIdx.x;  // output column = input row
  if (tr < d.cols && tc < d.rows) store(d.dst, d.out, tr * d.dst_stride + tc, tile[threadIdx.x][threadIdx.y]);
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
    q.codes[r * q.cols + c] = elem::float_to_e4m3_saturate(q.src[r * q.cols + c] / scale);
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
  if (in) q.codes[r * q.cols + c] = elem::float_to_e4m3_saturate(x / elem::e8m0_to_float(e));
  if (threadIdx.x % 32 == 0) static_cast<uint8_t*>(q.scales)[group] = e;
}

__global__ void quantize_per_tensor_kernel(Quantize q) {
  const uint64_t i = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x;
  if (i >= q.rows * q.cols) return;
  q.codes[i] = elem::float_to_e4m3_saturate(q.src[i] / *static_cast<const float*>(q.scales));
}

__global__ void amax_kernel(const float* x, uint64_t n, uint32_t* out) {
  uint32_t m = 0;
  for (uint64_t i = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; i < n; i += uint64_t{gridDim.x} * blockDim.x)
    m = max(m, elem::f2u(elem::finite_abs(x[i])));
  for (int s = 16; s > 0; s /= 2) m = max(m, __shfl_xor_sync(0xFFFFFFFFu, m, s));
  if (threadIdx.x % 32 == 0) atomicMax(out, m);
}

uint32_t blocks_of(uint64_t n, uint64_t per) { return static_cast<uint32_t>((n + per - 1) / per); }

}  // namespace

void dequantize(const Dequant& d, void* stream) {
  if (d.rows == 0 || d.cols == 0) return;
  const dim3 block(kTile, kTile), grid(blocks_of(d.cols, kTile), blocks_of(d.rows, kTile));
  dequant_kernel<<<grid, block, 0, as_stream(stream)>>>(d);
  check(cudaGetLastError(), "dequantize");
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

void amax_finite(const float* x, uint64_t n, float* out, void* stream) {
  check(cudaMemsetAsync(out, 0, sizeof(float), as_stream(stream)), "amax");
  if (n == 0) return;
  const uint32_t blocks = blocks_of(n, 256) < 1024 ? blocks_of(n, 256) : 1024;
  amax_kernel<<<blocks, 256, 0, as_stream(stream)>>>(x, n, reinterpret_cast<uint32_t*>(out));
  check(cudaGetLastError(), "amax");
}

}  // namespace ckpt::cuda
