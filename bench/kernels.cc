// Micro-benchmarks of the conversion kernels, in bytes of output per second, next to memcpy of
// the same output bytes: FP8 -> BF16/F16/F32 for the three scale schemes on every ISA this CPU
// has, the 16-bit tile transpose, and the group node's fused dequantize-transpose of one expert
// (MiniMax-M2 sized, [1536, 4096] FP8 with block-128 scales) into its slot.
//
//   build/ckpt_bench_kernels [--benchmark_filter=...] [--benchmark_repetitions=5]
//
// Each dequant benchmark also times memcpy of its output bytes just before it runs and reports
// `memcpy` (bytes/s) and `pct_memcpy` (its own rate as a percentage of that), both in thread CPU
// time: on a shared machine the load drifts between benchmarks, so the ratio is taken from two
// measurements seconds apart rather than against a memcpy line printed minutes earlier.
#include <benchmark/benchmark.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "formats/safetensors.h"
#include "formats/writer.h"
#include "pipeline/produce.h"
#include "transforms/kernels.h"
#include "transforms/transpose.h"

namespace {

using namespace ckpt;

constexpr size_t kRows = 1024, kCols = 4096;  // 4 MiB of FP8 in, 8 MiB of BF16 out

std::vector<uint8_t> fp8_codes(size_t n) {
  std::mt19937 rng(1);
  std::vector<uint8_t> v(n);
  for (auto& c : v) c = static_cast<uint8_t>(rng() % 0x7E);  // finite codes
  return v;
}

double thread_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

void BM_memcpy(benchmark::State& st, size_t bytes) {
  std::vector<uint8_t> a(bytes, 1), b(bytes);
  for (auto _ : st) {
    std::memcpy(b.data(), a.data(), bytes);
    benchmark::DoNotOptimize(b.data());
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * bytes));
}

// Median memcpy rate over `bytes` (bytes/s of thread CPU time), from 15 copies after a warm-up.
double memcpy_rate(size_t bytes) {
  std::vector<uint8_t> a(bytes, 1), b(bytes, 2);
  std::vector<double> rate;
  for (int i = 0; i < 16; ++i) {
    const double t0 = thread_seconds();
    std::memcpy(b.data(), a.data(), bytes);
    benchmark::DoNotOptimize(b.data());
    if (i > 0) rate.push_back(static_cast<double>(bytes) / (thread_seconds() - t0));
  }
  std::nth_element(rate.begin(), rate.begin() + rate.size() / 2, rate.end());
  return rate[rate.size() / 2];
}

// Scale layouts as the pipeline passes them, row by row (`scales_of(r)` is row r's scales):
enum class Scheme {
  PerTensor,       // one scale for the whole tensor
  Block128,        // an [8, 32] grid of distinct DeepSeek-like scales, 2^-13 .. 2^-9: each band's 32 recur over its 128 rows
  Block128Unique,  // worst case for tables: every row's 32 block scales are new and never recur
  Mxfp8,           // e8m0 exponents 114 .. 118 (2^-13 .. 2^-9), random per 32-element block
};

std::vector<float> scale_grid(Scheme scheme) {
  std::mt19937 rng(7);
  const auto deepseek_like = [&] {
    return std::ldexp(1.0f + static_cast<float>(rng() % 1024) / 1024.0f, -13 + static_cast<int>(rng() % 4));
  };
  std::vector<float> g;
  switch (scheme) {
    case Scheme::PerTensor: g.assign(1, 2.4e-4f); break;
    case Scheme::Block128: g.resize(kRows / 128 * (kCols / 128)); break;
    case Scheme::Block128Unique: g.resize(kRows * (kCols / 128)); break;
    case Scheme::Mxfp8: g.resize(kRows * (kCols / 32)); break;
  }
  for (size_t i = 0; i < g.size(); ++i)
    g[i] = scheme == Scheme::Mxfp8            ? e8m0_to_float(static_cast<uint8_t>(114 + rng() % 5))
           : scheme == Scheme::Block128Unique ? std::ldexp(1.0f + static_cast<float>(i) / 32768.0f, -13 + int(i % 4))
                                              : deepseek_like();
  return g;
}

void BM_dequant(benchmark::State& st, Isa isa, OutType out, Scheme scheme) {
  const KernelTable* k = kernels_for(isa);
  const auto src = fp8_codes(kRows * kCols);
  const size_t es = out == OutType::F32 ? 4 : 2;
  std::vector<uint8_t> dst(kRows * kCols * es);
  const std::vector<float> grid = scale_grid(scheme);
  const size_t block = scheme == Scheme::PerTensor ? kCols : scheme == Scheme::Mxfp8 ? 32 : 128;
  const size_t per_row = kCols / block;
  const auto scales_of = [&](size_t r) {
    switch (scheme) {
      case Scheme::PerTensor: return grid.data();
      case Scheme::Block128: return grid.data() + r / 128 * per_row;
      default: return grid.data() + r * per_row;
    }
  };
  const DequantRowFn fn = k->get(Fp8::E4M3, out);
  const double memcpy_bps = memcpy_rate(dst.size());
  const double t0 = thread_seconds();
  for (auto _ : st) {
    for (size_t r = 0; r < kRows; ++r)
      fn(src.data() + r * kCols, kCols, scales_of(r), block, 0, dst.data() + r * kCols * es);
    benchmark::DoNotOptimize(dst.data());
  }
  const double own_bps = static_cast<double>(st.iterations() * dst.size()) / (thread_seconds() - t0);
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * dst.size()));
  st.counters["memcpy"] = benchmark::Counter(memcpy_bps, benchmark::Counter::kDefaults, benchmark::Counter::kIs1024);
  st.counters["pct_memcpy"] = 100.0 * own_bps / memcpy_bps;
}

void BM_transpose_u16(benchmark::State& st) {
  const size_t rows = 32, cols = 3072;  // one tile of the group node
  std::vector<uint16_t> src(rows * cols, 7), dst(rows * cols);
  for (auto _ : st) {
    transpose_tile(src.data(), rows, cols, cols, dst.data(), rows, 2);
    benchmark::DoNotOptimize(dst.data());
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * dst.size() * 2));
}

// The group node on one expert: gate [1536, 4096] FP8 with a [12, 32] F32 block grid,
// dequantized and transposed into a [4096, 1536] BF16 slot, as the executor's items do it.
void BM_group_expert(benchmark::State& st) {
  const uint64_t inter = 1536, dim = 4096;
  const auto dir = std::filesystem::temp_directory_path() / ("ckpt-bench-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::vector<OutTensor> outs = {{"w", DType::F8_E4M3, {inter, dim}}, {"s", DType::F32, {12, 32}}};
  const ShardLayout layout = layout_shard("e.safetensors", outs);
  {
    ShardWriter w(dir, layout);
    const auto codes = fp8_codes(inter * dim);
    const std::vector<float> grid(12 * 32, 0.0123f);
    w.write(layout.offsets[0], codes.data(), codes.size());
    w.write(layout.offsets[1], grid.data(), grid.size() * 4);
    w.commit();
  }
  const SafetensorsFile file(dir / "e.safetensors");
  PlannedTensor t;
  t.out = {"slot", DType::BF16, {dim, inter}};
  t.rows = dim;
  t.row_len = inter;
  Piece p;
  p.input = {&file, file.find("w")};
  p.scale = {&file, file.find("s")};
  p.scheme = detect_scheme(*p.input.info, *p.scale.info, BlockSize{}, "bench");
  p.in_cols = dim;
  p.rows = inter;
  p.cols = dim;
  p.transpose = true;
  t.pieces.push_back(p);
  std::vector<uint8_t> out(dim * inter * 2);
  Scratch scratch;
  const uint64_t item_rows = (16ull << 20) / (inter * 2);  // the executor's 16 MiB items
  for (auto _ : st) {
    for (uint64_t r = 0; r < dim; r += item_rows) {
      const uint64_t r1 = std::min(dim, r + item_rows);
      produce(t, DType::BF16, r * inter, r1 * inter, out.data() + r * inter * 2, scratch, ItemInputs{});
    }
    benchmark::DoNotOptimize(out.data());
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * out.size()));
  std::filesystem::remove_all(dir);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::RegisterBenchmark("memcpy/8MiB", [](benchmark::State& st) { BM_memcpy(st, kRows * kCols * 2); });
  benchmark::RegisterBenchmark("memcpy/16MiB", [](benchmark::State& st) { BM_memcpy(st, kRows * kCols * 4); });
  for (Isa isa : supported_isas())
    for (auto [oname, out] : {std::pair{"bf16", OutType::BF16}, {"f16", OutType::F16}, {"f32", OutType::F32}})
      for (auto [sname, scheme] : {std::pair{"per_tensor", Scheme::PerTensor}, {"block128", Scheme::Block128},
                                   {"block128_unique", Scheme::Block128Unique}, {"mxfp8", Scheme::Mxfp8}})
        benchmark::RegisterBenchmark(
            (std::string("dequant/") + std::string(isa_name(isa)) + "/" + sname + "/" + oname).c_str(),
            [=](benchmark::State& st) { BM_dequant(st, isa, out, scheme); });
  benchmark::RegisterBenchmark("transpose_u16/32x3072", BM_transpose_u16);
  benchmark::RegisterBenchmark("group_expert/1536x4096_fp8_to_bf16", BM_group_expert);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
