// Model families (SPEC §1, §4) as data. Each family is one row of a table: its renames, how its
// routed experts are named on either side, its MTP and vision-language rules and the config keys
// that size it. One generic mapper, `map_hf_key`, reads the row to say what becomes of an HF key
// in the native layout; the planner turns that into pieces. Adding a family means adding a row
// (and its tests), not code paths.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ckpt {

// A key rewrite. `Infix` replaces the first occurrence, `Prefix`/`Suffix`/`Whole` anchor it;
// rules apply in order, and a rule with `last` ends the list when it matches.
struct Rename {
  enum Where : uint8_t { Infix, Prefix, Suffix, Whole } where;
  std::string_view from, to;
  bool last = false;
};

// How routed experts are named: "{before}{segment}{E}.{proj}.weight".
struct ExpertNaming {
  std::string_view segment;                       // ".block_sparse_moe.experts." …
  std::string_view gate, up, down;                // projection names; gate empty when not gated
};

enum class MtpRule : uint8_t { None, MiniMaxM3, Nemotron };

// Which HF keys `--to hf --quantize` stores as FP8 (SPEC §4, per family).
enum class Fp8Export : uint8_t {
  None,        // the family has no FP8 release
  Excluding,   // every ".weight" key except those containing one of `fp8_exclude`
  M3Layers,    // MiniMax-M3's attention, dense MLP, expert and shared-expert projections
  Mistral,     // ".weight" keys except those ending in `fp8_exclude`, vision tower and projector
};

struct FamilyRules {
  std::string_view name;
  std::vector<std::string_view> model_types;      // config model_type values that select it
  std::vector<Rename> renames;                    // HF -> native, after expert renaming
  std::vector<Rename> hf_renames;                 // native -> HF, before expert renaming
  ExpertNaming hf_experts;                        // HF names of routed expert weights
  std::string_view native_segment;                // "mlp.experts" / "mixer.experts"
  bool gated = true;                              // SwiGLU gate+up; false: up only (gate dropped)
  MtpRule mtp = MtpRule::None;
  bool vl_m3 = false;                             // MiniMax-M3-VL prefix rules
  bool mistral_scales = false;                    // drop *_scale_inv / .activation_scale; per-tensor -> BF16
  bool mistral_vlm_names = false;                 // the Mistral3 VLM renames apply (unless 88-layer ministral3)
  bool fp32_mamba = false;                        // mixer.{A_log,dt_bias,D} -> mixer._fp32_params.*, F32
  bool layer_cutoff = false;                      // drop layers >= num_hidden_layers
  std::string_view experts_key, inter_key;        // config keys: routed experts, MoE intermediate size
  std::vector<std::string_view> hf_f32_suffixes;  // keys written as F32 on export
  Fp8Export fp8_export = Fp8Export::None;
  std::vector<std::string_view> fp8_exclude;
  uint8_t export_scheme = 0;                      // ScaleScheme of the family's FP8 release
};

// Whether `--quantize` stores the HF key `key` as FP8 for family `f`.
bool fp8_export_key(const FamilyRules& f, std::string_view key);

enum class ScaleScheme : uint8_t;  // transforms/scheme.h
// How the family's FP8 release scales its weights; none when it has no FP8 release.
std::optional<ScaleScheme> fp8_release_scheme(const FamilyRules& f);

// The one table of families, in SPEC order: the converter's rules, and the families `synth`
// generates (pipeline/synth.cc adds only their tensor layouts and configs).
const std::vector<FamilyRules>& families();
const std::vector<std::string>& family_names();  // the names of `families()`, in order
const FamilyRules& family(std::string_view name);  // throws a usage error for unknown names
// The family a config.json describes (architectures / model_type); throws naming what it found.
const FamilyRules& detect_family(const nlohmann::ordered_json& config);

// What becomes of one HF key in the native layout.
struct NativeKey {
  enum Kind : uint8_t { Drop, Tensor, Expert } kind = Tensor;
  std::string name;        // Tensor: the native name; Expert: the layer prefix "{p}layers.{L}.{seg}"
  uint32_t expert = 0;     // Expert only
  uint8_t proj = 0;        // Expert only: 0 gate, 1 up, 2 down
  bool to_f32 = false;     // Tensor: upcast to F32 (Mamba parameters)
};

struct MapContext {
  uint64_t num_layers = 0;  // for the layer cutoff
  bool mtp = true;          // MTP keys converted (else dropped)
  bool keep_names = false;  // Mistral3 VLM whose text model keeps HF names (88-layer ministral3)
};

NativeKey map_hf_key(const FamilyRules& f, std::string_view key, const MapContext& ctx);

// What becomes of one native key in the HF layout.
struct HfKey {
  enum Kind : uint8_t { Tensor, Grouped } kind = Tensor;
  std::string name;     // Tensor: the HF name; Grouped: the native prefix "{…}.{seg}"
  bool down = false;    // Grouped: down_projs (else gate_and_up_projs)
  bool to_f32 = false;  // Tensor: written as F32
};

HfKey map_native_key(const FamilyRules& f, std::string_view key, const MapContext& ctx);
// The HF name of expert `e`'s projection (0 gate, 1 up, 2 down) of grouped prefix `native_prefix`.
std::string hf_expert_name(const FamilyRules& f, std::string_view native_prefix, uint64_t e, uint8_t proj,
                           const MapContext& ctx);

// Mistral-3.5 128B (a VLM whose text model is an 88-layer ministral3) keeps its HF names.
bool keeps_hf_names(const FamilyRules& f, const nlohmann::ordered_json& text_config);

// L for a name "{p}layers.{L}.…" of the language model (p one of SPEC §3's prefixes), else none.
std::optional<uint64_t> layer_index(std::string_view name);

// d for a native MiniMax-M3 MTP name "model.mtp.layers.{d}.…", else none.
std::optional<uint64_t> mtp_index(std::string_view name);

// The config object that describes the language model (a VLM's text_config, else the config).
const nlohmann::ordered_json& text_config(const nlohmann::ordered_json& config);

}  // namespace ckpt
