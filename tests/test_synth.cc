// Tests for pipeline/synth: per-family key sets, dtypes, shapes and configs (mirroring the
// conformance inputs), value sanity, determinism, sharding, target size and option validation.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "formats/checkpoint.h"
#include "formats/error.h"
#include "formats/writer.h"
#include "pipeline/synth.h"
#include "tests/support.h"

namespace fs = std::filesystem;
using ckpt::DType;
using ckpt::test::TempDir;

namespace {

ckpt::SynthOptions opts(const std::string& family, const fs::path& out, uint32_t layers = 2,
                        uint32_t experts = 4) {
  ckpt::SynthOptions o;
  o.family = family;
  o.out = out;
  o.layers = layers;
  o.experts = experts;
  o.hidden = 256;
  o.inter = 128;
  o.shards = 2;
  o.seed = 7;
  return o;
}

// Expected tensor counts, worked out by hand from the hub layouts (L layers, E experts).
//   minimax_m2 layer: 2 norms + 4 FP8 attn (x2 with scales) + q/k norm + gate + bias + 3E FP8 (x2)
uint64_t count_m2(uint64_t L, uint64_t E) { return L * (2 + 8 + 2 + 2 + 6 * E) + 3; }
//   minimax_m3: layer 0 dense (2 + 8 + 2 + 6), others MoE with indexer (2 + 8 + 2 + 4 + 2 + 6 +
//   6E); head/tail 3; MTP: enorm, hnorm, eh_proj (+scale), final_layernorm + one MoE layer.
uint64_t count_m3(uint64_t L, uint64_t E) {
  const uint64_t moe = 2 + 8 + 2 + 4 + 2 + 6 + 6 * E;
  return 18 + (L - 1) * moe + 3 + 5 + moe;
}
//   vision tower (4 + 2 layers x 16) + projector 4 + patch merge 4
uint64_t count_m3vl(uint64_t L, uint64_t E) { return count_m3(L, E) + 44; }
//   mistral layer: 2 norms + 7 FP8 x (weight, weight_scale_inv, activation_scale)
uint64_t count_mistral_causal(uint64_t L) { return L * (2 + 21) + 3; }
//   + vision: patch_conv, ln_pre, 1 layer of 9, projector 4
uint64_t count_mistral_vlm(uint64_t L) { return count_mistral_causal(L) + 15; }
//   nemotron pattern ME*E...: M = norm + 8, E = norm + gate + bias + 2 shared + 2E, * = norm + 4;
//   head/tail 3; MTP layer 0 = norm + 4 attn + eh_proj/enorm/hnorm, layer 1 = E layer + final norm
uint64_t count_nemotron(const std::string& pattern, uint64_t E) {
  uint64_t n = 3 + 8 + (5 + 2 * E + 1);
  for (char c : pattern) n += c == 'M' ? 9 : c == 'E' ? 5 + 2 * E : 5;
  return n;
}
//   deepseek: layer 0 = 2 norms + 2 MLA norms + 5 FP8 x2 + 3 dense FP8 x2; MoE layers replace the
//   dense MLP with gate + bias + 3 shared FP8 x2 + 3E FP8 x2
uint64_t count_deepseek(uint64_t L, uint64_t E) { return 20 + (L - 1) * (14 + 2 + 6 + 6 * E) + 3; }

const ckpt::TensorInfo& info(const ckpt::Checkpoint& c, const std::string& name) {
  const ckpt::TensorRef* r = c.find(name);
  INFO(name);
  REQUIRE(r != nullptr);
  return *r->info;
}

void check_tensor(const ckpt::Checkpoint& c, const std::string& name, DType dt,
                  std::vector<uint64_t> shape) {
  const auto& t = info(c, name);
  INFO(name);
  CHECK(ckpt::dtype_name(t.dtype) == ckpt::dtype_name(dt));
  CHECK(t.shape == shape);
}

float bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Value sanity over every tensor: no NaN FP8 codes, finite floats, positive sane scales, every FP8
// weight with a scale partner when the family scales its weights. Counts bad elements per tensor.
void check_values(const ckpt::Checkpoint& c, bool scaled) {
  uint64_t fp8 = 0;
  for (const auto& ref : c.tensors()) {
    const auto& t = *ref.info;
    const uint8_t* p = ref.file->data(t);
    const uint64_t n = t.numel();
    const bool scale = ends_with(t.name, "_scale_inv") || ends_with(t.name, "activation_scale");
    const bool norm = ends_with(t.name, "norm.weight") || ends_with(t.name, "norm1.weight") ||
                      ends_with(t.name, "norm2.weight") || ends_with(t.name, "norm_f.weight") ||
                      ends_with(t.name, "ln_pre.weight");
    auto ok_float = [&](float f) {
      if (!std::isfinite(f)) return false;
      if (scale) return f >= 0.0009f && f < 0.02f;
      if (norm) return f >= 0.5f && f < 2.0f;
      return std::fabs(f) < 0.1f;
    };
    uint64_t bad = 0;
    INFO(t.name);
    switch (t.dtype) {
      case DType::F8_E4M3:
        ++fp8;
        for (uint64_t i = 0; i < n; ++i) bad += (p[i] & 0x7F) == 0x7F;
        if (scaled) CHECK(c.find(t.name + "_scale_inv") != nullptr);
        break;
      case DType::BF16:
        for (uint64_t i = 0; i < n; ++i) {
          uint16_t b;
          std::memcpy(&b, p + 2 * i, 2);
          bad += !ok_float(bf16_to_float(b));
        }
        break;
      case DType::F32:
        for (uint64_t i = 0; i < n; ++i) {
          float f;
          std::memcpy(&f, p + 4 * i, 4);
          bad += !ok_float(f);
        }
        break;
      case DType::U8:
        CHECK(scale);
        for (uint64_t i = 0; i < n; ++i) bad += p[i] < 110 || p[i] > 130;
        break;
      default:
        FAIL("unexpected dtype " << ckpt::dtype_name(t.dtype));
    }
    CHECK(bad == 0);
  }
  if (scaled) CHECK(fp8 > 0);
}

size_t count_shard_files(const fs::path& dir) {
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") ++n;
  return n;
}

std::map<std::string, std::string> tensor_bytes(const ckpt::Checkpoint& c) {
  std::map<std::string, std::string> out;
  for (const auto& ref : c.tensors())
    out[ref.name()] = std::string(reinterpret_cast<const char*>(ref.file->data(*ref.info)),
                                  ref.info->nbytes());
  return out;
}

std::map<std::string, std::string> dir_bytes(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    out[e.path().filename().string()] = ckpt::test::read_bytes(e.path());
  return out;
}

}  // namespace

TEST_CASE("synth: family list in SPEC order", "[synth]") {
  const std::vector<std::string> want = {"minimax_m2",      "minimax_m3",  "minimax_m3_vl",
                                         "mistral3_vlm",    "mistral3_causal", "nemotron_v3",
                                         "deepseek_v3"};
  CHECK(ckpt::synth_families() == want);
}

TEST_CASE("synth: minimax_m2", "[synth]") {
  TempDir tmp;
  const auto s = ckpt::synth(opts("minimax_m2", tmp.path()));
  const auto c = ckpt::Checkpoint::open(tmp.path());
  CHECK(c.tensors().size() == count_m2(2, 4));
  CHECK(s.tensors == count_m2(2, 4));
  CHECK(s.bytes == c.total_tensor_bytes());
  CHECK(s.layers == 2);
  CHECK(s.shards == 2);
  CHECK(count_shard_files(tmp.path()) == 2);
  CHECK(fs::exists(tmp / "model-00001-of-00002.safetensors"));
  CHECK(fs::exists(tmp / ckpt::kIndexName));
  CHECK(fs::exists(tmp / "tokenizer_config.json"));

  check_tensor(c, "model.layers.0.block_sparse_moe.experts.3.w1.weight", DType::F8_E4M3, {128, 256});
  check_tensor(c, "model.layers.0.block_sparse_moe.experts.3.w1.weight_scale_inv", DType::F32, {1, 2});
  check_tensor(c, "model.layers.1.block_sparse_moe.experts.0.w2.weight", DType::F8_E4M3, {256, 128});
  check_tensor(c, "model.layers.1.block_sparse_moe.experts.0.w2.weight_scale_inv", DType::F32, {2, 1});
  check_tensor(c, "model.layers.1.self_attn.q_proj.weight", DType::F8_E4M3, {240, 256});
  check_tensor(c, "model.layers.1.self_attn.q_proj.weight_scale_inv", DType::F32, {2, 2});
  check_tensor(c, "model.layers.1.self_attn.k_norm.weight", DType::BF16, {80});
  check_tensor(c, "model.layers.0.block_sparse_moe.gate.weight", DType::BF16, {4, 256});
  check_tensor(c, "model.layers.0.block_sparse_moe.e_score_correction_bias", DType::F32, {4});
  check_tensor(c, "model.embed_tokens.weight", DType::BF16, {96, 256});
  check_tensor(c, "lm_head.weight", DType::BF16, {96, 256});
  check_tensor(c, "model.norm.weight", DType::BF16, {256});
  CHECK(c.find("model.layers.2.input_layernorm.weight") == nullptr);
  CHECK(c.find("model.layers.0.block_sparse_moe.experts.4.w1.weight") == nullptr);

  const auto& cfg = *c.config();
  CHECK(cfg["model_type"] == "minimax_m2");
  CHECK(cfg["architectures"][0] == "MiniMaxM2ForCausalLM");
  CHECK(cfg["num_hidden_layers"] == 2);
  CHECK(cfg["hidden_size"] == 256);
  CHECK(cfg["intermediate_size"] == 128);
  CHECK(cfg["num_local_experts"] == 4);
  CHECK(cfg["head_dim"] == 40);
  CHECK(cfg["num_attention_heads"] == 6);
  CHECK(cfg["torch_dtype"] == "bfloat16");
  CHECK(cfg["quantization_config"]["weight_block_size"] == nlohmann::ordered_json({128, 128}));
  check_values(c, true);
}

TEST_CASE("synth: minimax_m3", "[synth]") {
  TempDir tmp;
  auto o = opts("minimax_m3", tmp.path(), 3, 5);
  o.hidden = 100;
  o.inter = 40;
  const auto s = ckpt::synth(o);
  const auto c = ckpt::Checkpoint::open(tmp.path());
  CHECK(c.tensors().size() == count_m3(3, 5));
  CHECK(s.tensors == count_m3(3, 5));
  // Dense first layer, no router or indexer there.
  check_tensor(c, "model.layers.0.mlp.gate_proj.weight", DType::F8_E4M3, {80, 100});
  check_tensor(c, "model.layers.0.mlp.gate_proj.weight_scale_inv", DType::U8, {80, 4});
  check_tensor(c, "model.layers.0.mlp.down_proj.weight_scale_inv", DType::U8, {100, 3});
  CHECK(c.find("model.layers.0.block_sparse_moe.gate.weight") == nullptr);
  CHECK(c.find("model.layers.0.self_attn.index_q_proj.weight") == nullptr);
  // MoE layers.
  check_tensor(c, "model.layers.2.block_sparse_moe.experts.4.w1.weight", DType::F8_E4M3, {40, 100});
  check_tensor(c, "model.layers.2.block_sparse_moe.experts.4.w1.weight_scale_inv", DType::U8, {40, 4});
  check_tensor(c, "model.layers.2.block_sparse_moe.experts.4.w2.weight_scale_inv", DType::U8, {100, 2});
  check_tensor(c, "model.layers.1.block_sparse_moe.shared_experts.up_proj.weight", DType::F8_E4M3, {40, 100});
  check_tensor(c, "model.layers.1.block_sparse_moe.gate.weight", DType::F32, {5, 100});
  check_tensor(c, "model.layers.1.self_attn.index_q_proj.weight", DType::BF16, {48, 100});
  check_tensor(c, "model.layers.1.self_attn.index_k_proj.weight", DType::BF16, {24, 100});
  check_tensor(c, "model.layers.1.self_attn.o_proj.weight_scale_inv", DType::U8, {100, 5});
  check_tensor(c, "model.layers.1.self_attn.q_norm.weight", DType::BF16, {40});
  // MTP.
  check_tensor(c, "model.mtp.layers.0.eh_proj.weight", DType::F8_E4M3, {100, 200});
  check_tensor(c, "model.mtp.layers.0.eh_proj.weight_scale_inv", DType::U8, {100, 7});
  check_tensor(c, "model.mtp.layers.0.enorm.weight", DType::BF16, {100});
  check_tensor(c, "model.mtp.layers.0.transformer_layer.block_sparse_moe.experts.4.w3.weight",
               DType::F8_E4M3, {40, 100});
  const auto& cfg = *c.config();
  CHECK(cfg["model_type"] == "minimax_m3");
  CHECK(cfg["num_hidden_layers"] == 3);
  CHECK(cfg["num_local_experts"] == 5);
  CHECK(cfg["num_mtp_modules"] == 1);
  CHECK(cfg["dense_intermediate_size"] == 80);
  CHECK(cfg["moe_layer_freq"] == nlohmann::ordered_json({0, 1, 1}));
  CHECK(cfg["sparse_attention_config"]["sparse_index_dim"] == 24);
  CHECK(cfg["quantization_config"]["weight_block_size"] == nlohmann::ordered_json({1, 32}));
  check_values(c, true);
}

TEST_CASE("synth: minimax_m3_vl", "[synth]") {
  TempDir tmp;
  const auto s = ckpt::synth(opts("minimax_m3_vl", tmp.path()));
  const auto c = ckpt::Checkpoint::open(tmp.path());
  CHECK(c.tensors().size() == count_m3vl(2, 4));
  CHECK(s.tensors == count_m3vl(2, 4));
  check_tensor(c, "language_model.model.layers.1.block_sparse_moe.experts.2.w1.weight", DType::F8_E4M3, {128, 256});
  check_tensor(c, "language_model.model.layers.1.block_sparse_moe.experts.2.w1.weight_scale_inv", DType::U8, {128, 8});
  check_tensor(c, "language_model.model.mtp.layers.0.hnorm.weight", DType::BF16, {256});
  check_tensor(c, "language_model.lm_head.weight", DType::BF16, {96, 256});
  check_tensor(c, "language_model.model.embed_tokens.weight", DType::BF16, {96, 256});
  check_tensor(c, "vision_tower.vision_model.embeddings.patch_embedding.weight", DType::BF16, {48, 3, 2, 4, 4});
  check_tensor(c, "vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight", DType::BF16, {96, 48});
  check_tensor(c, "multi_modal_projector.linear_1.weight", DType::BF16, {256, 48});
  check_tensor(c, "patch_merge_mlp.linear_2.bias", DType::F32, {48});
  CHECK(c.find("model.layers.0.input_layernorm.weight") == nullptr);
  const auto& cfg = *c.config();
  CHECK(cfg["model_type"] == "minimax_m3_vl");
  CHECK(cfg["text_config"]["num_hidden_layers"] == 2);
  CHECK(cfg["text_config"]["hidden_size"] == 256);
  CHECK(cfg["text_config"]["intermediate_size"] == 128);
  CHECK(cfg["text_config"]["num_local_experts"] == 4);
  CHECK(cfg["text_config"]["quantization_config"]["weight_block_size"] == nlohmann::ordered_json({1, 32}));
  CHECK(cfg["projector_hidden_size"] == 256);
  check_values(c, true);
}

TEST_CASE("synth: mistral3_vlm and mistral3_causal", "[synth]") {
  for (const std::string fam : {"mistral3_vlm", "mistral3_causal"}) {
    DYNAMIC_SECTION(fam) {
      TempDir tmp;
      const auto s = ckpt::synth(opts(fam, tmp.path(), 3));
      const auto c = ckpt::Checkpoint::open(tmp.path());
      const bool vlm = fam == "mistral3_vlm";
      const uint64_t want = vlm ? count_mistral_vlm(3) : count_mistral_causal(3);
      CHECK(c.tensors().size() == want);
      CHECK(s.tensors == want);
      const std::string p = vlm ? "language_model.model." : "model.";
      check_tensor(c, p + "layers.2.mlp.gate_proj.weight", DType::F8_E4M3, {128, 256});
      check_tensor(c, p + "layers.2.mlp.down_proj.weight", DType::F8_E4M3, {256, 128});
      check_tensor(c, p + "layers.0.self_attn.q_proj.weight", DType::F8_E4M3, {240, 256});
      check_tensor(c, p + "layers.0.self_attn.q_proj.weight_scale_inv", DType::F32, {});
      check_tensor(c, p + "layers.0.self_attn.q_proj.activation_scale", DType::F32, {});
      check_tensor(c, p + "embed_tokens.weight", DType::BF16, {96, 256});
      check_tensor(c, vlm ? "language_model.lm_head.weight" : "lm_head.weight", DType::BF16, {96, 256});
      // Every per-tensor scale form the hub uses appears.
      std::set<std::string> forms;
      for (const auto& r : c.tensors())
        if (ends_with(r.name(), "weight_scale_inv"))
          forms.insert(std::string(ckpt::dtype_name(r.info->dtype)) + std::to_string(r.info->shape.size()));
      CHECK(forms == std::set<std::string>{"F320", "F321", "BF161"});
      const auto& cfg = *c.config();
      const auto& text = vlm ? cfg["text_config"] : cfg;
      CHECK(text["num_hidden_layers"] == 3);
      CHECK(text["hidden_size"] == 256);
      CHECK(text["intermediate_size"] == 128);
      CHECK(text["model_type"] == "ministral3");
      CHECK(cfg["quantization_config"]["weight_block_size"].is_null());
      if (vlm) {
        CHECK(cfg["model_type"] == "mistral3");
        check_tensor(c, "vision_tower.transformer.layers.0.feed_forward.gate_proj.weight", DType::BF16, {96, 48});
        check_tensor(c, "multi_modal_projector.patch_merger.merging_layer.weight", DType::BF16, {48, 192});
      } else {
        CHECK(cfg["architectures"][0] == "Ministral3ForCausalLM");
        CHECK(c.find("vision_tower.ln_pre.weight") == nullptr);
      }
      check_values(c, true);
    }
  }
}

TEST_CASE("synth: nemotron_v3", "[synth]") {
  TempDir tmp;
  const auto s = ckpt::synth(opts("nemotron_v3", tmp.path(), 6, 3));
  const auto c = ckpt::Checkpoint::open(tmp.path());
  CHECK(c.tensors().size() == count_nemotron("ME*EME", 3));
  CHECK(s.tensors == count_nemotron("ME*EME", 3));
  for (const auto& r : c.tensors()) {
    INFO(r.name());
    const bool f32 = ends_with(r.name(), "A_log") || ends_with(r.name(), "e_score_correction_bias") ||
                     ends_with(r.name(), "patch_merge_mlp.linear_2.bias");
    CHECK(ckpt::dtype_name(r.info->dtype) == (f32 ? "F32" : "BF16"));
  }
  check_tensor(c, "backbone.embeddings.weight", DType::BF16, {96, 256});
  check_tensor(c, "backbone.norm_f.weight", DType::BF16, {256});
  check_tensor(c, "backbone.layers.0.mixer.A_log", DType::F32, {8});
  check_tensor(c, "backbone.layers.4.mixer.D", DType::BF16, {8});
  check_tensor(c, "backbone.layers.4.mixer.dt_bias", DType::BF16, {8});
  check_tensor(c, "backbone.layers.0.mixer.in_proj.weight", DType::BF16, {296, 256});
  check_tensor(c, "backbone.layers.0.mixer.conv1d.weight", DType::BF16, {160, 1, 4});
  check_tensor(c, "backbone.layers.1.mixer.experts.2.up_proj.weight", DType::BF16, {128, 256});
  check_tensor(c, "backbone.layers.5.mixer.experts.2.down_proj.weight", DType::BF16, {256, 128});
  check_tensor(c, "backbone.layers.3.mixer.shared_experts.up_proj.weight", DType::BF16, {192, 256});
  check_tensor(c, "backbone.layers.2.mixer.q_proj.weight", DType::BF16, {240, 256});
  check_tensor(c, "mtp.layers.0.eh_proj.weight", DType::BF16, {256, 512});
  check_tensor(c, "mtp.layers.1.mixer.experts.0.up_proj.weight", DType::BF16, {128, 256});
  check_tensor(c, "mtp.layers.1.final_layernorm.weight", DType::BF16, {256});
  CHECK(c.find("backbone.layers.1.mixer.experts.0.gate_proj.weight") == nullptr);
  const auto& cfg = *c.config();
  CHECK(cfg["hybrid_override_pattern"] == "ME*EME");
  CHECK(cfg["num_hidden_layers"] == 6);
  CHECK(cfg["n_routed_experts"] == 3);
  CHECK(cfg["moe_intermediate_size"] == 128);
  CHECK(cfg["moe_shared_expert_intermediate_size"] == 192);
  CHECK(cfg["mamba_num_heads"] == 8);
  CHECK(cfg["mamba_head_dim"] == 16);
  CHECK(!cfg.contains("quantization_config"));
  check_values(c, false);
}

TEST_CASE("synth: deepseek_v3", "[synth]") {
  TempDir tmp;
  auto o = opts("deepseek_v3", tmp.path(), 3, 4);
  o.hidden = 136;
  o.inter = 40;
  o.shards = 3;
  const auto s = ckpt::synth(o);
  const auto c = ckpt::Checkpoint::open(tmp.path());
  CHECK(c.tensors().size() == count_deepseek(3, 4));
  CHECK(s.tensors == count_deepseek(3, 4));
  CHECK(count_shard_files(tmp.path()) == 3);
  check_tensor(c, "model.layers.0.mlp.down_proj.weight", DType::F8_E4M3, {136, 80});
  check_tensor(c, "model.layers.0.mlp.down_proj.weight_scale_inv", DType::F32, {2, 1});
  CHECK(c.find("model.layers.0.mlp.gate.weight") == nullptr);
  check_tensor(c, "model.layers.1.mlp.experts.3.gate_proj.weight", DType::F8_E4M3, {40, 136});
  check_tensor(c, "model.layers.1.mlp.experts.3.gate_proj.weight_scale_inv", DType::F32, {1, 2});
  check_tensor(c, "model.layers.2.mlp.experts.0.down_proj.weight", DType::F8_E4M3, {136, 40});
  check_tensor(c, "model.layers.2.mlp.shared_experts.up_proj.weight", DType::F8_E4M3, {40, 136});
  check_tensor(c, "model.layers.2.mlp.gate.weight", DType::BF16, {4, 136});
  check_tensor(c, "model.layers.2.mlp.gate.e_score_correction_bias", DType::F32, {4});
  check_tensor(c, "model.layers.0.self_attn.q_a_proj.weight", DType::F8_E4M3, {96, 136});
  check_tensor(c, "model.layers.0.self_attn.q_b_proj.weight", DType::F8_E4M3, {96, 96});
  check_tensor(c, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight", DType::F8_E4M3, {88, 136});
  check_tensor(c, "model.layers.0.self_attn.kv_b_proj.weight_scale_inv", DType::F32, {1, 1});
  check_tensor(c, "model.layers.0.self_attn.o_proj.weight", DType::F8_E4M3, {136, 64});
  check_tensor(c, "model.layers.0.self_attn.kv_a_layernorm.weight", DType::BF16, {72});
  const auto& cfg = *c.config();
  CHECK(cfg["model_type"] == "deepseek_v3");
  CHECK(cfg["n_routed_experts"] == 4);
  CHECK(cfg["moe_intermediate_size"] == 40);
  CHECK(cfg["intermediate_size"] == 80);
  CHECK(cfg["first_k_dense_replace"] == 1);
  CHECK(cfg["num_hidden_layers"] == 3);
  CHECK(cfg["quantization_config"]["weight_block_size"] == nlohmann::ordered_json({128, 128}));
  check_values(c, true);
}

TEST_CASE("synth: one shard is model.safetensors with an index", "[synth]") {
  TempDir tmp;
  auto o = opts("minimax_m2", tmp.path());
  o.shards = 1;
  const auto s = ckpt::synth(o);
  CHECK(s.shards == 1);
  CHECK(fs::exists(tmp / "model.safetensors"));
  CHECK(fs::exists(tmp / ckpt::kIndexName));
  CHECK(count_shard_files(tmp.path()) == 1);
  CHECK(ckpt::Checkpoint::open(tmp.path()).tensors().size() == count_m2(2, 4));
}

TEST_CASE("synth: more shards than tensors leaves no empty shard", "[synth]") {
  TempDir tmp;
  auto o = opts("mistral3_causal", tmp.path(), 1);
  o.shards = 100;
  const auto s = ckpt::synth(o);
  CHECK(s.shards == count_mistral_causal(1));
  const auto c = ckpt::Checkpoint::open(tmp.path());
  CHECK(c.files().size() == count_mistral_causal(1));
  for (const auto& f : c.files()) CHECK(f->tensors().size() == 1);
}

TEST_CASE("synth: shards are balanced and an expert's tensors may be split", "[synth]") {
  TempDir tmp;
  auto o = opts("minimax_m2", tmp.path(), 4, 8);
  o.shards = 5;
  ckpt::synth(o);
  const auto c = ckpt::Checkpoint::open(tmp.path());
  REQUIRE(c.files().size() == 5);
  const uint64_t total = c.total_tensor_bytes();
  for (const auto& f : c.files()) {
    uint64_t b = 0;
    for (const auto& t : f->tensors()) b += t.nbytes();
    CHECK(b > total / 5 / 2);
    CHECK(b < total / 5 * 2);
  }
}

TEST_CASE("synth: deterministic bytes, independent of threads and shard split", "[synth]") {
  TempDir a, b, d, e;
  auto o = opts("minimax_m3", a.path(), 2, 3);
  o.threads = 1;
  ckpt::synth(o);
  o.out = b.path();
  o.threads = 0;
  ckpt::synth(o);
  CHECK(dir_bytes(a.path()) == dir_bytes(b.path()));

  o.out = d.path();
  o.seed = 8;
  ckpt::synth(o);
  const auto da = dir_bytes(a.path()), dd = dir_bytes(d.path());
  CHECK(da.at("config.json") == dd.at("config.json"));
  CHECK(da.at("model-00001-of-00002.safetensors") != dd.at("model-00001-of-00002.safetensors"));
  CHECK(da.at("model-00002-of-00002.safetensors") != dd.at("model-00002-of-00002.safetensors"));

  // Different shard count: tensors land at different offsets, their bytes stay the same.
  o.out = e.path();
  o.seed = 7;
  o.shards = 3;
  ckpt::synth(o);
  CHECK(tensor_bytes(ckpt::Checkpoint::open(a.path())) ==
        tensor_bytes(ckpt::Checkpoint::open(e.path())));
}

TEST_CASE("synth: tensors larger than a generation window", "[synth]") {
  // hidden 2048: q_proj is 4 MiB+ and expert weights straddle the 4 MiB windows at odd offsets.
  TempDir a, b;
  auto o = opts("minimax_m3", a.path(), 2, 2);
  o.hidden = 2048;
  o.inter = 1000;
  o.shards = 1;
  o.threads = 2;
  const auto s = ckpt::synth(o);
  CHECK(s.bytes > (24ull << 20));
  o.out = b.path();
  o.shards = 3;
  o.threads = 1;
  ckpt::synth(o);
  const auto ca = ckpt::Checkpoint::open(a.path()), cb = ckpt::Checkpoint::open(b.path());
  check_tensor(ca, "model.layers.1.self_attn.q_proj.weight", DType::F8_E4M3, {2048, 2048});
  CHECK(tensor_bytes(ca) == tensor_bytes(cb));
  check_values(ca, true);
}

TEST_CASE("synth: target_bytes picks the layer count", "[synth]") {
  TempDir one, two, t;
  auto o = opts("minimax_m2", one.path(), 1);
  const uint64_t b1 = ckpt::synth(o).bytes;
  o.out = two.path();
  o.layers = 2;
  const uint64_t b2 = ckpt::synth(o).bytes;
  const uint64_t per_layer = b2 - b1, fixed = b1 - per_layer;

  o.out = t.path();
  o.layers = 0;  // ignored with a target
  o.target_bytes = fixed + 7 * per_layer + per_layer / 3;
  const auto s = ckpt::synth(o);
  CHECK(s.layers == 7);
  CHECK(s.bytes == fixed + 7 * per_layer);
  CHECK((*ckpt::Checkpoint::open(t.path()).config())["num_hidden_layers"] == 7);

  TempDir tiny;
  o.out = tiny.path();
  o.target_bytes = 1;
  CHECK(ckpt::synth(o).layers == 1);
}

TEST_CASE("synth: option validation", "[synth]") {
  TempDir tmp;
  auto usage = [](const ckpt::SynthOptions& o) {
    try {
      ckpt::synth(o);
    } catch (const ckpt::Error& e) {
      CHECK(e.kind() == ckpt::ErrorKind::Usage);
      return std::string(e.what());
    }
    FAIL("no error");
    return std::string();
  };
  const std::string msg = usage(opts("llama", tmp / "x"));
  CHECK(msg.find("llama") != std::string::npos);
  for (const auto& f : ckpt::synth_families()) CHECK(msg.find(f) != std::string::npos);
  CHECK(msg.find('\n') == std::string::npos);
  CHECK(!fs::exists(tmp / "x"));

  auto o = opts("minimax_m2", tmp / "y");
  o.hidden = 0;
  usage(o);
  o = opts("minimax_m2", tmp / "y");
  o.experts = 0;
  usage(o);
  o = opts("minimax_m2", tmp / "y");
  o.inter = 0;
  usage(o);
  o = opts("minimax_m2", tmp / "y");
  o.shards = 0;
  usage(o);
  o = opts("minimax_m2", tmp / "y");
  o.layers = 0;
  usage(o);
  CHECK(!fs::exists(tmp / "y"));

  // Output must not exist or be empty.
  fs::create_directories(tmp / "full");
  ckpt::test::write_bytes(tmp / "full" / "keep.txt", "x");
  CHECK(usage(opts("minimax_m2", tmp / "full")).find("not empty") != std::string::npos);
  CHECK(ckpt::test::read_bytes(tmp / "full" / "keep.txt") == "x");
  ckpt::test::write_bytes(tmp / "file", "x");
  usage(opts("minimax_m2", tmp / "file"));

  fs::create_directories(tmp / "empty");
  ckpt::synth(opts("mistral3_causal", tmp / "empty", 1));
  CHECK(fs::exists(tmp / "empty" / "config.json"));
  // No temporary files are left behind.
  for (const auto& e : fs::directory_iterator(tmp / "empty"))
    CHECK(e.path().filename().string()[0] != '.');
}
