// The CUDA kernels (cuda/kernels.h) against the CPU path, bit for bit, on a GPU: every FP8 code
// of both formats under block (F32 and BF16 scales, ragged edges), MXFP8 (exponent bytes) and
// per-tensor scales, to BF16, F16 and F32, as rows and transposed into a slot; FP8 export of
// values holding NaN, ±inf, zeros and subnormals in every scheme. Without a usable device the
// binary exits 77, which ctest reports as skipped — there is nothing here to run.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <utility>
#include <random>
#include <vector>

#include "cuda/device.h"
#include "cuda/kernels.h"
#include "transforms/cast.h"
#include "transforms/fp8.h"
#include "transforms/quantize.h"

using namespace ckpt;

namespace {

template <typename T>
T* to_device(const std::vector<T>& v) {
  void* p = nullptr;
  REQUIRE(cudaMalloc(&p, std::max<size_t>(1, v.size() * sizeof(T))) == cudaSuccess);
  REQUIRE(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  return static_cast<T*>(p);
}

template <typename T>
std::vector<T> from_device(const void* p, size_t n) {
  std::vector<T> v(n);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  REQUIRE(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
  return v;
}

// The CPU's element for (r, c): the same rule cuda::Convert documents, computed host-side.
float cpu_value(const cuda::Convert& d, const std::vector<uint8_t>& src, const std::vector<uint8_t>& scale_bytes,
                uint64_t r, uint64_t c) {
  const uint64_t g = (r / d.block_rows) * d.grid_cols + c / d.block_cols;
  float s = 0;
  if (d.scale_dtype == DType::F32) std::memcpy(&s, scale_bytes.data() + 4 * g, 4);
  else if (d.scale_dtype == DType::BF16) s = bf16_to_float(static_cast<uint16_t>(scale_bytes[2 * g] | scale_bytes[2 * g + 1] << 8));
  else s = e8m0_to_float(scale_bytes[g]);
  return elem::mul(fp8_to_float(src[r * d.src_stride + c], d.src_dtype == DType::F8_E4M3 ? Fp8::E4M3 : Fp8::E5M2), s);
}

uint32_t cpu_bits(DType out, float v) {
  return out == DType::BF16 ? float_to_bf16(v) : out == DType::F16 ? float_to_f16(v) : float_to_bits(v);
}

// A dense rows × cols conversion of `src` into `dst`, transposed or not; scaled ones add their grid.
cuda::Convert dense(const void* src, DType from, uint64_t rows, uint64_t cols, void* dst, DType out, bool transpose) {
  cuda::Convert d;
  d.src = src;
  d.src_dtype = from;
  d.rows = rows;
  d.cols = cols;
  d.src_stride = cols;
  d.dst = dst;
  d.out = out;
  d.dst_stride = transpose ? rows : cols;
  d.transpose = transpose;
  return d;
}

}  // namespace

TEST_CASE("dequantization kernels equal the CPU path for every code, scheme and output", "[cuda]") {
  // Ragged against 128, 64, 32 and 16; the second shape's strides allow 16-byte runs (the run
  // kernels' vector path), the first's do not (their element path).
  for (const auto& [rows, cols] : {std::pair<uint64_t, uint64_t>{300, 200}, std::pair<uint64_t, uint64_t>{200, 272}}) {
    INFO("shape " << rows << "x" << cols);
    std::vector<uint8_t> src(rows * cols);
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 7 + i / 256);
    std::mt19937 rng(3);
    struct Scheme {
      DType scale;
      uint64_t br, bc;
    };
    for (const Scheme sc : {Scheme{DType::F32, 128, 128}, Scheme{DType::BF16, 128, 128}, Scheme{DType::U8, 1, 32},
                            Scheme{DType::F32, rows, cols}}) {
      const uint64_t grid_rows = (rows + sc.br - 1) / sc.br, grid_cols = (cols + sc.bc - 1) / sc.bc;
      std::vector<uint8_t> scales(grid_rows * grid_cols * dtype_size(sc.scale));
      for (auto& b : scales) b = static_cast<uint8_t>(rng());
      if (sc.scale == DType::F32)  // finite, varied magnitudes, some subnormal outputs
        for (size_t g = 0; g < grid_rows * grid_cols; ++g) {
          const float f = std::ldexp(1.0f + static_cast<float>(g % 7) / 8, static_cast<int>(g % 40) - 30);
          std::memcpy(scales.data() + 4 * g, &f, 4);
        }
      for (Fp8 f : {Fp8::E4M3, Fp8::E5M2})
        for (DType out : {DType::BF16, DType::F16, DType::F32})
          for (bool transpose : {false, true}) {
            INFO("scale " << dtype_name(sc.scale) << " block " << sc.br << "x" << sc.bc << " out " << dtype_name(out)
                          << " transpose " << transpose);
            uint8_t* dsrc = to_device(src);
            uint8_t* dscale = to_device(scales);
            void* ddst = nullptr;
            REQUIRE(cudaMalloc(&ddst, rows * cols * 4) == cudaSuccess);
            cuda::Convert d = dense(dsrc, f == Fp8::E4M3 ? DType::F8_E4M3 : DType::F8_E5M2, rows, cols, ddst, out,
                                    transpose);
            d.scales = dscale;
            d.scale_dtype = sc.scale;
            d.block_rows = sc.br;
            d.block_cols = sc.bc;
            d.grid_cols = grid_cols;
            cuda::convert(d, nullptr);
            const size_t es = dtype_size(out);
            const auto got = from_device<uint8_t>(ddst, rows * cols * es);
            uint64_t bad = 0;
            for (uint64_t r = 0; r < rows; ++r)
              for (uint64_t c = 0; c < cols; ++c) {
                const uint64_t at = transpose ? c * rows + r : r * cols + c;
                uint32_t g = 0;
                std::memcpy(&g, got.data() + at * es, es);
                const float v = cpu_value(d, src, scales, r, c);
                bad += g != cpu_bits(out, v);  // exact: NaN bits too (elem::mul is the CPU's multiply)
              }
            CHECK(bad == 0);
            cudaFree(dsrc);
            cudaFree(dscale);
            cudaFree(ddst);
          }
    }
  }
}

TEST_CASE("cast kernels equal the CPU's cast_run, equal dtypes copied bit for bit", "[cuda]") {
  std::mt19937 rng(9);
  // The second shape allows the 16-bit transpose kernel's 16-byte runs, the first does not.
  for (const auto& [rows, cols] : {std::pair<uint64_t, uint64_t>{70, 90}, std::pair<uint64_t, uint64_t>{96, 80}}) {
    for (DType from : {DType::BF16, DType::F16, DType::F32})
      for (DType out : {DType::BF16, DType::F16, DType::F32})
        for (bool transpose : {false, true}) {
          INFO(rows << "x" << cols << " " << dtype_name(from) << " -> " << dtype_name(out) << " transpose " << transpose);
          const size_t ies = dtype_size(from), oes = dtype_size(out);
          std::vector<uint8_t> src(rows * cols * ies);
          for (auto& b : src) b = static_cast<uint8_t>(rng());  // every class: NaNs with payloads, infs, subnormals
          uint8_t* dsrc = to_device(src);
          void* ddst = nullptr;
          REQUIRE(cudaMalloc(&ddst, rows * cols * 4) == cudaSuccess);
          const cuda::Convert d = dense(dsrc, from, rows, cols, ddst, out, transpose);
          cuda::convert(d, nullptr);
          const auto got = from_device<uint8_t>(ddst, rows * cols * oes);
          std::vector<uint8_t> want(rows * cols * oes);
          for (uint64_t r = 0; r < rows; ++r)
            for (uint64_t c = 0; c < cols; ++c) {
              const uint64_t at = transpose ? c * rows + r : r * cols + c;
              cast_run(src.data() + (r * cols + c) * ies, from, 1, want.data() + at * oes, out);
            }
          CHECK(got == want);
          cudaFree(dsrc);
          cudaFree(ddst);
        }
  }
}

TEST_CASE("FP8 export kernels equal the CPU rules, non-finite values included", "[cuda]") {
  const uint64_t rows = 260, cols = 300;
  std::vector<float> x(rows * cols);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  for (size_t i = 0; i < x.size(); ++i) x[i] = u(rng) * std::ldexp(1.0f, static_cast<int>(i % 23) - 11);
  for (size_t i = 0; i < x.size(); i += 97) x[i] = i % 2 ? std::nanf("") : -std::nanf("");  // both signs
  for (size_t i = 5; i < x.size(); i += 131) x[i] = -INFINITY;
  for (uint64_t c = 0; c < cols; ++c) x[c] = 0.0f;  // a zero row
  float* dx = to_device(x);
  uint8_t* dcodes = nullptr;
  void* dscales = nullptr;
  REQUIRE(cudaMalloc(reinterpret_cast<void**>(&dcodes), rows * cols) == cudaSuccess);
  REQUIRE(cudaMalloc(&dscales, rows * cols * 4) == cudaSuccess);
  for (ScaleScheme s : {ScaleScheme::Block, ScaleScheme::Mx, ScaleScheme::PerTensor}) {
    INFO("scheme " << static_cast<int>(s));
    std::vector<uint8_t> want(rows * cols);
    std::vector<float> want_scale;
    std::vector<uint8_t> want_mx;
    if (s == ScaleScheme::PerTensor) {
      const float sc = fp8_block_scale(abs_max_scalar(x.data(), x.size(), 0.0f));
      want_scale.push_back(sc);
      for (size_t i = 0; i < x.size(); ++i) want[i] = float_to_e4m3_saturate(elem::div(x[i], sc));
      cuda::amax_finite(dx, x.size(), static_cast<float*>(dscales), nullptr);
      const auto amax = from_device<float>(dscales, 1);
      CHECK(fp8_block_scale(amax[0]) == sc);
      REQUIRE(cudaMemcpy(dscales, &sc, 4, cudaMemcpyHostToDevice) == cudaSuccess);
    }
    const uint64_t br = s == ScaleScheme::Mx ? 1 : 128, bc = s == ScaleScheme::Mx ? 32 : 128;
    if (s != ScaleScheme::PerTensor)
      for (uint64_t r0 = 0; r0 < rows; r0 += br)
        for (uint64_t c0 = 0; c0 < cols; c0 += bc) {
          float amax = 0;
          for (uint64_t r = r0; r < std::min(rows, r0 + br); ++r)
            amax = abs_max_scalar(&x[r * cols + c0], std::min(cols, c0 + bc) - c0, amax);
          const uint8_t e = mx_scale_byte(amax);
          const float sc = s == ScaleScheme::Mx ? e8m0_to_float(e) : fp8_block_scale(amax);
          if (s == ScaleScheme::Mx) want_mx.push_back(e);
          else want_scale.push_back(sc);
          for (uint64_t r = r0; r < std::min(rows, r0 + br); ++r)
            for (uint64_t c = c0; c < std::min(cols, c0 + bc); ++c) want[r * cols + c] = float_to_e4m3_saturate(elem::div(x[r * cols + c], sc));
        }
    cuda::Quantize q{dx, rows, cols, s, dcodes, dscales};
    cuda::quantize(q, nullptr);
    CHECK(from_device<uint8_t>(dcodes, rows * cols) == want);
    if (s == ScaleScheme::Mx) CHECK(from_device<uint8_t>(dscales, want_mx.size()) == want_mx);
    else CHECK(from_device<float>(dscales, want_scale.size()) == want_scale);
  }
  cudaFree(dx);
  cudaFree(dcodes);
  cudaFree(dscales);
}

int main(int argc, char** argv) {
  try {
    const auto d = cuda::usable_device(0);
    std::printf("cuda: %s, compute capability %d.%d\n", d.name.c_str(), d.major, d.minor);
  } catch (const std::exception& e) {
    std::printf("skipped: %s\n", e.what());
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
