// Model-family conversions end to end (SPEC §3, §4): HF -> native -> HF -> native round trips for
// every family, the FP8 round trip with real re-quantization, the grouped-expert layout checked
// element by element on a hand-built checkpoint, expert parallelism against the full conversion,
// the invalid inputs that must stop a run, and the MTP switches. Every case drives the real binary
// through a shell; the library is only used to build inputs and read outputs.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cstring>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "formats/checkpoint.h"
#include "pipeline/verify.h"
#include "tests/support.h"
#include "transforms/fp8.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using ckpt::Checkpoint;
using ckpt::DType;
using ckpt::TensorRef;
using ckpt::test::RunResult;
using ckpt::test::TempDir;
using ckpt::test::TensorSpec;
using OJson = nlohmann::ordered_json;

static_assert(std::endian::native == std::endian::little, "tests read little-endian bytes with memcpy");

namespace {

const fs::path kConf = fs::path(CKPT_TEST_DATA) / "conformance";

// ---------------------------------------------------------------------------------------------
// Running the CLI

std::string q(const fs::path& p) {
  std::string s(1, '\'');
  s += p.string();
  s += '\'';
  return s;
}

RunResult cli(const std::string& args) {
  RunResult r = ckpt::test::run_cli(args);
  UNSCOPED_INFO("ckptconv " << args << "\n  exit " << r.exit_code << "\n  stdout: " << r.out
                            << "\n  stderr: " << r.err);
  return r;
}

RunResult convert(const fs::path& in, const fs::path& out, const std::string& family, const std::string& extra) {
  return cli("convert --in " + q(in) + " --out " + q(out) + " --family " + family + " " + extra);
}

void convert_ok(const fs::path& in, const fs::path& out, const std::string& family, const std::string& extra) {
  REQUIRE(convert(in, out, family, extra).exit_code == 0);
}

const char* kSmall = "--layers 2 --experts 4 --hidden 256 --inter 128";

void synth(const std::string& family, const fs::path& out, const std::string& extra = kSmall) {
  REQUIRE(cli("synth --family " + family + " --out " + q(out) + " " + extra).exit_code == 0);
}

// ---------------------------------------------------------------------------------------------
// Reading checkpoints

std::set<std::string> names_of(const Checkpoint& c) {
  std::set<std::string> s;
  for (const auto& t : c.tensors()) s.insert(t.name());
  return s;
}

const ckpt::TensorInfo& info_of(const Checkpoint& c, const std::string& name) {
  const TensorRef* r = c.find(name);
  INFO("tensor " << name);
  REQUIRE(r != nullptr);
  return *r->info;
}

std::string bytes_of(const Checkpoint& c, const std::string& name) {
  const TensorRef* r = c.find(name);
  if (!r) return "<missing " + name + ">";
  return std::string(reinterpret_cast<const char*>(r->file->data(*r->info)), r->info->nbytes());
}

std::vector<float> floats_of(const Checkpoint& c, const std::string& name) {
  const TensorRef* r = c.find(name);
  INFO("tensor " << name);
  REQUIRE(r != nullptr);
  const uint8_t* p = r->file->data(*r->info);
  const uint64_t n = r->info->numel();
  std::vector<float> out(n);
  for (uint64_t i = 0; i < n; ++i) {
    if (r->info->dtype == DType::F32) {
      std::memcpy(&out[i], p + 4 * i, 4);
    } else if (r->info->dtype == DType::BF16) {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      out[i] = ckpt::bf16_to_float(h);
    } else {
      FAIL("unexpected dtype " << ckpt::dtype_name(r->info->dtype));
    }
  }
  return out;
}

using Shape = std::vector<uint64_t>;

std::string shape_text(const Shape& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

// Both checkpoints hold the same tensors by the conformance rule (library verify).
void require_same(const fs::path& a, const fs::path& b) {
  const Checkpoint ca = Checkpoint::open(a), cb = Checkpoint::open(b);
  const ckpt::VerifyReport r = ckpt::verify(ca, cb, {});
  std::string shown;
  for (size_t i = 0; i < r.problems.size() && i < 8; ++i) shown += "\n  " + r.problems[i];
  INFO("verify " << a.string() << " " << b.string() << ": " << r.problems.size() << " problem(s)" << shown);
  CHECK(r.compared == ca.tensors().size());
  CHECK(r.compared > 0);
  REQUIRE(r.problems.empty());
}

// ---------------------------------------------------------------------------------------------
// Writing inputs

void write_checkpoint(const fs::path& dir, const std::vector<std::vector<TensorSpec>>& shards, const OJson& config) {
  ckpt::test::write_checkpoint(dir, shards, config.is_null() ? std::string() : config.dump(2));
}

// A copy of `src` as one shard, without the tensors `drop` selects and with its config.json
// passed through `edit`.
void rewrite(const fs::path& src, const fs::path& dst, const std::function<bool(const std::string&)>& drop,
             const std::function<void(OJson&)>& edit = {}) {
  const Checkpoint c = Checkpoint::open(src);
  std::vector<TensorSpec> kept;
  for (const auto& t : c.tensors())
    if (!drop(t.name())) kept.push_back({t.name(), t.info->dtype, t.info->shape, bytes_of(c, t.name())});
  REQUIRE(c.config().has_value());
  OJson cfg = *c.config();
  if (edit) edit(cfg);
  write_checkpoint(dst, {kept}, cfg);
}

std::string bf16_bytes(const std::vector<float>& v) {
  std::vector<uint16_t> h;
  for (float f : v) h.push_back(ckpt::float_to_bf16(f));
  return ckpt::test::le_bytes(h);
}

// ---------------------------------------------------------------------------------------------
// Failed runs

using ckpt::test::listing;

// Exit `code`, one line on stderr ("ckptconv: ..." and a newline) containing every `needle`, and
// nothing under --out that looks like a finished checkpoint.
void check_refused(const RunResult& r, int code, const fs::path& out, const std::vector<std::string>& needles) {
  CHECK(r.exit_code == code);
  CHECK(r.err.rfind("ckptconv:", 0) == 0);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  CHECK((!r.err.empty() && r.err.back() == '\n'));
  for (const auto& n : needles) CHECK_THAT(r.err, Contains(n));
  for (const auto& name : listing(out)) {
    INFO("left behind in --out: " << name);
    CHECK(!name.ends_with(".safetensors"));
    CHECK(name != ckpt::kIndexName);
    CHECK(name != "config.json");
  }
}

bool is_fp8(DType t) { return t == DType::F8_E4M3 || t == DType::F8_E5M2; }

// ---------------------------------------------------------------------------------------------
// 1. Round trips through the CLI, family by family

struct FamilyCase {
  std::string family;
  bool gated;
  std::vector<std::string> groups;                  // native "{p}layers.{L}.{seg}" of every grouped layer
  std::vector<std::pair<std::string, Shape>> hf;    // HF keys that must exist, with their shape
  std::vector<std::pair<std::string, DType>> native;  // native keys that must exist, with their dtype
};

// Sizes of every synth below: E = 4 experts, hidden 256, inter 128.
constexpr uint64_t kE = 4, kH = 256, kI = 128;

std::vector<FamilyCase> family_cases() {
  const Shape in_shape{kI, kH}, down_shape{kH, kI};
  return {
      {"minimax_m2", true, {"model.layers.0.mlp.experts", "model.layers.1.mlp.experts"},
       {{"model.layers.1.block_sparse_moe.experts.3.w1.weight", in_shape},
        {"model.layers.1.block_sparse_moe.experts.3.w3.weight", in_shape},
        {"model.layers.1.block_sparse_moe.experts.3.w2.weight", down_shape},
        {"model.layers.0.block_sparse_moe.experts.0.w1.weight", in_shape},
        {"model.layers.0.block_sparse_moe.gate.weight", {kE, kH}},
        {"model.layers.0.block_sparse_moe.e_score_correction_bias", {kE}}},
       {{"model.layers.0.mlp.gate.weight", DType::BF16},
        {"model.layers.0.mlp.gate.e_score_correction_bias", DType::F32},
        {"model.layers.1.self_attn.q_proj.weight", DType::BF16}}},
      {"minimax_m3", true, {"model.layers.1.mlp.experts", "model.mtp.layers.0.transformer_layer.mlp.experts"},
       {{"model.layers.1.block_sparse_moe.experts.3.w1.weight", in_shape},
        {"model.layers.1.block_sparse_moe.experts.3.w2.weight", down_shape},
        {"model.mtp.layers.0.transformer_layer.block_sparse_moe.experts.3.w3.weight", in_shape},
        {"model.layers.1.block_sparse_moe.shared_experts.up_proj.weight", in_shape},
        {"model.layers.1.self_attn.index_q_proj.weight", {48, kH}},
        {"model.mtp.layers.0.eh_proj.weight", {kH, 2 * kH}}},
       {{"model.layers.1.shared_experts.up_proj.weight", DType::BF16},
        {"model.layers.1.self_attn.indexer.index_q_proj.weight", DType::BF16},
        {"model.mtp.layers.0.transformer_layer.shared_experts.down_proj.weight", DType::BF16},
        {"model.mtp.layers.0.eh_proj.weight", DType::BF16},
        {"model.layers.0.mlp.gate_proj.weight", DType::BF16}}},
      {"minimax_m3_vl", true, {"model.layers.1.mlp.experts", "model.mtp.layers.0.transformer_layer.mlp.experts"},
       {{"language_model.model.layers.1.block_sparse_moe.experts.3.w1.weight", in_shape},
        {"language_model.model.layers.1.block_sparse_moe.experts.3.w2.weight", down_shape},
        {"language_model.model.mtp.layers.0.transformer_layer.block_sparse_moe.experts.0.w3.weight", in_shape},
        {"multi_modal_projector.linear_1.weight", {kH, 48}},
        {"patch_merge_mlp.linear_2.bias", {48}}},
       {{"vision_tower.multi_modal_projector.linear_1.weight", DType::BF16},
        {"vision_tower.patch_merge_mlp.linear_2.bias", DType::F32},
        {"vision_tower.vision_model.post_layernorm.weight", DType::BF16},
        {"model.layers.1.shared_experts.gate_proj.weight", DType::BF16}}},
      {"mistral3_vlm", true, {},
       {{"language_model.lm_head.weight", {96, kH}},
        {"language_model.model.layers.0.mlp.gate_proj.weight", {kI, kH}},
        {"vision_tower.ln_pre.weight", {48}}},
       {{"lm_head.weight", DType::BF16},
        {"model.language_model.layers.0.mlp.gate_proj.weight", DType::BF16},
        {"model.language_model.layers.1.self_attn.v_proj.weight", DType::BF16},
        {"model.vision_tower.ln_pre.weight", DType::BF16},
        {"model.multi_modal_projector.linear_1.weight", DType::BF16}}},
      {"mistral3_causal", true, {},
       {{"model.layers.0.mlp.down_proj.weight", {kH, kI}}, {"lm_head.weight", {96, kH}}},
       {{"model.layers.0.mlp.down_proj.weight", DType::BF16}, {"model.layers.1.self_attn.q_proj.weight", DType::BF16}}},
      {"nemotron_v3", false, {"model.layers.1.mixer.experts", "mtp.layers.1.mixer.experts"},
       {{"backbone.layers.1.mixer.experts.3.up_proj.weight", in_shape},
        {"backbone.layers.1.mixer.experts.3.down_proj.weight", down_shape},
        {"mtp.layers.1.mixer.experts.0.up_proj.weight", in_shape},
        {"backbone.norm_f.weight", {kH}},
        {"backbone.embeddings.weight", {96, kH}}},
       {{"model.layers.0.mixer._fp32_params.A_log", DType::F32},
        {"model.layers.0.mixer._fp32_params.D", DType::F32},
        {"model.layers.0.mixer._fp32_params.dt_bias", DType::F32},
        {"model.norm.weight", DType::BF16},
        {"model.embed_tokens.weight", DType::BF16},
        {"mtp.layers.0.mixer.q_proj.weight", DType::BF16}}},
      {"deepseek_v3", true, {"model.layers.1.mlp.experts"},
       {{"model.layers.1.mlp.experts.3.gate_proj.weight", in_shape},
        {"model.layers.1.mlp.experts.3.up_proj.weight", in_shape},
        {"model.layers.1.mlp.experts.3.down_proj.weight", down_shape},
        {"model.layers.1.mlp.shared_experts.gate_proj.weight", in_shape}},
       {{"model.layers.1.mlp.shared_experts.gate_proj.weight", DType::BF16},
        {"model.layers.0.self_attn.kv_b_proj.weight", DType::BF16}}},
  };
}

}  // namespace

TEST_CASE("families: HF -> native -> HF -> native round trips for every family", "[families]") {
  const auto cases = family_cases();
  REQUIRE(cases.size() == 7);
  const size_t which = GENERATE(range<size_t>(0, 7));
  const FamilyCase& fc = cases[which];
  INFO("family " << fc.family);
  TempDir tmp;
  const fs::path src = tmp / "hf0", n1 = tmp / "native1", hf = tmp / "hf1", n2 = tmp / "native2",
                 deq = tmp / "dequant";
  synth(fc.family, src);
  convert_ok(src, n1, fc.family, "--to native");
  convert_ok(n1, hf, fc.family, "--to hf --quantize none");
  convert_ok(hf, n2, fc.family, "--to native");
  convert_ok(src, deq, fc.family, "--to dequant --dtype bf16");

  // The second native output equals the first, by the library and by `ckptconv verify`.
  require_same(n1, n2);
  CHECK(cli("verify " + q(n1) + " " + q(n2)).exit_code == 0);

  const Checkpoint orig = Checkpoint::open(src), nat = Checkpoint::open(n1), back = Checkpoint::open(hf),
                   dq = Checkpoint::open(deq);

  // Native: no scales, no FP8, no per-expert keys left; exactly the expected grouped tensors.
  std::set<std::string> grouped;
  static const std::regex per_expert(R"(\.experts\.\d+\.)");
  for (const auto& t : nat.tensors()) {
    INFO("native tensor " << t.name());
    CHECK(!t.name().ends_with("_scale_inv"));
    CHECK(!t.name().ends_with(".activation_scale"));
    CHECK(!is_fp8(t.info->dtype));
    CHECK(t.info->dtype != DType::U8);
    CHECK(t.info->dtype != DType::F8_E8M0);
    CHECK(!std::regex_search(t.name(), per_expert));
    if (t.name().ends_with("gate_and_up_projs") || t.name().ends_with("down_projs")) grouped.insert(t.name());
  }
  std::set<std::string> want_grouped;
  for (const auto& g : fc.groups) {
    want_grouped.insert(g + ".gate_and_up_projs");
    want_grouped.insert(g + ".down_projs");
    INFO("grouped layer " << g);
    const auto& gu = info_of(nat, g + ".gate_and_up_projs");
    const auto& dn = info_of(nat, g + ".down_projs");
    CHECK(shape_text(gu.shape) == shape_text({kE, kH, fc.gated ? 2 * kI : kI}));
    CHECK(shape_text(dn.shape) == shape_text({kE, kI, kH}));
    CHECK(gu.dtype == DType::BF16);
    CHECK(dn.dtype == DType::BF16);
  }
  CHECK(grouped == want_grouped);
  for (const auto& [name, dtype] : fc.native) {
    INFO("native key " << name);
    CHECK(ckpt::dtype_name(info_of(nat, name).dtype) == ckpt::dtype_name(dtype));
  }

  // HF: exactly the released names (less the consumed scales) with the released shapes.
  std::set<std::string> want_names;
  for (const auto& t : orig.tensors())
    if (!t.name().ends_with("_scale_inv") && !t.name().ends_with(".activation_scale")) want_names.insert(t.name());
  CHECK(names_of(back) == want_names);
  for (const auto& t : back.tensors()) {
    INFO("hf tensor " << t.name());
    if (const TensorRef* o = orig.find(t.name())) CHECK(shape_text(t.info->shape) == shape_text(o->info->shape));
    CHECK(!is_fp8(t.info->dtype));
    if (!fc.gated) CHECK(t.name().find("gate_proj") == std::string::npos);
  }
  for (const auto& [name, shape] : fc.hf) {
    INFO("hf key " << name);
    CHECK(shape_text(info_of(back, name).shape) == shape_text(shape));
  }

  // HF values: each tensor equals the plain dequantization of the release (Nemotron's Mamba
  // parameters come back as F32 holding the same values).
  CHECK(names_of(dq) == names_of(back));
  for (const auto& t : back.tensors()) {
    INFO("hf tensor " << t.name());
    const TensorRef* d = dq.find(t.name());
    REQUIRE(d != nullptr);
    if (fc.family == "nemotron_v3" && (t.name().ends_with(".mixer.D") || t.name().ends_with(".mixer.dt_bias"))) {
      CHECK(t.info->dtype == DType::F32);
      CHECK(floats_of(back, t.name()) == floats_of(dq, t.name()));
      continue;
    }
    CHECK(ckpt::dtype_name(t.info->dtype) == ckpt::dtype_name(d->info->dtype));
    CHECK(bytes_of(back, t.name()) == bytes_of(dq, t.name()));
  }
}

// ---------------------------------------------------------------------------------------------
// 2. FP8 round trip with real re-quantization (SPEC §2, §4 'hf')

TEST_CASE("families: HF(FP8) -> native -> HF(real FP8) -> native is bit exact for rule-quantized scales",
          "[families]") {
  TempDir tmp;
  const fs::path in = kConf / "m2_rule" / "in";
  const fs::path n1 = tmp / "native1", hf = tmp / "hf_real", n2 = tmp / "native2";
  convert_ok(in, n1, "minimax_m2", "--to native --dtype bf16");
  convert_ok(n1, hf, "minimax_m2", "--to hf --quantize real");
  convert_ok(hf, n2, "minimax_m2", "--to native --dtype bf16");
  require_same(n1, n2);
  require_same(kConf / "m2_rule" / "expected" / "native_bf16", n1);

  // The real export holds FP8 weights with F32 block scales again.
  const Checkpoint h = Checkpoint::open(hf);
  int fp8 = 0;
  for (const auto& t : h.tensors()) {
    if (t.info->dtype != DType::F8_E4M3) continue;
    ++fp8;
    INFO("weight " << t.name());
    const auto& s = info_of(h, t.name() + "_scale_inv");
    CHECK(s.dtype == DType::F32);
    REQUIRE(t.info->shape.size() == 2);
    CHECK(shape_text(s.shape) ==
          shape_text({(t.info->shape[0] + 127) / 128, (t.info->shape[1] + 127) / 128}));
  }
  CHECK(fp8 == 32);  // 2 layers x (4 attention + 4 experts x 3)
}

TEST_CASE("families: real FP8 export of m2_rule's native checkpoint gives back the release bytes", "[families]") {
  TempDir tmp;
  const fs::path in = kConf / "m2_rule" / "in";
  const fs::path hf = tmp / "hf_real";
  convert_ok(kConf / "m2_rule" / "native_in", hf, "minimax_m2", "--to hf --quantize real");
  const Checkpoint orig = Checkpoint::open(in), back = Checkpoint::open(hf);
  CHECK(names_of(orig) == names_of(back));
  int compared = 0, fp8 = 0, scales = 0;
  for (const auto& t : orig.tensors()) {
    const TensorRef* b = back.find(t.name());
    if (!b) continue;
    INFO("tensor " << t.name());
    CHECK(ckpt::dtype_name(b->info->dtype) == ckpt::dtype_name(t.info->dtype));
    CHECK(shape_text(b->info->shape) == shape_text(t.info->shape));
    CHECK(bytes_of(back, t.name()) == bytes_of(orig, t.name()));
    ++compared;
    fp8 += t.info->dtype == DType::F8_E4M3;
    scales += t.name().ends_with("_scale_inv");
  }
  CHECK(compared == 79);
  CHECK(fp8 == 32);
  CHECK(scales == 32);
}

// ---------------------------------------------------------------------------------------------
// 3. The grouped layout, element by element

namespace {

constexpr uint64_t kTE = 3, kTH = 4, kTI = 2;  // experts, hidden, inter of the tiny checkpoint

// Distinct values, exact in BF16: expert e, projection p (0 w1 gate, 1 w3 up, 2 w2 down), flat index k.
float tiny_value(uint64_t e, uint64_t p, uint64_t k) {
  const float v = 1.0f + static_cast<float>(e * 24 + p * 8 + k);
  return (k % 3 == 1) ? -v : v;
}

// tiny_value as a row-major matrix: gate/up are [inter, hidden], down is [hidden, inter].
float tiny_at(uint64_t e, uint64_t p, uint64_t row, uint64_t col) {
  const uint64_t cols = p == 2 ? kTI : kTH;
  return tiny_value(e, p, row * cols + col);
}

std::string tiny_expert_bytes(uint64_t e, uint64_t p) {
  std::vector<float> v;
  for (uint64_t k = 0; k < kTI * kTH; ++k) v.push_back(tiny_value(e, p, k));
  return bf16_bytes(v);
}

std::string tiny_expert_name(uint64_t e, const char* w, uint64_t layer = 0) {
  return "model.layers." + std::to_string(layer) + ".block_sparse_moe.experts." + std::to_string(e) + "." + w +
         ".weight";
}

OJson tiny_config() {
  OJson c;
  c["architectures"] = {"MiniMaxM2ForCausalLM"};
  c["model_type"] = "minimax_m2";
  c["hidden_size"] = kTH;
  c["intermediate_size"] = kTI;
  c["num_hidden_layers"] = 1;
  c["num_local_experts"] = kTE;
  c["torch_dtype"] = "bfloat16";
  return c;
}

// A tiny minimax_m2 release without FP8: experts in scrambled order over two shards, a router,
// a norm. `extra` tensors are added to the second shard.
void write_tiny(const fs::path& dir, const OJson& config, const std::vector<TensorSpec>& extra = {}) {
  const char* w[3] = {"w1", "w3", "w2"};
  auto expert = [&](uint64_t e, uint64_t p) {
    return TensorSpec{tiny_expert_name(e, w[p]), DType::BF16, p == 2 ? Shape{kTH, kTI} : Shape{kTI, kTH},
                      tiny_expert_bytes(e, p)};
  };
  std::vector<float> router;
  for (uint64_t k = 0; k < kTE * kTH; ++k) router.push_back(0.25f * static_cast<float>(k));
  std::vector<TensorSpec> a{expert(2, 2), expert(0, 1), expert(2, 0), expert(1, 2),
                            {"model.layers.0.block_sparse_moe.gate.weight", DType::F32, {kTE, kTH},
                             ckpt::test::le_bytes(router)}};
  std::vector<TensorSpec> b{expert(1, 0), expert(0, 2), expert(2, 1), expert(0, 0), expert(1, 1),
                            {"model.norm.weight", DType::BF16, {kTH}, bf16_bytes({1.5f, -2.0f, 3.25f, 0.5f})}};
  for (const auto& t : extra) b.push_back(t);
  write_checkpoint(dir, {a, b}, config);
}

}  // namespace

TEST_CASE("families: grouped experts are the transposed experts, stacked by id", "[families]") {
  TempDir tmp;
  const fs::path in = tmp / "hf", out = tmp / "native";
  write_tiny(in, tiny_config());
  convert_ok(in, out, "minimax_m2", "--to native --dtype f32");
  const Checkpoint nat = Checkpoint::open(out);
  CHECK(names_of(nat) == std::set<std::string>{"model.layers.0.mlp.experts.gate_and_up_projs",
                                               "model.layers.0.mlp.experts.down_projs",
                                               "model.layers.0.mlp.gate.weight", "model.norm.weight"});

  const auto& gi = info_of(nat, "model.layers.0.mlp.experts.gate_and_up_projs");
  REQUIRE(gi.dtype == DType::F32);
  REQUIRE(shape_text(gi.shape) == shape_text({kTE, kTH, 2 * kTI}));
  const std::vector<float> gu = floats_of(nat, "model.layers.0.mlp.experts.gate_and_up_projs");
  uint64_t bad = 0;
  for (uint64_t e = 0; e < kTE; ++e)
    for (uint64_t d = 0; d < kTH; ++d)
      for (uint64_t j = 0; j < 2 * kTI; ++j) {
        const float want = j < kTI ? tiny_at(e, 0, j, d) : tiny_at(e, 1, j - kTI, d);
        const float got = gu[(e * kTH + d) * 2 * kTI + j];
        if (got != want) {
          ++bad;
          UNSCOPED_INFO("gate_and_up_projs[" << e << "][" << d << "][" << j << "] = " << got << ", want " << want);
        }
      }
  CHECK(bad == 0);

  const auto& di = info_of(nat, "model.layers.0.mlp.experts.down_projs");
  REQUIRE(di.dtype == DType::F32);
  REQUIRE(shape_text(di.shape) == shape_text({kTE, kTI, kTH}));
  const std::vector<float> dn = floats_of(nat, "model.layers.0.mlp.experts.down_projs");
  bad = 0;
  for (uint64_t e = 0; e < kTE; ++e)
    for (uint64_t j = 0; j < kTI; ++j)
      for (uint64_t d = 0; d < kTH; ++d) {
        const float want = tiny_at(e, 2, d, j);
        const float got = dn[(e * kTI + j) * kTH + d];
        if (got != want) {
          ++bad;
          UNSCOPED_INFO("down_projs[" << e << "][" << j << "][" << d << "] = " << got << ", want " << want);
        }
      }
  CHECK(bad == 0);

  // Non-expert tensors keep their dtype and bytes; the router is renamed.
  const Checkpoint orig = Checkpoint::open(in);
  CHECK(info_of(nat, "model.layers.0.mlp.gate.weight").dtype == DType::F32);
  CHECK(bytes_of(nat, "model.layers.0.mlp.gate.weight") == bytes_of(orig, "model.layers.0.block_sparse_moe.gate.weight"));
  CHECK(info_of(nat, "model.norm.weight").dtype == DType::BF16);
  CHECK(bytes_of(nat, "model.norm.weight") == bytes_of(orig, "model.norm.weight"));

  // And back: the default bf16 native export splits into the original expert bytes.
  const fs::path nb = tmp / "native_bf16", back = tmp / "hf_back";
  convert_ok(in, nb, "minimax_m2", "--to native");
  CHECK(info_of(Checkpoint::open(nb), "model.layers.0.mlp.experts.down_projs").dtype == DType::BF16);
  convert_ok(nb, back, "minimax_m2", "--to hf");
  require_same(in, back);
}

// ---------------------------------------------------------------------------------------------
// 4. Expert parallelism

TEST_CASE("families: every expert-parallel rank is its slice of the full conversion", "[families]") {
  TempDir tmp;
  const fs::path src = tmp / "hf", full = tmp / "full";
  synth("minimax_m2", src, "--layers 2 --experts 5 --hidden 256 --inter 128");
  convert_ok(src, full, "minimax_m2", "--to native");
  const Checkpoint fc = Checkpoint::open(full);
  const std::vector<std::string> grouped{
      "model.layers.0.mlp.experts.gate_and_up_projs", "model.layers.0.mlp.experts.down_projs",
      "model.layers.1.mlp.experts.gate_and_up_projs", "model.layers.1.mlp.experts.down_projs"};
  for (const auto& g : grouped) REQUIRE(info_of(fc, g).shape[0] == 5);

  // [start, end) per rank by SPEC §3 for E = 5, written out.
  const std::map<int, std::vector<std::pair<uint64_t, uint64_t>>> ranges{
      {2, {{0, 3}, {3, 5}}}, {3, {{0, 2}, {2, 4}, {4, 5}}}};
  fs::path some_rank;
  for (const auto& [n, rs] : ranges) {
    for (int r = 0; r < n; ++r) {
      INFO("--ep-rank " << r << " --ep-size " << n);
      const auto [start, end] = rs[r];
      const fs::path out = tmp / ("ep" + std::to_string(r) + "of" + std::to_string(n));
      convert_ok(src, out, "minimax_m2",
                 "--to native --ep-rank " + std::to_string(r) + " --ep-size " + std::to_string(n));
      const Checkpoint rc = Checkpoint::open(out);
      CHECK(names_of(rc) == names_of(fc));
      for (const auto& t : fc.tensors()) {
        INFO("tensor " << t.name());
        const TensorRef* x = rc.find(t.name());
        REQUIRE(x != nullptr);
        CHECK(x->info->dtype == t.info->dtype);
        const std::string all = bytes_of(fc, t.name());
        if (std::find(grouped.begin(), grouped.end(), t.name()) == grouped.end()) {
          CHECK(shape_text(x->info->shape) == shape_text(t.info->shape));
          CHECK(bytes_of(rc, t.name()) == all);
          continue;
        }
        Shape want = t.info->shape;
        want[0] = end - start;
        CHECK(shape_text(x->info->shape) == shape_text(want));
        const uint64_t per = all.size() / t.info->shape[0];
        CHECK(bytes_of(rc, t.name()) == all.substr(start * per, (end - start) * per));
      }
      some_rank = out;
    }
  }

  // --ep-size without --ep-rank writes every rank, each identical to its own run.
  const fs::path all = tmp / "all_ranks";
  convert_ok(src, all, "minimax_m2", "--to native --ep-size 3");
  for (int r = 0; r < 3; ++r) {
    INFO("rank " << r);
    const fs::path dir = all / ("rank-000" + std::to_string(r));
    const fs::path one = tmp / ("ep" + std::to_string(r) + "of3");
    CHECK(verify(Checkpoint::open(one), Checkpoint::open(dir), {}).problems.empty());
  }
  CHECK(!fs::exists(all / "rank-0003"));

  // More ranks than experts: the last rank holds none, and its grouped tensors say so ([0, …]).
  const fs::path empty = tmp / "ep5of6";
  convert_ok(src, empty, "minimax_m2", "--to native --ep-rank 5 --ep-size 6");
  const Checkpoint ec = Checkpoint::open(empty);
  for (const auto& g : grouped) {
    INFO(g);
    CHECK(info_of(ec, g).shape[0] == 0);
    CHECK(info_of(ec, g).nbytes() == 0);
  }

  // A slice cannot be exported to HF.
  const fs::path hf = tmp / "hf_of_slice";
  check_refused(convert(some_rank, hf, "minimax_m2", "--to hf"), 3, hf, {"expert"});
  // Nor can a slice of Nemotron (the conformance EP case's input, rank 1 of 4).
  const fs::path nslice = tmp / "nemotron_slice", nhf = tmp / "nemotron_hf";
  convert_ok(kConf / "nemotron" / "in", nslice, "nemotron_v3", "--to native --ep-rank 1 --ep-size 4");
  check_refused(convert(nslice, nhf, "nemotron_v3", "--to hf"), 3, nhf, {"expert"});
}

// ---------------------------------------------------------------------------------------------
// 5. Invalid inputs

TEST_CASE("families: missing expert weights stop the run, counted and named", "[families]") {
  TempDir tmp;
  const fs::path src = tmp / "hf";
  synth("minimax_m2", src);

  SECTION("one expert's w3") {
    const fs::path in = tmp / "one", out = tmp / "out";
    rewrite(src, in, [](const std::string& n) {
      return n.starts_with("model.layers.1.block_sparse_moe.experts.2.w3.weight");  // weight and scale
    });
    const RunResult r = convert(in, out, "minimax_m2", "--to native");
    check_refused(r, 3, out, {"missing"});
    CHECK(std::regex_search(r.err, std::regex(R"((^|[^0-9.])1 )")));
    CHECK(std::regex_search(r.err, std::regex(R"(layers\.1\..*experts\.2\.(up_proj|w3))")));
  }
  SECTION("five weights over two layers") {
    const fs::path in = tmp / "five", out = tmp / "out";
    const std::set<std::string> gone{tiny_expert_name(1, "w3", 0), tiny_expert_name(2, "w3", 1),
                                     tiny_expert_name(3, "w2", 1), tiny_expert_name(0, "w1", 1),
                                     tiny_expert_name(3, "w1", 0)};
    rewrite(src, in, [&](const std::string& n) {
      return gone.count(n) || (n.ends_with("_scale_inv") && gone.count(n.substr(0, n.size() - 10)));
    });
    REQUIRE(names_of(Checkpoint::open(in)).size() == names_of(Checkpoint::open(src)).size() - 10);
    const RunResult r = convert(in, out, "minimax_m2", "--to native");
    check_refused(r, 3, out, {"missing"});
    CHECK(std::regex_search(r.err, std::regex(R"((^|[^0-9.])5 )")));
    CHECK(std::regex_search(r.err, std::regex(R"(experts\.\d+\.(gate_proj|up_proj|down_proj|w1|w2|w3))")));
  }
  SECTION("a whole Nemotron expert (up and down)") {
    const fs::path nsrc = tmp / "nemo", in = tmp / "nemo_missing", out = tmp / "out";
    synth("nemotron_v3", nsrc);
    rewrite(nsrc, in, [](const std::string& n) { return n.starts_with("backbone.layers.1.mixer.experts.1."); });
    const RunResult r = convert(in, out, "nemotron_v3", "--to native");
    check_refused(r, 3, out, {"missing", "experts.1."});
    CHECK(std::regex_search(r.err, std::regex(R"((^|[^0-9.])2 )")));
    CHECK(r.err.find("gate_proj") == std::string::npos);  // Nemotron has no gate to miss
  }
}

TEST_CASE("families: an expert id past the configured count stops the run", "[families]") {
  TempDir tmp;
  SECTION("expert 7 of a three-expert model") {
    const fs::path in = tmp / "hf", out = tmp / "out";
    const char* w[3] = {"w1", "w3", "w2"};
    std::vector<TensorSpec> extra;
    for (uint64_t p = 0; p < 3; ++p)
      extra.push_back({tiny_expert_name(7, w[p]), DType::BF16, p == 2 ? Shape{kTH, kTI} : Shape{kTI, kTH},
                       tiny_expert_bytes(0, p)});
    write_tiny(in, tiny_config(), extra);
    check_refused(convert(in, out, "minimax_m2", "--to native"), 3, out, {"7", "num_local_experts"});
  }
  SECTION("a config with fewer experts than the synth checkpoint holds") {
    const fs::path src = tmp / "hf", fewer = tmp / "fewer", out = tmp / "out";
    synth("minimax_m2", src);
    rewrite(src, fewer, [](const std::string&) { return false; }, [](OJson& c) { c["num_local_experts"] = 3; });
    check_refused(convert(fewer, out, "minimax_m2", "--to native"), 3, out, {"3", "num_local_experts"});
    // Also under expert parallelism, where expert 3 would not even be on this rank.
    check_refused(convert(fewer, out, "minimax_m2", "--to native --ep-rank 0 --ep-size 3"), 3, out,
                  {"num_local_experts"});
  }
}

TEST_CASE("families: a config contradicting the expert shapes stops the run", "[families]") {
  TempDir tmp;
  const fs::path src = tmp / "hf", out = tmp / "out";
  synth("minimax_m2", src);

  SECTION("intermediate_size smaller than the experts") {
    const fs::path in = tmp / "inter";
    rewrite(src, in, [](const std::string&) { return false; }, [](OJson& c) { c["intermediate_size"] = 64; });
    check_refused(convert(in, out, "minimax_m2", "--to native"), 3, out, {"intermediate_size", "64"});
  }
  SECTION("intermediate_size larger than the experts") {
    const fs::path in = tmp / "inter";
    rewrite(src, in, [](const std::string&) { return false; }, [](OJson& c) { c["intermediate_size"] = 256; });
    check_refused(convert(in, out, "minimax_m2", "--to native"), 3, out, {"intermediate_size"});
  }
  SECTION("num_local_experts larger than the experts present") {
    const fs::path in = tmp / "experts";
    rewrite(src, in, [](const std::string&) { return false; }, [](OJson& c) { c["num_local_experts"] = 6; });
    // Experts 4 and 5 are missing: 3 projections x 2 experts x 2 layers.
    const RunResult r = convert(in, out, "minimax_m2", "--to native");
    check_refused(r, 3, out, {"missing", "num_local_experts"});
    CHECK(std::regex_search(r.err, std::regex(R"((^|[^0-9.])12 )")));
  }
  SECTION("num_local_experts absent") {
    const fs::path in = tmp / "noexperts";
    rewrite(src, in, [](const std::string&) { return false; }, [](OJson& c) { c.erase("num_local_experts"); });
    check_refused(convert(in, out, "minimax_m2", "--to native"), 3, out, {"num_local_experts"});
  }
  SECTION("Nemotron moe_intermediate_size") {
    const fs::path nsrc = tmp / "nemo", in = tmp / "nemo_inter";
    synth("nemotron_v3", nsrc);
    rewrite(nsrc, in, [](const std::string&) { return false; }, [](OJson& c) { c["moe_intermediate_size"] = 96; });
    check_refused(convert(in, out, "nemotron_v3", "--to native"), 3, out, {"moe_intermediate_size"});
  }
}

TEST_CASE("families: an FP8 weight without its scale stops --to native", "[families]") {
  TempDir tmp;
  const fs::path src = tmp / "hf", out = tmp / "out";
  synth("minimax_m2", src);
  SECTION("an attention weight") {
    const fs::path in = tmp / "noscale";
    rewrite(src, in, [](const std::string& n) { return n == "model.layers.0.self_attn.q_proj.weight_scale_inv"; });
    check_refused(convert(in, out, "minimax_m2", "--to native"), 3, out, {"model.layers.0.self_attn.q_proj.weight"});
  }
  SECTION("an expert weight") {
    const fs::path in = tmp / "noscale";
    const std::string w = tiny_expert_name(1, "w2", 1);
    rewrite(src, in, [&](const std::string& n) { return n == w + "_scale_inv"; });
    check_refused(convert(in, out, "minimax_m2", "--to native"), 3, out, {w});
  }
  SECTION("an MXFP8 weight of minimax_m3") {
    const fs::path m3 = tmp / "m3", in = tmp / "m3_noscale";
    synth("minimax_m3", m3);
    rewrite(m3, in, [](const std::string& n) { return n == "model.layers.1.self_attn.o_proj.weight_scale_inv"; });
    check_refused(convert(in, out, "minimax_m3", "--to native"), 3, out, {"model.layers.1.self_attn.o_proj.weight"});
  }
}

TEST_CASE("families: a Mistral3 E5M2 weight stops the run", "[families]") {
  TempDir tmp;
  const fs::path in = tmp / "hf", out = tmp / "out";
  OJson cfg;
  cfg["architectures"] = {"Ministral3ForCausalLM"};
  cfg["model_type"] = "ministral3";
  cfg["hidden_size"] = 8;
  cfg["num_hidden_layers"] = 1;
  const std::vector<uint8_t> codes{0x3C, 0x40, 0xBC, 0x00, 0x44, 0x38, 0x3C, 0x41,
                                   0x3C, 0x40, 0xBC, 0x00, 0x44, 0x38, 0x3C, 0x41};
  auto scale = ckpt::test::le_bytes(std::vector<float>{0.5f});
  std::vector<TensorSpec> ts{
      {"model.layers.0.mlp.up_proj.weight", DType::F8_E4M3, {2, 8}, ckpt::test::le_bytes(codes)},
      {"model.layers.0.mlp.up_proj.weight_scale_inv", DType::F32, {}, scale},
      {"model.layers.0.mlp.down_proj.weight", DType::F8_E5M2, {2, 8}, ckpt::test::le_bytes(codes)},
      {"model.layers.0.mlp.down_proj.weight_scale_inv", DType::F32, {}, scale},
      {"model.norm.weight", DType::BF16, {8}, bf16_bytes({1, 2, 3, 4, 5, 6, 7, 8})}};
  write_checkpoint(in, {ts}, cfg);
  check_refused(convert(in, out, "mistral3_causal", "--to native"), 3, out,
                {"model.layers.0.mlp.down_proj.weight", "E5M2"});
  check_refused(convert(in, out, "mistral3_vlm", "--to native"), 3, out, {"model.layers.0.mlp.down_proj.weight"});

  // Control: without the E5M2 weight the same checkpoint converts.
  ts.erase(ts.begin() + 2, ts.begin() + 4);
  const fs::path ok_in = tmp / "ok", ok_out = tmp / "ok_out";
  write_checkpoint(ok_in, {ts}, cfg);
  convert_ok(ok_in, ok_out, "mistral3_causal", "--to native");
  const Checkpoint c = Checkpoint::open(ok_out);
  CHECK(names_of(c) == std::set<std::string>{"model.layers.0.mlp.up_proj.weight", "model.norm.weight"});
  CHECK(info_of(c, "model.layers.0.mlp.up_proj.weight").dtype == DType::BF16);
}

TEST_CASE("families: --family auto needs a known model_type", "[families]") {
  TempDir tmp;
  const fs::path src = tmp / "hf", in = tmp / "unknown", out = tmp / "out", auto_out = tmp / "auto",
                 named_out = tmp / "named";
  synth("minimax_m2", src);
  // Control: a known model_type converts as if the family were named.
  convert_ok(src, auto_out, "auto", "--to native");
  convert_ok(src, named_out, "minimax_m2", "--to native");
  require_same(named_out, auto_out);

  rewrite(src, in, [](const std::string&) { return false; }, [](OJson& c) {
    c["model_type"] = "frobnicator_x9";
    c["architectures"] = {"FrobnicatorForCausalLM"};
  });
  check_refused(convert(in, out, "auto", "--to native"), 2, out, {"frobnicator_x9"});
  check_refused(convert(in, out, "auto", "--to hf"), 2, out, {"frobnicator_x9"});
}

TEST_CASE("families: --quantize for Nemotron-V3 is a usage error", "[families]") {
  TempDir tmp;
  const fs::path in = kConf / "nemotron" / "native_in", out = tmp / "out", control = tmp / "control";
  check_refused(convert(in, out, "nemotron_v3", "--to hf --quantize real"), 2, out, {"nemotron_v3"});
  check_refused(convert(in, out, "nemotron_v3", "--to hf --quantize placeholder"), 2, out, {"nemotron_v3"});
  convert_ok(in, control, "nemotron_v3", "--to hf --quantize none");
  const Checkpoint c = Checkpoint::open(control);
  CHECK(c.find("backbone.norm_f.weight") != nullptr);
  for (const auto& t : c.tensors()) CHECK(!is_fp8(t.info->dtype));
}

// ---------------------------------------------------------------------------------------------
// 6. MTP

namespace {

std::set<std::string> with_prefix(const std::set<std::string>& names, const std::string& needle, bool at_start) {
  std::set<std::string> out;
  for (const auto& n : names)
    if (at_start ? n.starts_with(needle) : n.find(needle) != std::string::npos) out.insert(n);
  return out;
}

}  // namespace

TEST_CASE("families: --mtp off drops the MTP modules", "[families]") {
  TempDir tmp;
  SECTION("minimax_m3") {
    const fs::path src = tmp / "m3", on = tmp / "default", off = tmp / "off", zero = tmp / "zero",
                   zero_auto = tmp / "zero_auto", zero_on = tmp / "zero_on";
    synth("minimax_m3", src);
    convert_ok(src, on, "minimax_m3", "--to native");
    convert_ok(src, off, "minimax_m3", "--to native --mtp off");
    const auto a = names_of(Checkpoint::open(on)), b = names_of(Checkpoint::open(off));
    const auto mtp = with_prefix(a, "model.mtp.", true);
    CHECK(mtp.size() == 23);
    CHECK(mtp.count("model.mtp.layers.0.transformer_layer.mlp.experts.gate_and_up_projs") == 1);
    CHECK(mtp.count("model.mtp.layers.0.eh_proj.weight") == 1);
    CHECK(with_prefix(b, ".mtp.", false).empty());
    CHECK(with_prefix(b, "mtp.", true).empty());
    std::set<std::string> rest;
    std::set_difference(a.begin(), a.end(), mtp.begin(), mtp.end(), std::inserter(rest, rest.end()));
    CHECK(b == rest);

    // num_mtp_modules 0: auto drops them, --mtp on keeps them.
    rewrite(src, zero, [](const std::string&) { return false; }, [](OJson& c) { c["num_mtp_modules"] = 0; });
    convert_ok(zero, zero_auto, "minimax_m3", "--to native");
    convert_ok(zero, zero_on, "minimax_m3", "--to native --mtp on");
    CHECK(names_of(Checkpoint::open(zero_auto)) == b);
    CHECK(names_of(Checkpoint::open(zero_on)) == a);
  }
  SECTION("nemotron_v3") {
    const fs::path src = tmp / "nemo", on = tmp / "default", off = tmp / "off";
    synth("nemotron_v3", src);
    convert_ok(src, on, "nemotron_v3", "--to native");
    convert_ok(src, off, "nemotron_v3", "--to native --mtp off");
    const auto a = names_of(Checkpoint::open(on)), b = names_of(Checkpoint::open(off));
    const auto mtp = with_prefix(a, "mtp.", true);
    CHECK(mtp.count("mtp.layers.1.mixer.experts.gate_and_up_projs") == 1);
    CHECK(mtp.count("mtp.layers.0.eh_proj.weight") == 1);
    CHECK(mtp.size() == 16);
    CHECK(with_prefix(b, "mtp.", true).empty());
    CHECK(with_prefix(b, ".mtp.", false).empty());
    std::set<std::string> rest;
    std::set_difference(a.begin(), a.end(), mtp.begin(), mtp.end(), std::inserter(rest, rest.end()));
    CHECK(b == rest);
  }
}

TEST_CASE("families: layers past num_hidden_layers are refused unless they are next-token layers",
          "[families]") {
  // DeepSeek-V3 releases store their MTP layer as the layer after the last one
  // (model.layers.61 with num_hidden_layers 61 and num_nextn_predict_layers 1).
  TempDir tmp;
  const fs::path src = tmp / "hf";
  synth("deepseek_v3", src, "--layers 2 --experts 4 --hidden 256 --inter 128");
  auto cfg = nlohmann::ordered_json::parse(ckpt::test::read_bytes(src / "config.json"));
  cfg["num_hidden_layers"] = 1;
  cfg["num_nextn_predict_layers"] = 1;
  ckpt::test::write_bytes(src / "config.json", cfg.dump(2));
  convert_ok(src, tmp / "ok", "deepseek_v3", "--to native");
  CHECK(Checkpoint::open(tmp / "ok").find("model.layers.1.mlp.experts.gate_and_up_projs") != nullptr);

  cfg["num_nextn_predict_layers"] = 0;
  ckpt::test::write_bytes(src / "config.json", cfg.dump(2));
  const fs::path bad = tmp / "bad";
  check_refused(convert(src, bad, "deepseek_v3", "--to native"), 3, bad, {"layer 1", "num_hidden_layers"});
}

TEST_CASE("families: an MTP module past num_mtp_modules is refused", "[families]") {
  // m3's input holds MTP module 0; a config that says 1 module (or none given) accepts it, a config
  // claiming modules but fewer than present is a contradiction: here a module 0 key renamed to 1.
  TempDir tmp;
  const fs::path src = tmp / "hf";
  synth("minimax_m3", src, "--layers 2 --experts 4 --hidden 256 --inter 128");
  convert_ok(src, tmp / "ok", "minimax_m3", "--to native");
  auto cfg = nlohmann::ordered_json::parse(ckpt::test::read_bytes(src / "config.json"));
  cfg["num_mtp_modules"] = 1;
  ckpt::test::write_bytes(src / "config.json", cfg.dump(2));
  const Checkpoint ck = Checkpoint::open(src);
  std::vector<ckpt::test::TensorSpec> specs;
  for (const auto& t : ck.tensors()) {
    std::string name = t.name();
    if (const auto at = name.find(".mtp.layers.0."); at != std::string::npos) name.replace(at, 14, ".mtp.layers.1.");
    const auto* p = reinterpret_cast<const char*>(t.file->data(*t.info));
    specs.push_back({name, t.info->dtype, t.info->shape, std::string(p, p + t.info->nbytes())});
  }
  const fs::path moved = tmp / "moved";
  fs::create_directories(moved);
  ckpt::test::write_safetensors(moved / "model.safetensors", specs);
  ckpt::test::write_bytes(moved / "config.json", cfg.dump(2));
  const fs::path bad = tmp / "bad";
  check_refused(convert(moved, bad, "minimax_m3", "--to native"), 3, bad, {"MTP module 1", "num_mtp_modules"});
}

// ---------------------------------------------------------------------------------------------
// 7. The checkpoint's own metadata (SPEC §5)

namespace {

// Replaces the "__metadata__" of a shard the library wrote ({"format":"pt"}) with `meta`, raw
// JSON text. Data offsets are relative to the data buffer, so a longer header leaves them valid.
void set_metadata(const fs::path& shard, const std::string& meta) {
  const std::string bytes = ckpt::test::read_bytes(shard);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  std::string header = bytes.substr(8, n);
  const std::string old = R"("__metadata__":{"format":"pt"})";
  REQUIRE(header.find(old) == 1);
  header.replace(1, old.size(), "\"__metadata__\":" + meta);
  ckpt::test::write_bytes(shard, ckpt::test::safetensors_bytes(header, bytes.substr(8 + n)));
}

// The checkpoint in `dir` has at least `min_shards` shards, each with exactly `want` as its parsed
// "__metadata__".
void check_metadata(const fs::path& dir, size_t min_shards, const std::map<std::string, std::string>& want) {
  const Checkpoint c = Checkpoint::open(dir);
  INFO(dir.string());
  CHECK(c.files().size() >= min_shards);
  for (const auto& f : c.files()) {
    INFO(f->path().string());
    CHECK(f->header().metadata == want);
  }
}

}  // namespace

TEST_CASE("families: every output shard keeps the input's metadata and the first shard's value wins", "[families]") {
  TempDir tmp;
  const fs::path in = tmp / "hf";
  write_tiny(in, tiny_config());
  // Shard 1 says another format and disagrees with shard 2 on "shared"; values hold quotes, a
  // backslash, escapes and non-ASCII text.
  set_metadata(in / "model-00001-of-00002.safetensors",
               R"({"format":"np","source":"MiniMax \"M2\" \u2014 \u5c0f","shared":"first","only_first":"1"})");
  set_metadata(in / "model-00002-of-00002.safetensors",
               R"({"shared":"second","only_second":"tab\there \\ \u00e9","format":"pt"})");
  const std::map<std::string, std::string> want{{"format", "pt"},
                                                {"source", "MiniMax \"M2\" \xe2\x80\x94 \xe5\xb0\x8f"},
                                                {"shared", "first"},
                                                {"only_first", "1"},
                                                {"only_second", "tab\there \\ \xc3\xa9"}};
  // The tiny model's tensors are tens of bytes: 100-byte shards give each direction several.
  const std::string small = " --max-shard-size 100";

  const fs::path deq = tmp / "dequant";
  REQUIRE(cli("convert --in " + q(in) + " --out " + q(deq) + " --to dequant" + small).exit_code == 0);
  check_metadata(deq, 2, want);

  const fs::path nat = tmp / "native", one = tmp / "rank1", all = tmp / "ranks";
  convert_ok(in, nat, "minimax_m2", "--to native" + small);
  check_metadata(nat, 2, want);
  convert_ok(in, one, "minimax_m2", "--to native --ep-rank 1 --ep-size 2");
  check_metadata(one, 1, want);
  convert_ok(in, all, "minimax_m2", "--to native --ep-size 2" + small);
  check_metadata(all / "rank-0000", 2, want);
  check_metadata(all / "rank-0001", 2, want);

  // Back to HF: the native shards all say the same, and so does every HF shard.
  const fs::path back = tmp / "hf_back";
  convert_ok(nat, back, "minimax_m2", "--to hf" + small);
  check_metadata(back, 2, want);
}
