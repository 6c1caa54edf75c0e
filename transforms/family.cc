#include "transforms/family.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "formats/error.h"
#include "transforms/scheme.h"

namespace ckpt {

namespace {

using R = Rename;

const ExpertNaming kMiniMaxExperts{".block_sparse_moe.experts.", "w1", "w3", "w2"};
const ExpertNaming kMlpExperts{".mlp.experts.", "gate_proj", "up_proj", "down_proj"};

const std::vector<Rename> kMiniMaxRenames = {
    {R::Infix, ".block_sparse_moe.gate.weight", ".mlp.gate.weight"},
    {R::Infix, ".block_sparse_moe.e_score_correction_bias", ".mlp.gate.e_score_correction_bias"},
};

const std::vector<Rename> kMiniMaxHfRenames = {
    {R::Infix, ".mlp.gate.weight", ".block_sparse_moe.gate.weight"},
    {R::Infix, ".mlp.gate.e_score_correction_bias", ".block_sparse_moe.e_score_correction_bias"},
};

std::vector<Rename> m3_renames() {
  std::vector<Rename> r = kMiniMaxRenames;
  r.push_back({R::Infix, ".block_sparse_moe.shared_experts.", ".shared_experts."});
  r.push_back({R::Infix, ".self_attn.index_", ".self_attn.indexer.index_"});
  return r;
}

std::vector<Rename> m3_hf_renames() {
  std::vector<Rename> r = kMiniMaxHfRenames;
  r.push_back({R::Infix, ".shared_experts.", ".block_sparse_moe.shared_experts."});
  r.push_back({R::Infix, ".self_attn.indexer.index_", ".self_attn.index_"});
  return r;
}

const std::vector<std::string_view> kMiniMaxNoFp8 = {
    "input_layernorm.weight", "post_attention_layernorm.weight", "norm.weight", "lm_head.weight",
    "embed_tokens.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight",
    "block_sparse_moe.gate.weight", "mlp.gate.weight", ".lora_"};
const std::vector<std::string_view> kDeepSeekNoFp8 = {
    "input_layernorm.weight", "post_attention_layernorm.weight", "norm.weight", "lm_head.weight",
    "embed_tokens.weight", "mlp.gate.weight", ".lora_"};
const std::vector<std::string_view> kMistralNoFp8 = {
    "embed_tokens.weight", "lm_head.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
    "model.norm.weight"};
constexpr uint8_t kBlock = static_cast<uint8_t>(ScaleScheme::Block);
constexpr uint8_t kMx = static_cast<uint8_t>(ScaleScheme::Mx);
constexpr uint8_t kPerTensor = static_cast<uint8_t>(ScaleScheme::PerTensor);

const std::vector<FamilyRules> kFamilies = {
    {.name = "minimax_m2", .model_types = {"minimax_m2", "minimax"}, .renames = kMiniMaxRenames,
     .hf_renames = kMiniMaxHfRenames, .hf_experts = kMiniMaxExperts, .native_segment = "mlp.experts",
     .experts_key = "num_local_experts", .inter_key = "intermediate_size",
     .fp8_export = Fp8Export::Excluding, .fp8_exclude = kMiniMaxNoFp8, .export_scheme = kBlock},
    {.name = "minimax_m3", .model_types = {"minimax_m3"}, .renames = m3_renames(),
     .hf_renames = m3_hf_renames(), .hf_experts = kMiniMaxExperts, .native_segment = "mlp.experts", .mtp = MtpRule::MiniMaxM3,
     .experts_key = "num_local_experts", .inter_key = "intermediate_size",
     .fp8_export = Fp8Export::M3Layers, .export_scheme = kMx},
    {.name = "minimax_m3_vl", .model_types = {"minimax_m3_vl"}, .renames = m3_renames(),
     .hf_renames = m3_hf_renames(), .hf_experts = kMiniMaxExperts, .native_segment = "mlp.experts", .mtp = MtpRule::MiniMaxM3,
     .vl_m3 = true, .experts_key = "num_local_experts", .inter_key = "intermediate_size", .fp8_export = Fp8Export::M3Layers, .export_scheme = kMx},
    {.name = "mistral3_vlm", .model_types = {"mistral3"},
     .renames = {{R::Whole, "language_model.lm_head.weight", "lm_head.weight", true},
                 {R::Prefix, "language_model.model.", "model.language_model.", true},
                 {R::Prefix, "language_model.", "model.language_model.", true},
                 {R::Prefix, "vision_tower.", "model.vision_tower.", true},
                 {R::Prefix, "multi_modal_projector.", "model.multi_modal_projector.", true}},
     .hf_renames = {{R::Whole, "lm_head.weight", "language_model.lm_head.weight", true},
                    {R::Prefix, "model.language_model.", "language_model.model.", true},
                    {R::Prefix, "model.vision_tower.", "vision_tower.", true},
                    {R::Prefix, "model.multi_modal_projector.", "multi_modal_projector.", true}},
     .hf_experts = {}, .native_segment = "", .mistral_scales = true, .mistral_vlm_names = true, .fp8_export = Fp8Export::Mistral, .fp8_exclude = kMistralNoFp8,
     .export_scheme = kPerTensor},
    {.name = "mistral3_causal", .model_types = {"ministral3", "mistral"}, .renames = {},
     .hf_experts = {}, .native_segment = "", .mistral_scales = true,
     .fp8_export = Fp8Export::Mistral, .fp8_exclude = kMistralNoFp8, .export_scheme = kPerTensor},
    {.name = "nemotron_v3", .model_types = {"nemotron_h", "nemotron_v3"},
     .renames = {{R::Whole, "backbone.norm_f.weight", "model.norm.weight", true},
                 {R::Whole, "backbone.embeddings.weight", "model.embed_tokens.weight", true},
                 {R::Prefix, "backbone.", "model."},
                 {R::Suffix, ".mixer.A_log", ".mixer._fp32_params.A_log", true},
                 {R::Suffix, ".mixer.dt_bias", ".mixer._fp32_params.dt_bias", true},
                 {R::Suffix, ".mixer.D", ".mixer._fp32_params.D", true}},
     .hf_renames = {{R::Whole, "model.norm.weight", "backbone.norm_f.weight", true},
                    {R::Whole, "model.embed_tokens.weight", "backbone.embeddings.weight", true},
                    {R::Prefix, "model.", "backbone."},
                    {R::Infix, ".mixer._fp32_params.", ".mixer.", true}},
     .hf_experts = {".mixer.experts.", "", "up_proj", "down_proj"}, .native_segment = "mixer.experts",
     .gated = false, .mtp = MtpRule::Nemotron, .fp32_mamba = true, .layer_cutoff = true,
     .experts_key = "n_routed_experts", .inter_key = "moe_intermediate_size",
     .hf_f32_suffixes = {".mixer.A_log", ".mixer.dt_bias", ".mixer.D", ".e_score_correction_bias"}},
    {.name = "deepseek_v3", .model_types = {"deepseek_v3"}, .renames = {}, .hf_experts = kMlpExperts,
     .native_segment = "mlp.experts", .experts_key = "n_routed_experts",
     .inter_key = "moe_intermediate_size", .fp8_export = Fp8Export::Excluding,
     .fp8_exclude = kDeepSeekNoFp8, .export_scheme = kBlock},
};

bool apply(const Rename& r, std::string& key) {
  switch (r.where) {
    case Rename::Infix: {
      const auto pos = key.find(r.from);
      if (pos == std::string::npos) return false;
      key.replace(pos, r.from.size(), r.to);
      return true;
    }
    case Rename::Prefix:
      if (!key.starts_with(r.from)) return false;
      key.replace(0, r.from.size(), r.to);
      return true;
    case Rename::Suffix:
      if (!key.ends_with(r.from)) return false;
      key.replace(key.size() - r.from.size(), r.from.size(), r.to);
      return true;
    case Rename::Whole:
      if (key != r.from) return false;
      key = r.to;
      return true;
  }
  return false;
}

std::optional<uint64_t> digits(std::string_view s, size_t& pos) {
  const size_t start = pos;
  uint64_t v = 0;
  while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9' && pos - start < 18) v = v * 10 + (s[pos++] - '0');
  if (pos == start) return std::nullopt;
  return v;
}

struct ExpertMatch {
  std::string_view before;  // everything before the segment
  uint64_t expert;
  uint8_t proj;
};

// "{before}{segment}{E}.{proj}.weight" with proj one of the naming's names.
std::optional<ExpertMatch> match_expert(std::string_view key, const ExpertNaming& n) {
  if (n.segment.empty()) return std::nullopt;
  const auto at = key.find(n.segment);
  if (at == std::string_view::npos) return std::nullopt;
  size_t pos = at + n.segment.size();
  const auto e = digits(key, pos);
  if (!e || pos >= key.size() || key[pos] != '.') return std::nullopt;
  const std::string_view rest = key.substr(pos + 1);
  const std::string_view names[3] = {n.gate, n.up, n.down};
  for (uint8_t p = 0; p < 3; ++p)
    if (!names[p].empty() && rest.size() == names[p].size() + 7 && rest.starts_with(names[p]) &&
        rest.ends_with(".weight"))
      return ExpertMatch{key.substr(0, at), *e, p};
  return std::nullopt;
}

// "{p}layers.{L}" with p one of SPEC §3's prefixes.
bool is_layer_prefix(std::string_view s) {
  for (std::string_view p : {"model.language_model.", "language_model.", "model.", ""}) {
    if (!s.starts_with(p)) continue;
    std::string_view rest = s.substr(p.size());
    if (!rest.starts_with("layers.")) continue;
    size_t pos = 7;
    if (digits(rest, pos) && pos == rest.size()) return true;
  }
  return false;
}

// Renames, then expert grouping (SPEC §3): the steps every family shares.
NativeKey rename_and_group(const FamilyRules& f, std::string_view key) {
  std::string k(key);
  if (auto m = match_expert(k, f.hf_experts)) {
    static const std::string_view native_proj[3] = {"gate_proj", "up_proj", "down_proj"};
    k = fmt::format("{}.{}.{}.{}.weight", m->before, f.native_segment, m->expert, native_proj[m->proj]);
  }
  bool f32 = false;
  for (const auto& r : f.renames) {
    if (!apply(r, k)) continue;
    if (f.fp32_mamba && r.where == Rename::Suffix) f32 = true;
    if (r.last) break;
  }
  if (!f.native_segment.empty()) {
    const std::string seg = fmt::format(".{}.", f.native_segment);
    if (auto m = match_expert(k, ExpertNaming{seg, "gate_proj", "up_proj", "down_proj"});
        m && is_layer_prefix(m->before)) {
      if (!f.gated && m->proj == 0) return {NativeKey::Drop, {}, 0, 0, false};
      return {NativeKey::Expert, fmt::format("{}.{}", m->before, f.native_segment),
              static_cast<uint32_t>(m->expert), m->proj, false};
    }
  }
  return {NativeKey::Tensor, std::move(k), 0, 0, f32};
}

NativeKey map_m3(const FamilyRules& f, std::string_view key, const MapContext& ctx) {
  const auto at = key.find(".mtp.");
  if (at == std::string_view::npos) return rename_and_group(f, key);
  if (!ctx.mtp) return {NativeKey::Drop, {}, 0, 0, false};
  // {h}mtp.layers.{d}.transformer_layer.{rest}: converted as layer d of a one-layer model.
  std::string_view tail = key.substr(at + 5);
  size_t pos = 7;
  std::optional<uint64_t> d;
  if (tail.starts_with("layers.") && (d = digits(tail, pos)) && tail.substr(pos).starts_with(".transformer_layer.")) {
    const std::string inner_prefix = fmt::format("model.layers.{}.", *d);
    NativeKey n = rename_and_group(f, inner_prefix + std::string(tail.substr(pos + 19)));
    const std::string mtp_prefix = fmt::format("model.mtp.layers.{}.transformer_layer.", *d);
    if (n.kind != NativeKey::Drop) n.name = mtp_prefix + n.name.substr(inner_prefix.size());
    return n;
  }
  return {NativeKey::Tensor, std::string(key), 0, 0, false};  // enorm, hnorm, eh_proj, final_layernorm
}

NativeKey map_nemotron(const FamilyRules& f, std::string_view key, const MapContext& ctx) {
  for (std::string_view p : {"backbone.layers.", "model.layers."}) {
    if (!key.starts_with(p)) continue;
    size_t pos = p.size();
    const auto layer = digits(key, pos);
    if (layer && pos < key.size() && key[pos] == '.' && *layer >= ctx.num_layers)
      return {NativeKey::Drop, {}, 0, 0, false};
  }
  if (key.starts_with("mtp.")) {
    if (!ctx.mtp) return {NativeKey::Drop, {}, 0, 0, false};
    NativeKey n = rename_and_group(f, key.substr(4));
    if (n.kind != NativeKey::Drop) n.name = "mtp." + n.name;
    return n;
  }
  return rename_and_group(f, key);
}

}  // namespace

const std::vector<FamilyRules>& families() { return kFamilies; }

const std::vector<std::string>& family_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& f : kFamilies) n.emplace_back(f.name);
    return n;
  }();
  return names;
}

std::optional<ScaleScheme> fp8_release_scheme(const FamilyRules& f) {
  if (f.fp8_export == Fp8Export::None) return std::nullopt;
  return static_cast<ScaleScheme>(f.export_scheme);
}

std::optional<uint64_t> mtp_index(std::string_view name) {
  if (!name.starts_with("model.mtp.layers.")) return std::nullopt;
  size_t pos = 17;
  const auto d = digits(name, pos);
  if (d && pos < name.size() && name[pos] == '.') return d;
  return std::nullopt;
}

bool keeps_hf_names(const FamilyRules& f, const nlohmann::ordered_json& tc) {
  // Compared as JSON values: a config.json value of another type is no match, not an exception.
  const auto mt = tc.find("model_type"), layers = tc.find("num_hidden_layers");
  return f.mistral_vlm_names && mt != tc.end() && *mt == "ministral3" && layers != tc.end() && *layers == 88;
}

std::optional<uint64_t> layer_index(std::string_view name) {
  for (std::string_view p : {"model.language_model.", "language_model.", "model.", ""}) {
    if (!name.starts_with(p) || !name.substr(p.size()).starts_with("layers.")) continue;
    size_t pos = p.size() + 7;
    const auto l = digits(name, pos);
    if (l && pos < name.size() && name[pos] == '.') return l;
  }
  return std::nullopt;
}

const FamilyRules& family(std::string_view name) {
  for (const auto& f : kFamilies)
    if (f.name == name) return f;
  fail_usage("unknown family '{}' (known: {})", name, fmt::join(family_names(), ", "));
}

const nlohmann::ordered_json& text_config(const nlohmann::ordered_json& config) {
  if (config.contains("text_config") && config["text_config"].is_object()) return config["text_config"];
  return config;
}

const FamilyRules& detect_family(const nlohmann::ordered_json& config) {
  const auto it = config.find("model_type");
  if (it != config.end() && !it->is_string() && !it->is_null())
    fail_input("config.json: model_type must be a string, got {}", it->type_name());
  const std::string mt = it != config.end() && it->is_string() ? it->get<std::string>() : "";
  for (const auto& f : kFamilies)
    for (auto t : f.model_types)
      if (mt == t) {
        if (f.name == "mistral3_causal" || f.name == "mistral3_vlm") {
          const bool vlm = config.contains("text_config");
          return family(vlm ? "mistral3_vlm" : "mistral3_causal");
        }
        return f;
      }
  std::string arch;
  if (config.contains("architectures") && config["architectures"].is_array() && !config["architectures"].empty())
    arch = config["architectures"][0].is_string() ? config["architectures"][0].get<std::string>() : "";
  fail_usage("config.json: model_type '{}' (architectures '{}') is not a known family; pass --family", mt, arch);
}

namespace {

// Native -> HF for a key in the plain (unwrapped) form: expert naming back, then the renames.
std::string hf_plain(const FamilyRules& f, std::string_view key, bool keep_names) {
  std::string k(key);
  if (!f.native_segment.empty()) {
    const std::string seg = fmt::format(".{}.", f.native_segment);
    if (auto m = match_expert(k, ExpertNaming{seg, "gate_proj", "up_proj", "down_proj"})) {
      const std::string_view hf_proj[3] = {f.hf_experts.gate, f.hf_experts.up, f.hf_experts.down};
      k = fmt::format("{}{}{}.{}.weight", m->before, f.hf_experts.segment, m->expert, hf_proj[m->proj]);
    }
  }
  if (!keep_names)
    for (const auto& r : f.hf_renames)
      if (apply(r, k) && r.last) break;
  return k;
}

// The family's wrapping of a native key: MiniMax-M3 MTP transformer layers and Nemotron MTP keys
// are converted in an inner form, VL language-model keys gain their prefix back.
struct Wrap {
  std::string inner;             // the key to convert plainly
  std::string native_outer;      // native prefix replaced by `inner_prefix` to get `inner`
  std::string inner_prefix;
  std::string hf_outer;          // HF prefix put back in place of `inner_prefix`
  bool plain = true;             // false: pass the key through unchanged (other MTP keys, vision)
};

Wrap unwrap(const FamilyRules& f, std::string_view key) {
  Wrap w;
  w.inner = std::string(key);
  if (f.vl_m3) {
    if (key.starts_with("vision_tower.")) {
      for (std::string_view p : {"vision_tower.multi_modal_projector.", "vision_tower.patch_merge_mlp."})
        if (key.starts_with(p)) w.inner = std::string(key.substr(13));
      w.plain = false;
      return w;
    }
    w.hf_outer = "language_model.";
  }
  if (f.mtp == MtpRule::Nemotron && key.starts_with("mtp.")) {
    w.native_outer = "mtp.";
    w.hf_outer = "mtp.";
    w.inner = std::string(key.substr(4));
    return w;
  }
  if (f.mtp == MtpRule::MiniMaxM3 && key.starts_with("model.mtp.layers.")) {
    size_t pos = 17;
    const auto d = digits(key, pos);
    if (d && key.substr(pos).starts_with(".transformer_layer.")) {
      w.native_outer = fmt::format("model.mtp.layers.{}.transformer_layer.", *d);
      w.inner_prefix = fmt::format("model.layers.{}.", *d);
      w.hf_outer += w.native_outer;
      w.inner = w.inner_prefix + std::string(key.substr(w.native_outer.size()));
    } else {
      w.inner = w.hf_outer + std::string(key);
      w.plain = false;
    }
  }
  return w;
}

std::string rewrap(const Wrap& w, std::string hf_inner) {
  if (!w.plain) return w.inner;
  if (!w.inner_prefix.empty() && hf_inner.starts_with(w.inner_prefix))
    return w.hf_outer + hf_inner.substr(w.inner_prefix.size());
  return w.hf_outer + hf_inner;
}

}  // namespace

HfKey map_native_key(const FamilyRules& f, std::string_view key, const MapContext& ctx) {
  const Wrap w = unwrap(f, key);
  if (w.plain && !f.native_segment.empty()) {
    for (std::string_view suffix : {".gate_and_up_projs", ".down_projs"}) {
      const std::string seg = fmt::format(".{}", f.native_segment);
      if (!w.inner.ends_with(suffix)) continue;
      const std::string_view prefix = std::string_view(w.inner).substr(0, w.inner.size() - suffix.size());
      if (prefix.ends_with(seg) && is_layer_prefix(prefix.substr(0, prefix.size() - seg.size())))
        return {HfKey::Grouped, std::string(key.substr(0, key.size() - suffix.size())), suffix == ".down_projs", false};
    }
  }
  HfKey h{HfKey::Tensor, rewrap(w, w.plain ? hf_plain(f, w.inner, ctx.keep_names) : w.inner), false, false};
  for (auto s : f.hf_f32_suffixes)
    if (h.name.ends_with(s)) h.to_f32 = true;
  return h;
}

std::string hf_expert_name(const FamilyRules& f, std::string_view native_prefix, uint64_t e, uint8_t proj,
                           const MapContext& ctx) {
  static const std::string_view native_proj[3] = {"gate_proj", "up_proj", "down_proj"};
  return map_native_key(f, fmt::format("{}.{}.{}.weight", native_prefix, e, native_proj[proj]), ctx).name;
}

namespace {

// MiniMax-M3's FP8 set: ".layers.{N}.{tail}" for the tails below, with "{E}" an expert id; an
// MTP transformer layer is judged on its "model.layers.{d}." form.
bool m3_fp8_key(std::string_view key) {
  static const std::string_view kTails[] = {
      "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
      "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
      "block_sparse_moe.experts.{E}.w1.weight", "block_sparse_moe.experts.{E}.w2.weight",
      "block_sparse_moe.experts.{E}.w3.weight", "block_sparse_moe.shared_experts.gate_proj.weight",
      "block_sparse_moe.shared_experts.up_proj.weight", "block_sparse_moe.shared_experts.down_proj.weight"};
  std::string k(key);
  if (const auto at = k.find("mtp.layers."); at != std::string::npos) {
    size_t pos = at + 11;
    if (digits(k, pos) && std::string_view(k).substr(pos).starts_with(".transformer_layer."))
      k.erase(pos, 18), k.erase(at, 4);  // "mtp.layers.{d}.transformer_layer." -> "layers.{d}."
  }
  const auto at = k.find(".layers.");
  if (at == std::string::npos) return false;
  size_t pos = at + 8;
  if (!digits(k, pos) || pos >= k.size() || k[pos] != '.') return false;
  const std::string_view tail = std::string_view(k).substr(pos + 1);
  for (std::string_view t : kTails) {
    const auto e = t.find("{E}");
    if (e == std::string_view::npos) {
      if (tail == t) return true;
      continue;
    }
    if (!tail.starts_with(t.substr(0, e))) continue;
    size_t p = e;
    if (digits(tail, p) && tail.substr(p) == t.substr(e + 3)) return true;
  }
  return false;
}

}  // namespace

bool fp8_export_key(const FamilyRules& f, std::string_view key) {
  switch (f.fp8_export) {
    case Fp8Export::None: return false;
    case Fp8Export::Excluding:
      if (!key.ends_with(".weight")) return false;
      for (auto x : f.fp8_exclude)
        if (key.find(x) != std::string_view::npos) return false;
      return true;
    case Fp8Export::M3Layers:
      if (f.vl_m3 && !key.starts_with("language_model.")) return false;
      return m3_fp8_key(key);
    case Fp8Export::Mistral:
      if (!key.ends_with(".weight") || key.starts_with("vision_tower.") || key.starts_with("multi_modal_projector."))
        return false;
      for (auto x : f.fp8_exclude)
        if (key.ends_with(x)) return false;
      return true;
  }
  return false;
}

NativeKey map_hf_key(const FamilyRules& f, std::string_view key, const MapContext& ctx) {
  if (f.vl_m3) {
    if (key.starts_with("language_model.")) return map_m3(f, key.substr(15), ctx);
    if (key.find(".mtp.") != std::string_view::npos) return {NativeKey::Drop, {}, 0, 0, false};
    for (std::string_view p : {"multi_modal_projector.", "patch_merge_mlp."})
      if (key.starts_with(p)) return {NativeKey::Tensor, "vision_tower." + std::string(key), 0, 0, false};
    return {NativeKey::Tensor, std::string(key), 0, 0, false};
  }
  switch (f.mtp) {
    case MtpRule::MiniMaxM3: return map_m3(f, key, ctx);
    case MtpRule::Nemotron: return map_nemotron(f, key, ctx);
    case MtpRule::None: break;
  }
  if (f.mistral_vlm_names && !ctx.keep_names) return rename_and_group(f, key);
  if (f.mistral_scales) return {NativeKey::Tensor, std::string(key), 0, 0, false};
  return rename_and_group(f, key);
}

}  // namespace ckpt
