// The public API (include/ckptconv/ckptconv.h) against the command line: every tensor a
// MemorySink assembles is byte-identical to the same tensor in `ckptconv convert`'s output, for
// import (grouped experts), FP8 export (scales delivered by their weights' items) and the
// all-ranks expert-parallel mode; a recording sink sees each tensor's bytes exactly once and one
// completion after them; selections deliver exactly what they name; errors arrive typed; a
// sink's own exception comes back unchanged.
#include <catch2/catch.hpp>

#include <cstdlib>

#include <ckptconv/ckptconv.h>
#include <fcntl.h>
#include <unistd.h>

#include <csignal>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "formats/checkpoint.h"
#include "support.h"

namespace fs = std::filesystem;
using ckptconv::Conversion;
using ckptconv::TensorDesc;

namespace {

void synth(const fs::path& dir, const std::string& family, const std::string& extra = "") {
  const auto r = ckpt::test::run_cli("synth --family " + family + " --out " + dir.string() +
                                     " --layers 2 --experts 4 --hidden 256 --inter 160 --shards 3 " + extra);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
}

void cli_convert(const fs::path& in, const fs::path& out, const std::string& args) {
  const auto r = ckpt::test::run_cli("convert --in " + in.string() + " --out " + out.string() + " " + args);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
}

// Every tensor of a checkpoint directory (one level of rank-NNNN subdirectories too), keyed by
// (subdir, name).
std::map<std::pair<std::string, std::string>, std::string> tensors_of(const fs::path& dir) {
  std::map<std::pair<std::string, std::string>, std::string> out;
  auto add = [&](const fs::path& d, const std::string& sub) {
    const auto ck = ckpt::Checkpoint::open(d);
    for (const auto& t : ck.tensors()) {
      const auto* p = t.file->data(*t.info);
      out[{sub, t.name()}] = std::string(reinterpret_cast<const char*>(p), t.info->nbytes());
    }
  };
  if (fs::exists(dir / "rank-0000")) {
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_directory()) add(e.path(), e.path().filename().string());
  } else {
    add(dir, "");
  }
  return out;
}

// Assembles every delivered tensor into a std::string through a MemorySink.
std::map<std::pair<std::string, std::string>, std::string> assemble(const Conversion& c,
                                                                    const ckptconv::Selection& sel = {}) {
  std::mutex mu;
  std::map<size_t, std::string> buffers;
  std::map<std::pair<std::string, std::string>, std::string> out;
  ckptconv::MemorySink sink(
      [&](const TensorDesc& t) -> void* {
        std::lock_guard lock(mu);
        auto& b = buffers[t.index];
        b.assign(t.nbytes, '\0');
        return b.data();
      },
      [&](const TensorDesc& t, void* data) {
        std::lock_guard lock(mu);
        CHECK(data == buffers[t.index].data());
        CHECK(out.emplace(std::make_pair(t.subdir, t.name), std::move(buffers[t.index])).second);
        buffers.erase(t.index);
      });
  c.execute(sink, sel);
  CHECK(buffers.empty());  // every allocated tensor was completed
  return out;
}

ckptconv::Options small_budget(ckptconv::Options o) {
  o.threads = 2;
  o.memory_budget = 4ull << 20;  // many items per tensor
  return o;
}

}  // namespace

TEST_CASE("a MemorySink receives the bytes `ckptconv convert` writes", "[api]") {
  ckpt::test::TempDir tmp;
  synth(tmp / "fp8", "minimax_m2");
  SECTION("HF FP8 -> native BF16, grouped experts") {
    cli_convert(tmp / "fp8", tmp / "cli", "--to native");
    ckptconv::Options o;
    o.to = ckptconv::Direction::Native;
    const auto c = Conversion::plan(tmp / "fp8", small_budget(o));
    const auto got = assemble(c);
    CHECK(got == tensors_of(tmp / "cli"));
    CHECK(got.size() == c.tensors().size());
    CHECK(c.summary().output_tensors == c.tensors().size());
    CHECK(c.find("model.layers.1.mlp.experts.gate_and_up_projs") != nullptr);
  }
  SECTION("native -> HF with real FP8 export") {
    cli_convert(tmp / "fp8", tmp / "native", "--to native");
    cli_convert(tmp / "native", tmp / "cli", "--to hf --quantize real");
    ckptconv::Options o;
    o.to = ckptconv::Direction::Hf;
    o.quantize = ckptconv::Quantize::Real;
    const auto c = Conversion::plan(tmp / "native", small_budget(o));
    CHECK(assemble(c) == tensors_of(tmp / "cli"));
    CHECK(c.summary().quantized > 0);
  }
  SECTION("every expert-parallel rank at once") {
    cli_convert(tmp / "fp8", tmp / "cli", "--to native --ep-size 3");
    ckptconv::Options o;
    o.to = ckptconv::Direction::Native;
    o.ep_size = 3;
    const auto c = Conversion::plan(tmp / "fp8", o);
    CHECK(assemble(c) == tensors_of(tmp / "cli"));
  }
  SECTION("Conversion::write is the command's output") {
    cli_convert(tmp / "fp8", tmp / "cli", "--to dequant");
    const auto c = Conversion::plan(tmp / "fp8");
    const auto w = c.write(tmp / "api");
    CHECK(tensors_of(tmp / "api") == tensors_of(tmp / "cli"));
    CHECK(ckpt::test::listing(tmp / "api") == ckpt::test::listing(tmp / "cli"));
    CHECK(w.shards == c.summary().shards);
    CHECK(w.output_bytes == c.summary().output_bytes);
  }
}

namespace {

// Records every byte range and completion, and checks the contract as they arrive.
class RecordingSink final : public ckptconv::TensorSink {
 public:
  void write(const TensorDesc& t, uint64_t offset, const void*, uint64_t len) override {
    std::lock_guard lock(mu_);
    if (completed_.count(t.index)) late_ = true;
    ranges_[t.index].emplace_back(offset, len);
  }
  void complete(const TensorDesc& t) override {
    std::lock_guard lock(mu_);
    ++completions_[t.index];
    completed_.insert(t.index);
  }
  std::map<size_t, std::vector<std::pair<uint64_t, uint64_t>>> ranges_;
  std::map<size_t, int> completions_;
  std::set<size_t> completed_;
  bool late_ = false;
  std::mutex mu_;
};

// The ranges tile [0, n) exactly: sorted, each starts where the previous ended.
bool tiles(std::vector<std::pair<uint64_t, uint64_t>> r, uint64_t n) {
  std::sort(r.begin(), r.end());
  uint64_t at = 0;
  for (const auto& [off, len] : r) {
    if (off != at || len == 0) return false;
    at += len;
  }
  return at == n;
}

}  // namespace

TEST_CASE("a sink gets each tensor's bytes exactly once, then one completion", "[api]") {
  ckpt::test::TempDir tmp;
  synth(tmp / "fp8", "deepseek_v3");
  ckptconv::Options o;
  o.to = ckptconv::Direction::Native;
  const auto c = Conversion::plan(tmp / "fp8", small_budget(o));
  RecordingSink sink;
  std::vector<ckptconv::Progress> seen;
  std::mutex mu;
  // Progress through the options: a fresh plan with a callback.
  auto with_progress = small_budget(o);
  with_progress.on_progress = [&](const ckptconv::Progress& p) {
    std::lock_guard lock(mu);
    seen.push_back(p);
  };
  const auto cp = Conversion::plan(tmp / "fp8", with_progress);
  const auto stats = cp.execute(sink);
  CHECK_FALSE(sink.late_);
  size_t multi = 0;
  for (const auto& t : cp.tensors()) {
    INFO(t.name);
    CHECK(sink.completions_[t.index] == 1);
    if (t.nbytes > 0) CHECK(tiles(sink.ranges_[t.index], t.nbytes));
    multi += sink.ranges_[t.index].size() > 1;
  }
  CHECK(multi > 0);  // the small budget cut some tensors into several ranges
  CHECK(stats.output_bytes == cp.summary().output_bytes);
  CHECK(stats.tensors == cp.tensors().size());
  REQUIRE_FALSE(seen.empty());
  CHECK(seen.back().done_bytes == seen.back().total_bytes);
  CHECK(seen.back().total_bytes == cp.summary().output_bytes);
  CHECK(c.tensors().size() == cp.tensors().size());
}

TEST_CASE("a selection delivers exactly the tensors it names", "[api]") {
  ckpt::test::TempDir tmp;
  synth(tmp / "fp8", "minimax_m2");
  cli_convert(tmp / "fp8", tmp / "native", "--to native");
  cli_convert(tmp / "native", tmp / "cli", "--to hf --quantize real");
  ckptconv::Options o;
  o.to = ckptconv::Direction::Hf;
  o.quantize = ckptconv::Quantize::Real;
  const auto c = Conversion::plan(tmp / "native", small_budget(o));
  const auto all = tensors_of(tmp / "cli");
  // A scale alone: its weight's items run, only the scale is delivered.
  const std::string scale = "model.layers.0.block_sparse_moe.experts.2.w1.weight_scale_inv";
  const std::string norm = "model.layers.1.input_layernorm.weight";
  const auto got = assemble(c, ckptconv::Selection::names(c, {scale, norm}));
  REQUIRE(got.size() == 2);
  CHECK(got.at({"", scale}) == all.at({"", scale}));
  CHECK(got.at({"", norm}) == all.at({"", norm}));
  // By shard: the tensors the written checkpoint puts in shard 0.
  const auto sel = ckptconv::Selection::shards(c, {0});
  size_t want = 0;
  for (const auto& t : c.tensors()) want += t.shard == 0;
  CHECK(sel.tensors.size() == want);
  CHECK(assemble(c, sel).size() == want);
  CHECK_THROWS_AS(ckptconv::Selection::names(c, {"no.such.tensor"}), ckptconv::Error);
}

TEST_CASE("errors arrive as typed values; a sink's exception comes back unchanged", "[api]") {
  ckpt::test::TempDir tmp;
  try {
    Conversion::plan(tmp / "missing");
    FAIL("planned a missing input");
  } catch (const ckptconv::Error& e) {
    CHECK(e.exit_code() >= 3);
    CHECK_THAT(e.what(), Catch::Contains("missing"));
  }
  synth(tmp / "fp8", "minimax_m2");
  ckptconv::Options bad;
  bad.family = "no_such_family";
  bad.to = ckptconv::Direction::Native;
  try {
    Conversion::plan(tmp / "fp8", bad);
    FAIL("planned with an unknown family");
  } catch (const ckptconv::Error& e) {
    CHECK(e.kind() == ckptconv::ErrorKind::Usage);
  }
  ckptconv::Options tiny;
  tiny.memory_budget = 1024;
  CHECK_THROWS_AS(Conversion::plan(tmp / "fp8", tiny), ckptconv::Error);

  struct Throwing final : ckptconv::TensorSink {
    void write(const TensorDesc&, uint64_t, const void*, uint64_t) override { throw std::logic_error("sink says no"); }
    void complete(const TensorDesc&) override {}
  } throwing;
  const auto c = Conversion::plan(tmp / "fp8");
  CHECK_THROWS_MATCHES(c.execute(throwing), std::logic_error, Catch::Message("sink says no"));

  CHECK(ckptconv::parse_direction("native") == ckptconv::Direction::Native);
  CHECK(ckptconv::parse_size("512MiB") == 512ull << 20);
  CHECK_THROWS_AS(ckptconv::parse_dtype("f8"), ckptconv::Error);
  CHECK(std::string(ckptconv::version()).find('.') != std::string::npos);
}

namespace {

// The process's SIGBUS handler (SIG_DFL, or a sanitizer's own where one runs the test).
void* sigbus_handler() {
  struct sigaction now {};
  sigaction(SIGBUS, nullptr, &now);
  return (now.sa_flags & SA_SIGINFO) ? reinterpret_cast<void*>(now.sa_sigaction)
                                     : reinterpret_cast<void*>(now.sa_handler);
}

}  // namespace

TEST_CASE("the library has no side effects its caller did not ask for", "[api]") {
  ckpt::test::TempDir tmp;
  synth(tmp / "fp8", "minimax_m2");
  void* const before = sigbus_handler();
  // stderr goes to a file for the run: the library must write nothing there.
  const fs::path err = tmp / "stderr";
  const int saved = dup(2);
  const int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  REQUIRE(fd >= 0);
  dup2(fd, 2);
  ckptconv::Options o;
  o.to = ckptconv::Direction::Native;
  o.on_progress = [](const ckptconv::Progress&) {};
  const auto c = Conversion::plan(tmp / "fp8", o);
  struct Null final : ckptconv::TensorSink {
    void write(const TensorDesc&, uint64_t, const void*, uint64_t) override {}
    void complete(const TensorDesc&) override {}
  } null;
  c.execute(null);
  c.write(tmp / "out");
  dup2(saved, 2);
  ::close(fd);
  ::close(saved);
  CHECK(ckpt::test::read_bytes(err).empty());
  CHECK(sigbus_handler() == before);  // mapped inputs, and no handler of ours
  o.guard_sigbus = true;
  Conversion::plan(tmp / "fp8", o);
  CHECK(sigbus_handler() != before);
}

TEST_CASE("a misspelt family is a usage error in every direction", "[api]") {
  ckpt::test::TempDir tmp;
  synth(tmp / "fp8", "minimax_m2");
  for (auto to : {ckptconv::Direction::Dequant, ckptconv::Direction::Native}) {
    ckptconv::Options o;
    o.to = to;
    o.family = "minimax_m9";
    try {
      Conversion::plan(tmp / "fp8", o);
      FAIL("planned with family minimax_m9");
    } catch (const ckptconv::Error& e) {
      CHECK(e.kind() == ckptconv::ErrorKind::Usage);
      CHECK_THAT(e.what(), Catch::Contains("minimax_m9"));
    }
  }
}

TEST_CASE("remote inputs take their options from Options::remote, never from the environment", "[api]") {
  ckptconv::Options o;
  o.remote.retries = 0;
  o.remote.timeout_s = 1;
  o.remote.aws_access_key_id = "AKIDEXAMPLE";
  o.remote.aws_secret_access_key = "never-in-a-message";
  o.remote.aws_endpoint_url = "http://127.0.0.1:1";  // nothing listens there
  for (const char* url : {"http://127.0.0.1:1/model/", "s3://bucket/model/"}) {
    INFO(url);
    try {
      (void)Conversion::plan(url, o);
      FAIL("planned a conversion of an unreachable URL");
    } catch (const ckptconv::Error& e) {
#if defined(CKPT_HAVE_CURL)
      CHECK(e.kind() == ckptconv::ErrorKind::Io);
      CHECK_THAT(e.what(), Catch::Contains("after 1 tries"));  // retries = 0 reached the client
#else
      CHECK(e.kind() == ckptconv::ErrorKind::Usage);  // this build reads local files only, and says so
#endif
      CHECK_THAT(e.what(), !Catch::Contains("never-in-a-message"));
    }
  }
}

TEST_CASE("Options::device: an unusable GPU or a device sink on the CPU is a usage error naming why", "[api]") {
  ckpt::test::TempDir tmp;
  synth(tmp / "fp8", "minimax_m2");
  ckptconv::Options o;
  o.to = ckptconv::Direction::Native;
  o.device = "tpu";
  try {
    Conversion::plan(tmp / "fp8", o);
    FAIL("planned for device 'tpu'");
  } catch (const ckptconv::Error& e) {
    CHECK(e.kind() == ckptconv::ErrorKind::Usage);
    CHECK_THAT(e.what(), Catch::Contains("tpu"));
  }
  // Where no GPU can run (CI: no driver, or a build without CUDA) "cuda" is refused, saying so.
  if (std::getenv("CKPT_TEST_HAS_GPU") == nullptr) {
    o.device = "cuda:0";
    CHECK_THROWS_AS(Conversion::plan(tmp / "fp8", o), ckptconv::Error);
  }
  o.device = "cpu";
  const Conversion c = Conversion::plan(tmp / "fp8", o);
  ckptconv::DeviceMemorySink to_gpu([](const TensorDesc&) -> void* { return nullptr; },
                                    [](const TensorDesc&, void*) {});
  try {
    c.execute(to_gpu);
    FAIL("a device sink ran on the CPU");
  } catch (const ckptconv::Error& e) {
    CHECK(e.kind() == ckptconv::ErrorKind::Usage);
    CHECK_THAT(e.what(), Catch::Contains("device"));
  }
}
