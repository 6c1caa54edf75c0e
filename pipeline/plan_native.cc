// HF -> native planning (SPEC §3, §4): every key goes through its family's rules
// (transforms/family.h); FP8 weights are dequantized, routed experts become grouped tensors whose
// pieces are the experts' transposed weights, and everything knowable from headers and config —
// missing experts, expert ids past the configured count, shapes that contradict the config — is
// an error before any data is read.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <map>
#include <set>

#include "formats/error.h"
#include "pipeline/plan.h"
#include "transforms/family.h"

namespace ckpt {

namespace {

constexpr std::string_view kScaleSuffix = "_scale_inv";

uint64_t config_uint(const nlohmann::ordered_json& cfg, std::string_view key, std::string_view why) {
  const auto it = cfg.find(std::string(key));
  if (it == cfg.end() || !it->is_number_unsigned())
    fail_input("config.json: '{}' (a non-negative integer) is needed to {}", key, why);
  return it->get<uint64_t>();
}

// An optional config.json count: absent or null is nullopt, anything but a non-negative integer
// is an error (a silently ignored count would skip the check it exists for).
std::optional<uint64_t> config_count(const nlohmann::ordered_json& cfg, std::string_view key) {
  const auto it = cfg.find(std::string(key));
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_unsigned())
    fail_input("config.json: '{}' must be a non-negative integer, got {}", key,
               it->is_primitive() ? it->dump() : std::string(it->type_name()));
  return it->get<uint64_t>();
}

// The experts of one grouped layer, as found in the checkpoint.
struct ExpertSet {
  std::string prefix;  // "{p}layers.{L}.{seg}"
  std::map<uint64_t, std::array<const TensorRef*, 3>> by_id;
};

struct Inputs {
  const Checkpoint& ck;
  BlockSize block;
  bool mistral;
};

// The tensor to write for one input (dequantized if FP8) in `dtype` (FP8 inputs) or `keep`.
PlannedTensor tensor_for(const Inputs& in, const TensorRef& t, std::string name, DType fp8_dtype, bool to_f32) {
  refuse_scaled_copy_only(in.ck, t);  // every family consumes `_scale_inv` tensors
  if (is_fp8_weight(t.info->dtype)) {
    const std::string sname = t.name() + std::string(kScaleSuffix);
    const TensorRef* s = in.ck.find(sname);
    if (!s)
      fail_input("{}: tensor '{}' is {} but has no scale '{}'; refusing to write FP8 bytes without their scale",
                 t.file->path().string(), t.name(), dtype_name(t.info->dtype), sname);
    if (in.mistral && t.info->dtype != DType::F8_E4M3)
      fail_input("{}: tensor '{}' is {}; Mistral3 checkpoints hold F8_E4M3 only (upstream would drop it)",
                 t.file->path().string(), t.name(), dtype_name(t.info->dtype));
    const DequantScheme d = detect_scheme(*t.info, *s->info, in.block, t.file->path().string());
    if (in.mistral && d.kind != ScaleScheme::PerTensor)
      fail_input("{}: tensor '{}': Mistral3 scales are per-tensor, but '{}' is {}", t.file->path().string(),
                 t.name(), sname, shape_str(s->info->shape));
    return dequantized_tensor(std::move(name), t, *s, d, fp8_dtype);
  }
  return whole_tensor(std::move(name), t, to_f32 ? DType::F32 : t.info->dtype);
}

Piece expert_piece(const Inputs& in, const TensorRef& t, uint64_t out_row0, uint64_t out_col0) {
  PlannedTensor one = tensor_for(in, t, t.name(), DType::F32, false);  // borrows its dequant setup
  Piece p = one.pieces[0];
  p.transpose = true;
  p.out_row0 = out_row0;
  p.out_col0 = out_col0;
  return p;
}

// What the family and config.json say about this checkpoint, gathered once before any tensor.
struct NativeContext {
  const FamilyRules& f;
  const nlohmann::ordered_json& tc;   // the language model's config (a VLM's text_config)
  MapContext map;
  std::optional<uint64_t> layers;       // layers a checkpoint may hold, when the config says
  std::optional<uint64_t> mtp_modules;  // MTP modules it may hold, when the config counts them
  Inputs in;
  DType dtype;      // of the grouped experts
  DType fp8_dtype;  // of dequantized single tensors
};

NativeContext native_context(const Checkpoint& ck, const PlanOptions& opt) {
  const FamilyRules& f = resolve_family(ck, opt.family);
  static const nlohmann::ordered_json kEmpty = nlohmann::ordered_json::object();
  const nlohmann::ordered_json& cfg = ck.config() ? *ck.config() : kEmpty;
  const nlohmann::ordered_json& tc = text_config(cfg);

  MapContext ctx;
  if (f.layer_cutoff) ctx.num_layers = config_uint(tc, "num_hidden_layers", "drop layers past the model");
  if (f.mtp == MtpRule::MiniMaxM3)
    ctx.mtp = opt.mtp == MtpMode::On || (opt.mtp == MtpMode::Auto && config_count(tc, "num_mtp_modules").value_or(1) > 0);
  else
    ctx.mtp = opt.mtp != MtpMode::Off;
  ctx.keep_names = keeps_hf_names(f, tc);

  // Layers a checkpoint may hold: the configured ones plus DeepSeek-style next-token-prediction
  // layers, which releases store as the following layer indices.
  std::optional<uint64_t> layers;
  if (const auto n = config_count(tc, "num_hidden_layers")) {
    const uint64_t nextn = config_count(tc, "num_nextn_predict_layers").value_or(0);
    layers = *n > UINT64_MAX - nextn ? UINT64_MAX : *n + nextn;
  }
  // A config that counts MTP modules must hold all the checkpoint has (0 means "none configured",
  // which --mtp on may override).
  std::optional<uint64_t> mtp_modules;
  if (f.mtp == MtpRule::MiniMaxM3)
    if (const auto m = config_count(tc, "num_mtp_modules"); m && *m > 0) mtp_modules = m;
  const DType dtype = to_dtype(opt.dtype);
  return {f, tc, ctx, layers, mtp_modules,
          Inputs{ck, config_block_size(&cfg).value_or(BlockSize{}), f.mistral_scales}, dtype,
          f.mistral_scales ? DType::BF16 : dtype};
}

// Everything knowable from a key and the config is refused before any data is read: a tensor
// past the configured MTP modules or layers would otherwise be silently dropped by a consumer.
void check_within_config(const NativeContext& c, const TensorRef& t, const NativeKey& nk) {
  if (const auto d = mtp_index(nk.name); d && c.mtp_modules && *d >= *c.mtp_modules)
    fail_input("{}: tensor '{}' is in MTP module {}, but config.json num_mtp_modules is {}", t.file->path().string(),
               t.name(), *d, *c.mtp_modules);
  if (const auto layer = layer_index(nk.name); layer && c.layers && *layer >= *c.layers)
    fail_input("{}: tensor '{}' is in layer {}, but config.json provides {} layer(s) (num_hidden_layers "
               "plus num_nextn_predict_layers)",
               t.file->path().string(), t.name(), *layer, *c.layers);
}

// The inputs sorted by what they become. Single tensors are planned at once; routed experts are
// collected per layer and planned once every expert is known. `order` keeps the output in input
// order: (0, index into singles) or (1, index into groups).
struct Sorted {
  std::vector<PlannedTensor> singles;
  std::vector<ExpertSet> groups;
  std::map<std::string, size_t> group_index;
  std::vector<std::pair<size_t, size_t>> order;

  void add_expert(const TensorRef& t, const NativeKey& nk) {
    auto [it, fresh] = group_index.emplace(nk.name, groups.size());
    if (fresh) {
      groups.push_back({nk.name, {}});
      order.emplace_back(1, groups.size() - 1);
    }
    auto& slot = groups[it->second].by_id[nk.expert][nk.proj];
    if (slot)
      fail_input("{}: tensor '{}' and '{}' both map to expert {} of '{}'", t.file->path().string(), slot->name(),
                 t.name(), nk.expert, nk.name);
    slot = &t;
  }
};

Sorted sort_inputs(const NativeContext& c, Plan& plan) {
  // Scales (and Mistral's activation scales) are consumed by dequantization, never written.
  const auto is_scale = [&](const std::string& n) {
    return n.ends_with(kScaleSuffix) || (c.f.mistral_scales && n.ends_with(".activation_scale"));
  };
  Sorted s;
  for (const TensorRef& t : c.in.ck.tensors()) {
    if (is_scale(t.name())) {
      plan.dropped.push_back(t.name());
      continue;
    }
    const NativeKey nk = map_hf_key(c.f, t.name(), c.map);
    if (nk.kind == NativeKey::Drop) {
      plan.dropped.push_back(t.name());
      continue;
    }
    check_within_config(c, t, nk);
    if (nk.kind == NativeKey::Tensor) {
      s.order.emplace_back(0, s.singles.size());
      s.singles.push_back(tensor_for(c.in, t, nk.name, c.fp8_dtype, nk.to_f32));
    } else {
      s.add_expert(t, nk);
    }
  }
  return s;
}

const char* proj_name(uint8_t p) { return p == 0 ? "gate_proj" : p == 1 ? "up_proj" : "down_proj"; }

// Every group must hold every configured expert's projections (gate only when gated), and no
// expert id past the count: a grouped tensor with a hole or a dropped expert would be wrong
// silently. Missing weights are counted, not listed: a config may claim far more experts than any
// file holds. Examples come from the first gaps, so that loop stops after the experts present.
void check_complete(const FamilyRules& f, const std::vector<ExpertSet>& groups, uint64_t experts) {
  const uint8_t p0 = f.gated ? 0 : 1;
  uint64_t missing = 0;
  std::vector<std::string> shown;
  for (const auto& g : groups) {
    uint64_t present = 0;
    for (const auto& [id, projs] : g.by_id) {
      const TensorRef* any = projs[0] ? projs[0] : projs[1] ? projs[1] : projs[2];
      if (id >= experts)
        fail_input("{}: tensor '{}' is expert {} of '{}', but config.json '{}' is {}; refusing to drop it",
                   any->file->path().string(), any->name(), id, g.prefix, f.experts_key, experts);
      for (uint8_t p = p0; p < 3; ++p) present += projs[p] != nullptr;
    }
    uint64_t expected = 0;
    if (__builtin_mul_overflow(experts, uint64_t{3} - p0, &expected) ||
        __builtin_add_overflow(missing, expected - present, &missing))
      missing = UINT64_MAX;
    for (uint64_t e = 0; e < experts && shown.size() < 3; ++e)
      for (uint8_t p = p0; p < 3 && shown.size() < 3; ++p)
        if (!g.by_id.count(e) || !g.by_id.at(e)[p]) shown.push_back(fmt::format("{}.{}.{}", g.prefix, e, proj_name(p)));
  }
  if (missing > 0)
    fail_input("{} expert weight(s) missing (config.json '{}' = {}), e.g. {}", missing, f.experts_key, experts,
               fmt::join(shown, ", "));
}

// The hidden size of a complete group, from expert 0's down projection, with every expert's
// shapes checked against it and the configured intermediate size.
uint64_t checked_hidden_size(const FamilyRules& f, const ExpertSet& g, uint64_t inter) {
  const TensorRef& down0 = *g.by_id.at(0)[2];
  if (down0.info->shape.size() != 2)
    fail_input("{}: tensor '{}' is {}, expected [dim, inter]", down0.file->path().string(), down0.name(),
               shape_str(down0.info->shape));
  const uint64_t dim = down0.info->shape[0];
  const std::vector<uint64_t> in_shape{inter, dim}, down_shape{dim, inter};
  for (const auto& [id, projs] : g.by_id)
    for (uint8_t p = f.gated ? 0 : 1; p < 3; ++p)
      if (projs[p]->info->shape != (p == 2 ? down_shape : in_shape))
        fail_input("{}: tensor '{}' is {}, but config.json '{}' = {} and hidden size {} make it {}",
                   projs[p]->file->path().string(), projs[p]->name(), shape_str(projs[p]->info->shape), f.inter_key,
                   inter, dim, shape_str(p == 2 ? down_shape : in_shape));
  return dim;
}

// One grouped tensor of n experts, each a segment of `segment_rows` rows of `row_len` elements.
PlannedTensor grouped_tensor(std::string name, DType dtype, uint64_t n, uint64_t segment_rows, uint64_t row_len) {
  PlannedTensor t;
  t.out = {std::move(name), dtype, {n, segment_rows, row_len}};
  t.rows = n * segment_rows;
  t.row_len = row_len;
  t.segment_rows = segment_rows;
  return t;
}

// A group's gate_and_up_projs [n, dim, (2×)inter] and down_projs [n, inter, dim] for experts
// [first, last): every piece is one expert's transposed weight. A rank without experts gets
// [0, …] tensors.
std::vector<PlannedTensor> grouped_tensors(const NativeContext& c, const ExpertSet& g, uint64_t inter,
                                           uint32_t first, uint32_t last) {
  const uint64_t dim = checked_hidden_size(c.f, g, inter);
  const uint64_t n = last - first;
  const bool gated = c.f.gated;
  PlannedTensor gu = grouped_tensor(g.prefix + ".gate_and_up_projs", c.dtype, n, dim, gated ? 2 * inter : inter);
  PlannedTensor dn = grouped_tensor(g.prefix + ".down_projs", c.dtype, n, inter, dim);
  for (uint32_t e = first; e < last; ++e) {
    const auto& projs = g.by_id.at(e);
    const uint64_t k = e - first;
    if (gated) gu.pieces.push_back(expert_piece(c.in, *projs[0], k * dim, 0));
    gu.pieces.push_back(expert_piece(c.in, *projs[1], k * dim, gated ? inter : 0));
    dn.pieces.push_back(expert_piece(c.in, *projs[2], k * inter, 0));
  }
  gu.nbytes = gu.out.nbytes();
  dn.nbytes = dn.out.nbytes();
  return {std::move(gu), std::move(dn)};
}

// Grouped experts: counts and sizes from the config, checked against every expert's shapes; this
// rank's share when expert-parallel.
std::vector<std::vector<PlannedTensor>> group_experts(const NativeContext& c, const PlanOptions& opt,
                                                      const std::vector<ExpertSet>& groups) {
  std::vector<std::vector<PlannedTensor>> grouped(groups.size());
  if (groups.empty()) return grouped;
  const uint64_t experts = config_uint(c.tc, c.f.experts_key, "group the routed experts");
  const uint64_t inter = config_uint(c.tc, c.f.inter_key, "group the routed experts");
  uint32_t first = 0, last = static_cast<uint32_t>(experts);
  if (opt.ep_size > 1) ep_range(static_cast<uint32_t>(experts), opt.ep_rank.value_or(0), opt.ep_size, first, last);
  check_complete(c.f, groups, experts);
  for (size_t gi = 0; gi < groups.size(); ++gi) grouped[gi] = grouped_tensors(c, groups[gi], inter, first, last);
  return grouped;
}

}  // namespace

void plan_native(const Checkpoint& ck, const PlanOptions& opt, Plan& plan) {
  const NativeContext c = native_context(ck, opt);
  Sorted s = sort_inputs(c, plan);
  std::vector<std::vector<PlannedTensor>> grouped = group_experts(c, opt, s.groups);
  for (const auto& [kind, i] : s.order) {
    if (kind == 0) plan.tensors.push_back(std::move(s.singles[i]));
    else for (auto& t : grouped[i]) plan.tensors.push_back(std::move(t));
  }
}

}  // namespace ckpt
