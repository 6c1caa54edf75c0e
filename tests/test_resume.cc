// Tests of crash safety and `convert --resume`: the checksum a ShardWriter reports for a complete
// shard; conversions killed with SIGKILL at random moments and resumed, byte-identical to an
// uninterrupted run; states built by hand from a reference output (shards finished under
// temporary or final names, an FP8 weight and its scale on either side of a shard boundary);
// corrupted shards written again rather than trusted; and the refusals (other parameters,
// changed inputs, a manifest without --resume, nothing to resume).
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "formats/checkpoint.h"
#include "formats/writer.h"
#include "pipeline/plan.h"
#include "tests/support.h"

extern char** environ;

using Catch::Matchers::Contains;
using ckpt::test::read_bytes;
using ckpt::test::RunResult;
using ckpt::test::TempDir;
using ckpt::test::write_bytes;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using Args = std::vector<std::string>;

namespace {

constexpr const char* kManifest = ".ckptconv-manifest.json";

// Starts the CLI with `args`, output discarded.
pid_t spawn_cli(const Args& args) {
  std::vector<std::string> full{CKPT_BINARY};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, CKPT_BINARY, &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE(rc == 0);
  return pid;
}

int wait_status(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) FAIL("waitpid: " << errno);
  return status;
}

std::string joined(const Args& args) {
  std::string s;
  for (const auto& a : args) s += (s.empty() ? "" : " ") + a;
  return s;
}

RunResult run(const Args& args) { return ckpt::test::run_cli(joined(args)); }

Args with(Args args, std::initializer_list<std::string> more) {
  args.insert(args.end(), more);
  return args;
}

// Every file under `dir`, hidden ones included, relative to it, sorted.
std::vector<std::string> tree(const fs::path& dir) {
  std::vector<std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out.push_back(fs::relative(e.path(), dir).string());
  std::sort(out.begin(), out.end());
  return out;
}

bool same_bytes(const fs::path& a, const fs::path& b) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  if (!fa || !fb) return false;
  std::vector<char> ba(1 << 20), bb(1 << 20);
  for (;;) {
    fa.read(ba.data(), static_cast<std::streamsize>(ba.size()));
    fb.read(bb.data(), static_cast<std::streamsize>(bb.size()));
    if (fa.gcount() != fb.gcount() || !std::equal(ba.begin(), ba.begin() + fa.gcount(), bb.begin())) return false;
    if (fa.gcount() == 0) return true;
  }
}

// `out` holds exactly the files of `ref`, byte for byte: no temporary file, no manifest.
void require_same_output(const fs::path& ref, const fs::path& out) {
  const auto names = tree(ref);
  REQUIRE(tree(out) == names);
  for (const auto& n : names) {
    INFO(n);
    REQUIRE(same_bytes(ref / n, out / n));
  }
}

nlohmann::json read_manifest(const fs::path& out) { return nlohmann::json::parse(read_bytes(out / kManifest)); }

fs::path temp_of(const fs::path& final_path) {
  return final_path.parent_path() / ("." + final_path.filename().string() + ".ckptconv-partial");
}

struct FileId {
  ino_t ino = 0;
  int64_t mtime_ns = 0;
  bool operator==(const FileId&) const = default;
};

FileId file_id(const fs::path& p) {
  struct stat st{};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return {st.st_ino, static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
}

// Runs `args` and kills it with SIGKILL once its manifest lists at least `shards` complete
// shards (0: once the manifest exists). Fails if the run finishes first.
void interrupt_after(const Args& args, const fs::path& out, size_t shards) {
  const pid_t pid = spawn_cli(args);
  for (;;) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) FAIL("the conversion finished before it could be interrupted");
    if (fs::exists(out / kManifest)) {
      nlohmann::json m;
      try {
        m = read_manifest(out);
      } catch (const nlohmann::json::exception&) {  // gone between the check and the read
        continue;
      }
      if (m["shards"].size() >= shards) break;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  ::kill(pid, SIGKILL);
  const int status = wait_status(pid);
  REQUIRE(WIFSIGNALED(status));
}

uint64_t reused_shards(const RunResult& r) {
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  return nlohmann::json::parse(r.out)["reused_shards"].get<uint64_t>();
}

// A small MiniMax-M2 checkpoint whose native conversion takes ~12 shards.
struct Fixture {
  TempDir tmp;
  fs::path in = tmp / "in", ref = tmp / "ref";
  Args convert;
  explicit Fixture(const std::string& extra = "") {
    const auto r = ckpt::test::run_cli("synth --family minimax_m2 --out " + in.string() +
                                       " --layers 6 --experts 8 --hidden 1024 --inter 512 --shards 3" + extra);
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    convert = {"convert", "--in", in.string(), "--to", "native", "--threads", "1"};
  }
  std::string max_shard = "12MB";
  Args to(const fs::path& out) const { return to(out, max_shard); }
  Args to(const fs::path& out, const std::string& shard_size) const {
    return with(convert, {"--out", out.string(), "--max-shard-size", shard_size});
  }
  // The uninterrupted run; returns its wall time in seconds.
  double reference() const {
    const auto t0 = Clock::now();
    const int status = wait_status(spawn_cli(to(ref)));
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
    return s;
  }
};

}  // namespace

TEST_CASE("resume: a ShardWriter reports the checksum shard_checksum computes, once", "[resume]") {
  TempDir dir;
  // 3.5 MiB of data in tensors of odd sizes, so that 1 MiB blocks straddle writes and tensors.
  std::vector<ckpt::OutTensor> outs{{"a", ckpt::DType::U8, {1'000'001}},
                                    {"b", ckpt::DType::U8, {2'300'000}},
                                    {"c", ckpt::DType::U8, {370'000}},
                                    {"empty", ckpt::DType::U8, {0}}};
  const auto layout = ckpt::layout_shard("model.safetensors", outs);
  std::mt19937_64 rng(7);
  std::string data(layout.file_size - layout.data_start, '\0');
  for (auto& c : data) c = static_cast<char>(rng());
  // Pieces of random lengths written in a shuffled order, as several executor threads would.
  std::vector<std::pair<uint64_t, uint64_t>> pieces;
  for (uint64_t at = 0; at < data.size();) {
    const uint64_t n = std::min<uint64_t>(data.size() - at, 1 + rng() % 700'000);
    pieces.emplace_back(at, n);
    at += n;
  }
  std::shuffle(pieces.begin(), pieces.end(), rng);
  int calls = 0;
  uint64_t reported = 0, reported_size = 0;
  {
    ckpt::ShardWriter w(dir.path(), layout, true, [&](const fs::path& p, uint64_t size, uint64_t sum) {
      ++calls;
      CHECK(p == dir / "model.safetensors");
      reported_size = size;
      reported = sum;
    });
    for (size_t i = 0; i < pieces.size(); ++i) {
      const auto [at, n] = pieces[i];
      w.write(layout.data_start + at, data.data() + at, n);
      INFO("piece " << i << " of " << pieces.size());
      REQUIRE(calls == (i + 1 == pieces.size() ? 1 : 0));
    }
    w.commit();
  }
  const std::string file = read_bytes(dir / "model.safetensors");
  REQUIRE(file.size() == layout.file_size);
  REQUIRE(file.substr(layout.data_start) == data);
  // The definition, computed here independently: XXH3-64 over the big-endian XXH3-64s of the
  // file's 1 MiB blocks.
  std::string hashes;
  for (size_t at = 0; at < file.size(); at += 1 << 20) {
    const uint64_t h = XXH3_64bits(file.data() + at, std::min<size_t>(1 << 20, file.size() - at));
    for (int b = 7; b >= 0; --b) hashes += static_cast<char>(h >> (8 * b));
  }
  const uint64_t expected = XXH3_64bits(hashes.data(), hashes.size());
  CHECK(reported_size == file.size());
  CHECK(reported == expected);
  CHECK(ckpt::shard_checksum(dir / "model.safetensors") == expected);
}

TEST_CASE("resume: a ShardWriter with a bad write range fails instead of miscounting", "[resume]") {
  TempDir dir;
  const auto layout = ckpt::layout_shard("model.safetensors", {{"a", ckpt::DType::U8, {100}}});
  ckpt::ShardWriter w(dir.path(), layout, true, [](const fs::path&, uint64_t, uint64_t) {});
  const std::string bytes(100, 'x');
  REQUIRE_THROWS_WITH(w.write(layout.data_start - 1, bytes.data(), 10), Contains("outside the data region"));
  REQUIRE_THROWS_WITH(w.write(layout.data_start + 95, bytes.data(), 10), Contains("outside the data region"));
  w.write(layout.data_start, bytes.data(), 60);
  REQUIRE_THROWS_WITH(w.write(layout.data_start + 50, bytes.data(), 50), Contains("110 data bytes written"));
}

TEST_CASE("resume: SIGKILL at 20 random moments, then --resume, is byte-identical", "[resume]") {
  Fixture fx;
  const double ref_s = fx.reference();
  const auto ref_files = tree(fx.ref);
  REQUIRE(ref_files.size() >= 9);  // ~12 shards, index, config, tokenizer config
  uint64_t seed = 20251123;
  if (const char* s = std::getenv("CKPT_RESUME_SEED")) seed = std::strtoull(s, nullptr, 10);
  std::cout << "resume kill trials: seed " << seed << " (CKPT_RESUME_SEED), reference run " << ref_s << " s, "
            << ref_files.size() << " output files\n";
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> when(0.0, ref_s);
  int before_start = 0, mid_run = 0, after_finish = 0, trials_reusing = 0;
  uint64_t reused_total = 0;
  for (int trial = 0; trial < 20; ++trial) {
    const double delay = when(rng);
    INFO("trial " << trial << ", kill after " << delay << " s");
    const fs::path out = fx.tmp / ("trial-" + std::to_string(trial));
    const pid_t pid = spawn_cli(fx.to(out));
    std::this_thread::sleep_for(std::chrono::duration<double>(delay));
    ::kill(pid, SIGKILL);
    const int status = wait_status(pid);
    const bool has_manifest = fs::exists(out / kManifest);
    // Finished: exited on its own, or killed between removing the manifest and exiting.
    if (WIFEXITED(status) || (!has_manifest && fs::exists(out / "model.safetensors.index.json"))) {
      if (WIFEXITED(status)) REQUIRE(WEXITSTATUS(status) == 0);
      ++after_finish;
      require_same_output(fx.ref, out);
      fs::remove_all(out);
      continue;
    }
    // The shards the manifest lists were complete when it was written: resume must keep each
    // file as it is (same inode, same mtime) rather than write it again.
    std::map<std::string, FileId> listed;
    if (has_manifest) {
      ++mid_run;
      const auto manifest = read_manifest(out);
      for (const auto& s : manifest["shards"]) {
        const fs::path final_path = out / s["file"].get<std::string>();
        const fs::path temp = temp_of(final_path);
        listed[final_path.filename().string()] = file_id(fs::exists(temp) ? temp : final_path);
      }
    } else {
      ++before_start;
    }
    const uint64_t reused = reused_shards(run(with(fx.to(out), {"--resume", "--json"})));
    CHECK(reused == listed.size());
    for (const auto& [name, id] : listed) {
      INFO(name);
      CHECK(file_id(out / name) == id);
    }
    require_same_output(fx.ref, out);
    reused_total += reused;
    trials_reusing += reused > 0;
    fs::remove_all(out);
  }
  std::cout << "resume kill trials: " << before_start << " killed before the manifest existed, " << mid_run
            << " mid-run (" << trials_reusing << " of them with complete shards, " << reused_total
            << " shards kept in all), " << after_finish << " after finishing; 20 of 20 byte-identical\n";
  REQUIRE(before_start + mid_run + after_finish == 20);
  // Otherwise the trials would not have exercised what they are for.
  REQUIRE(trials_reusing > 0);
}

TEST_CASE("resume: a corrupted or truncated complete shard is written again, not trusted", "[resume]") {
  Fixture fx;
  fx.reference();
  const fs::path out = fx.tmp / "out";
  interrupt_after(fx.to(out), out, 2);
  const auto shards = read_manifest(out)["shards"];
  REQUIRE(shards.size() >= 2);
  const fs::path first = temp_of(out / shards[0]["file"].get<std::string>());
  const fs::path second = temp_of(out / shards[1]["file"].get<std::string>());
  // One byte flipped in the middle (same size), and one byte cut from the end.
  std::string bytes = read_bytes(first);
  bytes[bytes.size() / 2] ^= 0x01;
  write_bytes(first, bytes);
  fs::resize_file(second, fs::file_size(second) - 1);
  CHECK(reused_shards(run(with(fx.to(out), {"--resume", "--json"}))) == shards.size() - 2);
  require_same_output(fx.ref, out);
}

TEST_CASE("resume: shards finished under temporary and final names, FP8 weight and scale apart", "[resume]") {
  // Native -> HF with FP8 export: every exported weight is followed by its scale tensor, which is
  // computed from the weight. Resumed runs that keep the weight's shard but redo the scale's
  // (and the reverse) must still compute it.
  TempDir tmp;
  const fs::path hf = tmp / "hf", native = tmp / "native", ref = tmp / "ref", out = tmp / "out";
  REQUIRE(ckpt::test::run_cli("synth --family minimax_m2 --out " + hf.string() +
                              " --layers 2 --experts 4 --hidden 512 --inter 256 --shards 2")
              .exit_code == 0);
  REQUIRE(ckpt::test::run_cli("convert --in " + hf.string() + " --out " + native.string() + " --to native").exit_code ==
          0);
  // A shard size that ends the first shard right after an FP8 weight, before its scale: the
  // plan's order and tensor sizes do not depend on it, so it is the byte count up to that
  // weight, one about an eighth of the way through.
  uint64_t shard_size = 0;
  {
    ckpt::PlanOptions po;
    po.direction = ckpt::Direction::Hf;
    po.quantize = ckpt::QuantizeMode::Real;
    const auto plan = ckpt::make_plan(ckpt::Checkpoint::open(native), po);
    uint64_t used = 0;
    for (size_t i = 0; i + 1 < plan.tensors.size() && !shard_size; ++i) {
      used += plan.tensors[i].nbytes;
      if (plan.tensors[i + 1].scale_of == static_cast<int64_t>(i) && used >= plan.output_bytes / 8) shard_size = used;
    }
  }
  REQUIRE(shard_size > 0);
  const Args convert{"convert", "--in", native.string(), "--to", "hf", "--quantize", "real", "--max-shard-size",
                     std::to_string(shard_size), "--threads", "1"};
  REQUIRE(run(with(convert, {"--out", ref.string()})).exit_code == 0);
  const auto index = nlohmann::json::parse(read_bytes(ref / "model.safetensors.index.json"))["weight_map"];
  std::string weight_file, scale_file;
  for (const auto& [name, file] : index.items()) {
    const auto scale = index.find(name + "_scale_inv");
    if (scale != index.end() && *scale != file) {
      weight_file = file.get<std::string>();
      scale_file = scale->get<std::string>();
      break;
    }
  }
  INFO("the weight at the end of the first shard, its scale at the start of the second");
  REQUIRE(weight_file.starts_with("model-00001-of-"));
  REQUIRE(scale_file.starts_with("model-00002-of-"));
  const auto shard_files = [&] {
    std::vector<std::string> v;
    for (const auto& f : tree(ref))
      if (f.starts_with("model-")) v.push_back(f);
    return v;
  }();
  REQUIRE(shard_files.size() >= 3);

  // Puts `out` in the state of a run killed when exactly `done` were complete: those hold the
  // reference bytes, under their final names when listed in `published`, else under their
  // temporary names, and the manifest lists them.
  const auto make_state = [&](const std::vector<std::string>& done, const std::vector<std::string>& published) {
    fs::remove_all(out);
    interrupt_after(with(convert, {"--out", out.string()}), out, 0);
    auto m = read_manifest(out);
    for (const auto& e : fs::directory_iterator(out))
      if (e.path().filename() != kManifest) fs::remove(e.path());
    m["shards"] = nlohmann::json::array();
    for (const auto& f : done) {
      const bool final_name = std::find(published.begin(), published.end(), f) != published.end();
      fs::copy_file(ref / f, final_name ? out / f : temp_of(out / f));
      m["shards"].push_back({{"dir", ""},
                             {"file", f},
                             {"size", fs::file_size(ref / f)},
                             {"checksum", fmt::format("{:016x}", ckpt::shard_checksum(ref / f))}});
    }
    write_bytes(out / kManifest, m.dump());
  };

  SECTION("the weight's shard complete, the scale's redone") {
    make_state({weight_file}, {});
    CHECK(reused_shards(run(with(convert, {"--out", out.string(), "--resume", "--json"}))) == 1);
    require_same_output(ref, out);
  }
  SECTION("the scale's shard complete, the weight's redone") {
    make_state({scale_file}, {});
    CHECK(reused_shards(run(with(convert, {"--out", out.string(), "--resume", "--json"}))) == 1);
    require_same_output(ref, out);
  }
  SECTION("killed while publishing: some shards renamed, the others still temporary") {
    std::vector<std::string> published(shard_files.begin(), shard_files.begin() + shard_files.size() / 2);
    make_state(shard_files, published);
    CHECK(reused_shards(run(with(convert, {"--out", out.string(), "--resume", "--json"}))) == shard_files.size());
    require_same_output(ref, out);
  }
}

TEST_CASE("resume: all expert-parallel ranks in one run", "[resume]") {
  Fixture fx;
  fx.convert.insert(fx.convert.end(), {"--ep-size", "2"});
  fx.max_shard = "6MB";
  fx.reference();
  REQUIRE(fs::exists(fx.ref / "rank-0001" / "model.safetensors.index.json"));
  const fs::path out = fx.tmp / "out";
  interrupt_after(fx.to(out), out, 1);
  const auto listed = read_manifest(out)["shards"].size();
  CHECK(reused_shards(run(with(fx.to(out), {"--resume", "--json"}))) == listed);
  require_same_output(fx.ref, out);
}

TEST_CASE("resume: an interrupted --overwrite still replaces the old checkpoint when resumed", "[resume]") {
  Fixture fx;
  fx.reference();
  const fs::path out = fx.tmp / "out";
  // The checkpoint being replaced has other shard names (twice as many shards).
  REQUIRE(run(fx.to(out, "6MB")).exit_code == 0);
  REQUIRE(tree(out) != tree(fx.ref));
  interrupt_after(with(fx.to(out), {"--overwrite"}), out, 1);
  // Resumed without --overwrite: the interrupted run's consent stands.
  CHECK(reused_shards(run(with(fx.to(out), {"--resume", "--json"}))) >= 1);
  require_same_output(fx.ref, out);
}

TEST_CASE("resume: other parameters or changed inputs are refused and leave the state intact", "[resume]") {
  Fixture fx;
  fx.reference();
  const fs::path out = fx.tmp / "out";
  interrupt_after(fx.to(out), out, 1);
  const std::string manifest = read_bytes(out / kManifest);
  const auto refused = [&](const Args& args, const std::string& why) {
    const auto r = run(with(args, {"--resume"}));
    INFO(r.err);
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.err, Contains(why));
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK(read_bytes(out / kManifest) == manifest);
  };

  SECTION("parameters") {
    refused(fx.to(out, "24MB"), "--max-shard-size was 12000000 in the interrupted run, now 24000000");
    refused(with(fx.to(out), {"--dtype", "f16"}), "--dtype was bf16 in the interrupted run, now f16");
    refused(with(fx.to(out), {"--family", "minimax_m2"}), "--family was auto in the interrupted run, now minimax_m2");
  }
  SECTION("inputs") {
    const fs::path shard = fx.in / "model-00001-of-00003.safetensors";
    const std::string original = read_bytes(shard);
    const auto mtime = fs::last_write_time(shard);
    fs::last_write_time(shard, mtime + std::chrono::seconds(5));
    refused(fx.to(out), "input file model-00001-of-00003.safetensors changed since the interrupted run (mtime_ns");
    // The same tensors behind a header padded with 8 more spaces: a valid file of another size.
    uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(original[i])) << (8 * i);
    std::string padded = original.substr(0, 8 + n) + std::string(8, ' ') + original.substr(8 + n);
    for (int i = 0; i < 8; ++i) padded[i] = static_cast<char>((n + 8) >> (8 * i));
    write_bytes(shard, padded);
    fs::last_write_time(shard, mtime);
    refused(fx.to(out), "input file model-00001-of-00003.safetensors changed since the interrupted run (size");
    // Back as it was, the resume goes ahead.
    write_bytes(shard, original);
    fs::last_write_time(shard, mtime);
  }
  CHECK(reused_shards(run(with(fx.to(out), {"--resume", "--json"}))) >= 1);
  require_same_output(fx.ref, out);
}

TEST_CASE("resume: an interrupted output without --resume, and --resume with nothing to resume", "[resume]") {
  Fixture fx;
  fx.reference();
  const fs::path out = fx.tmp / "out";

  SECTION("a manifest without --resume is refused; --overwrite starts over") {
    interrupt_after(fx.to(out), out, 1);
    const auto r = run(fx.to(out));
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.err, Contains("holds an interrupted conversion; finish it with --resume"));
    CHECK(reused_shards(run(with(fx.to(out), {"--overwrite", "--json"}))) == 0);
    require_same_output(fx.ref, out);
  }
  SECTION("--resume into a new directory runs the whole conversion") {
    CHECK(reused_shards(run(with(fx.to(out), {"--resume", "--json"}))) == 0);
    require_same_output(fx.ref, out);
  }
  SECTION("--resume with --sink null is a usage error: it would leave nothing to resume") {
    const auto r = run(with(fx.to(out), {"--resume", "--sink", "null"}));
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.err, Contains("--resume needs --sink file"));
    CHECK(!fs::exists(out));
  }
  SECTION("a manifest that cannot be read is invalid input, named") {
    fs::create_directories(out);
    write_bytes(out / kManifest, "{\"ckptconv_manifest\": 1, \"checksum\": ");
    const auto r = run(with(fx.to(out), {"--resume"}));
    CHECK(r.exit_code == 3);
    CHECK_THAT(r.err, Contains(kManifest) && Contains("not a resume manifest of this ckptconv"));
  }
  SECTION("--resume into a directory with other files and no manifest is refused") {
    fs::create_directories(out);
    write_bytes(out / "notes.txt", "mine");
    const auto r = run(with(fx.to(out), {"--resume"}));
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.err, Contains("nothing to resume"));
    CHECK(tree(out) == std::vector<std::string>{"notes.txt"});
  }
  SECTION("--resume of a finished conversion is refused: without a manifest nothing says how it was made") {
    REQUIRE(run(fx.to(out)).exit_code == 0);
    const auto r = run(with(fx.to(out), {"--resume"}));
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.err, Contains("nothing to resume"));
    require_same_output(fx.ref, out);
  }
}
