// How inputs are read: `--io pread` must give the same bytes as `--io mmap` for every kind of
// work item (copies, row slices, transposed expert bands, narrow column bands, FP8 export that
// reads other tensors), and an input that changes under a conversion — truncated (SIGBUS on the
// map), rewritten in place, or replaced — must end it with an InvalidInput error naming the
// file, never a crash and never a committed output.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <random>

#include "formats/checkpoint.h"
#include "formats/error.h"
#include "pipeline/convert.h"
#include "pipeline/executor.h"
#include "pipeline/plan.h"
#include "pipeline/produce.h"
#include "pipeline/synth.h"
#include "tests/support.h"

using namespace ckpt;
namespace fs = std::filesystem;

namespace {

void synth_into(const std::string& family, const fs::path& out, uint64_t hidden, uint64_t inter, uint32_t shards) {
  SynthOptions s;
  s.family = family;
  s.out = out;
  s.layers = 1;
  s.experts = 2;
  s.hidden = hidden;
  s.inter = inter;
  s.shards = shards;
  synth(s);
}

// Every file of `dir`, name and bytes.
std::vector<std::pair<std::string, std::string>> contents(const fs::path& dir) {
  std::vector<std::pair<std::string, std::string>> files;
  for (const auto& name : test::listing(dir)) files.emplace_back(name, test::read_bytes(dir / name));
  return files;
}

ConvertSummary run(const fs::path& in, const fs::path& out, Direction d, IoMode io, uint64_t budget,
                   QuantizeMode q = QuantizeMode::None, unsigned threads = 2) {
  ConvertOptions o;
  o.in = in;
  o.out = out;
  o.plan.direction = d;
  o.plan.quantize = q;
  o.run.io = io;
  o.run.memory_budget = budget;
  o.run.threads = threads;
  return convert(o);
}

}  // namespace

TEST_CASE("io: pread gives the bytes mmap gives, in every direction", "[io]") {
  test::TempDir dir;
  // 1024-wide experts make 2 MiB bf16 slots: with a 4 MiB budget (1 MiB items) each expert is cut
  // into bands of rows, so --to hf reads narrow column bands of the grouped tensors row by row.
  for (const std::string family : {"minimax_m2", "minimax_m3", "deepseek_v3", "mistral3_vlm"}) {
    INFO(family);
    const fs::path hf = dir / (family + "-hf");
    synth_into(family, hf, 1024, 1024, 3);
    const fs::path native = dir / (family + "-native");
    run(hf, native, Direction::Native, IoMode::Mmap, 1ull << 30);
    struct Job {
      fs::path in;
      Direction d;
      QuantizeMode q;
      std::string tag;
    };
    for (const Job& j : {Job{hf, Direction::Dequant, QuantizeMode::None, "dequant"},
                         Job{hf, Direction::Native, QuantizeMode::None, "native"},
                         Job{native, Direction::Hf, QuantizeMode::None, "hf"},
                         Job{native, Direction::Hf, QuantizeMode::Real, "hf-real"}}) {
      INFO(j.tag);
      const fs::path a = dir / (family + j.tag + "-mmap"), b = dir / (family + j.tag + "-pread");
      run(j.in, a, j.d, IoMode::Mmap, 1ull << 30, j.q);
      const ConvertSummary s = run(j.in, b, j.d, IoMode::Pread, 4ull << 20, j.q);
      CHECK(s.exec.items > 8);
      CHECK(s.exec.bytes_read >= s.input_bytes);  // every input byte came through pread
      CHECK(contents(a) == contents(b));
    }
  }
}

TEST_CASE("io: rows two items need are read once (gate and up halves of fused experts)", "[io]") {
  test::TempDir dir;
  for (const std::string family : {"minimax_m2", "deepseek_v3"}) {
    INFO(family);
    const fs::path hf = dir / (family + "-hf"), native = dir / (family + "-native");
    synth_into(family, hf, 256, 256, 2);
    run(hf, native, Direction::Native, IoMode::Mmap, 1ull << 30);
    // Whole expert slots per item: the gate and the up items each read every row of the fused
    // tensor (half of each row, so whole rows are read) — the second takes the first's copy.
    const ConvertSummary s = run(native, dir / (family + "-back"), Direction::Hf, IoMode::Pread, 1ull << 30);
    INFO("read " << s.exec.bytes_read << " of " << s.input_bytes);
    CHECK(s.exec.bytes_read >= s.input_bytes);
    CHECK(s.exec.bytes_read <= s.input_bytes + s.input_bytes / 50);
  }
}

TEST_CASE("io: a per-tensor FP8 export quantizes alike whatever the amax chunking", "[io]") {
  // Regression: the per-tensor amax streamed the tensor through the buffer that already held the
  // item's values, so a tensor larger than one amax chunk got the last chunk's codes in its first
  // quarter. A 4 MiB budget makes 256K-element amax chunks; a 1024×1024 weight spans four. The
  // weight gets random values so that its quarters differ.
  test::TempDir dir;
  synth_into("mistral3_vlm", dir / "hf", 1024, 1024, 1);
  run(dir / "hf", dir / "native", Direction::Native, IoMode::Mmap, 1ull << 30);
  {
    const Checkpoint ck = Checkpoint::open(dir / "native");
    const TensorRef* t = ck.find("model.language_model.layers.0.self_attn.q_proj.weight");
    REQUIRE(t != nullptr);
    REQUIRE(t->info->nbytes() == 2u << 20);
    std::mt19937 rng(7);
    std::string values(t->info->nbytes(), '\0');
    for (size_t i = 0; i < values.size(); i += 2) {
      values[i] = static_cast<char>(rng());
      values[i + 1] = static_cast<char>(0x3C + rng() % 8);  // finite bf16 around 2^-7 .. 2^1
    }
    std::string file = test::read_bytes(t->file->path());
    file.replace(t->file->file_offset(*t->info), values.size(), values);
    const fs::path path = t->file->path();
    fs::remove(path);  // the map of `ck` keeps the old inode
    test::write_bytes(path, file);
  }
  // The amax pass (64K-element row groups) spans the weight many times; the weight is produced
  // whole, and as four items of which the last computes the amax (a fresh cache each time).
  const Checkpoint ck = Checkpoint::open(dir / "native");
  PlanOptions po;
  po.direction = Direction::Hf;
  po.quantize = QuantizeMode::Real;
  const Plan plan = make_plan(ck, po);
  size_t w = 0;
  while (w < plan.tensors.size() && plan.tensors[w].out.name != "language_model.model.layers.0.self_attn.q_proj.weight") ++w;
  REQUIRE(w < plan.tensors.size());
  const uint64_t n = plan.tensors[w].rows * plan.tensors[w].row_len;
  REQUIRE(n == 1u << 20);
  std::vector<uint8_t> chunked(n), whole(n);
  float scale_whole = 0, scale_chunked = 0;
  Scratch s1, s2;
  AmaxCache a1(plan.tensors.size(), IoMode::Mmap), a2(plan.tensors.size(), IoMode::Mmap);
  for (uint64_t q = 4; q-- > 0;) {
    const ScaleRange r = produce_quantized(plan, w, q * n / 4, (q + 1) * n / 4, chunked.data() + q * n / 4,
                                           reinterpret_cast<uint8_t*>(&scale_chunked), s1, a1, ItemInputs{});
    CHECK(r.last - r.first == (q == 0 ? 1u : 0u));  // the item that starts the tensor writes its scale
  }
  produce_quantized(plan, w, 0, n, whole.data(), reinterpret_cast<uint8_t*>(&scale_whole), s2, a2, ItemInputs{});
  CHECK(scale_whole > 0);
  CHECK(scale_chunked == scale_whole);
  CHECK(chunked == whole);
}

namespace {

// Plans a conversion of `in`, lets `mutate` change the input, then executes the plan: what a
// conversion sees when a file changes after planning.
Error execute_after(const fs::path& in, IoMode io, const std::function<void()>& mutate) {
  const Checkpoint ck = Checkpoint::open(in);
  const Plan plan = make_plan(ck, PlanOptions{});
  NullTensorSink sink;
  mutate();
  ExecOptions eo;
  eo.io = io;
  eo.threads = 2;
  eo.memory_budget = 4ull << 20;
  try {
    execute(plan, sink, eo);
  } catch (const Error& e) {
    return e;
  }
  return Error(ErrorKind::Internal, "no error");
}

}  // namespace

TEST_CASE("io: an input truncated after planning is an error naming it, not a SIGBUS", "[io]") {
  MappedFile::install_sigbus_guard();  // what the command line does, and a library caller may
  test::TempDir dir;
  synth_into("minimax_m2", dir / "in", 1024, 1024, 2);
  const fs::path shard = dir / "in" / "model-00002-of-00002.safetensors";
  const auto size = fs::file_size(shard);
  for (IoMode io : {IoMode::Mmap, IoMode::Pread}) {
    INFO("io " << static_cast<int>(io));
    const std::string saved = test::read_bytes(shard);
    const Error e = execute_after(dir / "in", io, [&] { fs::resize_file(shard, size / 3); });
    CHECK(e.kind() == ErrorKind::InvalidInput);
    CHECK_THAT(e.what(), Catch::Contains(shard.string()) && Catch::Contains("truncated"));
    test::write_bytes(shard, saved);
  }
}

TEST_CASE("io: an input rewritten or replaced after planning is an error naming it", "[io]") {
  test::TempDir dir;
  synth_into("minimax_m2", dir / "in", 256, 128, 2);
  const fs::path shard = dir / "in" / "model-00001-of-00002.safetensors";
  const std::string bytes = test::read_bytes(shard);
  for (IoMode io : {IoMode::Mmap, IoMode::Pread}) {
    INFO("io " << static_cast<int>(io));
    // Same size, new contents (a copy over it): only the modification time tells.
    Error e = execute_after(dir / "in", io, [&] {
      ::usleep(20'000);  // coarse filesystem clocks
      std::string changed = bytes;
      changed.back() ^= 1;
      test::write_bytes(shard, changed);
    });
    CHECK(e.kind() == ErrorKind::InvalidInput);
    CHECK_THAT(e.what(), Catch::Contains(shard.string()) && Catch::Contains("changed"));
    // A new file renamed over the path: the map still reads the old one, but the output would
    // not be a conversion of what the path now holds.
    e = execute_after(dir / "in", io, [&] {
      test::write_bytes(dir / "new", bytes);
      fs::rename(dir / "new", shard);
    });
    CHECK(e.kind() == ErrorKind::InvalidInput);
    CHECK_THAT(e.what(), Catch::Contains(shard.string()) && Catch::Contains("replaced"));
  }
}

TEST_CASE("io: an untouched input converts under both modes after the checks", "[io]") {
  test::TempDir dir;
  synth_into("minimax_m2", dir / "in", 256, 128, 2);
  for (IoMode io : {IoMode::Mmap, IoMode::Pread}) {
    const Error e = execute_after(dir / "in", io, [] {});
    CHECK(e.kind() == ErrorKind::Internal);  // "no error"
    CHECK(std::string(e.what()) == "no error");
  }
}
