// End-to-end tests of the ckptconv command line (SPEC §2, §5, §6): usage errors, invalid input,
// I/O errors, output directory rules, dequantization values checked element by element against
// the scheme definitions, config.json rewriting, sharding and the index, JSON summaries,
// inspect, verify, and every synthetic family converted with different thread counts and budgets.
// Every case drives the real binary (build/ckptconv) through a shell and checks exit codes,
// messages and the files it leaves behind; the library is only used to build inputs and read
// outputs.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "formats/checkpoint.h"
#include "formats/writer.h"
#include "pipeline/synth.h"
#include "tests/support.h"
#include "transforms/fp8.h"

namespace fs = std::filesystem;
using ckpt::DType;
using ckpt::Fp8;
using ckpt::OutType;
using ckpt::test::RunResult;
using ckpt::test::TempDir;
using Json = nlohmann::json;

static_assert(std::endian::native == std::endian::little, "tests build little-endian bytes with memcpy");

namespace {

// ---------------------------------------------------------------------------------------------
// Building inputs

using Tensor = ckpt::test::TensorSpec;
using ckpt::test::write_checkpoint;

template <typename T>
std::string raw(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  if (!v.empty()) std::memcpy(s.data(), v.data(), s.size());
  return s;
}

std::vector<uint8_t> random_codes(uint64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& c : v) c = static_cast<uint8_t>(rng() & 0xFF);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Running the CLI and looking at its output

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

RunResult cli(const std::string& args) {
  RunResult r = ckpt::test::run_cli(args);
  UNSCOPED_INFO("ckptconv " << args << "\n  exit " << r.exit_code << "\n  stdout: " << r.out
                            << "\n  stderr: " << r.err);
  return r;
}

bool one_error_line(const std::string& err) {
  return err.rfind("ckptconv:", 0) == 0 && std::count(err.begin(), err.end(), '\n') == 1 &&
         err.back() == '\n';
}

using ckpt::test::listing;

// A failed run leaves nothing that looks like a finished checkpoint, and no temporary either.
void check_nothing_finished(const fs::path& out) {
  for (const auto& name : listing(out)) {
    INFO("left behind in --out: " << name);
    CHECK(!name.ends_with(".safetensors"));
    CHECK(name != ckpt::kIndexName);
    CHECK(name != "config.json");
    CHECK(name.find("ckptconv-partial") == std::string::npos);
  }
}

std::string tensor_bytes(const ckpt::Checkpoint& c, const std::string& name) {
  const ckpt::TensorRef* r = c.find(name);
  if (!r) return "<missing>";
  return std::string(reinterpret_cast<const char*>(r->file->data(*r->info)), r->info->nbytes());
}

std::string dtype_of(const ckpt::Checkpoint& c, const std::string& name) {
  const ckpt::TensorRef* r = c.find(name);
  return r ? std::string(ckpt::dtype_name(r->info->dtype)) : "<missing>";
}

std::vector<uint64_t> shape_of(const ckpt::Checkpoint& c, const std::string& name) {
  const ckpt::TensorRef* r = c.find(name);
  return r ? r->info->shape : std::vector<uint64_t>{999999};
}

std::set<std::string> tensor_names(const ckpt::Checkpoint& c) {
  std::set<std::string> s;
  for (const auto& t : c.tensors()) s.insert(t.name());
  return s;
}

const char* dtype_flag(OutType t) { return t == OutType::BF16 ? "bf16" : t == OutType::F16 ? "f16" : "f32"; }
std::string out_dtype_name(OutType t) {
  return t == OutType::BF16 ? "BF16" : t == OutType::F16 ? "F16" : "F32";
}
std::string torch_name(OutType t) {
  return t == OutType::BF16 ? "bfloat16" : t == OutType::F16 ? "float16" : "float32";
}

using ScaleAt = std::function<float(uint64_t i, uint64_t j)>;

// Every element of a dequantized [rows, cols] tensor equals round(fp8(code) * scale(i, j)),
// computed here in float32 and rounded once to the output type (bf16: RNE, NaN -> 0x7FC0).
void check_dequantized(const ckpt::Checkpoint& out, const std::string& name, OutType ot, uint64_t rows,
                       uint64_t cols, const std::vector<uint8_t>& codes, Fp8 fmt, const ScaleAt& scale) {
  INFO("tensor " << name << " as " << dtype_flag(ot));
  const ckpt::TensorRef* r = out.find(name);
  REQUIRE(r != nullptr);
  CHECK(dtype_of(out, name) == out_dtype_name(ot));
  REQUIRE(r->info->shape == std::vector<uint64_t>{rows, cols});
  REQUIRE(codes.size() == rows * cols);
  const uint8_t* p = r->file->data(*r->info);
  uint64_t bad = 0;
  std::string first;
  for (uint64_t i = 0; i < rows; ++i) {
    for (uint64_t j = 0; j < cols; ++j) {
      const uint64_t k = i * cols + j;
      const float e = ckpt::fp8_to_float(codes[k], fmt) * scale(i, j);
      bool ok = false;
      uint32_t got = 0, want = 0;
      if (ot == OutType::BF16) {
        uint16_t h;
        std::memcpy(&h, p + 2 * k, 2);
        got = h;
        want = ckpt::float_to_bf16(e);
        ok = got == want;
      } else if (ot == OutType::F16) {
        uint16_t h;
        std::memcpy(&h, p + 2 * k, 2);
        got = h;
        want = ckpt::float_to_f16(e);
        ok = std::isnan(e) ? std::isnan(ckpt::f16_to_float(h)) : got == want;
      } else {
        float f;
        std::memcpy(&f, p + 4 * k, 4);
        got = ckpt::float_to_bits(f);
        want = ckpt::float_to_bits(e);
        ok = std::isnan(e) ? std::isnan(f) : got == want;
      }
      if (!ok && bad++ == 0) {
        char buf[200];
        std::snprintf(buf, sizeof buf, "(%llu, %llu): code 0x%02X scale %g -> want 0x%X got 0x%X",
                      static_cast<unsigned long long>(i), static_cast<unsigned long long>(j), codes[k],
                      static_cast<double>(scale(i, j)), want, got);
        first = buf;
      }
    }
  }
  INFO(bad << " elements differ; first " << first);
  CHECK(bad == 0);
}

// ---------------------------------------------------------------------------------------------
// The hand-built mixed checkpoint: one FP8 weight of every scheme, siblings, and plain tensors.

const std::string kBlk = "model.layers.0.mlp.down_proj.weight";       // E4M3 [130,200], F32 [2,2]
const std::string kBlk2 = "model.layers.0.mlp.up_proj.weight";        // E4M3 [129,130], BF16 [2,2]
const std::string kMx = "model.layers.0.mlp.experts.0.w1.weight";     // E4M3 [3,70], U8 [3,3]
const std::string kMx2 = "model.layers.0.mlp.experts.1.w1.weight";    // E4M3 [4,33], F8_E8M0 [4,2]
const std::string kPt = "model.layers.0.self_attn.q_proj.weight";     // E4M3 [16,24], F32 []
const std::string kE5 = "model.layers.0.self_attn.k_proj.weight";     // E5M2 [8,40], BF16 [1]
const std::string kNorm = "model.norm.weight";                        // BF16 [200]
const std::string kGate = "model.layers.0.mlp.gate.weight";           // F32 [4,8]
const std::string kPtAct = "model.layers.0.self_attn.q_proj.activation_scale";
const std::string kPtIn = "model.layers.0.self_attn.q_proj.input_scale";

struct Mixed {
  std::vector<uint8_t> blk, blk2, mx, mx2, pt, e5;
  std::vector<float> blk_scale{0.0123f, 1.75f, 3.1e-3f, 250.5f};
  std::vector<uint16_t> blk2_scale{0x3C23, 0x4049, 0x3F80, 0x3A83};  // bf16 0.00995, 3.14, 1, 0.001
  std::vector<uint8_t> mx_scale{0, 127, 130, 120, 255, 1, 140, 127, 100};
  std::vector<uint8_t> mx2_scale{127, 126, 131, 254, 110, 3, 127, 129};
  float pt_scale = 0.37f;
  uint16_t e5_scale = 0x3FB0;  // bf16 1.375
  std::string norm, gate;
  std::vector<std::string> dropped{kBlk + "_scale_inv", kBlk2 + "_scale_inv", kMx + "_scale_inv", kMx2 + "_scale_inv",
                                   kPt + "_scale_inv", kE5 + "_scale_inv", kPtAct, kPtIn};

  Mixed() {
    blk = random_codes(130 * 200, 11);
    // zeros of both signs, NaNs, the largest magnitudes and a subnormal at the start
    const uint8_t special[] = {0x00, 0x80, 0x7F, 0xFF, 0x7E, 0xFE, 0x01, 0x81};
    std::copy(std::begin(special), std::end(special), blk.begin());
    std::copy(std::begin(special), std::end(special), blk.begin() + 129 * 200 + 192);  // ragged corner
    blk2 = random_codes(129 * 130, 17);
    mx = random_codes(3 * 70, 12);
    mx[70 + 40] = 0x00;  // row 1, block 1 has scale 255 (+inf): 0 * inf is NaN
    mx[70 + 41] = 0x38;  // and 1 * inf is +inf
    mx[70 + 64] = 0x80;  // row 1, block 2 (scale 1, 2^-126)
    mx2 = random_codes(4 * 33, 13);
    pt = random_codes(16 * 24, 14);
    e5 = random_codes(8 * 40, 15);
    const uint8_t e5_special[] = {0x7C, 0xFC, 0x7D, 0xFF, 0x00, 0x80, 0x7B, 0x01};
    std::copy(std::begin(e5_special), std::end(e5_special), e5.begin());
    const auto n = random_codes(400, 16);
    norm.assign(n.begin(), n.end());
    std::vector<float> g(32);
    for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(i) * 0.25f - 3.0f;
    gate = raw(g);
  }

  float blk_s(uint64_t i, uint64_t j) const { return blk_scale[(i / 128) * 2 + j / 128]; }
  float blk2_s(uint64_t i, uint64_t j) const {
    return std::bit_cast<float>(static_cast<uint32_t>(blk2_scale[(i / 128) * 2 + j / 128]) << 16);
  }
  float mx_s(uint64_t i, uint64_t j) const { return std::ldexp(1.0f, int(mx_scale[i * 3 + j / 32]) - 127); }
  float mx2_s(uint64_t i, uint64_t j) const { return std::ldexp(1.0f, int(mx2_scale[i * 2 + j / 32]) - 127); }
  float e5_s() const { return std::bit_cast<float>(static_cast<uint32_t>(e5_scale) << 16); }

  // Two shards; the E5M2 weight's scale lives in the other shard than the weight.
  void write(const fs::path& dir) const {
    write_checkpoint(dir, {
        {
            {kBlk, DType::F8_E4M3, {130, 200}, raw(blk)},
            {kBlk + "_scale_inv", DType::F32, {2, 2}, raw(blk_scale)},
            {kMx, DType::F8_E4M3, {3, 70}, raw(mx)},
            {kMx + "_scale_inv", DType::U8, {3, 3}, raw(mx_scale)},
            {kPt, DType::F8_E4M3, {16, 24}, raw(pt)},
            {kPt + "_scale_inv", DType::F32, {}, raw(std::vector<float>{pt_scale})},
            {kPtAct, DType::F32, {}, raw(std::vector<float>{0.5f})},
            {kPtIn, DType::F32, {1}, raw(std::vector<float>{0.25f})},
            {kGate, DType::F32, {4, 8}, gate},
            {kE5, DType::F8_E5M2, {8, 40}, raw(e5)},
        },
        {
            {kE5 + "_scale_inv", DType::BF16, {1}, raw(std::vector<uint16_t>{e5_scale})},
            {kMx2, DType::F8_E4M3, {4, 33}, raw(mx2)},
            {kMx2 + "_scale_inv", DType::F8_E8M0, {4, 2}, raw(mx2_scale)},
            {kNorm, DType::BF16, {200}, norm},
            {kBlk2 + "_scale_inv", DType::BF16, {2, 2}, raw(blk2_scale)},
            {kBlk2, DType::F8_E4M3, {129, 130}, raw(blk2)},
        },
    });
  }

  void check_output(const fs::path& out_dir, OutType ot) const {
    const ckpt::Checkpoint out = ckpt::Checkpoint::open(out_dir);
    CHECK(tensor_names(out) == std::set<std::string>{kBlk, kBlk2, kMx, kMx2, kPt, kE5, kNorm, kGate});
    for (const auto& d : dropped) {
      INFO(d);
      CHECK(out.find(d) == nullptr);
    }
    check_dequantized(out, kBlk, ot, 130, 200, blk, Fp8::E4M3, [&](uint64_t i, uint64_t j) { return blk_s(i, j); });
    check_dequantized(out, kBlk2, ot, 129, 130, blk2, Fp8::E4M3, [&](uint64_t i, uint64_t j) { return blk2_s(i, j); });
    check_dequantized(out, kMx, ot, 3, 70, mx, Fp8::E4M3, [&](uint64_t i, uint64_t j) { return mx_s(i, j); });
    check_dequantized(out, kMx2, ot, 4, 33, mx2, Fp8::E4M3, [&](uint64_t i, uint64_t j) { return mx2_s(i, j); });
    check_dequantized(out, kPt, ot, 16, 24, pt, Fp8::E4M3, [&](uint64_t, uint64_t) { return pt_scale; });
    check_dequantized(out, kE5, ot, 8, 40, e5, Fp8::E5M2, [&](uint64_t, uint64_t) { return e5_s(); });
    CHECK(dtype_of(out, kNorm) == "BF16");
    CHECK(shape_of(out, kNorm) == std::vector<uint64_t>{200});
    CHECK(tensor_bytes(out, kNorm) == norm);
    CHECK(dtype_of(out, kGate) == "F32");
    CHECK(shape_of(out, kGate) == std::vector<uint64_t>{4, 8});
    CHECK(tensor_bytes(out, kGate) == gate);
  }
};

// A small valid checkpoint to point usage errors at.
void write_small(const fs::path& dir) {
  write_checkpoint(dir, {{{"w", DType::BF16, {4}, std::string(8, '\x11')}}});
}

// The safetensors header of a file as JSON, and where its data starts.
Json header_of(const fs::path& file, uint64_t* data_start = nullptr) {
  const std::string bytes = ckpt::test::read_bytes(file);
  REQUIRE(bytes.size() >= 8);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  REQUIRE(8 + n <= bytes.size());
  if (data_start) *data_start = 8 + n;
  return Json::parse(bytes.substr(8, n));
}

}  // namespace

// =============================================================================================
// 1. Usage

TEST_CASE("cli: help lists the subcommands and usage errors exit 2 with one line", "[cli]") {
  TempDir tmp;
  const RunResult help = cli("--help");
  CHECK(help.exit_code == 0);
  for (const char* sub : {"convert", "inspect", "verify", "synth"}) CHECK_THAT(help.out, Catch::Contains(sub));
  const RunResult chelp = cli("convert --help");
  CHECK(chelp.exit_code == 0);
  for (const char* opt : {"--in", "--out", "--to", "--dtype", "--max-shard-size", "--threads", "--memory-budget",
                          "--overwrite", "--json"})
    CHECK_THAT(chelp.out, Catch::Contains(opt));

  // CLI11's own parse errors: only the code is pinned.
  CHECK(cli("").exit_code == 2);
  CHECK(cli("--no-such-option").exit_code == 2);
  CHECK(cli("frobnicate").exit_code == 2);
  CHECK(cli("convert --in x").exit_code == 2);  // --out is required
  CHECK(cli("convert --in x --out y --no-such-option").exit_code == 2);
  CHECK(cli("convert --in x --out y --threads -1").exit_code == 2);
  CHECK(cli("verify onlyone").exit_code == 2);
  // Enumerated values are checked even where this direction does not use them.
  CHECK(cli("convert --in x --out y --family bogus").exit_code == 2);
  CHECK(cli("convert --in x --out y --mtp sometimes").exit_code == 2);
  CHECK(cli("convert --in x --out y --device gpu").exit_code == 2);
  CHECK(cli("convert --in x --out y --device cuda:").exit_code == 2);
  CHECK(cli("convert --in x --out y --device cuda:-1").exit_code == 2);
  CHECK(cli("convert --in x --out y --quantize int4").exit_code == 2);

  // ckptconv's own usage errors: one line on stderr, starting "ckptconv:", nothing created.
  const fs::path in = tmp / "in", out = tmp / "out";
  write_small(in);
  struct Case {
    std::string args, word;
  };
  const std::vector<Case> cases = {
      {"--dtype f8", "--dtype"},
      {"--dtype BF16x", "--dtype"},
      {"--to sideways", "--to"},
      {"--memory-budget 1KB", "--memory-budget"},
      {"--max-shard-size abc", "--max-shard-size"},
      {"--max-shard-size 0", "--max-shard-size"},
      {"--max-shard-size -5", "--max-shard-size"},
      {"--max-shard-size 0.4", "--max-shard-size"},  // rounds to zero bytes
      {"--memory-budget 12parsecs", "--memory-budget"},
      // No GPU here, or no CUDA in the build, or (on a GPU) no device stage yet: always a reason.
      {"--device cuda", "--device cuda"},
      {"--device cuda:3", "--device cuda"},
  };
  for (const auto& c : cases) {
    const RunResult r = cli("convert --in " + q(in) + " --out " + q(out) + " " + c.args);
    CHECK(r.exit_code == 2);
    CHECK(one_error_line(r.err));
    CHECK_THAT(r.err, Catch::Contains(c.word));
    CHECK(r.out.empty());
    CHECK(!fs::exists(out));
  }
}

// =============================================================================================
// 2. Invalid input

TEST_CASE("cli: a corrupt shard header exits 3 naming the file", "[cli]") {
  TempDir tmp;
  const fs::path in = tmp / "in", out = tmp / "out";
  fs::create_directories(in);
  fs::create_directories(out);  // an existing empty --out must stay free of finished files
  ckpt::test::write_safetensors(in / "model-00001-of-00002.safetensors", {{"a", DType::BF16, {2}, std::string(4, '\1')}});
  const fs::path bad = in / "model-00002-of-00002.safetensors";
  const std::string entry_a = R"("a2":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  struct Case {
    std::string what, bytes;
  };
  const std::vector<Case> cases = {
      {"gap between tensors",
       ckpt::test::safetensors_bytes("{" + entry_a + R"(,"b2":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                                     std::string(12, '\0'))},
      {"overlapping tensors",
       ckpt::test::safetensors_bytes("{" + entry_a + R"(,"b2":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
                                     std::string(6, '\0'))},
      {"trailing bytes", ckpt::test::safetensors_bytes("{" + entry_a + "}", std::string(9, '\0'))},
      {"size mismatch",
       ckpt::test::safetensors_bytes(R"({"a2":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", std::string(4, '\0'))},
      {"unknown dtype",
       ckpt::test::safetensors_bytes(R"({"a2":{"dtype":"F9","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0'))},
      {"header length past the end", std::string("\xff\xff\0\0\0\0\0\0{}", 10)},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    ckpt::test::write_bytes(bad, c.bytes);
    const RunResult r = cli("convert --in " + q(in) + " --out " + q(out));
    CHECK(r.exit_code == 3);
    CHECK(one_error_line(r.err));
    CHECK_THAT(r.err, Catch::Contains(bad.string()));
    check_nothing_finished(out);
    CHECK(listing(out).empty());
    // inspect reads the same headers and fails the same way
    const RunResult ri = cli("inspect " + q(in));
    CHECK(ri.exit_code == 3);
    CHECK_THAT(ri.err, Catch::Contains(bad.string()));
  }
}

TEST_CASE("cli: FP8 weights without a usable scale exit 3 before writing anything", "[cli]") {
  TempDir tmp;
  const fs::path in = tmp / "in", out = tmp / "out";
  const std::string ok = "model.layers.0.ok.weight";
  const std::vector<Tensor> good = {
      {ok, DType::F8_E4M3, {2, 4}, std::string(8, '\x38')},
      {ok + "_scale_inv", DType::F32, {}, raw(std::vector<float>{1.0f})},
      {"model.norm.weight", DType::BF16, {4}, std::string(8, '\x3f')},
  };
  struct Case {
    std::string what;
    Tensor weight;
    std::vector<Tensor> scale;
    std::vector<std::string> words;
  };
  const std::string w = "model.layers.3.mlp.up_proj.weight";
  const std::vector<Case> cases = {
      {"no scale at all", {w, DType::F8_E4M3, {2, 4}, std::string(8, '\x38')}, {}, {w, w + "_scale_inv"}},
      {"E5M2 without scale", {w, DType::F8_E5M2, {2, 4}, std::string(8, '\x38')}, {}, {w}},
      {"F32 scale [3,3] for [130,200]",
       {w, DType::F8_E4M3, {130, 200}, std::string(26000, '\x38')},
       {{w + "_scale_inv", DType::F32, {3, 3}, raw(std::vector<float>(9, 1.0f))}},
       {w, w + "_scale_inv", "[130, 200]", "[3, 3]"}},
      {"U8 scale [3,2] for [3,70]",
       {w, DType::F8_E4M3, {3, 70}, std::string(210, '\x38')},
       {{w + "_scale_inv", DType::U8, {3, 2}, std::string(6, '\x7f')}},
       {w, w + "_scale_inv"}},
      {"U8 scalar scale",
       {w, DType::F8_E4M3, {3, 70}, std::string(210, '\x38')},
       {{w + "_scale_inv", DType::U8, {}, std::string(1, '\x7f')}},
       {w, w + "_scale_inv"}},
      {"I32 scale",
       {w, DType::F8_E4M3, {2, 4}, std::string(8, '\x38')},
       {{w + "_scale_inv", DType::I32, {}, raw(std::vector<int32_t>{1})}},
       {w, w + "_scale_inv"}},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    fs::remove_all(in);
    fs::remove_all(out);
    std::vector<Tensor> second = {c.weight};
    second.insert(second.end(), c.scale.begin(), c.scale.end());
    write_checkpoint(in, {good, second});
    const RunResult r = cli("convert --in " + q(in) + " --out " + q(out) + " --dtype f32");
    CHECK(r.exit_code == 3);
    CHECK(one_error_line(r.err));
    for (const auto& word : c.words) CHECK_THAT(r.err, Catch::Contains(word));
    CHECK_THAT(r.err, Catch::Contains("model-00002-of-00002.safetensors"));
    check_nothing_finished(out);

    // The same with an existing non-empty --out and --overwrite: the old files stay as they were.
    fs::create_directories(out);
    ckpt::test::write_bytes(out / "model.safetensors", "old weights");
    const RunResult r2 = cli("convert --in " + q(in) + " --out " + q(out) + " --overwrite");
    CHECK(r2.exit_code == 3);
    CHECK(listing(out) == std::vector<std::string>{"model.safetensors"});
    CHECK(ckpt::test::read_bytes(out / "model.safetensors") == "old weights");
  }
}

// =============================================================================================
// 3. I/O

TEST_CASE("cli: a missing input exits 4 and an --out that is a regular file exits 2", "[cli]") {
  TempDir tmp;
  const RunResult r = cli("convert --in " + q(tmp / "does-not-exist") + " --out " + q(tmp / "out"));
  CHECK(r.exit_code == 4);
  CHECK(one_error_line(r.err));
  CHECK_THAT(r.err, Catch::Contains((tmp / "does-not-exist").string()));
  CHECK(!fs::exists(tmp / "out"));
  CHECK(cli("inspect " + q(tmp / "nope")).exit_code == 4);
  CHECK(cli("verify " + q(tmp / "nope") + " " + q(tmp / "nope2")).exit_code == 4);

  write_small(tmp / "in");
  ckpt::test::write_bytes(tmp / "file", "I am a file");
  const RunResult f = cli("convert --in " + q(tmp / "in") + " --out " + q(tmp / "file"));
  CHECK(f.exit_code == 2);
  CHECK(one_error_line(f.err));
  CHECK_THAT(f.err, Catch::Contains((tmp / "file").string()));
  CHECK(ckpt::test::read_bytes(tmp / "file") == "I am a file");
  const RunResult f2 = cli("convert --in " + q(tmp / "in") + " --out " + q(tmp / "file") + " --overwrite");
  CHECK(f2.exit_code == 2);
  CHECK(ckpt::test::read_bytes(tmp / "file") == "I am a file");
}

// =============================================================================================
// 4. Output directory rules

TEST_CASE("cli: a non-empty --out needs --overwrite which replaces the old checkpoint", "[cli]") {
  TempDir tmp;
  const fs::path in = tmp / "in", out = tmp / "out";
  const Mixed m;
  m.write(in);
  fs::create_directories(out);
  const std::map<std::string, std::string> old = {
      {"model-00001-of-00003.safetensors", "stale shard 1"},
      {"model-00002-of-00003.safetensors", "stale shard 2"},
      {"model-00003-of-00003.safetensors", "stale shard 3"},
      {"model.safetensors.index.json", "{\"stale\": true}"},
      {"config.json", "{\"stale\": true}"},
  };
  for (const auto& [name, content] : old) ckpt::test::write_bytes(out / name, content);

  const RunResult r = cli("convert --in " + q(in) + " --out " + q(out));
  CHECK(r.exit_code == 2);
  CHECK(one_error_line(r.err));
  CHECK_THAT(r.err, Catch::Contains("--overwrite"));
  std::vector<std::string> names;
  for (const auto& [name, content] : old) {
    names.push_back(name);
    CHECK(ckpt::test::read_bytes(out / name) == content);
  }
  CHECK(listing(out) == names);

  // --out is the input directory itself: refused even with --overwrite, the input untouched.
  const std::string shard1 = ckpt::test::read_bytes(in / "model-00001-of-00002.safetensors");
  const RunResult same = cli("convert --in " + q(in) + " --out " + q(in) + " --overwrite");
  CHECK(same.exit_code == 2);
  CHECK(ckpt::test::read_bytes(in / "model-00001-of-00002.safetensors") == shard1);

  const RunResult ow = cli("convert --in " + q(in) + " --out " + q(out) + " --overwrite");
  REQUIRE(ow.exit_code == 0);
  const auto after = listing(out);
  for (const auto& name : after) {
    INFO(name);
    CHECK(name.find("ckptconv-partial") == std::string::npos);
    CHECK(!name.starts_with("model-"));  // one output shard: every stale model-* is gone
  }
  CHECK(std::find(after.begin(), after.end(), "model.safetensors") != after.end());
  CHECK(std::find(after.begin(), after.end(), std::string(ckpt::kIndexName)) == after.end());
  m.check_output(out, OutType::BF16);

  // A side file that cannot be published (a directory in its way) fails the run before any shard
  // appears under a final name.
  ckpt::test::write_bytes(in / "tokenizer_config.json", "{}");
  const fs::path blocked = tmp / "blocked";
  fs::create_directories(blocked / "tokenizer_config.json");
  const RunResult b = cli("convert --in " + q(in) + " --out " + q(blocked) + " --overwrite");
  CHECK(b.exit_code == 4);
  for (const auto& name : listing(blocked)) {
    INFO(name);
    CHECK(name == "tokenizer_config.json");
  }
}

// =============================================================================================
// 5. Dequantization values

TEST_CASE("cli: dequantization of every scheme matches values computed from the definitions", "[cli]") {
  TempDir tmp;
  const fs::path in = tmp / "in";
  const Mixed m;
  m.write(in);
  const ckpt::Checkpoint input = ckpt::Checkpoint::open(in);
  for (OutType ot : {OutType::BF16, OutType::F16, OutType::F32}) {
    INFO("--dtype " << dtype_flag(ot));
    const fs::path out = tmp / (std::string("out_") + dtype_flag(ot));
    const RunResult r = cli("convert --in " + q(in) + " --out " + q(out) + " --to dequant --dtype " + dtype_flag(ot));
    REQUIRE(r.exit_code == 0);
    CHECK(r.err.empty());
    m.check_output(out, ot);
    // Copied tensors come straight from the input bytes.
    const ckpt::Checkpoint o = ckpt::Checkpoint::open(out);
    CHECK(tensor_bytes(o, kNorm) == tensor_bytes(input, kNorm));
    CHECK(tensor_bytes(o, kGate) == tensor_bytes(input, kGate));
    // Output files: the header is padded to 8 bytes and carries "format": "pt".
    for (const auto& name : listing(out)) {
      if (!name.ends_with(".safetensors")) continue;
      uint64_t start = 0;
      const Json h = header_of(out / name, &start);
      CHECK(start % 8 == 0);
      CHECK(h.at("__metadata__").at("format") == "pt");
    }
  }
  // Spot checks written out by hand (bf16): the first block's special codes.
  {
    const ckpt::Checkpoint o = ckpt::Checkpoint::open(tmp / "out_bf16");
    const std::string b = tensor_bytes(o, kBlk);
    std::vector<uint16_t> v(b.size() / 2);
    std::memcpy(v.data(), b.data(), b.size());
    CHECK(v[0] == 0x0000);  // +0 * s
    CHECK(v[1] == 0x8000);  // -0 * s keeps its sign
    CHECK(v[2] == 0x7FC0);  // NaN
    CHECK(v[3] == 0x7FC0);  // negative NaN is canonical too
    CHECK(v[4] == ckpt::float_to_bf16(448.0f * 0.0123f));
    CHECK(v[5] == ckpt::float_to_bf16(-448.0f * 0.0123f));
    CHECK(v[6] == ckpt::float_to_bf16(std::ldexp(1.0f, -9) * 0.0123f));
    // the ragged corner block (rows 128-129, cols 128-199) uses scale[1][1] = 250.5
    CHECK(v[129 * 200 + 196] == ckpt::float_to_bf16(448.0f * 250.5f));
    const std::string e5b = tensor_bytes(o, kE5);
    std::vector<uint16_t> e(e5b.size() / 2);
    std::memcpy(e.data(), e5b.data(), e5b.size());
    CHECK(e[0] == 0x7F80);  // +inf * 1.375
    CHECK(e[1] == 0xFF80);  // -inf
    CHECK(e[2] == 0x7FC0);  // NaN
    CHECK(e[6] == ckpt::float_to_bf16(57344.0f * 1.375f));
  }
  // f16: 448 * 250.5 overflows float16 and becomes +inf.
  {
    const ckpt::Checkpoint o = ckpt::Checkpoint::open(tmp / "out_f16");
    const std::string b = tensor_bytes(o, kBlk);
    uint16_t h;
    std::memcpy(&h, b.data() + 2 * (129 * 200 + 196), 2);
    CHECK(h == 0x7C00);
  }
}

TEST_CASE("cli: rows longer than a work item dequantize exactly under a small budget", "[cli]") {
  TempDir tmp;
  const fs::path in = tmp / "in";
  const uint64_t cols = 600013;  // a bf16 row is > 1 MiB: rows are cut mid-row and mid-block
  const auto blk = random_codes(2 * cols, 21), mx = random_codes(2 * cols, 22);
  std::vector<float> blk_scale((cols + 127) / 128);
  for (size_t i = 0; i < blk_scale.size(); ++i) blk_scale[i] = 0.001f * static_cast<float>(i % 97 + 1);
  std::vector<uint8_t> mx_scale(2 * ((cols + 31) / 32));
  for (size_t i = 0; i < mx_scale.size(); ++i) mx_scale[i] = static_cast<uint8_t>(110 + i % 31);
  write_checkpoint(in, {{
      {"a.weight", DType::F8_E4M3, {2, cols}, raw(blk)},
      {"a.weight_scale_inv", DType::F32, {1, blk_scale.size()}, raw(blk_scale)},
      {"b.weight", DType::F8_E4M3, {2, cols}, raw(mx)},
      {"b.weight_scale_inv", DType::U8, {2, (cols + 31) / 32}, raw(mx_scale)},
  }});
  const uint64_t gc = (cols + 31) / 32;
  for (OutType ot : {OutType::BF16, OutType::F32}) {
    const fs::path out = tmp / (std::string("out_") + dtype_flag(ot));
    const RunResult r = cli("convert --in " + q(in) + " --out " + q(out) + " --dtype " + dtype_flag(ot) +
                            " --memory-budget 4MiB --threads 3 --json");
    REQUIRE(r.exit_code == 0);
    const Json j = Json::parse(r.out);
    CHECK(j.at("chunk_bytes").get<uint64_t>() < cols * 2);  // really split
    const ckpt::Checkpoint o = ckpt::Checkpoint::open(out);
    CHECK(tensor_names(o) == std::set<std::string>{"a.weight", "b.weight"});
    check_dequantized(o, "a.weight", ot, 2, cols, blk, Fp8::E4M3,
                      [&](uint64_t, uint64_t jj) { return blk_scale[jj / 128]; });
    check_dequantized(o, "b.weight", ot, 2, cols, mx, Fp8::E4M3,
                      [&](uint64_t i, uint64_t jj) { return std::ldexp(1.0f, int(mx_scale[i * gc + jj / 32]) - 127); });
  }
}

TEST_CASE("cli: a one-element scale of any rank is per-tensor", "[cli]") {
  // SPEC §2: per-tensor scale_inv is "a 0-d or 1-element F32/BF16 tensor"; README: "one element".
  TempDir tmp;
  const fs::path in = tmp / "in", out = tmp / "out";
  const auto a = random_codes(300 * 64, 51), b = random_codes(200 * 72, 52);
  write_checkpoint(in, {{
      {"a.weight", DType::F8_E4M3, {300, 64}, raw(a)},
      {"a.weight_scale_inv", DType::F32, {1, 1}, raw(std::vector<float>{0.75f})},
      {"b.weight", DType::F8_E4M3, {200, 72}, raw(b)},
      {"b.weight_scale_inv", DType::BF16, {1, 1}, raw(std::vector<uint16_t>{0x4040})},  // 3.0
  }});
  const RunResult r = cli("convert --in " + q(in) + " --out " + q(out));
  REQUIRE(r.exit_code == 0);
  const ckpt::Checkpoint o = ckpt::Checkpoint::open(out);
  check_dequantized(o, "a.weight", OutType::BF16, 300, 64, a, Fp8::E4M3, [](uint64_t, uint64_t) { return 0.75f; });
  check_dequantized(o, "b.weight", OutType::BF16, 200, 72, b, Fp8::E4M3, [](uint64_t, uint64_t) { return 3.0f; });
}

// =============================================================================================
// 6. config.json and side files

TEST_CASE("cli: config.json loses quantization_config and names the output dtype", "[cli]") {
  TempDir tmp;
  // weight_block_size [64, 32] in the config overrides 128x128: [130,200] takes a [3,7] grid.
  const std::string w = "model.layers.0.mlp.down_proj.weight";
  const auto codes = random_codes(130 * 200, 31);
  std::vector<float> scale(3 * 7);
  for (size_t i = 0; i < scale.size(); ++i) scale[i] = 0.5f + 0.125f * static_cast<float>(i);
  const std::string tokenizer = "{\"model_max_length\":  4096,\n  \"x\": \"\\u00e9\xc3\xa9\"   }\r\n";
  const std::string extra = "any bytes \x01\x02 at all";
  struct Variant {
    std::string where;
    nlohmann::ordered_json config;
  };
  const nlohmann::ordered_json qc = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"weight_block_size", {64, 32}}};
  const std::vector<Variant> variants = {
      {"top level",
       {{"architectures", {"DeepseekV3ForCausalLM"}}, {"model_type", "deepseek_v3"}, {"hidden_size", 200},
        {"torch_dtype", "bfloat16"}, {"quantization_config", qc}}},
      {"text_config",
       {{"architectures", {"SomethingForConditionalGeneration"}}, {"model_type", "vlm"},
        {"text_config", {{"hidden_size", 200}, {"torch_dtype", "bfloat16"}, {"quantization_config", qc}}},
        {"vision_config", {{"hidden_size", 16}}}}},
      {"both levels, top level first",
       {{"architectures", {"Mistral3ForConditionalGeneration"}}, {"model_type", "mistral3"},
        {"quantization_config", qc}, {"torch_dtype", "bfloat16"},
        {"text_config", {{"hidden_size", 200}, {"torch_dtype", "bfloat16"}, {"quantization_config", qc}}},
        {"vision_config", {{"hidden_size", 16}}}}},
  };
  for (const auto& v : variants) {
    INFO("quantization_config at " << v.where);
    const fs::path in = tmp / ("in_" + std::to_string(&v - variants.data()));
    write_checkpoint(in, {{
        {w, DType::F8_E4M3, {130, 200}, raw(codes)},
        {w + "_scale_inv", DType::F32, {3, 7}, raw(scale)},
        {"model.norm.weight", DType::BF16, {2}, std::string("\x80\x3f\x00\x40", 4)},
    }});
    ckpt::test::write_bytes(in / "config.json", v.config.dump(2));
    ckpt::test::write_bytes(in / "tokenizer_config.json", tokenizer);
    ckpt::test::write_bytes(in / "generation_config.txt", extra);
    for (OutType ot : {OutType::BF16, OutType::F16, OutType::F32}) {
      INFO("--dtype " << dtype_flag(ot));
      const fs::path out = tmp / ("out_" + std::to_string(&v - variants.data()) + dtype_flag(ot));
      const RunResult r = cli("convert --in " + q(in) + " --out " + q(out) + " --dtype " + dtype_flag(ot));
      CHECK(r.exit_code == 0);
      if (r.exit_code != 0) {
        check_nothing_finished(out);  // SPEC §5: a failed or killed run leaves nothing finished
        continue;
      }
      const auto cfg = nlohmann::ordered_json::parse(ckpt::test::read_bytes(out / "config.json"));
      CHECK(!cfg.contains("quantization_config"));
      CHECK(cfg.value("torch_dtype", "") == torch_name(ot));
      CHECK(cfg.at("architectures") == v.config.at("architectures"));
      CHECK(cfg.at("model_type") == v.config.at("model_type"));
      if (v.config.contains("text_config")) {
        REQUIRE(cfg.contains("text_config"));
        CHECK(!cfg["text_config"].contains("quantization_config"));
        CHECK(cfg["text_config"].value("torch_dtype", "") == torch_name(ot));
        CHECK(cfg["text_config"].at("hidden_size") == 200);
        CHECK(cfg.at("vision_config") == v.config.at("vision_config"));
      } else {
        CHECK(cfg.at("hidden_size") == 200);
      }
      CHECK(ckpt::test::read_bytes(out / "tokenizer_config.json") == tokenizer);
      CHECK(ckpt::test::read_bytes(out / "generation_config.txt") == extra);
      const ckpt::Checkpoint o = ckpt::Checkpoint::open(out);
      check_dequantized(o, w, ot, 130, 200, codes, Fp8::E4M3,
                        [&](uint64_t i, uint64_t j) { return scale[(i / 64) * 7 + j / 32]; });
    }
  }
}

// =============================================================================================
// 7. Sharding

TEST_CASE("cli: --max-shard-size splits the output into numbered shards with an index", "[cli]") {
  TempDir tmp;
  const fs::path in = tmp / "in";
  std::vector<Tensor> ts;
  uint64_t total = 0;
  for (int k = 1; k <= 12; ++k) {
    const auto b = random_codes(200ull * k, 40 + k);
    ts.push_back({"layers." + std::to_string(k) + ".weight", DType::BF16, {100ull * k}, std::string(b.begin(), b.end())});
    total += b.size();
  }
  {
    const auto b = random_codes(12000, 39);  // one tensor alone larger than a shard
    ts.insert(ts.begin() + 5, Tensor{"big.weight", DType::F32, {3000}, std::string(b.begin(), b.end())});
    total += b.size();
  }
  write_checkpoint(in, {ts});
  const uint64_t max = 3000;

  const fs::path out = tmp / "out";
  const RunResult r = cli("convert --in " + q(in) + " --out " + q(out) + " --max-shard-size 3KB --json");
  REQUIRE(r.exit_code == 0);
  const Json summary = Json::parse(r.out);
  std::vector<std::string> shards;
  for (const auto& name : listing(out))
    if (name.ends_with(".safetensors")) shards.push_back(name);
  const size_t n = shards.size();
  REQUIRE(n > 2);
  CHECK(summary.at("shards").get<size_t>() == n);
  char buf[64];
  for (size_t i = 0; i < n; ++i) {
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    CHECK(shards[i] == buf);
  }
  // Each shard holds at most `max` bytes of tensor data unless it is a single larger tensor.
  std::map<std::string, std::string> where;
  uint64_t seen = 0;
  for (const auto& s : shards) {
    INFO(s);
    uint64_t start = 0;
    const Json h = header_of(out / s, &start);
    CHECK(start % 8 == 0);
    CHECK(h.at("__metadata__").at("format") == "pt");
    uint64_t bytes = 0, count = 0;
    for (const auto& [name, t] : h.items()) {
      if (name == "__metadata__") continue;
      ++count;
      bytes += t.at("data_offsets")[1].get<uint64_t>() - t.at("data_offsets")[0].get<uint64_t>();
      where[name] = s;
    }
    CHECK(count > 0);
    CHECK((bytes <= max || count == 1));
    CHECK(fs::file_size(out / s) == start + bytes);
    seen += bytes;
  }
  CHECK(seen == total);
  // The index: total_size and a weight_map that covers every tensor and names its shard.
  const Json index = Json::parse(ckpt::test::read_bytes(out / ckpt::kIndexName));
  CHECK(index.at("metadata").at("total_size").get<uint64_t>() == total);
  const auto& wm = index.at("weight_map");
  CHECK(wm.size() == ts.size());
  for (const auto& t : ts) {
    INFO(t.name);
    REQUIRE(wm.contains(t.name));
    CHECK(wm[t.name].get<std::string>() == where[t.name]);
  }
  CHECK(cli("verify " + q(in) + " " + q(out)).exit_code == 0);

  // Without a limit the same checkpoint is one model.safetensors.
  const fs::path one = tmp / "one";
  REQUIRE(cli("convert --in " + q(in) + " --out " + q(one)).exit_code == 0);
  std::vector<std::string> files;
  for (const auto& name : listing(one))
    if (name.ends_with(".safetensors")) files.push_back(name);
  CHECK(files == std::vector<std::string>{"model.safetensors"});
  CHECK(cli("verify " + q(in) + " " + q(one)).exit_code == 0);
  CHECK(cli("verify " + q(out) + " " + q(one)).exit_code == 0);
}

// =============================================================================================
// 8. JSON summaries and inspect

TEST_CASE("cli: convert --json and inspect report the checkpoint", "[cli]") {
  TempDir tmp;
  const fs::path in = tmp / "in", out = tmp / "out";
  const Mixed m;
  m.write(in);
  const ckpt::Checkpoint input = ckpt::Checkpoint::open(in);

  const RunResult r = cli("convert --in " + q(in) + " --out " + q(out) + " --dtype f32 --json");
  REQUIRE(r.exit_code == 0);
  Json j;
  REQUIRE_NOTHROW(j = Json::parse(r.out));  // stdout is only the JSON document
  const ckpt::Checkpoint o = ckpt::Checkpoint::open(out);
  uint64_t out_bytes = 0;
  for (const auto& t : o.tensors()) out_bytes += t.info->nbytes();
  CHECK(j.at("input_tensors").get<uint64_t>() == input.tensors().size());
  CHECK(j.at("input_tensors").get<uint64_t>() == 16);
  CHECK(j.at("output_tensors").get<uint64_t>() == 8);
  CHECK(j.at("output_tensors").get<uint64_t>() == o.tensors().size());
  CHECK(j.at("dequantized").get<uint64_t>() == 6);
  CHECK(j.at("dropped").get<uint64_t>() == m.dropped.size());
  CHECK(j.at("output_tensors").get<uint64_t>() + j.at("dropped").get<uint64_t>() == input.tensors().size());
  CHECK(j.at("output_bytes").get<uint64_t>() == out_bytes);
  CHECK(j.at("output_bytes").get<uint64_t>() == 4 * (130 * 200 + 129 * 130 + 3 * 70 + 4 * 33 + 16 * 24 + 8 * 40) + 400 + 128);
  CHECK(j.at("peak_rss_bytes").get<uint64_t>() > 0);
  CHECK(j.at("shards").get<uint64_t>() == 1);
  CHECK(j.at("device") == "cpu");  // --device auto: the CPU path, the only one conversions run on yet
  CHECK_FALSE(j.contains("remote"));  // a local input fetches nothing
  CHECK_FALSE(j.contains("part"));

  // The plain summary is one line on stdout with the counts.
  const RunResult plain = cli("convert --in " + q(in) + " --out " + q(tmp / "out2"));
  REQUIRE(plain.exit_code == 0);
  CHECK_THAT(plain.out, Catch::Contains("8 tensors") && Catch::Contains("6 dequantized") && Catch::Contains("8 dropped"));

  // inspect --json
  const RunResult ij = cli("inspect " + q(in) + " --json");
  REQUIRE(ij.exit_code == 0);
  const Json ins = Json::parse(ij.out);
  CHECK(ins.at("tensor_count").get<uint64_t>() == 16);
  CHECK(ins.at("fp8_weights").get<uint64_t>() == 6);
  CHECK(ins.at("files").get<uint64_t>() == 2);
  std::map<std::string, Json> rows;
  for (const auto& t : ins.at("tensors")) rows[t.at("name").get<std::string>()] = t;
  CHECK(rows.size() == 16);
  CHECK(rows.at(kBlk).value("quantization", "") == "block 128x128");
  CHECK(rows.at(kBlk2).value("quantization", "") == "block 128x128");
  CHECK(rows.at(kMx).value("quantization", "") == "mxfp8 1x32");
  CHECK(rows.at(kMx2).value("quantization", "") == "mxfp8 1x32");
  CHECK(rows.at(kPt).value("quantization", "") == "per-tensor");
  CHECK(rows.at(kE5).value("quantization", "") == "per-tensor");
  CHECK(rows.at(kBlk).at("dtype") == "F8_E4M3");
  CHECK(rows.at(kBlk).at("shape") == Json({130, 200}));
  CHECK(rows.at(kBlk).at("bytes").get<uint64_t>() == 26000);
  CHECK(rows.at(kE5 + "_scale_inv").at("file") == "model-00002-of-00002.safetensors");
  CHECK(!rows.at(kNorm).contains("quantization"));
  const RunResult it = cli("inspect " + q(in));
  REQUIRE(it.exit_code == 0);
  CHECK_THAT(it.out, Catch::Contains("block 128x128") && Catch::Contains("mxfp8 1x32") &&
                         Catch::Contains("per-tensor") && Catch::Contains(kBlk));

  // The output has no FP8 left; a checkpoint with problems is reported, not refused.
  const Json io = Json::parse(cli("inspect " + q(out) + " --json").out);
  CHECK(io.at("tensor_count").get<uint64_t>() == 8);
  CHECK(io.at("fp8_weights").get<uint64_t>() == 0);

  const fs::path bad = tmp / "bad";
  write_checkpoint(bad, {{
      {"lonely.weight", DType::F8_E4M3, {2, 4}, std::string(8, '\x38')},
      {"misfit.weight", DType::F8_E4M3, {130, 200}, std::string(26000, '\x38')},
      {"misfit.weight_scale_inv", DType::F32, {3, 3}, raw(std::vector<float>(9, 1.0f))},
  }});
  const RunResult ib = cli("inspect " + q(bad) + " --json");
  CHECK(ib.exit_code == 0);
  const Json bj = Json::parse(ib.out);
  CHECK(bj.at("fp8_weights").get<uint64_t>() == 2);
  CHECK(bj.at("tensor_count").get<uint64_t>() == 3);
  std::map<std::string, std::string> q2;
  for (const auto& t : bj.at("tensors")) q2[t.at("name").get<std::string>()] = t.value("quantization", "");
  CHECK(q2.at("lonely.weight") == "NO SCALE");
  CHECK(q2.at("misfit.weight") != "");
  CHECK(q2.at("misfit.weight").find("block") == std::string::npos);
  const RunResult ibt = cli("inspect " + q(bad));
  CHECK(ibt.exit_code == 0);
  CHECK_THAT(ibt.out, Catch::Contains("NO SCALE"));
}

// inspect --json writes its document as it goes; it must still be nlohmann's dump(2) of the
// report, byte for byte: escapes, a scalar's and an empty tensor's shapes, rows without and with
// a quantization, and a checkpoint without tensors.
TEST_CASE("cli: inspect --json is byte for byte the indented JSON document", "[cli]") {
  TempDir tmp;
  const fs::path in = tmp / "in";
  const std::string odd = "we\"ird\\ n\xc3\xa4me\t\xf0\x9f\x98\x80";  // quote, backslash, ä, tab, emoji
  write_checkpoint(in, {{{odd, DType::F32, {}, raw(std::vector<float>{1.0f})},
                         {"x.weight", DType::F8_E4M3, {2, 3}, std::string(6, '\x38')}},
                        {{"e", DType::U8, {0}, ""},
                         {"y.weight", DType::F8_E4M3, {2, 3}, std::string(6, '\x38')},
                         {"y.weight_scale_inv", DType::F32, {1}, raw(std::vector<float>{0.5f})},
                         {"z", DType::BF16, {1, 2, 1}, std::string(4, '\0')}}});
  using OJson = nlohmann::ordered_json;
  const std::string f1 = "model-00001-of-00002.safetensors", f2 = "model-00002-of-00002.safetensors";
  const OJson want = {
      {"path", in.string()},
      {"files", 2},
      {"tensor_count", 6},
      {"bytes", 24},
      {"parameters", 16},
      {"fp8_weights", 2},
      {"fp8_without_usable_scale", 1},
      {"by_dtype",
       {{"BF16", {{"tensors", 1}, {"bytes", 4}}},
        {"F32", {{"tensors", 2}, {"bytes", 8}}},
        {"F8_E4M3", {{"tensors", 2}, {"bytes", 12}}},
        {"U8", {{"tensors", 1}, {"bytes", 0}}}}},
      {"tensors",
       {{{"name", odd}, {"dtype", "F32"}, {"shape", OJson::array()}, {"bytes", 4}, {"file", f1}},
        {{"name", "x.weight"}, {"dtype", "F8_E4M3"}, {"shape", {2, 3}}, {"bytes", 6}, {"file", f1},
         {"quantization", "NO SCALE"}},
        {{"name", "e"}, {"dtype", "U8"}, {"shape", OJson::array({0})}, {"bytes", 0}, {"file", f2}},
        {{"name", "y.weight"}, {"dtype", "F8_E4M3"}, {"shape", {2, 3}}, {"bytes", 6}, {"file", f2},
         {"quantization", "per-tensor"}},
        {{"name", "y.weight_scale_inv"}, {"dtype", "F32"}, {"shape", OJson::array({1})}, {"bytes", 4}, {"file", f2}},
        {{"name", "z"}, {"dtype", "BF16"}, {"shape", {1, 2, 1}}, {"bytes", 4}, {"file", f2}}}}};
  const RunResult r = cli("inspect " + q(in) + " --json");
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == want.dump(2) + "\n");

  const fs::path none = tmp / "none.safetensors";
  ckpt::test::write_bytes(none, ckpt::test::safetensors_bytes("{}", ""));
  const OJson empty = {{"path", none.string()}, {"files", 1}, {"tensor_count", 0}, {"bytes", 0}, {"parameters", 0},
                       {"fp8_weights", 0}, {"fp8_without_usable_scale", 0}, {"by_dtype", OJson::object()},
                       {"tensors", OJson::array()}};
  const RunResult e = cli("inspect " + q(none) + " --json");
  REQUIRE(e.exit_code == 0);
  CHECK(e.out == empty.dump(2) + "\n");
}

// =============================================================================================
// 9. verify

TEST_CASE("cli: verify compares by the conformance rule", "[cli]") {
  TempDir tmp;
  auto make = [&](const std::string& dir, std::vector<uint16_t> x, std::vector<float> y, bool with_z = true,
                  std::vector<uint64_t> yshape = {3}) {
    std::vector<Tensor> ts = {
        {"x", DType::BF16, {x.size()}, raw(x)},
        {"y", DType::F32, yshape, raw(y)},
    };
    if (with_z) ts.push_back({"z", DType::I32, {2}, raw(std::vector<int32_t>{1, 2})});
    write_checkpoint(tmp / dir, {ts});
    return tmp / dir;
  };
  const std::vector<uint16_t> x = {0x3F80, 0x7FC0, 0x0000, 0x4000};
  const std::vector<float> y = {1.0f, 2.5f, -3.0f};
  const fs::path a = make("a", x, y);
  auto verify = [&](const fs::path& b, const std::string& extra = "") {
    return cli("verify " + q(a) + " " + q(b) + extra);
  };

  const RunResult same = verify(make("same", x, y));
  CHECK(same.exit_code == 0);
  CHECK_THAT(same.out, Catch::Contains("match"));
  // also in a different shard layout
  {
    write_checkpoint(tmp / "split", {{{"z", DType::I32, {2}, raw(std::vector<int32_t>{1, 2})}},
                                     {{"y", DType::F32, {3}, raw(y)}, {"x", DType::BF16, {4}, raw(x)}}});
    CHECK(verify(tmp / "split").exit_code == 0);
  }
  {  // one byte changed in a float tensor
    auto y2 = y;
    y2[1] = std::bit_cast<float>(std::bit_cast<uint32_t>(y2[1]) ^ 1u);
    const RunResult r = verify(make("ybyte", x, y2));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.out + r.err, Catch::Contains("'y'"));
    CHECK_THAT(r.out + r.err, !Catch::Contains("'x'"));
  }
  {  // and in an integer tensor
    write_checkpoint(tmp / "zbyte", {{{"x", DType::BF16, {4}, raw(x)}, {"y", DType::F32, {3}, raw(y)},
                                      {"z", DType::I32, {2}, raw(std::vector<int32_t>{1, 3})}}});
    const RunResult r = verify(tmp / "zbyte");
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.out + r.err, Catch::Contains("'z'"));
  }
  {  // NaN with another sign and payload still matches; in F32 too
    auto x2 = x;
    x2[1] = 0xFFC1;
    auto ya = y, yb = y;
    ya[2] = std::bit_cast<float>(0x7FC00000u);
    yb[2] = std::bit_cast<float>(0xFF800001u);
    const fs::path a2 = make("nan_a", x, ya), b2 = make("nan_b", x2, yb);
    const RunResult r = cli("verify " + q(a2) + " " + q(b2));
    CHECK(r.exit_code == 0);
  }
  {  // +0 vs -0 differs
    auto x2 = x;
    x2[2] = 0x8000;
    const RunResult r = verify(make("negzero", x2, y));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.out + r.err, Catch::Contains("'x'"));
  }
  {  // NaN vs a number differs
    auto x2 = x;
    x2[1] = 0x3F80;
    CHECK(verify(make("nan_num", x2, y)).exit_code == 1);
  }
  {  // --atol
    auto y2 = y;
    y2[0] = 1.0001f;
    const fs::path b = make("close", x, y2);
    CHECK(verify(b).exit_code == 1);
    CHECK(verify(b, " --atol 0.001").exit_code == 0);
    CHECK(verify(b, " --atol 0.000001").exit_code == 1);
    y2[0] = 1.5f;
    const fs::path far = make("far", x, y2);
    const RunResult r = verify(far, " --atol 0.001");
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.out + r.err, Catch::Contains("'y'"));
    CHECK(verify(far, " --atol 0.6").exit_code == 0);
  }
  {  // a tensor only on one side, either side
    const fs::path b = make("noz", x, y, false);
    const RunResult r = verify(b);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.out + r.err, Catch::Contains("'z'"));
    const RunResult r2 = cli("verify " + q(b) + " " + q(a));
    CHECK(r2.exit_code == 1);
    CHECK_THAT(r2.out + r2.err, Catch::Contains("'z'"));
  }
  {  // same bytes, different shape
    const RunResult r = verify(make("shape", x, y, true, {1, 3}));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.out + r.err, Catch::Contains("'y'"));
  }
}

// =============================================================================================
// 10. Families

TEST_CASE("cli: every synth family dequantizes to a checkpoint without FP8", "[cli]") {
  TempDir tmp;
  const RunResult help = cli("synth --help");
  REQUIRE(help.exit_code == 0);
  REQUIRE(!ckpt::synth_families().empty());
  int without_fp8 = 0;
  for (const auto& fam : ckpt::synth_families()) {
    INFO("family " << fam);
    CHECK_THAT(help.out, Catch::Contains(fam));
    const fs::path in = tmp / ("in_" + fam), out = tmp / ("out_" + fam);
    REQUIRE(cli("synth --family " + fam + " --out " + q(in) +
                " --layers 1 --experts 2 --hidden 64 --inter 32 --seed 5").exit_code == 0);
    const ckpt::Checkpoint input = ckpt::Checkpoint::open(in);
    // What should come out: every tensor but the consumed scales and siblings.
    std::set<std::string> fp8, consumed, expected;
    for (const auto& t : input.tensors())
      if (ckpt::is_fp8_weight(t.info->dtype)) {
        fp8.insert(t.name());
        consumed.insert(t.name() + "_scale_inv");
        if (t.name().ends_with(".weight")) {
          const std::string base = t.name().substr(0, t.name().size() - 7);
          for (const char* s : {".activation_scale", ".input_scale"})
            if (input.find(base + s)) consumed.insert(base + s);
        }
      }
    for (const auto& t : input.tensors())
      if (!consumed.count(t.name())) expected.insert(t.name());

    const RunResult r = cli("convert --in " + q(in) + " --out " + q(out) + " --to dequant --json");
    REQUIRE(r.exit_code == 0);
    const Json j = Json::parse(r.out);
    CHECK(j.at("dequantized").get<uint64_t>() == fp8.size());
    CHECK(j.at("dropped").get<uint64_t>() == consumed.size());
    const ckpt::Checkpoint o = ckpt::Checkpoint::open(out);
    CHECK(tensor_names(o) == expected);
    for (const auto& t : o.tensors()) {
      INFO(t.name());
      CHECK(!ckpt::is_fp8_weight(t.info->dtype));
      CHECK(!t.name().ends_with("_scale_inv"));
      CHECK(t.info->shape == shape_of(input, t.name()));
      if (fp8.count(t.name())) CHECK(ckpt::dtype_name(t.info->dtype) == "BF16");
      else CHECK(tensor_bytes(o, t.name()) == tensor_bytes(input, t.name()));
    }
    CHECK(ckpt::test::read_bytes(out / "tokenizer_config.json") == ckpt::test::read_bytes(in / "tokenizer_config.json"));
    const Json cfg = Json::parse(ckpt::test::read_bytes(out / "config.json"));
    CHECK(!cfg.contains("quantization_config"));
    if (cfg.contains("text_config")) CHECK(!cfg["text_config"].contains("quantization_config"));
    if (fp8.empty()) {
      ++without_fp8;
      const RunResult v = cli("verify " + q(in) + " " + q(out));
      CHECK(v.exit_code == 0);
    } else {
      CHECK(cfg.value("torch_dtype", "") == "bfloat16");
      CHECK(cli("verify " + q(in) + " " + q(out)).exit_code == 1);
    }
  }
  CHECK(without_fp8 < static_cast<int>(ckpt::synth_families().size()));
}

TEST_CASE("cli: results do not depend on threads or memory budget", "[cli]") {
  TempDir tmp;
  for (const std::string fam : {"deepseek_v3", "minimax_m3"}) {
    INFO("family " << fam);
    const fs::path in = tmp / ("in_" + fam);
    REQUIRE(cli("synth --family " + fam + " --out " + q(in) +
                " --layers 1 --experts 2 --hidden 2048 --inter 1024 --seed 3").exit_code == 0);
    uint64_t largest = 0;
    {
      const ckpt::Checkpoint input = ckpt::Checkpoint::open(in);
      for (const auto& t : input.tensors())
        if (ckpt::is_fp8_weight(t.info->dtype)) largest = std::max(largest, t.info->numel() * 2);
    }
    struct Run {
      std::string name, args;
    };
    const std::vector<Run> runs = {
        {"t1", "--threads 1"},
        {"t2", "--threads 2"},
        {"t1b", "--threads 1 --memory-budget 4MiB"},
        {"t2b", "--threads 2 --memory-budget 4MiB"},
    };
    std::map<std::string, std::string> first;  // file name -> bytes of the first run
    for (const auto& run : runs) {
      INFO(run.args);
      const fs::path out = tmp / (fam + "_" + run.name);
      const RunResult r = cli("convert --in " + q(in) + " --out " + q(out) + " --json " + run.args);
      REQUIRE(r.exit_code == 0);
      const Json j = Json::parse(r.out);
      if (run.args.find("4MiB") != std::string::npos)
        CHECK(j.at("chunk_bytes").get<uint64_t>() < largest);  // big weights become several items
      {
        const ckpt::Checkpoint o = ckpt::Checkpoint::open(out);
        for (const auto& t : o.tensors()) CHECK(!ckpt::is_fp8_weight(t.info->dtype));
      }
      if (first.empty()) {
        for (const auto& name : listing(out)) first[name] = ckpt::test::read_bytes(out / name);
        REQUIRE(first.size() > 2);
        continue;
      }
      // Byte-identical files under the same names as the first run.
      std::vector<std::string> names;
      for (const auto& [name, _] : first) names.push_back(name);
      CHECK(listing(out) == names);
      for (const auto& [name, bytes] : first) {
        INFO(name << " of " << run.args << " vs " << runs[0].args);
        const bool same = fs::exists(out / name) && ckpt::test::read_bytes(out / name) == bytes;
        CHECK(same);
      }
      CHECK(cli("verify " + q(tmp / (fam + "_" + runs[0].name)) + " " + q(out)).exit_code == 0);
      fs::remove_all(out);
    }
  }
}

TEST_CASE("cli: synth --sparse writes headers only, and convert --dry-run writes nothing", "[cli]") {
  TempDir tmp;
  const fs::path sparse = tmp / "sparse", dense = tmp / "dense";
  const std::string dims = " --layers 2 --experts 4 --hidden 256 --inter 128 --shards 2";
  REQUIRE(cli("synth --family minimax_m2 --out " + q(sparse) + dims + " --sparse").exit_code == 0);
  REQUIRE(cli("synth --family minimax_m2 --out " + q(dense) + dims).exit_code == 0);
  // The same tensors, names, dtypes and shapes; every byte of the sparse one is zero.
  const ckpt::Checkpoint s = ckpt::Checkpoint::open(sparse), d = ckpt::Checkpoint::open(dense);
  REQUIRE(s.tensors().size() == d.tensors().size());
  uint64_t nonzero = 0;
  for (const auto& t : s.tensors()) {
    const auto* other = d.find(t.name());
    REQUIRE(other != nullptr);
    CHECK(other->info->shape == t.info->shape);
    CHECK(other->info->dtype == t.info->dtype);
    const uint8_t* p = t.file->data(*t.info);
    for (uint64_t i = 0; i < t.info->nbytes(); ++i) nonzero += p[i] != 0;
  }
  CHECK(nonzero == 0);

  const fs::path out = tmp / "out";
  const RunResult r = cli("convert --in " + q(dense) + " --out " + q(out) + " --family minimax_m2 --to native --dry-run --json");
  REQUIRE(r.exit_code == 0);
  const auto j = Json::parse(r.out);
  CHECK(j.at("output_tensors").get<uint64_t>() > 0);
  CHECK(j.at("output_bytes").get<uint64_t>() > 0);
  CHECK(!fs::exists(out));
}
