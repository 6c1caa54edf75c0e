// The plan (names, drops, byte counts, shards, offsets), pipeline sizing under a memory budget,
// and execution of tensors that are split into many work items — whole rows, and slices of rows
// that start mid scale-block — against values computed from the scheme definitions.
#include <catch2/catch.hpp>

#include <cstring>
#include <mutex>
#include <random>

#include "formats/checkpoint.h"
#include "formats/error.h"
#include "pipeline/convert.h"
#include "pipeline/executor.h"
#include "pipeline/plan.h"
#include "tests/support.h"
#include "transforms/fp8.h"

using namespace ckpt;
using test::TensorSpec;
namespace fs = std::filesystem;

namespace {

std::string random_fp8(uint64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) {
    c = static_cast<char>(rng());
    if ((c & 0x7F) == 0x7F) c = 0x3C;  // no NaN codes: the comparison below is on plain values
  }
  return s;
}

// Keeps a shard's bytes in memory and notes, in arrival order across all shards, which shard
// each write went to.
class RecordingSink final : public ShardSink {
 public:
  RecordingSink(uint32_t shard, uint64_t size, std::vector<uint32_t>& order, std::mutex& mu)
      : shard_(shard), bytes_(size, '\0'), order_(order), mu_(mu) {}
  void write(uint64_t offset, const void* data, uint64_t len) const override {
    std::lock_guard lock(mu_);
    order_.push_back(shard_);
    std::memcpy(bytes_.data() + offset, data, len);
  }
  void commit() override {}
  void keep() override {}
  const std::string& bytes() const { return bytes_; }

 private:
  uint32_t shard_;
  mutable std::string bytes_;
  std::vector<uint32_t>& order_;
  std::mutex& mu_;
};

}  // namespace

TEST_CASE("the plan of a dequant conversion", "[pipeline]") {
  test::TempDir dir;
  test::write_safetensors(dir / "model.safetensors", {
      {"a.weight", DType::F8_E4M3, {2, 3}, std::string(6, '\x38')},
      {"a.weight_scale_inv", DType::F32, {}, test::le_bytes<float>({0.5f})},
      {"a.activation_scale", DType::F32, {}, test::le_bytes<float>({1.0f})},
      {"a.input_scale", DType::F32, {}, test::le_bytes<float>({1.0f})},
      {"norm.weight", DType::BF16, {4}, std::string(8, '\x01')},
      {"orphan.weight_scale_inv", DType::F32, {1}, test::le_bytes<float>({2.0f})},
  });
  const Checkpoint ck = Checkpoint::open(dir.path());
  const Plan plan = make_plan(ck, PlanOptions{Direction::Dequant, OutType::F32, 5'000'000'000});
  REQUIRE(plan.tensors.size() == 3);
  CHECK(plan.tensors[0].out.name == "a.weight");
  CHECK(plan.tensors[0].out.dtype == DType::F32);
  CHECK(plan.tensors[0].nbytes == 24);
  CHECK(plan.tensors[0].dequantizes());
  CHECK(!plan.tensors[0].is_copy());
  CHECK(plan.tensors[0].pieces[0].scheme.kind == ScaleScheme::PerTensor);
  CHECK(plan.tensors[1].out.name == "norm.weight");
  CHECK(plan.tensors[1].is_copy());
  // A scale whose weight does not exist is not consumed by anything: it passes through.
  CHECK(plan.tensors[2].out.name == "orphan.weight_scale_inv");
  CHECK(plan.dropped == std::vector<std::string>{"a.weight_scale_inv", "a.activation_scale", "a.input_scale"});
  CHECK(plan.dequantized == 1);
  // Read: 6 (weight) + 4 (its scale) + 8 (norm) + 4 (orphan); the siblings are never read.
  CHECK(plan.input_bytes == 22);
  CHECK(plan.output_bytes == 24 + 8 + 4);
  REQUIRE(plan.shards.size() == 1);
  CHECK(plan.shards[0].file_name == "model.safetensors");
  CHECK(plan.tensors[1].offset == plan.shards[0].data_start + 24);
}

TEST_CASE("shards are filled in order up to the maximum", "[pipeline]") {
  Plan plan;
  for (uint64_t n : {10, 10, 10, 25, 5}) {
    PlannedTensor t;
    t.out = {"t" + std::to_string(plan.tensors.size()), DType::U8, {n}};
    t.nbytes = n;
    plan.tensors.push_back(t);
  }
  assign_shards(plan, 20);
  // 10+10 fit; the third 10 opens a new shard; 25 is alone (larger than the maximum); then 5.
  REQUIRE(plan.shards.size() == 4);
  CHECK(plan.shards[0].tensors.size() == 2);
  CHECK(plan.shards[1].tensors.size() == 1);
  CHECK(plan.shards[2].tensors[0].name == "t3");
  CHECK(plan.shards[3].tensors[0].name == "t4");
  CHECK(plan.shards[1].file_name == "model-00002-of-00004.safetensors");
  CHECK(plan.tensors[1].shard == 0);
  CHECK(plan.tensors[1].offset == plan.shards[0].data_start + 10);
  CHECK(plan.tensors[2].shard == 1);
  CHECK(plan.tensors[2].offset == plan.shards[1].data_start);
}

TEST_CASE("sizes on the command line", "[pipeline]") {
  CHECK(parse_size("5GB", "x") == 5'000'000'000ull);
  CHECK(parse_size("512MiB", "x") == 512ull << 20);
  CHECK(parse_size("1.5G", "x") == 1'500'000'000ull);
  CHECK(parse_size("4096", "x") == 4096);
  CHECK(parse_size("2kib", "x") == 2048);
  for (const char* bad : {"", "GB", "5XB", "-1", "0", "1.2.3GB", "5 GB"}) {
    INFO(bad);
    try {
      parse_size(bad, "--max-shard-size");
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::Usage);
    }
  }
}

TEST_CASE("the memory budget bounds the bytes in flight", "[pipeline]") {
  uint64_t chunk = 0, items = 0;
  size_pipeline(1ull << 30, 2, chunk, items);
  CHECK(chunk == 16ull << 20);
  CHECK(items == 6);
  for (uint64_t budget : {4ull << 20, 8ull << 20, 64ull << 20, 256ull << 20, 1ull << 30, 16ull << 30}) {
    for (unsigned threads : {1u, 2u, 16u}) {
      size_pipeline(budget, threads, chunk, items);
      INFO("budget " << budget << " threads " << threads);
      CHECK(items >= 2);
      CHECK(chunk >= 1ull << 20);
      CHECK(chunk <= 16ull << 20);
      CHECK(2 * chunk * items <= budget);  // each item holds one output chunk and at most as much input
    }
  }
}

TEST_CASE("tensors split into many work items convert exactly", "[pipeline]") {
  // With a 4 MiB budget a work item holds 1 MiB of output (524288 bf16 elements): the per-tensor
  // rows below (1,500,001 columns) and the MXFP8 rows (1,200,003 columns) are sliced mid-row and
  // mid scale-block; the block-128 weight is cut into whole rows.
  const uint64_t pt_cols = 1'500'001, mx_cols = 1'200'003, mx_grid = (mx_cols + 31) / 32;
  std::string mx_scales(2 * mx_grid, '\0');
  for (uint64_t i = 0; i < mx_scales.size(); ++i) mx_scales[i] = static_cast<char>(117 + i % 20);
  std::vector<float> block_scales(8 * 8);
  for (size_t i = 0; i < block_scales.size(); ++i) block_scales[i] = 0.001f * static_cast<float>(i + 1);
  test::TempDir dir;
  const std::vector<TensorSpec> specs = {
      {"pt.weight", DType::F8_E4M3, {2, pt_cols}, random_fp8(2 * pt_cols, 1)},
      {"pt.weight_scale_inv", DType::BF16, {1}, test::le_bytes<uint16_t>({0x3E80})},  // 0.25
      {"mx.weight", DType::F8_E4M3, {2, mx_cols}, random_fp8(2 * mx_cols, 2)},
      {"mx.weight_scale_inv", DType::U8, {2, mx_grid}, mx_scales},
      {"blk.weight", DType::F8_E5M2, {1000, 1000}, random_fp8(1'000'000, 3)},
      {"blk.weight_scale_inv", DType::F32, {8, 8}, test::le_bytes(block_scales)},
  };
  fs::create_directory(dir / "in");
  test::write_safetensors(dir / "in" / "model.safetensors", specs);

  ConvertOptions o;
  o.in = dir / "in";
  o.out = dir / "small";
  o.run.memory_budget = 4ull << 20;
  o.run.threads = 2;
  const ConvertSummary s = convert(o);
  CHECK(s.exec.chunk_bytes == 1ull << 20);
  CHECK(s.exec.items > 10);

  const Checkpoint out = Checkpoint::open(dir / "small");
  const auto check = [&](const std::string& name, const std::string& codes, Fp8 f, uint64_t cols,
                         const std::function<float(uint64_t, uint64_t)>& scale) {
    const TensorRef* t = out.find(name);
    REQUIRE(t != nullptr);
    REQUIRE(t->info->dtype == DType::BF16);
    const auto* got = reinterpret_cast<const uint16_t*>(t->file->data(*t->info));
    uint64_t bad = 0;
    for (uint64_t e = 0; e < codes.size(); ++e) {
      const float v = fp8_to_float(static_cast<uint8_t>(codes[e]), f) * scale(e / cols, e % cols);
      bad += got[e] != float_to_bf16(v);
    }
    INFO(name);
    CHECK(bad == 0);
  };
  check("pt.weight", specs[0].bytes, Fp8::E4M3, pt_cols, [](uint64_t, uint64_t) { return 0.25f; });
  check("mx.weight", specs[2].bytes, Fp8::E4M3, mx_cols, [&](uint64_t i, uint64_t j) {
    return std::ldexp(1.0f, static_cast<int>(static_cast<uint8_t>(mx_scales[i * mx_grid + j / 32])) - 127);
  });
  check("blk.weight", specs[4].bytes, Fp8::E5M2, 1000,
        [&](uint64_t i, uint64_t j) { return block_scales[(i / 128) * 8 + j / 128]; });

  // One thread and a large budget give the same bytes.
  o.out = dir / "large";
  o.run.memory_budget = 1ull << 30;
  o.run.threads = 1;
  convert(o);
  CHECK(test::read_bytes(dir / "large" / "model.safetensors") == test::read_bytes(dir / "small" / "model.safetensors"));
}

TEST_CASE("errors known from headers stop the run before any output exists", "[pipeline]") {
  test::TempDir dir;
  fs::create_directory(dir / "in");
  test::write_safetensors(dir / "in" / "model.safetensors", {
      {"ok.weight", DType::F8_E4M3, {2, 2}, std::string(4, '\x38')},
      {"ok.weight_scale_inv", DType::F32, {}, test::le_bytes<float>({1.0f})},
      {"lonely.weight", DType::F8_E4M3, {2, 2}, std::string(4, '\x38')},
  });
  ConvertOptions o;
  o.in = dir / "in";
  o.out = dir / "out";
  try {
    convert(o);
    FAIL("an FP8 weight without a scale was converted");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::InvalidInput);
    CHECK_THAT(e.what(), Catch::Contains("'lonely.weight'") && Catch::Contains("lonely.weight_scale_inv"));
  }
  CHECK(!fs::exists(dir / "out"));
}

TEST_CASE("with two threads, items are dealt from two shards at a time", "[pipeline]") {
  // Writes into one file queue on its inode lock: the executor deals items round-robin from as
  // many shards as it has threads. 8 tensors of 3 MiB, two per 6.5 MB shard: 6 items of 1 MiB
  // per shard, 2 in flight at this budget.
  test::TempDir dir;
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 8; ++i) {
    std::string b(3u << 20, '\0');
    std::mt19937 rng(static_cast<uint32_t>(i));
    for (auto& c : b) c = static_cast<char>(rng());
    specs.push_back({"t" + std::to_string(i) + ".weight", DType::BF16, {3u << 19}, b});
  }
  test::write_safetensors(dir / "model.safetensors", specs);
  const Checkpoint ck = Checkpoint::open(dir.path());
  const Plan plan = make_plan(ck, PlanOptions{Direction::Dequant, OutType::BF16, 6'500'000});
  REQUIRE(plan.shards.size() == 4);

  const auto run = [&](unsigned threads, std::vector<uint32_t>& order) {
    std::mutex mu;
    std::vector<std::unique_ptr<ShardSink>> sinks;
    for (uint32_t k = 0; k < plan.shards.size(); ++k)
      sinks.push_back(std::make_unique<RecordingSink>(k, plan.shards[k].file_size, order, mu));
    ExecOptions eo;
    eo.threads = threads;
    eo.memory_budget = 4ull << 20;
    ShardFileSink files(plan, sinks);
    const ExecStats st = execute(plan, files, eo);
    CHECK(st.chunk_bytes == 1ull << 20);
    std::vector<std::string> out;
    for (const auto& s : sinks) out.push_back(static_cast<const RecordingSink&>(*s).bytes());
    return out;
  };
  std::vector<uint32_t> one, two;
  const auto serial = run(1, one);
  const auto dealt = run(2, two);
  REQUIRE(two.size() == 24);
  CHECK(dealt == serial);
  for (size_t i = 0; i < 8; ++i) {  // every input byte where the plan put it
    const PlannedTensor& t = plan.tensors[i];
    CHECK(serial[t.shard].substr(t.offset, t.nbytes) == specs[i].bytes);
  }
  // Shards 0 and 1 are written at the same time, then 2 and 3: in plan order the first six
  // writes would all (but for one item in flight) go to shard 0; dealt, they alternate. And no
  // write of the second pair comes before the first pair's 12 items have been dealt.
  const auto count = [&](uint32_t k, size_t n) { return std::count(two.begin(), two.begin() + n, k); };
  CHECK(count(0, 6) >= 2);
  CHECK(count(1, 6) >= 2);
  const auto first = [&](uint32_t k) { return std::find(two.begin(), two.end(), k) - two.begin(); };
  CHECK(first(2) >= 12 - 2);
}
