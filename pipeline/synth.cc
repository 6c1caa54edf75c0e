// Synthetic HF-layout checkpoints (see synth.h).
//
// Every family is described by data, not code: a list of tensor groups (a name prefix, how many
// times the group repeats, and which "layer kind" each repetition has) whose tensor templates give
// a name suffix, an element kind, a shape written in symbolic dimensions, and the layer kinds the
// template appears in. FP8 templates get their scale partner(s) from the scheme of the family's FP8
// release, which the converter's family rules (transforms/family.h) hold: those rules are the one
// table of families, and synth's rows are keyed by their names. The dimensions are derived from
// the options once; the only per-family code is the config.json.
//
// Tensor bytes come from a counter-based generator keyed by (seed, tensor name): 8-byte word `j` of
// a tensor is a pure function of the key and `j`, so any byte range of any tensor can be produced
// independently. Shards are filled in fixed windows of their data region in parallel; the bytes
// depend neither on the window size nor on the thread count nor on the shard split.
#include "pipeline/synth.h"

#include <tbb/blocked_range.h>
#include <tbb/enumerable_thread_specific.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cstring>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

#include "formats/error.h"
#include "formats/writer.h"
#include "transforms/family.h"
#include "transforms/scheme.h"

namespace ckpt {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

// ---------------------------------------------------------------------------------------------
// Dimensions
// ---------------------------------------------------------------------------------------------

// Symbolic dimensions. A template's shape holds these (negative) or literal sizes (>= 0).
enum Sym : int64_t {
  H = -1,     // hidden size
  H2 = -2,    // 2 * hidden (MTP eh_proj input)
  I = -3,     // routed-expert intermediate size
  DI = -4,    // dense MLP intermediate size
  SI = -5,    // shared-expert intermediate size
  NE = -6,    // routed experts per MoE layer
  V = -7,     // vocabulary
  QO = -8,    // heads * head_dim
  KVO = -9,   // kv_heads * head_dim
  HD = -10,   // head_dim
  IQ = -11,   // indexer: index_heads * index_dim (MiniMax-M3)
  ID = -12,   // indexer: index_dim
  QL = -13,   // MLA q_lora_rank (DeepSeek-V3)
  QB = -14,   // MLA heads * (nope + rope)
  KVL = -15,  // MLA kv_lora_rank
  KVA = -16,  // MLA kv_lora_rank + rope
  KVB = -17,  // MLA heads * (nope + v)
  OV = -18,   // MLA heads * v
  MIN = -19,  // Mamba in_proj rows: 2*d_inner + 2*groups*state + heads
  MC = -20,   // Mamba conv channels: d_inner + 2*groups*state
  MD = -21,   // Mamba d_inner
  MH = -22,   // Mamba heads
  VH = -23,   // vision hidden
  VI = -24,   // vision MLP size
  VM = -25,   // vision hidden * 4 (2x2 patch merge)
  kSymCount = 26
};

struct Dims {
  uint64_t v[kSymCount] = {};
  uint64_t& operator[](Sym s) { return v[-s]; }
  uint64_t operator[](Sym s) const { return v[-s]; }
  // Named values the configs need besides the symbols.
  uint64_t heads = 0, kv_heads = 0, head_dim = 0;
  uint64_t index_heads = 0;
  uint64_t mla_heads = 0, nope = 0, rope = 0, v_head = 0;
  uint64_t mamba_head_dim = 0, mamba_groups = 0, ssm_state = 0;
  uint64_t top_k = 0;
};

constexpr uint64_t kVocab = 96;
constexpr uint64_t kVisionHidden = 48;

uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// Sizes grow with `hidden` in two steps: a toy profile (matching the conformance inputs) and a
// realistic one from hidden >= 1024, so large benchmark checkpoints have large attention too.
Dims base_dims(const SynthOptions& o) {
  Dims d;
  const bool big = o.hidden >= 1024;
  d.head_dim = big ? 128 : 40;
  d.heads = std::max<uint64_t>(4, o.hidden / d.head_dim);
  d.kv_heads = std::max<uint64_t>(2, d.heads / 4);
  d.index_heads = big ? 4 : 2;
  const uint64_t index_dim = big ? 128 : 24;
  d.mla_heads = std::max<uint64_t>(2, o.hidden / (big ? 128 : 64));
  d.nope = big ? 128 : 32;
  d.rope = big ? 64 : 16;
  d.v_head = d.nope;
  const uint64_t q_lora = big ? 1536 : 96, kv_lora = big ? 512 : 72;
  d.mamba_head_dim = big ? 64 : 16;
  const uint64_t mamba_heads = std::max<uint64_t>(4, o.hidden / (2 * d.mamba_head_dim));
  d.mamba_groups = big ? 8 : 2;
  d.ssm_state = big ? 128 : 8;
  d.top_k = std::min<uint64_t>(2, o.experts);

  const uint64_t d_inner = mamba_heads * d.mamba_head_dim;
  const uint64_t gs = 2 * d.mamba_groups * d.ssm_state;
  d[H] = o.hidden;
  d[H2] = 2 * o.hidden;
  d[I] = o.inter;
  d[DI] = 0;  // family-specific: see derive_dims
  d[SI] = 0;
  d[NE] = o.experts;
  d[V] = kVocab;
  d[QO] = d.heads * d.head_dim;
  d[KVO] = d.kv_heads * d.head_dim;
  d[HD] = d.head_dim;
  d[IQ] = d.index_heads * index_dim;
  d[ID] = index_dim;
  d[QL] = q_lora;
  d[QB] = d.mla_heads * (d.nope + d.rope);
  d[KVL] = kv_lora;
  d[KVA] = kv_lora + d.rope;
  d[KVB] = d.mla_heads * (d.nope + d.v_head);
  d[OV] = d.mla_heads * d.v_head;
  d[MIN] = 2 * d_inner + gs + mamba_heads;
  d[MC] = d_inner + gs;
  d[MD] = d_inner;
  d[MH] = mamba_heads;
  d[VH] = kVisionHidden;
  d[VI] = 2 * kVisionHidden;
  d[VM] = 4 * kVisionHidden;
  return d;
}

// ---------------------------------------------------------------------------------------------
// Family tables
// ---------------------------------------------------------------------------------------------

// What a template holds. FP8 templates are F8_E4M3 weights with the family's scale partner(s).
enum class Kind : uint8_t {
  FP8,   // F8_E4M3 weight + scale(s)
  BF16,  // small random BF16
  F32,   // small random F32
  NORM,  // BF16 around 1
};

struct Tpl {
  const char* name;                  // suffix after the group prefix; "{E}" is the expert id
  Kind kind;
  std::vector<int64_t> shape;        // Sym values or literal sizes
  const char* kinds = "";            // layer kinds this appears in; "" = every kind
};

using Tpls = std::vector<Tpl>;

// A group of tensors repeated `count` times ("{L}" in the prefix is the repetition index). A count
// of kMain repeats it `layers` times with the family's layer pattern; otherwise every repetition
// has the group's `kind`.
constexpr int kMain = -1;
struct Group {
  const char* prefix;
  int count;
  std::vector<const Tpls*> tpls;
  char kind = '1';
};

// What synth adds to a family of the converter's table (transforms/family.h), whose row is the
// one place for what both know: the family's name (this row's key; the rules' order is
// synth_families()'s), its FP8 scheme and whether it has routed experts. The rest is what only a
// generator needs: the hub release's tensor layout and config.json.
struct Family {
  std::string_view name;      // FamilyRules::name
  const char* head_pattern;   // kinds of the first main layers
  const char* cycle_pattern;  // kinds of the remaining main layers, repeated
  uint32_t dense_mul;         // dense MLP intermediate = dense_mul * inter
  uint32_t shared_x2;         // shared-expert intermediate = inter * shared_x2 / 2, rounded up
  uint32_t shared_align;      //   to a multiple of shared_align
  std::vector<Group> groups;
  ojson (*config)(const SynthOptions&, const Dims&, uint32_t layers);
  // From the converter's rules (see with_rules), not restated here:
  std::optional<ScaleScheme> scheme = std::nullopt;  // of the FP8 weights; none: no FP8 release
  bool moe = false;  // has routed experts (`experts` is ignored otherwise)
};

// Layer kinds: E MoE, D dense, S MoE + sparse-attention indexer (M3), M Mamba, * attention (Nemotron),
// A Nemotron MTP head layer (attention + eh_proj), F Nemotron MTP tail layer (MoE + final norm),
// 1 a group that is not a layer.

// --- shared pieces ---
const Tpls kEmbed = {{"embed_tokens.weight", Kind::BF16, {V, H}}};
const Tpls kFinalNorm = {{"norm.weight", Kind::NORM, {H}}};
const Tpls kLmHead = {{"lm_head.weight", Kind::BF16, {V, H}}};
const Tpls kLayerNorms = {
    {"input_layernorm.weight", Kind::NORM, {H}},
    {"post_attention_layernorm.weight", Kind::NORM, {H}},
};
const Tpls kGqaAttention = {
    {"self_attn.q_proj.weight", Kind::FP8, {QO, H}},
    {"self_attn.k_proj.weight", Kind::FP8, {KVO, H}},
    {"self_attn.v_proj.weight", Kind::FP8, {KVO, H}},
    {"self_attn.o_proj.weight", Kind::FP8, {H, QO}},
};
const Tpls kDenseMlp = {
    {"mlp.gate_proj.weight", Kind::FP8, {DI, H}, "D"},
    {"mlp.up_proj.weight", Kind::FP8, {DI, H}, "D"},
    {"mlp.down_proj.weight", Kind::FP8, {H, DI}, "D"},
};

// --- MiniMax-M2 ---
const Tpls kM2Layer = {
    {"self_attn.q_norm.weight", Kind::NORM, {QO}},
    {"self_attn.k_norm.weight", Kind::NORM, {KVO}},
    {"block_sparse_moe.gate.weight", Kind::BF16, {NE, H}},
    {"block_sparse_moe.e_score_correction_bias", Kind::F32, {NE}},
    {"block_sparse_moe.experts.{E}.w1.weight", Kind::FP8, {I, H}},
    {"block_sparse_moe.experts.{E}.w2.weight", Kind::FP8, {H, I}},
    {"block_sparse_moe.experts.{E}.w3.weight", Kind::FP8, {I, H}},
};

// --- MiniMax-M3 (text and VL) ---
const Tpls kM3Layer = {
    {"self_attn.q_norm.weight", Kind::NORM, {HD}},
    {"self_attn.k_norm.weight", Kind::NORM, {HD}},
    {"self_attn.index_q_proj.weight", Kind::BF16, {IQ, H}, "S"},
    {"self_attn.index_k_proj.weight", Kind::BF16, {ID, H}, "S"},
    {"self_attn.index_q_norm.weight", Kind::NORM, {ID}, "S"},
    {"self_attn.index_k_norm.weight", Kind::NORM, {ID}, "S"},
    {"block_sparse_moe.gate.weight", Kind::F32, {NE, H}, "S"},
    {"block_sparse_moe.e_score_correction_bias", Kind::F32, {NE}, "S"},
    {"block_sparse_moe.shared_experts.gate_proj.weight", Kind::FP8, {SI, H}, "S"},
    {"block_sparse_moe.shared_experts.up_proj.weight", Kind::FP8, {SI, H}, "S"},
    {"block_sparse_moe.shared_experts.down_proj.weight", Kind::FP8, {H, SI}, "S"},
    {"block_sparse_moe.experts.{E}.w1.weight", Kind::FP8, {I, H}, "S"},
    {"block_sparse_moe.experts.{E}.w2.weight", Kind::FP8, {H, I}, "S"},
    {"block_sparse_moe.experts.{E}.w3.weight", Kind::FP8, {I, H}, "S"},
};
const Tpls kM3MtpHead = {
    {"enorm.weight", Kind::NORM, {H}},
    {"hnorm.weight", Kind::NORM, {H}},
    {"eh_proj.weight", Kind::FP8, {H, H2}},
    {"final_layernorm.weight", Kind::NORM, {H}},
};
const Tpls kM3VisionTop = {
    {"embeddings.patch_embedding.weight", Kind::BF16, {VH, 3, 2, 4, 4}},
    {"pre_layrnorm.weight", Kind::NORM, {VH}},
    {"pre_layrnorm.bias", Kind::BF16, {VH}},
    {"post_layernorm.weight", Kind::NORM, {VH}},
};
const Tpls kM3VisionLayer = {
    {"layer_norm1.weight", Kind::NORM, {VH}},
    {"layer_norm1.bias", Kind::BF16, {VH}},
    {"self_attn.q_proj.weight", Kind::BF16, {VH, VH}},
    {"self_attn.q_proj.bias", Kind::BF16, {VH}},
    {"self_attn.k_proj.weight", Kind::BF16, {VH, VH}},
    {"self_attn.k_proj.bias", Kind::BF16, {VH}},
    {"self_attn.v_proj.weight", Kind::BF16, {VH, VH}},
    {"self_attn.v_proj.bias", Kind::BF16, {VH}},
    {"self_attn.out_proj.weight", Kind::BF16, {VH, VH}},
    {"self_attn.out_proj.bias", Kind::BF16, {VH}},
    {"layer_norm2.weight", Kind::NORM, {VH}},
    {"layer_norm2.bias", Kind::BF16, {VH}},
    {"mlp.fc1.weight", Kind::BF16, {VI, VH}},
    {"mlp.fc1.bias", Kind::BF16, {VI}},
    {"mlp.fc2.weight", Kind::BF16, {VH, VI}},
    {"mlp.fc2.bias", Kind::BF16, {VH}},
};
const Tpls kM3Projector = {
    {"linear_1.weight", Kind::BF16, {H, VH}},
    {"linear_1.bias", Kind::BF16, {H}},
    {"linear_2.weight", Kind::BF16, {H, H}},
    {"linear_2.bias", Kind::BF16, {H}},
};
const Tpls kM3PatchMerge = {
    {"linear_1.weight", Kind::BF16, {VM, VM}},
    {"linear_1.bias", Kind::BF16, {VM}},
    {"linear_2.weight", Kind::BF16, {VH, VM}},
    {"linear_2.bias", Kind::F32, {VH}},
};

// --- Mistral3 ---
const Tpls kMistralVisionTop = {
    {"patch_conv.weight", Kind::BF16, {VH, 3, 4, 4}},
    {"ln_pre.weight", Kind::NORM, {VH}},
};
const Tpls kMistralVisionLayer = {
    {"attention_norm.weight", Kind::NORM, {VH}},
    {"attention.q_proj.weight", Kind::BF16, {VH, VH}},
    {"attention.k_proj.weight", Kind::BF16, {VH, VH}},
    {"attention.v_proj.weight", Kind::BF16, {VH, VH}},
    {"attention.o_proj.weight", Kind::BF16, {VH, VH}},
    {"ffn_norm.weight", Kind::NORM, {VH}},
    {"feed_forward.gate_proj.weight", Kind::BF16, {VI, VH}},
    {"feed_forward.up_proj.weight", Kind::BF16, {VI, VH}},
    {"feed_forward.down_proj.weight", Kind::BF16, {VH, VI}},
};
const Tpls kMistralProjector = {
    {"norm.weight", Kind::NORM, {VH}},
    {"patch_merger.merging_layer.weight", Kind::BF16, {VH, VM}},
    {"linear_1.weight", Kind::BF16, {H, VH}},
    {"linear_2.weight", Kind::BF16, {H, H}},
};

// --- Nemotron-V3 (all BF16; the Mamba A_log and the router bias are F32) ---
const Tpls kNemotronLayer = {
    {"norm.weight", Kind::NORM, {H}},
    {"mixer.A_log", Kind::F32, {MH}, "M"},
    {"mixer.D", Kind::BF16, {MH}, "M"},
    {"mixer.conv1d.weight", Kind::BF16, {MC, 1, 4}, "M"},
    {"mixer.conv1d.bias", Kind::BF16, {MC}, "M"},
    {"mixer.dt_bias", Kind::BF16, {MH}, "M"},
    {"mixer.in_proj.weight", Kind::BF16, {MIN, H}, "M"},
    {"mixer.norm.weight", Kind::NORM, {MD}, "M"},
    {"mixer.out_proj.weight", Kind::BF16, {H, MD}, "M"},
    {"mixer.q_proj.weight", Kind::BF16, {QO, H}, "*A"},
    {"mixer.k_proj.weight", Kind::BF16, {KVO, H}, "*A"},
    {"mixer.v_proj.weight", Kind::BF16, {KVO, H}, "*A"},
    {"mixer.o_proj.weight", Kind::BF16, {H, QO}, "*A"},
    {"eh_proj.weight", Kind::BF16, {H, H2}, "A"},
    {"enorm.weight", Kind::NORM, {H}, "A"},
    {"hnorm.weight", Kind::NORM, {H}, "A"},
    {"mixer.gate.weight", Kind::BF16, {NE, H}, "EF"},
    {"mixer.gate.e_score_correction_bias", Kind::F32, {NE}, "EF"},
    {"mixer.shared_experts.up_proj.weight", Kind::BF16, {SI, H}, "EF"},
    {"mixer.shared_experts.down_proj.weight", Kind::BF16, {H, SI}, "EF"},
    {"mixer.experts.{E}.up_proj.weight", Kind::BF16, {I, H}, "EF"},
    {"mixer.experts.{E}.down_proj.weight", Kind::BF16, {H, I}, "EF"},
    {"final_layernorm.weight", Kind::NORM, {H}, "F"},
};
const Tpls kNemotronTop = {{"embeddings.weight", Kind::BF16, {V, H}}};
const Tpls kNemotronTail = {{"norm_f.weight", Kind::NORM, {H}}};

// --- DeepSeek-V3 ---
const Tpls kDeepseekLayer = {
    {"self_attn.q_a_proj.weight", Kind::FP8, {QL, H}},
    {"self_attn.q_a_layernorm.weight", Kind::NORM, {QL}},
    {"self_attn.q_b_proj.weight", Kind::FP8, {QB, QL}},
    {"self_attn.kv_a_proj_with_mqa.weight", Kind::FP8, {KVA, H}},
    {"self_attn.kv_a_layernorm.weight", Kind::NORM, {KVL}},
    {"self_attn.kv_b_proj.weight", Kind::FP8, {KVB, KVL}},
    {"self_attn.o_proj.weight", Kind::FP8, {H, OV}},
    {"mlp.gate.weight", Kind::BF16, {NE, H}, "E"},
    {"mlp.gate.e_score_correction_bias", Kind::F32, {NE}, "E"},
    {"mlp.shared_experts.gate_proj.weight", Kind::FP8, {SI, H}, "E"},
    {"mlp.shared_experts.up_proj.weight", Kind::FP8, {SI, H}, "E"},
    {"mlp.shared_experts.down_proj.weight", Kind::FP8, {H, SI}, "E"},
    {"mlp.experts.{E}.gate_proj.weight", Kind::FP8, {I, H}, "E"},
    {"mlp.experts.{E}.up_proj.weight", Kind::FP8, {I, H}, "E"},
    {"mlp.experts.{E}.down_proj.weight", Kind::FP8, {H, I}, "E"},
};

// --- config.json builders ---

ojson fp8_block_quant() {
  return ojson{{"quant_method", "fp8"},
               {"fmt", "e4m3"},
               {"activation_scheme", "dynamic"},
               {"weight_block_size", {128, 128}}};
}

ojson mx_quant() {
  return ojson{{"quant_method", "fp8"},
               {"fmt", "e4m3"},
               {"weight_block_size", {1, 32}},
               {"scale_fmt", "ue8m0"}};
}

ojson config_m2(const SynthOptions& o, const Dims& d, uint32_t layers) {
  return ojson{{"architectures", {"MiniMaxM2ForCausalLM"}},
               {"model_type", "minimax_m2"},
               {"hidden_size", o.hidden},
               {"intermediate_size", o.inter},
               {"num_hidden_layers", layers},
               {"num_local_experts", o.experts},
               {"num_experts_per_tok", d.top_k},
               {"num_attention_heads", d.heads},
               {"num_key_value_heads", d.kv_heads},
               {"head_dim", d.head_dim},
               {"vocab_size", kVocab},
               {"rms_norm_eps", 1e-06},
               {"scoring_func", "sigmoid"},
               {"use_qk_norm", true},
               {"use_routing_bias", true},
               {"tie_word_embeddings", false},
               {"torch_dtype", "bfloat16"},
               {"quantization_config", fp8_block_quant()}};
}

ojson m3_text_config(const SynthOptions& o, const Dims& d, uint32_t layers, const char* model_type) {
  std::vector<int> moe_freq(layers, 1), ones(layers, 1);
  moe_freq[0] = 0;
  return ojson{{"architectures", {"MiniMaxM3SparseForCausalLM"}},
               {"model_type", model_type},
               {"hidden_size", o.hidden},
               {"intermediate_size", o.inter},
               {"dense_intermediate_size", d[DI]},
               {"shared_intermediate_size", d[SI]},
               {"n_shared_experts", 1},
               {"num_local_experts", o.experts},
               {"num_experts_per_tok", d.top_k},
               {"num_hidden_layers", layers},
               {"moe_layer_freq", moe_freq},
               {"num_attention_heads", d.heads},
               {"num_key_value_heads", d.kv_heads},
               {"head_dim", d.head_dim},
               {"vocab_size", kVocab},
               {"rms_norm_eps", 1e-06},
               {"use_gemma_norm", true},
               {"use_qk_norm", true},
               {"qk_norm_type", "per_head"},
               {"hidden_act", "swigluoai"},
               {"scoring_func", "sigmoid"},
               {"use_routing_bias", true},
               {"routed_scaling_factor", 2.0},
               {"num_mtp_modules", 1},
               {"sparse_attention_config",
                {{"use_sparse_attention", true},
                 {"sparse_attention_freq", moe_freq},
                 {"sparse_num_index_heads", d.index_heads},
                 {"sparse_index_dim", d[ID]},
                 {"sparse_block_size", 64},
                 {"sparse_topk_blocks", 4},
                 {"sparse_disable_index_value", ones}}},
               {"tie_word_embeddings", false},
               {"torch_dtype", "bfloat16"},
               {"quantization_config", mx_quant()}};
}

ojson config_m3(const SynthOptions& o, const Dims& d, uint32_t layers) {
  return m3_text_config(o, d, layers, "minimax_m3");
}

ojson config_m3_vl(const SynthOptions& o, const Dims& d, uint32_t layers) {
  ojson text = m3_text_config(o, d, layers, "minimax_m2");  // as the hub release names it
  text.erase("architectures");
  return ojson{{"architectures", {"MiniMaxM3SparseForConditionalGeneration"}},
               {"model_type", "minimax_m3_vl"},
               {"text_config", std::move(text)},
               {"vision_config",
                {{"model_type", "minimax_m3_vision"},
                 {"hidden_size", d[VH]},
                 {"intermediate_size", d[VI]},
                 {"num_hidden_layers", 2},
                 {"num_attention_heads", 4},
                 {"patch_size", 4}}},
               {"projector_hidden_size", o.hidden},
               {"image_token_index", kVocab - 1},
               {"video_token_index", kVocab - 2},
               {"tie_word_embeddings", false},
               {"torch_dtype", "bfloat16"},
               {"quantization_config", mx_quant()}};
}

ojson mistral_text(const SynthOptions& o, const Dims& d, uint32_t layers) {
  return ojson{{"model_type", "ministral3"},
               {"hidden_size", o.hidden},
               {"intermediate_size", d[DI]},
               {"num_hidden_layers", layers},
               {"num_attention_heads", d.heads},
               {"num_key_value_heads", d.kv_heads},
               {"head_dim", d.head_dim},
               {"vocab_size", kVocab},
               {"rms_norm_eps", 1e-05},
               {"tie_word_embeddings", false},
               {"torch_dtype", "bfloat16"}};
}

ojson mistral_quant(std::vector<std::string> not_converted) {
  return ojson{{"quant_method", "fp8"},
               {"activation_scheme", "static"},
               {"weight_block_size", nullptr},
               {"modules_to_not_convert", std::move(not_converted)}};
}

ojson config_mistral_vlm(const SynthOptions& o, const Dims& d, uint32_t layers) {
  return ojson{{"architectures", {"Mistral3ForConditionalGeneration"}},
               {"model_type", "mistral3"},
               {"text_config", mistral_text(o, d, layers)},
               {"vision_config",
                {{"model_type", "pixtral"},
                 {"hidden_size", d[VH]},
                 {"intermediate_size", d[VI]},
                 {"num_hidden_layers", 1},
                 {"num_attention_heads", 4},
                 {"patch_size", 4}}},
               {"image_token_index", 10},
               {"spatial_merge_size", 2},
               {"multimodal_projector_bias", false},
               {"torch_dtype", "bfloat16"},
               {"quantization_config",
                mistral_quant({"model.vision_tower", "model.multi_modal_projector", "lm_head"})}};
}

ojson config_mistral_causal(const SynthOptions& o, const Dims& d, uint32_t layers) {
  ojson c{{"architectures", {"Ministral3ForCausalLM"}}};
  const ojson text = mistral_text(o, d, layers);
  for (const auto& [k, v] : text.items()) c[k] = v;
  c["quantization_config"] = mistral_quant({"lm_head"});
  return c;
}

std::string nemotron_pattern(uint32_t layers);

ojson config_nemotron(const SynthOptions& o, const Dims& d, uint32_t layers) {
  return ojson{{"architectures", {"NemotronHForCausalLM"}},
               {"model_type", "nemotron_h"},
               {"hidden_size", o.hidden},
               {"num_hidden_layers", layers},
               {"hybrid_override_pattern", nemotron_pattern(layers)},
               {"n_routed_experts", o.experts},
               {"moe_intermediate_size", o.inter},
               {"moe_shared_expert_intermediate_size", d[SI]},
               {"intermediate_size", d[DI]},
               {"num_experts_per_tok", d.top_k},
               {"n_group", 1},
               {"topk_group", 1},
               {"routed_scaling_factor", 2.5},
               {"norm_topk_prob", true},
               {"mlp_bias", false},
               {"mamba_num_heads", d[MH]},
               {"mamba_head_dim", d.mamba_head_dim},
               {"ssm_state_size", d.ssm_state},
               {"n_groups", d.mamba_groups},
               {"conv_kernel", 4},
               {"chunk_size", 64},
               {"use_conv_bias", true},
               {"use_bias", false},
               {"num_attention_heads", d.heads},
               {"num_key_value_heads", d.kv_heads},
               {"head_dim", d.head_dim},
               {"vocab_size", kVocab},
               {"layer_norm_epsilon", 1e-05},
               {"num_nextn_predict_layers", 1},
               {"mtp_hybrid_override_pattern", "*E"},
               {"tie_word_embeddings", false},
               {"torch_dtype", "bfloat16"}};
}

ojson config_deepseek(const SynthOptions& o, const Dims& d, uint32_t layers) {
  return ojson{{"architectures", {"DeepseekV3ForCausalLM"}},
               {"model_type", "deepseek_v3"},
               {"hidden_size", o.hidden},
               {"intermediate_size", d[DI]},
               {"moe_intermediate_size", o.inter},
               {"num_hidden_layers", layers},
               {"first_k_dense_replace", 1},
               {"n_routed_experts", o.experts},
               {"n_shared_experts", 1},
               {"num_experts_per_tok", d.top_k},
               {"n_group", 1},
               {"topk_group", 1},
               {"num_attention_heads", d.mla_heads},
               {"num_key_value_heads", d.mla_heads},
               {"q_lora_rank", d[QL]},
               {"kv_lora_rank", d[KVL]},
               {"qk_nope_head_dim", d.nope},
               {"qk_rope_head_dim", d.rope},
               {"v_head_dim", d.v_head},
               {"vocab_size", kVocab},
               {"rms_norm_eps", 1e-06},
               {"routed_scaling_factor", 2.5},
               {"scoring_func", "sigmoid"},
               {"topk_method", "noaux_tc"},
               {"num_nextn_predict_layers", 0},
               {"tie_word_embeddings", false},
               {"torch_dtype", "bfloat16"},
               {"quantization_config", fp8_block_quant()}};
}

// --- the table ---

// The rows in the order of the converter's families, each completed with what the rules say of
// its family. Every family of the rules must have a row.
std::vector<Family> with_rules(std::vector<Family> rows) {
  std::vector<Family> table;
  for (const FamilyRules& r : families()) {
    const auto row = std::find_if(rows.begin(), rows.end(), [&](const Family& f) { return f.name == r.name; });
    if (row == rows.end()) fail(ErrorKind::Internal, "synth: no tensor layout for family '{}'", r.name);
    row->scheme = fp8_release_scheme(r);
    row->moe = !r.hf_experts.segment.empty();
    table.push_back(std::move(*row));
  }
  return table;
}

const std::vector<Family>& synth_table() {
  static const std::vector<Family> table = with_rules({
      {"minimax_m2", "", "E", 2, 2, 1,
       {{"model.", 1, {&kEmbed}},
        {"model.layers.{L}.", kMain, {&kLayerNorms, &kGqaAttention, &kM2Layer}},
        {"model.", 1, {&kFinalNorm}},
        {"", 1, {&kLmHead}}},
       config_m2},
      {"minimax_m3", "D", "S", 2, 2, 1,
       {{"model.", 1, {&kEmbed}},
        {"model.layers.{L}.", kMain, {&kLayerNorms, &kGqaAttention, &kDenseMlp, &kM3Layer}},
        {"model.", 1, {&kFinalNorm}},
        {"", 1, {&kLmHead}},
        {"model.mtp.layers.0.", 1, {&kM3MtpHead}},
        {"model.mtp.layers.0.transformer_layer.", 1, {&kLayerNorms, &kGqaAttention, &kM3Layer}, 'S'}},
       config_m3},
      {"minimax_m3_vl", "D", "S", 2, 2, 1,
       {{"language_model.model.", 1, {&kEmbed}},
        {"language_model.model.layers.{L}.", kMain,
         {&kLayerNorms, &kGqaAttention, &kDenseMlp, &kM3Layer}},
        {"language_model.model.", 1, {&kFinalNorm}},
        {"language_model.", 1, {&kLmHead}},
        {"language_model.model.mtp.layers.0.", 1, {&kM3MtpHead}},
        {"language_model.model.mtp.layers.0.transformer_layer.", 1,
         {&kLayerNorms, &kGqaAttention, &kM3Layer}, 'S'},
        {"vision_tower.vision_model.", 1, {&kM3VisionTop}},
        {"vision_tower.vision_model.encoder.layers.{L}.", 2, {&kM3VisionLayer}},
        {"multi_modal_projector.", 1, {&kM3Projector}},
        {"patch_merge_mlp.", 1, {&kM3PatchMerge}}},
       config_m3_vl},
      {"mistral3_vlm", "", "D", 1, 2, 1,
       {{"language_model.model.", 1, {&kEmbed}},
        {"language_model.model.layers.{L}.", kMain, {&kLayerNorms, &kGqaAttention, &kDenseMlp}},
        {"language_model.model.", 1, {&kFinalNorm}},
        {"language_model.", 1, {&kLmHead}},
        {"vision_tower.", 1, {&kMistralVisionTop}},
        {"vision_tower.transformer.layers.{L}.", 1, {&kMistralVisionLayer}},
        {"multi_modal_projector.", 1, {&kMistralProjector}}},
       config_mistral_vlm},
      {"mistral3_causal", "", "D", 1, 2, 1,
       {{"model.", 1, {&kEmbed}},
        {"model.layers.{L}.", kMain, {&kLayerNorms, &kGqaAttention, &kDenseMlp}},
        {"model.", 1, {&kFinalNorm}},
        {"", 1, {&kLmHead}}},
       config_mistral_causal},
      {"nemotron_v3", "", "ME*E", 2, 3, 16,
       {{"backbone.", 1, {&kNemotronTop}},
        {"backbone.layers.{L}.", kMain, {&kNemotronLayer}},
        {"backbone.", 1, {&kNemotronTail}},
        {"", 1, {&kLmHead}},
        {"mtp.layers.0.", 1, {&kNemotronLayer}, 'A'},
        {"mtp.layers.1.", 1, {&kNemotronLayer}, 'F'}},
       config_nemotron},
      {"deepseek_v3", "D", "E", 2, 2, 1,
       {{"model.", 1, {&kEmbed}},
        {"model.layers.{L}.", kMain, {&kLayerNorms, &kDeepseekLayer, &kDenseMlp}},
        {"model.", 1, {&kFinalNorm}},
        {"", 1, {&kLmHead}}},
       config_deepseek},
  });
  return table;
}

Dims derive_dims(const SynthOptions& o, const Family& f) {
  Dims d = base_dims(o);
  d[DI] = f.dense_mul * o.inter;
  d[SI] = ceil_div(ceil_div(o.inter * f.shared_x2, 2), f.shared_align) * f.shared_align;
  if (!f.moe) d[NE] = 0;
  return d;
}

char main_kind(const Family& f, uint32_t layer) {
  const std::string_view head = f.head_pattern, cycle = f.cycle_pattern;
  if (layer < head.size()) return head[layer];
  return cycle[(layer - head.size()) % cycle.size()];
}

std::string nemotron_pattern(uint32_t layers) {
  const Family* f = nullptr;
  for (const auto& fam : synth_table())
    if (fam.name == "nemotron_v3") f = &fam;
  std::string p;
  for (uint32_t l = 0; l < layers; ++l) p += main_kind(*f, l);
  return p;
}

// ---------------------------------------------------------------------------------------------
// Expansion of the table into tensors
// ---------------------------------------------------------------------------------------------

// How a tensor's bytes are drawn.
enum class Gen : uint8_t { Fp8, Bf16Small, Bf16Norm, Bf16Scale, F32Small, F32Scale, U8Scale };

struct PlannedTensor {
  OutTensor t;
  Gen gen;
};

std::vector<uint64_t> resolve(const std::vector<int64_t>& shape, const Dims& d) {
  std::vector<uint64_t> out;
  out.reserve(shape.size());
  for (int64_t s : shape) out.push_back(s >= 0 ? static_cast<uint64_t>(s) : d[static_cast<Sym>(s)]);
  return out;
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size()))
    s.replace(p, from.size(), to);
}

bool has_kind(const char* kinds, char k) {
  return kinds[0] == '\0' || std::strchr(kinds, k) != nullptr;
}

// Calls `emit(name, dtype, shape, gen)` for the scale partner(s) of the FP8 weight "{base}weight"
// [out, in], in the family's scheme (SPEC §2). `variant` picks the per-tensor form: the hub's
// Mistral3 FP8 releases use several, so synth rotates through them.
template <typename Emit>
void emit_scales(const Family& f, const std::string& base, uint64_t out, uint64_t in, uint32_t variant,
                 Emit& emit) {
  if (!f.scheme) return;
  switch (*f.scheme) {
    case ScaleScheme::Block: {
      const BlockSize block{};  // 128 × 128, as the config's weight_block_size says
      emit(base + "weight_scale_inv", DType::F32, {ceil_div(out, block.rows), ceil_div(in, block.cols)},
           Gen::F32Scale);
      break;
    }
    case ScaleScheme::Mx:
      emit(base + "weight_scale_inv", DType::U8, {out, ceil_div(in, kMxBlock)}, Gen::U8Scale);
      break;
    case ScaleScheme::PerTensor:
      switch (variant % 3) {
        case 0: emit(base + "weight_scale_inv", DType::F32, {}, Gen::F32Scale); break;
        case 1: emit(base + "weight_scale_inv", DType::F32, {1}, Gen::F32Scale); break;
        default: emit(base + "weight_scale_inv", DType::BF16, {1}, Gen::Bf16Scale); break;
      }
      emit(base + "activation_scale", DType::F32, {}, Gen::F32Scale);
      break;
  }
}

// Calls `emit(name, dtype, shape, gen)` for every tensor of group repetition `rep` of kind `kind`.
// `serial` counts FP8 weights within the repetition (it rotates the Mistral scale variants).
template <typename Emit>
void expand_layer(const Family& f, const Group& g, uint32_t rep, char kind, const Dims& d,
                  uint32_t experts, Emit&& emit) {
  std::string prefix = g.prefix;
  replace_all(prefix, "{L}", std::to_string(rep));
  uint32_t serial = 0;
  for (const Tpls* list : g.tpls) {
    for (const Tpl& tpl : *list) {
      if (!has_kind(tpl.kinds, kind)) continue;
      const bool per_expert = std::string_view(tpl.name).find("{E}") != std::string_view::npos;
      const uint32_t n = per_expert ? experts : 1;
      const std::vector<uint64_t> shape = resolve(tpl.shape, d);
      for (uint32_t e = 0; e < n; ++e) {
        std::string name = prefix + tpl.name;
        if (per_expert) replace_all(name, "{E}", std::to_string(e));
        switch (tpl.kind) {
          case Kind::BF16: emit(std::move(name), DType::BF16, shape, Gen::Bf16Small); break;
          case Kind::NORM: emit(std::move(name), DType::BF16, shape, Gen::Bf16Norm); break;
          case Kind::F32: emit(std::move(name), DType::F32, shape, Gen::F32Small); break;
          case Kind::FP8: {
            const uint64_t out = shape.at(0), in = shape.at(1);
            const std::string base = name.substr(0, name.size() - std::string_view("weight").size());
            emit(std::move(name), DType::F8_E4M3, shape, Gen::Fp8);
            emit_scales(f, base, out, in, rep + serial, emit);
            ++serial;
            break;
          }
        }
      }
    }
  }
}

// Every tensor of the checkpoint, in file order.
template <typename Emit>
void expand_all(const Family& f, const Dims& d, uint32_t layers, uint32_t experts, Emit&& emit) {
  for (const Group& g : f.groups) {
    if (g.count == kMain) {
      for (uint32_t l = 0; l < layers; ++l) expand_layer(f, g, l, main_kind(f, l), d, experts, emit);
    } else {
      for (int r = 0; r < g.count; ++r)
        expand_layer(f, g, static_cast<uint32_t>(r), g.kind, d, experts, emit);
    }
  }
}

uint64_t bytes_of(DType t, const std::vector<uint64_t>& shape) {
  uint64_t n = dtype_size(t);
  for (uint64_t s : shape)
    if (__builtin_mul_overflow(n, s, &n)) fail_usage("synth: tensor size overflows; use smaller sizes");
  return n;
}

// Bytes of everything but the main layers, and of main layer `l`.
uint64_t fixed_bytes(const Family& f, const Dims& d, uint32_t experts) {
  uint64_t total = 0;
  for (const Group& g : f.groups)
    if (g.count != kMain)
      for (int r = 0; r < g.count; ++r)
        expand_layer(f, g, static_cast<uint32_t>(r), g.kind, d, experts,
                     [&](std::string&&, DType t, const std::vector<uint64_t>& s, Gen) {
                       total += bytes_of(t, s);
                     });
  return total;
}

uint64_t layer_bytes(const Family& f, const Dims& d, uint32_t experts, uint32_t l) {
  uint64_t total = 0;
  for (const Group& g : f.groups)
    if (g.count == kMain)
      expand_layer(f, g, l, main_kind(f, l), d, experts,
                   [&](std::string&&, DType t, const std::vector<uint64_t>& s, Gen) {
                     total += bytes_of(t, s);
                   });
  return total;
}

constexpr uint32_t kMaxLayers = 100000;

uint32_t layers_for_target(const Family& f, const Dims& d, uint32_t experts, uint64_t target) {
  uint64_t total = fixed_bytes(f, d, experts);
  for (uint32_t l = 0; l < kMaxLayers; ++l) {
    const uint64_t next = total + layer_bytes(f, d, experts, l);
    if (next >= target) {
      // Closer of l and l+1 layers, at least one layer.
      if (l > 0 && target - total < next - target) return l;
      return l + 1;
    }
    total = next;
  }
  fail_usage("synth: --target of {} bytes needs more than {} layers at these sizes; raise --hidden "
             "or --experts",
             target, kMaxLayers);
}

// ---------------------------------------------------------------------------------------------
// Data generation
// ---------------------------------------------------------------------------------------------

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t tensor_key(uint64_t seed, std::string_view name) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 0x100000001B3ull;
  return mix64(mix64(seed + kGolden) ^ h);
}

// The 8 bytes (little-endian) of word `j` of a tensor with key `key`.
template <Gen g>
inline uint64_t gen_word(uint64_t key, uint64_t j) {
  const uint64_t r = mix64(key + (j + 1) * kGolden);
  switch (g) {
    case Gen::Fp8: {
      // 0x7F / 0xFF are NaN in e4m3fn: clear bit 0 of every byte whose low 7 bits are all ones.
      const uint64_t nan = ((r & 0x7F7F7F7F7F7F7F7Full) + 0x0101010101010101ull) & 0x8080808080808080ull;
      return r ^ (nan >> 7);
    }
    case Gen::Bf16Small:  // |x| in [2^-9, 2^-5), either sign
      return (r & 0x807F807F807F807Full) |
             ((((r >> 7) & 0x0003000300030003ull) + 0x0076007600760076ull) << 7);
    case Gen::Bf16Norm:  // x in [0.5, 2)
      return (r & 0x007F007F007F007Full) |
             ((((r >> 7) & 0x0001000100010001ull) + 0x007E007E007E007Eull) << 7);
    case Gen::Bf16Scale:  // x in [2^-10, 2^-6)
      return (r & 0x007F007F007F007Full) |
             ((((r >> 7) & 0x0003000300030003ull) + 0x0075007500750075ull) << 7);
    case Gen::F32Small:  // |x| in [2^-9, 2^-5), either sign
      return (r & 0x807FFFFF807FFFFFull) |
             ((((r >> 23) & 0x0000000300000003ull) + 0x0000007600000076ull) << 23);
    case Gen::F32Scale:  // x in [2^-10, 2^-6) (about 1e-3 .. 1.6e-2)
      return (r & 0x007FFFFF007FFFFFull) |
             ((((r >> 23) & 0x0000000300000003ull) + 0x0000007500000075ull) << 23);
    case Gen::U8Scale: {  // e8m0 exponents 110 .. 130
      uint64_t out = 0;
      for (int b = 0; b < 8; ++b) {
        const uint64_t byte = (r >> (8 * b)) & 0xFF;
        out |= (110 + ((byte * 21) >> 8)) << (8 * b);
      }
      return out;
    }
  }
  return r;
}

// Writes bytes [begin, end) of a tensor into `dst`.
template <Gen g>
void gen_range_t(uint64_t key, uint64_t begin, uint64_t end, uint8_t* dst) {
  uint64_t pos = begin;
  // Leading partial word.
  if (pos % 8 != 0 && pos < end) {
    const uint64_t w = gen_word<g>(key, pos / 8);
    const uint64_t off = pos % 8, n = std::min<uint64_t>(8 - off, end - pos);
    std::memcpy(dst, reinterpret_cast<const uint8_t*>(&w) + off, n);
    dst += n;
    pos += n;
  }
  // Whole words (the word bytes are little-endian, as on every platform ckptconv targets).
  const uint64_t whole_end = pos + (end - pos) / 8 * 8;
  for (uint64_t j = pos / 8; pos < whole_end; ++j, pos += 8, dst += 8) {
    const uint64_t w = gen_word<g>(key, j);
    std::memcpy(dst, &w, 8);
  }
  if (pos < end) {
    const uint64_t w = gen_word<g>(key, pos / 8);
    std::memcpy(dst, &w, end - pos);
  }
}

void gen_range(Gen g, uint64_t key, uint64_t begin, uint64_t end, uint8_t* dst) {
  switch (g) {
    case Gen::Fp8: return gen_range_t<Gen::Fp8>(key, begin, end, dst);
    case Gen::Bf16Small: return gen_range_t<Gen::Bf16Small>(key, begin, end, dst);
    case Gen::Bf16Norm: return gen_range_t<Gen::Bf16Norm>(key, begin, end, dst);
    case Gen::Bf16Scale: return gen_range_t<Gen::Bf16Scale>(key, begin, end, dst);
    case Gen::F32Small: return gen_range_t<Gen::F32Small>(key, begin, end, dst);
    case Gen::F32Scale: return gen_range_t<Gen::F32Scale>(key, begin, end, dst);
    case Gen::U8Scale: return gen_range_t<Gen::U8Scale>(key, begin, end, dst);
  }
}

constexpr uint64_t kWindow = 4ull << 20;  // bytes generated and written per work item

struct ShardPlan {
  ShardLayout layout;
  std::vector<Gen> gens;
  std::vector<uint64_t> keys;
  std::vector<uint64_t> rel;  // tensor start relative to the data region
  uint64_t data_size = 0;
};

const Family& find_family(const std::string& name) {
  for (const auto& f : synth_table())
    if (name == f.name) return f;
  fail_usage("synth: unknown family '{}' (known: {})", name, fmt::join(synth_families(), ", "));
}

void check_out_dir(const fs::path& out) {
  if (out.empty()) fail_usage("synth: no output directory given");
  std::error_code ec;
  const auto st = fs::status(out, ec);
  if (fs::exists(st)) {
    if (!fs::is_directory(st)) fail_usage("synth: output '{}' exists and is not a directory", out.string());
    if (!fs::is_empty(out, ec) || ec)
      fail_usage("synth: output directory '{}' is not empty", out.string());
  } else {
    fs::create_directories(out, ec);
    if (ec) fail(ErrorKind::Io, "synth: cannot create '{}': {}", out.string(), ec.message());
  }
}

void check_options(const SynthOptions& o) {
  if (o.target_bytes == 0 && o.layers == 0) fail_usage("synth: --layers must be at least 1");
  if (o.experts == 0) fail_usage("synth: --experts must be at least 1");
  if (o.hidden == 0) fail_usage("synth: --hidden must be at least 1");
  if (o.inter == 0) fail_usage("synth: --inter must be at least 1");
  if (o.shards == 0) fail_usage("synth: --shards must be at least 1");
  if (o.hidden > (1ull << 24) || o.inter > (1ull << 24) || o.experts > (1u << 16))
    fail_usage("synth: sizes too large (hidden and inter at most 2^24, experts at most 65536)");
}

// Every tensor of the checkpoint in file order, with its byte size.
struct TensorList {
  std::vector<PlannedTensor> tensors;
  std::vector<uint64_t> sizes;
  uint64_t total = 0;
};

TensorList list_tensors(const Family& fam, const Dims& d, uint32_t layers, uint32_t experts) {
  TensorList l;
  expand_all(fam, d, layers, experts, [&](std::string&& name, DType t, const std::vector<uint64_t>& shape, Gen g) {
    l.tensors.push_back({OutTensor{std::move(name), t, shape}, g});
  });
  l.sizes.resize(l.tensors.size());
  for (size_t i = 0; i < l.tensors.size(); ++i) {
    l.sizes[i] = bytes_of(l.tensors[i].t.dtype, l.tensors[i].t.shape);
    l.total += l.sizes[i];
  }
  return l;
}

// The shard of each tensor: consecutive runs balanced by bytes (a tensor goes to the shard its
// middle byte falls in), every shard non-empty, none skipped.
std::vector<size_t> assign_shards(const std::vector<uint64_t>& sizes, uint64_t total, size_t n_shards) {
  const size_t n_tensors = sizes.size();
  std::vector<size_t> shard_of(n_tensors);
  uint64_t cum = 0;
  size_t prev = 0;
  for (size_t i = 0; i < n_tensors; ++i) {
    const uint64_t mid = cum + sizes[i] / 2;
    size_t s = total ? static_cast<size_t>(static_cast<long double>(mid) * n_shards / total) : 0;
    const size_t lo = std::max(prev, n_shards - std::min(n_shards, n_tensors - i));
    const size_t hi = i == 0 ? 0 : prev + 1;
    s = std::clamp(s, lo, std::max(lo, hi));
    shard_of[i] = std::min(s, n_shards - 1);
    prev = shard_of[i];
    cum += sizes[i];
  }
  return shard_of;
}

// Each shard's layout, with its tensors' generators and keys; the list's tensors move into them.
std::vector<ShardPlan> plan_shards(TensorList& list, const std::vector<size_t>& shard_of, size_t n_shards,
                                   uint64_t seed) {
  std::vector<ShardPlan> plans(n_shards);
  std::vector<std::vector<OutTensor>> lists(n_shards);
  for (size_t i = 0; i < list.tensors.size(); ++i) {
    ShardPlan& p = plans[shard_of[i]];
    p.gens.push_back(list.tensors[i].gen);
    p.keys.push_back(tensor_key(seed, list.tensors[i].t.name));
    lists[shard_of[i]].push_back(std::move(list.tensors[i].t));
  }
  list.tensors.clear();
  list.tensors.shrink_to_fit();
  for (size_t s = 0; s < n_shards; ++s) {
    ShardPlan& p = plans[s];
    p.layout = layout_shard(shard_file_name(s, n_shards), std::move(lists[s]));
    p.data_size = p.layout.file_size - p.layout.data_start;
    p.rel.reserve(p.layout.offsets.size());
    for (uint64_t off : p.layout.offsets) p.rel.push_back(off - p.layout.data_start);
  }
  return plans;
}

// A window of one shard's data region, generated and written as one work item.
struct Item {
  uint32_t shard;
  uint64_t begin, end;  // relative to the shard's data region
};

// Window k of every shard before window k+1 of any, so that concurrent writes mostly go to
// different files (some filesystems serialise writes to one file).
std::vector<Item> windows(const std::vector<ShardPlan>& plans) {
  std::vector<Item> items;
  uint64_t max_size = 0;
  for (const auto& p : plans) max_size = std::max(max_size, p.data_size);
  for (uint64_t b = 0; b < max_size; b += kWindow)
    for (size_t s = 0; s < plans.size(); ++s)
      if (b < plans[s].data_size)
        items.push_back({static_cast<uint32_t>(s), b, std::min(b + kWindow, plans[s].data_size)});
  return items;
}

// Generates the bytes of window `it` of shard `p` into `buf`, tensor by tensor.
void fill_window(const ShardPlan& p, const Item& it, uint8_t* buf) {
  // First tensor that ends after the window begins.
  size_t t = static_cast<size_t>(std::upper_bound(p.rel.begin(), p.rel.end(), it.begin) - p.rel.begin());
  if (t > 0) --t;
  for (; t < p.rel.size() && p.rel[t] < it.end; ++t) {
    const uint64_t tb = p.rel[t], te = tb + p.layout.tensors[t].nbytes();
    const uint64_t b = std::max(tb, it.begin), e = std::min(te, it.end);
    if (b >= e) continue;
    gen_range(p.gens[t], p.keys[t], b - tb, e - tb, buf + (b - it.begin));
  }
}

// The shards, created at full size and filled window by window in parallel (left as zeros when
// sparse), then committed under their final names.
void write_shards(const SynthOptions& o, const std::vector<ShardPlan>& plans) {
  const std::vector<Item> items = windows(plans);
  std::vector<std::unique_ptr<ShardWriter>> writers(plans.size());
  tbb::enumerable_thread_specific<std::vector<uint8_t>> buffers;
  auto fill = [&](const Item& it) {
    std::vector<uint8_t>& buf = buffers.local();
    if (buf.size() < kWindow) buf.resize(kWindow);
    fill_window(plans[it.shard], it, buf.data());
    writers[it.shard]->write(plans[it.shard].layout.data_start + it.begin, buf.data(), it.end - it.begin);
  };
  tbb::task_arena arena(o.threads == 0 ? tbb::task_arena::automatic : static_cast<int>(o.threads));
  arena.execute([&] {
    // Creating a shard reserves its full size, which can take a while (tmpfs zero-fills): in parallel.
    tbb::parallel_for(size_t{0}, plans.size(), [&](size_t s) {
      writers[s] = std::make_unique<ShardWriter>(o.out, plans[s].layout, !o.sparse);
    });
    if (o.sparse) return;  // zeros: valid codes and (zero) scales, and no disk
    tbb::parallel_for(tbb::blocked_range<size_t>(0, items.size(), 1),
                      [&](const tbb::blocked_range<size_t>& r) {
                        for (size_t i = r.begin(); i != r.end(); ++i) fill(items[i]);
                      },
                      tbb::simple_partitioner());
  });
  for (auto& w : writers) w->commit();
}

// Side files, then the index, which makes the directory look complete. (Written after the data so
// that a run that fails while generating leaves the directory empty and reusable.) Returns the
// number of tensors the index lists.
uint64_t write_side_files_and_index(const SynthOptions& o, const Family& fam, const Dims& d, uint32_t layers,
                                    std::vector<ShardPlan>& plans) {
  write_file_atomic(o.out / "config.json", fam.config(o, d, layers).dump(2) + "\n");
  write_file_atomic(o.out / "tokenizer_config.json",
                    ojson{{"model_max_length", 4096},
                          {"tokenizer_class", "PreTrainedTokenizerFast"},
                          {"ckptconv_synthetic", true}}
                            .dump(2) +
                        "\n");
  std::vector<ShardLayout> layouts;
  layouts.reserve(plans.size());
  uint64_t tensors = 0;
  for (auto& p : plans) {
    tensors += p.layout.tensors.size();
    layouts.push_back(std::move(p.layout));
  }
  write_file_atomic(o.out / "model.safetensors.index.json", index_json(layouts));
  return tensors;
}

}  // namespace

const std::vector<std::string>& synth_families() { return family_names(); }

SynthSummary synth(const SynthOptions& o) {
  const Family& fam = find_family(o.family);
  check_options(o);
  const Dims d = derive_dims(o, fam);
  const uint32_t layers =
      o.target_bytes > 0 ? layers_for_target(fam, d, o.experts, o.target_bytes) : o.layers;
  check_out_dir(o.out);

  TensorList list = list_tensors(fam, d, layers, o.experts);
  const size_t n_shards = std::min<size_t>(o.shards, list.tensors.size());
  const std::vector<size_t> shard_of = assign_shards(list.sizes, list.total, n_shards);
  std::vector<ShardPlan> plans = plan_shards(list, shard_of, n_shards, o.seed);
  write_shards(o, plans);

  SynthSummary sum;
  sum.tensors = write_side_files_and_index(o, fam, d, layers, plans);
  sum.bytes = list.total;
  sum.layers = layers;
  sum.shards = static_cast<uint32_t>(n_shards);
  return sum;
}

}  // namespace ckpt
