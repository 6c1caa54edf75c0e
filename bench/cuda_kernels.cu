// Device benchmark of the CUDA stage (cuda/kernels.h) against the floors that bound it:
//
//   ckpt_bench_cuda [REPORT.md]
//
// 1. every kernel at checkpoint scale (>= 1 GiB on its larger side), timed with CUDA events:
//    two warm-up runs, then the median of kRepeats runs that alternate between two input/output
//    sets (L2 holds neither); bytes moved = input bytes + output bytes (scales included);
// 2. next to each, a device-to-device cudaMemcpy moving the same bytes ((in + out) / 2 copied,
//    read + write counted) and the kernel's ratio to it — the target is >= 0.70;
// 3. pinned host <-> device copies of 1 GiB: H2D, D2H, and both at once on two streams.
//
// Inputs are random non-zero data written by a hash kernel (finite FP8 codes, BF16/F32 values,
// positive scales); each converted case is also spot-checked against the CPU's element arithmetic
// (transforms/element.h) at random positions, so the table times the right work. The table goes
// to stdout and, with an argument, to that file. Exit: 0 done, 1 a CUDA failure or a mismatch
// (the table is printed first), 77 no CUDA device.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "cuda/kernels.h"
#include "transforms/element.h"

namespace {

using ckpt::DType;
namespace kc = ckpt::cuda;
namespace elem = ckpt::elem;

constexpr int kWarmup = 2;    // one per set
constexpr int kRepeats = 15;  // timed, alternating sets; the median is reported
constexpr uint64_t kGiB = 1ull << 30;

void check(cudaError_t e, const char* what, int line) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "ckpt_bench_cuda: %s (line %d) failed: %s\n", what, line, cudaGetErrorString(e));
  std::exit(1);
}
#define CK(call) check((call), #call, __LINE__)

// ---- device memory and random fill ----

struct DevBuf {
  void* p = nullptr;
  uint64_t bytes = 0;
  DevBuf() = default;
  explicit DevBuf(uint64_t n) : bytes(n) {
    const cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
      std::fprintf(stderr, "ckpt_bench_cuda: cudaMalloc of %.2f GiB failed: %s\n", double(n) / kGiB,
                   cudaGetErrorString(e));
      std::exit(1);
    }
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : p(o.p), bytes(o.bytes) { o.p = nullptr; }
  DevBuf& operator=(DevBuf&& o) noexcept {
    std::swap(p, o.p);
    std::swap(bytes, o.bytes);
    return *this;
  }
  ~DevBuf() { if (p) cudaFree(p); }
  uint8_t* b() const { return static_cast<uint8_t*>(p); }
};

enum class Fill : int { Fp8, Bf16, F32, ScaleF32, ExpU8 };

__device__ uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__global__ void fill_kernel(void* p, uint64_t n, Fill f, uint64_t seed) {
  for (uint64_t i = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; i < n; i += uint64_t{gridDim.x} * blockDim.x) {
    const uint64_t h = mix(i ^ (seed << 40) ^ seed);
    switch (f) {
      case Fill::Fp8: {  // finite, non-zero e4m3 codes of both signs
        uint32_t mag = h & 0x7Fu;
        if (mag == 0) mag = 0x38;     // 1.0
        if (mag == 0x7F) mag = 0x7E;  // not NaN
        static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(((h >> 8) & 0x80u) | mag);
        break;
      }
      case Fill::Bf16:  // |x| in [2^-7, 2^8)
        static_cast<uint16_t*>(p)[i] =
            static_cast<uint16_t>(((h >> 32) & 0x8000u) | ((120u + (h >> 8) % 15u) << 7) | (h & 0x7Fu));
        break;
      case Fill::F32:  // |x| in [2^-27, 2^14)
        static_cast<uint32_t*>(p)[i] =
            static_cast<uint32_t>(((h >> 32) & 0x80000000u) | ((100u + (h >> 40) % 41u) << 23) | (h & 0x7FFFFFu));
        break;
      case Fill::ScaleF32:  // positive, in [2^-10, 2^-5)
        static_cast<uint32_t*>(p)[i] = static_cast<uint32_t>(((117u + (h >> 40) % 5u) << 23) | (h & 0x7FFFFFu));
        break;
      case Fill::ExpU8:  // 2^-9 .. 2^10
        static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(118u + h % 20u);
        break;
    }
  }
}

void fill(void* p, uint64_t n, Fill f, uint64_t seed) {
  fill_kernel<<<4096, 256>>>(p, n, f, seed);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());  // the timed work runs on a non-blocking stream
}

// ---- timing ----

struct Timer {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  Timer() {
    CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    CK(cudaEventCreate(&start));
    CK(cudaEventCreate(&stop));
  }
  ~Timer() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaStreamDestroy(stream);
  }
  // Median milliseconds of `work(set)` over kRepeats runs after kWarmup, set = run % 2.
  double median_ms(const std::function<void(int)>& work) {
    std::vector<double> ms;
    for (int i = 0; i < kWarmup + kRepeats; ++i) {
      CK(cudaEventRecord(start, stream));
      work(i % 2);
      CK(cudaEventRecord(stop, stream));
      CK(cudaEventSynchronize(stop));
      CK(cudaGetLastError());
      float t = 0;
      CK(cudaEventElapsedTime(&t, start, stop));
      if (i >= kWarmup) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  }
};

double gbps(uint64_t bytes, double ms) { return double(bytes) / 1e9 / (ms / 1e3); }

// The memcpy floor: two (src, dst) pairs, grown (freed, then reallocated) to fit each case's
// (in + out) / 2 bytes.
struct CopyPool {
  DevBuf src[2], dst[2];
  uint64_t bytes = 0;
  void reserve(uint64_t n) {
    if (n <= bytes) return;
    for (int s = 0; s < 2; ++s) src[s] = DevBuf(), dst[s] = DevBuf();
    for (int s = 0; s < 2; ++s) {
      src[s] = DevBuf(n);
      dst[s] = DevBuf(n);
      fill(src[s].p, n, Fill::Fp8, 900 + s);
    }
    bytes = n;
  }
};

// ---- the table ----

struct Row {
  std::string name, shape;
  size_t calls = 0;
  uint64_t in = 0, out = 0;
  double ms = 0, copy_ms = 0;
  std::string check;
};

std::string num(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// ---- spot checks against the CPU's element arithmetic ----

template <typename T>
T fetch(const void* base, uint64_t index) {
  T v{};
  CK(cudaMemcpy(&v, static_cast<const uint8_t*>(base) + index * sizeof(T), sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}

uint32_t fetch_bits(const void* base, DType t, uint64_t i) {
  switch (dtype_size(t)) {
    case 4: return fetch<uint32_t>(base, i);
    case 2: return fetch<uint16_t>(base, i);
    default: return fetch<uint8_t>(base, i);
  }
}

float host_value(DType t, uint32_t bits) {
  switch (t) {
    case DType::F8_E4M3: return elem::e4m3_to_float(static_cast<uint8_t>(bits));
    case DType::F8_E5M2: return elem::e5m2_to_float(static_cast<uint8_t>(bits));
    case DType::BF16: return elem::bf16_to_float(static_cast<uint16_t>(bits));
    case DType::F16: return elem::f16_to_float(static_cast<uint16_t>(bits));
    case DType::F32: return elem::u2f(bits);
    default: return elem::e8m0_to_float(static_cast<uint8_t>(bits));  // U8 / F8_E8M0 exponents
  }
}

// Samples `n` random elements of the calls and compares the output bits with the CPU's rule.
// The check column: "ok (N unit)", or "MISMATCH bad/N unit" (which fails the run).
std::string verdict(uint64_t bad, uint64_t total, const std::string& unit) {
  return bad ? "MISMATCH " + std::to_string(bad) + "/" + std::to_string(total) + unit
             : "ok (" + std::to_string(total) + unit + ")";
}

std::string check_converts(const std::vector<kc::Convert>& calls, int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  int bad = 0;
  for (int k = 0; k < n; ++k) {
    const kc::Convert& c = calls[rng() % calls.size()];
    const uint64_t r = rng() % c.rows, col = rng() % c.cols;
    const uint32_t src_bits = fetch_bits(c.src, c.src_dtype, r * c.src_stride + col);
    uint32_t want;
    if (!c.scales && c.src_dtype == c.out) {
      want = src_bits;
    } else {
      float v = host_value(c.src_dtype, src_bits);
      if (c.scales) {
        const uint64_t g = ((c.row_phase + r) / c.block_rows) * c.grid_cols + (c.col_phase + col) / c.block_cols;
        v = elem::mul(v, host_value(c.scale_dtype, fetch_bits(c.scales, c.scale_dtype, g)));
      }
      want = c.out == DType::BF16 ? elem::float_to_bf16(v) : c.out == DType::F16 ? elem::float_to_f16(v) : elem::f2u(v);
    }
    const uint64_t di = c.transpose ? col * c.dst_stride + r : r * c.dst_stride + col;
    if (fetch_bits(c.dst, c.out, di) != want) ++bad;
  }
  return verdict(bad, n, "");
}

// ---- cases ----

struct Bench {
  Timer timer;
  CopyPool pool;
  std::vector<Row> rows;
  bool failed = false;

  // Times `work`, then a memcpy of (in + out) / 2 bytes from the pool.
  void run(Row row, const std::function<void(int)>& work, const std::function<std::string()>& verify) {
    std::fprintf(stderr, "  %s ...\n", row.name.c_str());
    row.ms = timer.median_ms(work);
    const uint64_t half = (row.in + row.out + 1) / 2;
    pool.reserve(half);
    row.copy_ms = timer.median_ms([&](int s) {
      CK(cudaMemcpyAsync(pool.dst[s].p, pool.src[s].p, half, cudaMemcpyDeviceToDevice, timer.stream));
    });
    row.check = verify ? verify() : "-";
    if (row.check.rfind("MISMATCH", 0) == 0) failed = true;
    rows.push_back(row);
  }

  void converts(Row row, const std::vector<kc::Convert> (&sets)[2]) {
    row.calls = sets[0].size();
    run(
        row, [&](int s) { for (const kc::Convert& c : sets[s]) kc::convert(c, timer.stream); },
        [&] { return check_converts(sets[0], 512, 7); });
  }
};

// (a) / (c): FP8 rows -> BF16, untransposed, one call over a tall matrix.
void case_fp8_rows(Bench& b, const char* name, uint64_t R, uint64_t C, bool mx) {
  const uint64_t br = mx ? 1 : 128, bc = mx ? 32 : 128;
  const uint64_t gr = (R + br - 1) / br, gc = (C + bc - 1) / bc;
  const uint64_t scale_bytes = gr * gc * (mx ? 1 : 4);
  DevBuf src[2], sc[2], dst[2];
  std::vector<kc::Convert> sets[2];
  for (int s = 0; s < 2; ++s) {
    src[s] = DevBuf(R * C);
    sc[s] = DevBuf(scale_bytes);
    dst[s] = DevBuf(R * C * 2);
    fill(src[s].p, R * C, Fill::Fp8, 10 + s);
    fill(sc[s].p, gr * gc, mx ? Fill::ExpU8 : Fill::ScaleF32, 20 + s);
    kc::Convert c;
    c.src = src[s].p;
    c.src_dtype = DType::F8_E4M3;
    c.rows = R;
    c.cols = C;
    c.src_stride = C;
    c.scales = sc[s].p;
    c.scale_dtype = mx ? DType::U8 : DType::F32;
    c.block_rows = br;
    c.block_cols = bc;
    c.grid_cols = gc;
    c.dst = dst[s].p;
    c.out = DType::BF16;
    c.dst_stride = C;
    sets[s].push_back(c);
  }
  Row row;
  row.name = name;
  row.shape = std::to_string(R) + "x" + std::to_string(C) + (mx ? " e4m3, U8 1x32" : " e4m3, F32 128x128");
  row.in = R * C + scale_bytes;
  row.out = R * C * 2;
  b.converts(row, sets);
}

// (b): FP8 experts dequantized and transposed into their slots (HF -> native), MiniMax-M2 shapes:
// w1, w3 [inter, hidden] -> gate_and_up_projs [E, hidden, 2*inter]; w2 [hidden, inter] ->
// down_projs [E, inter, hidden]. Three calls per expert.
void case_fp8_experts(Bench& b, uint64_t E, uint64_t H, uint64_t I) {
  const uint64_t per = I * H;  // elements of one projection
  const uint64_t g_in = ((I + 127) / 128) * ((H + 127) / 128), g_dn = ((H + 127) / 128) * ((I + 127) / 128);
  DevBuf src[2], sc[2], gu[2], dn[2];
  std::vector<kc::Convert> sets[2];
  for (int s = 0; s < 2; ++s) {
    src[s] = DevBuf(E * 3 * per);
    sc[s] = DevBuf(E * (2 * g_in + g_dn) * 4);
    gu[s] = DevBuf(E * H * 2 * I * 2);
    dn[s] = DevBuf(E * I * H * 2);
    fill(src[s].p, E * 3 * per, Fill::Fp8, 30 + s);
    fill(sc[s].p, E * (2 * g_in + g_dn), Fill::ScaleF32, 40 + s);
    const float* scales = static_cast<const float*>(sc[s].p);
    for (uint64_t e = 0; e < E; ++e) {
      for (int p = 0; p < 3; ++p) {  // w1, w3, w2
        kc::Convert c;
        c.src = src[s].b() + (e * 3 + p) * per;
        c.src_dtype = DType::F8_E4M3;
        c.rows = p < 2 ? I : H;
        c.cols = p < 2 ? H : I;
        c.src_stride = c.cols;
        c.scales = scales + e * (2 * g_in + g_dn) + p * g_in;
        c.scale_dtype = DType::F32;
        c.grid_cols = (c.cols + 127) / 128;
        c.out = DType::BF16;
        c.transpose = true;
        if (p < 2) {  // slot e of gate_and_up_projs [H, 2I]: columns [p*I, (p+1)*I)
          c.dst = reinterpret_cast<uint16_t*>(gu[s].p) + e * H * 2 * I + p * I;
          c.dst_stride = 2 * I;
        } else {  // slot e of down_projs [I, H]
          c.dst = reinterpret_cast<uint16_t*>(dn[s].p) + e * I * H;
          c.dst_stride = H;
        }
        sets[s].push_back(c);
      }
    }
  }
  Row row;
  row.name = "(b) fp8->bf16 block, experts transposed into slots";
  row.shape = std::to_string(E) + " experts x w1,w3 " + std::to_string(I) + "x" + std::to_string(H) + " + w2 " +
              std::to_string(H) + "x" + std::to_string(I);
  row.in = E * (3 * per + (2 * g_in + g_dn) * 4);
  row.out = E * 3 * per * 2;
  b.converts(row, sets);
}

// (b'): one big FP8 matrix dequantized and transposed.
void case_fp8_transpose_big(Bench& b, uint64_t R, uint64_t C) {
  const uint64_t gc = (C + 127) / 128, g = ((R + 127) / 128) * gc;
  DevBuf src[2], sc[2], dst[2];
  std::vector<kc::Convert> sets[2];
  for (int s = 0; s < 2; ++s) {
    src[s] = DevBuf(R * C);
    sc[s] = DevBuf(g * 4);
    dst[s] = DevBuf(R * C * 2);
    fill(src[s].p, R * C, Fill::Fp8, 50 + s);
    fill(sc[s].p, g, Fill::ScaleF32, 60 + s);
    kc::Convert c;
    c.src = src[s].p;
    c.rows = R;
    c.cols = C;
    c.src_stride = C;
    c.scales = sc[s].p;
    c.grid_cols = gc;
    c.dst = dst[s].p;
    c.dst_stride = R;
    c.transpose = true;
    sets[s].push_back(c);
  }
  Row row;
  row.name = "(b) fp8->bf16 block, transposed, one matrix";
  row.shape = std::to_string(R) + "x" + std::to_string(C) + " -> " + std::to_string(C) + "x" + std::to_string(R);
  row.in = R * C + g * 4;
  row.out = R * C * 2;
  b.converts(row, sets);
}

// (d): BF16 experts transposed back out of their slots (native -> HF).
void case_bf16_experts_out(Bench& b, uint64_t E, uint64_t H, uint64_t I) {
  DevBuf gu[2], dn[2], dst[2];
  std::vector<kc::Convert> sets[2];
  const uint64_t per = I * H;
  for (int s = 0; s < 2; ++s) {
    gu[s] = DevBuf(E * H * 2 * I * 2);
    dn[s] = DevBuf(E * I * H * 2);
    dst[s] = DevBuf(E * 3 * per * 2);
    fill(gu[s].p, E * H * 2 * I, Fill::Bf16, 70 + s);
    fill(dn[s].p, E * I * H, Fill::Bf16, 80 + s);
    for (uint64_t e = 0; e < E; ++e) {
      for (int p = 0; p < 3; ++p) {
        kc::Convert c;
        c.src_dtype = DType::BF16;
        c.out = DType::BF16;
        c.transpose = true;
        if (p < 2) {  // gate_and_up slot e [H, 2I], columns [p*I, (p+1)*I) -> w1/w3 [I, H]
          c.src = static_cast<const uint16_t*>(gu[s].p) + e * H * 2 * I + p * I;
          c.rows = H;
          c.cols = I;
          c.src_stride = 2 * I;
          c.dst_stride = H;
        } else {  // down slot e [I, H] -> w2 [H, I]
          c.src = static_cast<const uint16_t*>(dn[s].p) + e * I * H;
          c.rows = I;
          c.cols = H;
          c.src_stride = H;
          c.dst_stride = I;
        }
        c.dst = static_cast<uint16_t*>(dst[s].p) + (e * 3 + p) * per;
        sets[s].push_back(c);
      }
    }
  }
  Row row;
  row.name = "(d) bf16 transpose, experts out of slots";
  row.shape = std::to_string(E) + " experts, gate_and_up [" + std::to_string(H) + "," + std::to_string(2 * I) +
              "] + down [" + std::to_string(I) + "," + std::to_string(H) + "]";
  row.in = E * 3 * per * 2;
  row.out = E * 3 * per * 2;
  b.converts(row, sets);
}

// (d') / (e): one unscaled conversion of a big matrix.
void case_cast(Bench& b, const char* name, uint64_t R, uint64_t C, DType from, DType to, bool transpose) {
  DevBuf src[2], dst[2];
  std::vector<kc::Convert> sets[2];
  for (int s = 0; s < 2; ++s) {
    src[s] = DevBuf(R * C * dtype_size(from));
    dst[s] = DevBuf(R * C * dtype_size(to));
    fill(src[s].p, R * C, from == DType::F32 ? Fill::F32 : Fill::Bf16, 90 + s);
    kc::Convert c;
    c.src = src[s].p;
    c.src_dtype = from;
    c.rows = R;
    c.cols = C;
    c.src_stride = C;
    c.dst = dst[s].p;
    c.out = to;
    c.dst_stride = transpose ? R : C;
    c.transpose = transpose;
    sets[s].push_back(c);
  }
  Row row;
  row.name = name;
  row.shape = std::to_string(R) + "x" + std::to_string(C) + (transpose ? " -> transposed" : "");
  row.in = R * C * dtype_size(from);
  row.out = R * C * dtype_size(to);
  b.converts(row, sets);
}

// quantize Block / Mx and amax_finite on one F32 matrix per set.
void case_quantize(Bench& b, uint64_t R, uint64_t C) {
  const uint64_t n = R * C;
  const uint64_t gb = ((R + 127) / 128) * ((C + 127) / 128), gm = R * ((C + 31) / 32);
  DevBuf src[2], codes[2], sc[2], amax(sizeof(float));
  for (int s = 0; s < 2; ++s) {
    src[s] = DevBuf(n * 4);
    codes[s] = DevBuf(n);
    sc[s] = DevBuf(std::max(gb * 4, gm));
    fill(src[s].p, n, Fill::F32, 100 + s);
  }
  const std::string shape = std::to_string(R) + "x" + std::to_string(C) + " f32";
  auto q_of = [&](int s, ckpt::ScaleScheme scheme) {
    kc::Quantize q;
    q.src = static_cast<const float*>(src[s].p);
    q.rows = R;
    q.cols = C;
    q.scheme = scheme;
    q.codes = codes[s].b();
    q.scales = sc[s].p;
    return q;
  };

  // Block: a few random 128x128 blocks recomputed on the host.
  {
    Row row;
    row.name = "quantize Block 128x128";
    row.shape = shape;
    row.calls = 1;
    row.in = n * 4;
    row.out = n + gb * 4;
    b.run(
        row, [&](int s) { kc::quantize(q_of(s, ckpt::ScaleScheme::Block), b.timer.stream); },
        [&] {
          std::mt19937_64 rng(11);
          const uint64_t gcols = (C + 127) / 128;
          int bad = 0, total = 0;
          for (int k = 0; k < 8; ++k) {
            const uint64_t bi = rng() % ((R + 127) / 128), bj = rng() % gcols;
            const uint64_t r0 = bi * 128, c0 = bj * 128, h = std::min<uint64_t>(128, R - r0), w = std::min<uint64_t>(128, C - c0);
            std::vector<float> x(h * w);
            std::vector<uint8_t> got(h * w);
            CK(cudaMemcpy2D(x.data(), w * 4, src[0].b() + (r0 * C + c0) * 4, C * 4, w * 4, h, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy2D(got.data(), w, codes[0].b() + r0 * C + c0, C, w, h, cudaMemcpyDeviceToHost));
            float amax = 0;
            for (float v : x) amax = std::max(amax, elem::finite_abs(v));
            const float scale = elem::fp8_block_scale(amax);
            ++total;
            if (elem::f2u(fetch<float>(sc[0].p, bi * gcols + bj)) != elem::f2u(scale)) { ++bad; continue; }
            for (uint64_t i = 0; i < x.size(); ++i)
              if (got[i] != elem::float_to_e4m3_saturate(x[i] / scale)) { ++bad; break; }
          }
          return verdict(bad, total, " blocks");
        });
  }
  // Mx: random 32-element groups recomputed on the host.
  {
    Row row;
    row.name = "quantize Mx 1x32";
    row.shape = shape;
    row.calls = 1;
    row.in = n * 4;
    row.out = n + gm;
    b.run(
        row, [&](int s) { kc::quantize(q_of(s, ckpt::ScaleScheme::Mx), b.timer.stream); },
        [&] {
          std::mt19937_64 rng(12);
          const uint64_t gpr = (C + 31) / 32;
          int bad = 0;
          const int total = 256;
          for (int k = 0; k < total; ++k) {
            const uint64_t r = rng() % R, g = rng() % gpr, c0 = g * 32, w = std::min<uint64_t>(32, C - c0);
            float x[32];
            uint8_t got[32];
            CK(cudaMemcpy(x, src[0].b() + (r * C + c0) * 4, w * 4, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(got, codes[0].b() + r * C + c0, w, cudaMemcpyDeviceToHost));
            float amax = 0;
            for (uint64_t i = 0; i < w; ++i) amax = std::max(amax, elem::finite_abs(x[i]));
            const uint8_t e = elem::mx_scale_byte(amax);
            bool ok = fetch<uint8_t>(sc[0].p, r * gpr + g) == e;
            for (uint64_t i = 0; ok && i < w; ++i) ok = got[i] == elem::float_to_e4m3_saturate(x[i] / elem::e8m0_to_float(e));
            if (!ok) ++bad;
          }
          return verdict(bad, total, " groups");
        });
  }
  // amax_finite over the whole matrix; checked on a 16M-element prefix against the host.
  {
    Row row;
    row.name = "amax_finite";
    row.shape = shape;
    row.calls = 1;
    row.in = n * 4;
    row.out = 4;
    b.run(
        row, [&](int s) { kc::amax_finite(static_cast<const float*>(src[s].p), n, static_cast<float*>(amax.p), b.timer.stream); },
        [&] {
          const uint64_t m = std::min<uint64_t>(n, 16ull << 20);
          kc::amax_finite(static_cast<const float*>(src[0].p), m, static_cast<float*>(amax.p), nullptr);
          CK(cudaDeviceSynchronize());
          std::vector<float> x(m);
          CK(cudaMemcpy(x.data(), src[0].p, m * 4, cudaMemcpyDeviceToHost));
          float want = 0;
          for (float v : x) want = std::max(want, elem::finite_abs(v));
          return elem::f2u(fetch<float>(amax.p, 0)) == elem::f2u(want) ? std::string("ok (16M prefix)")
                                                                       : std::string("MISMATCH (16M prefix)");
        });
  }
}

// ---- pinned host <-> device ----

struct HostBuf {
  void* p = nullptr;
  explicit HostBuf(uint64_t n) { CK(cudaHostAlloc(&p, n, cudaHostAllocDefault)); }
  ~HostBuf() { if (p) cudaFreeHost(p); }
};

std::string host_table() {
  const uint64_t n = kGiB;
  HostBuf h_in(n), h_out(n);
  DevBuf d_in(n), d_out(n);
  std::memset(h_in.p, 0x5A, n);
  std::memset(h_out.p, 0xA5, n);
  fill(d_out.p, n, Fill::Fp8, 200);
  Timer t;
  cudaStream_t s2 = nullptr;
  cudaEvent_t fork = nullptr, join = nullptr;
  CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  CK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  CK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  std::fprintf(stderr, "  pinned host <-> device ...\n");
  const double h2d = t.median_ms([&](int) { CK(cudaMemcpyAsync(d_in.p, h_in.p, n, cudaMemcpyHostToDevice, t.stream)); });
  const double d2h = t.median_ms([&](int) { CK(cudaMemcpyAsync(h_out.p, d_out.p, n, cudaMemcpyDeviceToHost, t.stream)); });
  const double both = t.median_ms([&](int) {
    CK(cudaEventRecord(fork, t.stream));
    CK(cudaStreamWaitEvent(s2, fork, 0));
    CK(cudaMemcpyAsync(d_in.p, h_in.p, n, cudaMemcpyHostToDevice, t.stream));
    CK(cudaMemcpyAsync(h_out.p, d_out.p, n, cudaMemcpyDeviceToHost, s2));
    CK(cudaEventRecord(join, s2));
    CK(cudaStreamWaitEvent(t.stream, join, 0));
  });
  CK(cudaEventDestroy(fork));
  CK(cudaEventDestroy(join));
  CK(cudaStreamDestroy(s2));
  std::string s = "| pinned copy (cudaHostAlloc, 1 GiB) | bytes | ms | GB/s |\n|---|---:|---:|---:|\n";
  s += "| H2D | 1 GiB | " + num("%.2f", h2d) + " | " + num("%.1f", gbps(n, h2d)) + " |\n";
  s += "| D2H | 1 GiB | " + num("%.2f", d2h) + " | " + num("%.1f", gbps(n, d2h)) + " |\n";
  s += "| H2D + D2H at once (two streams) | 2 GiB | " + num("%.2f", both) + " | " + num("%.1f", gbps(2 * n, both)) +
       " total (" + num("%.1f", gbps(n, both)) + " each way) |\n";
  return s;
}

std::string kernel_table(const std::vector<Row>& rows) {
  std::string s =
      "| kernel | shape | calls | in MB | out MB | ms | GB/s | memcpy ms | memcpy GB/s | ratio | check |\n"
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
  for (const Row& r : rows) {
    const uint64_t moved = r.in + r.out;
    const double ratio = r.copy_ms / r.ms;  // equal bytes: the ratio of rates
    s += "| " + r.name + " | " + r.shape + " | " + std::to_string(r.calls) + " | " + num("%.0f", r.in / 1e6) + " | " +
         num("%.0f", r.out / 1e6) + " | " + num("%.3f", r.ms) + " | " + num("%.0f", gbps(moved, r.ms)) + " | " +
         num("%.3f", r.copy_ms) + " | " + num("%.0f", gbps(moved, r.copy_ms)) + " | " + num("%.2f", ratio) +
         (ratio < 0.70 ? " (<0.70)" : "") + " | " + r.check + " |\n";
  }
  return s;
}

int run_all(const char* report) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  CK(cudaSetDevice(0));
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  int runtime = 0, driver = 0;
  CK(cudaRuntimeGetVersion(&runtime));
  CK(cudaDriverGetVersion(&driver));

  std::string out = "# ckptconv CUDA kernels\n\n";
  out += std::string("Device 0: ") + prop.name + ", sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ", " +
         std::to_string(prop.multiProcessorCount) + " SMs, " + num("%.1f", prop.totalGlobalMem / double(kGiB)) +
         " GiB, L2 " + num("%.0f", prop.l2CacheSize / 1048576.0) + " MiB; runtime " + std::to_string(runtime) +
         ", driver " + std::to_string(driver) + ".\n";
  out += "Median of " + std::to_string(kRepeats) + " event-timed runs after " + std::to_string(kWarmup) +
         " warm-ups, alternating two input/output sets. GB/s counts input + output bytes (scales included); "
         "memcpy is a device-to-device cudaMemcpyAsync of (in + out) / 2 bytes, read + write counted; "
         "ratio = kernel GB/s / memcpy GB/s (target >= 0.70). check: output bits at random positions against "
         "the CPU's element arithmetic.\n\n";

  Bench b;
  std::fprintf(stderr, "ckpt_bench_cuda on %s:\n", prop.name);
  // MiniMax-M2: hidden 3072, moe inter 1536; a 16384 x 7168 (DeepSeek-V3-sized) matrix, x5.
  case_fp8_rows(b, "(a) fp8->bf16 block 128x128", 5 * 16384, 7168, false);
  case_fp8_experts(b, 128, 3072, 1536);
  case_fp8_transpose_big(b, 24576, 24576);
  case_fp8_rows(b, "(c) mxfp8->bf16 1x32 U8", 5 * 16384, 7168, true);
  case_cast(b, "(d) bf16->bf16 transpose, one matrix", 24576, 24576, DType::BF16, DType::BF16, true);
  case_bf16_experts_out(b, 128, 3072, 1536);
  case_cast(b, "(e) bf16->f32 cast", 36864, 8192, DType::BF16, DType::F32, false);
  case_quantize(b, 32768, 32768);
  out += kernel_table(b.rows) + "\n" + host_table();

  std::fputs(out.c_str(), stdout);
  std::fflush(stdout);
  if (report) {
    FILE* f = std::fopen(report, "w");
    if (!f || std::fputs(out.c_str(), f) < 0 || std::fclose(f) != 0) {
      std::fprintf(stderr, "ckpt_bench_cuda: cannot write %s\n", report);
      return 1;
    }
  }
  if (b.failed) {
    std::fprintf(stderr, "ckpt_bench_cuda: some kernel outputs differ from the CPU's arithmetic (see check)\n");
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run_all(argc > 1 ? argv[1] : nullptr);
  } catch (const std::exception& e) {  // ckpt::Error from a kernel launch
    std::fprintf(stderr, "ckpt_bench_cuda: %s\n", e.what());
    return 1;
  }
}
