// Micro-benchmarks of the conversion kernels, in bytes of output per second, next to memcpy of
// the same output bytes: FP8 -> BF16/F16/F32 for the three scale schemes on every ISA this CPU
// has, the 16-bit tile transpose, and the group node's fused dequantize-transpose of one expert
// (MiniMax-M2 sized, [1536, 4096] FP8 with block-128 scales) into its slot.
//
//   build/ckpt_bench_kernels [--benchmark_filter=...] [--benchmark_repetitions=5]
#include <benchmark/benchmark.h>
#include <unistd.h>

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

void BM_memcpy(benchmark::State& st) {
  const size_t bytes = kRows * kCols * 2;
  std::vector<uint8_t> a(bytes, 1), b(bytes);
  for (auto _ : st) {
    std::memcpy(b.data(), a.data(), bytes);
    benchmark::DoNotOptimize(b.data());
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * bytes));
}

// One scheme is a block width along the row: the whole row (per-tensor), 128 or 32 (MXFP8).
void BM_dequant(benchmark::State& st, Isa isa, OutType out, size_t block) {
  const KernelTable* k = kernels_for(isa);
  const auto src = fp8_codes(kRows * kCols);
  const size_t es = out == OutType::F32 ? 4 : 2;
  std::vector<uint8_t> dst(kRows * kCols * es);
  std::vector<float> scales(kCols / block + 1, 0.0123f);
  const DequantRowFn fn = k->get(Fp8::E4M3, out);
  for (auto _ : st) {
    for (size_t r = 0; r < kRows; ++r)
      fn(src.data() + r * kCols, kCols, scales.data(), block, 0, dst.data() + r * kCols * es);
    benchmark::DoNotOptimize(dst.data());
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * dst.size()));
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
  benchmark::RegisterBenchmark("memcpy/8MiB", BM_memcpy);
  for (Isa isa : supported_isas())
    for (auto [oname, out] : {std::pair{"bf16", OutType::BF16}, {"f16", OutType::F16}, {"f32", OutType::F32}})
      for (auto [sname, block] : {std::pair{"per_tensor", kCols}, {"block128", size_t{128}}, {"mxfp8", size_t{32}}})
        benchmark::RegisterBenchmark(
            (std::string("dequant/") + std::string(isa_name(isa)) + "/" + sname + "/" + oname).c_str(),
            [=](benchmark::State& st) { BM_dequant(st, isa, out, block); });
  benchmark::RegisterBenchmark("transpose_u16/32x3072", BM_transpose_u16);
  benchmark::RegisterBenchmark("group_expert/1536x4096_fp8_to_bf16", BM_group_expert);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
