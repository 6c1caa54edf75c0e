// Native -> HF planning (SPEC §4 "hf direction"): the exact inverse of plan_native. Grouped
// experts are split back into contiguous per-expert [out, in] tensors — each a transposed piece of
// the grouped tensor — named with the family's HF names; other keys are renamed back.
#include <fmt/format.h>

#include "formats/error.h"
#include "pipeline/plan.h"
#include "transforms/family.h"

namespace ckpt {

namespace {

// Expert `e`'s block of a grouped tensor viewed as [E * a, b]: rows [e*a, (e+1)*a), columns
// [col0, col0 + cols), transposed into a [cols, a] output tensor.
PlannedTensor expert_slice(std::string name, const TensorRef& grouped, uint64_t e, uint64_t a, uint64_t b,
                           uint64_t col0, uint64_t cols) {
  PlannedTensor t;
  t.out = {std::move(name), grouped.info->dtype, {cols, a}};
  t.nbytes = t.out.nbytes();
  t.rows = cols;
  t.row_len = a;
  Piece p;
  p.input = grouped;
  p.in_cols = b;
  p.in_row0 = e * a;
  p.in_col0 = col0;
  p.rows = a;
  p.cols = cols;
  p.transpose = true;
  t.pieces.push_back(p);
  return t;
}

uint64_t ceil_div(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

// Adds `t` to the plan — as FP8 codes plus a "_scale_inv" partner when the family exports it as
// FP8 under --quantize.
void add(Plan& plan, const FamilyRules& f, const PlanOptions& opt, PlannedTensor t) {
  if (opt.quantize == QuantizeMode::None || !fp8_export_key(f, t.out.name)) {
    plan.tensors.push_back(std::move(t));
    return;
  }
  const auto scheme = static_cast<ScaleScheme>(f.export_scheme);
  if (scheme != ScaleScheme::PerTensor && t.out.shape.size() != 2)
    fail_input("'{}' is {}; block and MXFP8 scales need a 2-d weight", t.out.name, shape_str(t.out.shape));
  PlannedTensor sc;
  sc.out.name = t.out.name + "_scale_inv";
  const uint64_t rows = t.rows, cols = t.row_len;
  switch (scheme) {
    case ScaleScheme::Block:
      sc.out.dtype = DType::F32;
      sc.out.shape = {ceil_div(rows, 128), ceil_div(cols, 128)};
      break;
    case ScaleScheme::Mx:
      sc.out.dtype = DType::U8;
      sc.out.shape = {rows, ceil_div(cols, kMxBlock)};
      break;
    case ScaleScheme::PerTensor:
      sc.out.dtype = opt.quantize == QuantizeMode::Real ? DType::F32 : DType::BF16;
      sc.out.shape = {};
      break;
  }
  sc.rows = sc.out.shape.empty() ? 1 : sc.out.shape[0];
  sc.row_len = sc.out.shape.size() == 2 ? sc.out.shape[1] : 1;
  sc.nbytes = sc.out.nbytes();
  sc.quantize = t.quantize = opt.quantize;
  sc.qscheme = t.qscheme = scheme;
  t.out.dtype = DType::F8_E4M3;
  t.nbytes = t.out.nbytes();
  sc.scale_of = static_cast<int64_t>(plan.tensors.size());
  plan.tensors.push_back(std::move(t));
  plan.tensors.push_back(std::move(sc));
  plan.export_scheme = scheme;
}

uint64_t moe_inter(const nlohmann::ordered_json& tc) {
  for (const char* k : {"moe_intermediate_size", "intermediate_size"})
    if (tc.contains(k) && tc[k].is_number_unsigned()) return tc[k].get<uint64_t>();
  fail_input("config.json: neither 'moe_intermediate_size' nor 'intermediate_size' is set; it sizes the experts");
}

}  // namespace

void plan_hf(const Checkpoint& ck, const PlanOptions& opt, Plan& plan) {
  const FamilyRules& f = resolve_family(ck, opt.family);
  static const nlohmann::ordered_json kEmpty = nlohmann::ordered_json::object();
  const nlohmann::ordered_json& tc = text_config(ck.config() ? *ck.config() : kEmpty);
  if (opt.quantize != QuantizeMode::None && f.fp8_export == Fp8Export::None)
    fail_usage("--quantize: {} has no FP8 release to export to", f.name);
  MapContext ctx;
  ctx.keep_names = keeps_hf_names(f, tc);

  for (const TensorRef& t : ck.tensors()) {
    const HfKey h = map_native_key(f, t.name(), ctx);
    if (h.kind == HfKey::Tensor) {
      add(plan, f, opt, whole_tensor(h.name, t, h.to_f32 ? DType::F32 : t.info->dtype));
      continue;
    }
    const auto& shape = t.info->shape;
    const std::string file = t.file->path().string();
    if (shape.size() != 3)
      fail_input("{}: tensor '{}' is {}, expected a 3-d grouped tensor", file, t.name(), shape_str(shape));
    const uint64_t inter = moe_inter(tc);
    if (h.down && shape[1] != inter) {  // upstream leaves such a tensor as it is
      plan.tensors.push_back(whole_tensor(t.name(), t, t.info->dtype));
      continue;
    }
    const auto configured = tc.find(std::string(f.experts_key));
    if (configured != tc.end() && !configured->is_number_unsigned())
      fail_input("config.json: '{}' must be a non-negative integer, got {}", f.experts_key,
                 configured->is_primitive() ? configured->dump() : std::string(configured->type_name()));
    const uint64_t experts = configured != tc.end() ? configured->get<uint64_t>() : 0;
    if (shape[0] != experts)
      fail_input("{}: tensor '{}' holds {} experts but config.json '{}' is {}: an expert-parallel slice cannot be "
                 "exported",
                 file, t.name(), shape[0], f.experts_key, experts);
    uint64_t width = inter;
    if (f.gated && !checked_mul(inter, 2, width))
      fail_input("config.json: MoE intermediate size {} is too large", inter);
    // Experts of zero bytes cost nothing to store, so their count would bound nothing.
    if (shape[0] > 0 && (shape[1] == 0 || shape[2] == 0))
      fail_input("{}: tensor '{}' is {}: grouped experts cannot have an empty dimension", file, t.name(),
                 shape_str(shape));
    if (!h.down && shape[2] != width)
      fail_input("{}: tensor '{}' is {}, but config.json MoE intermediate size {} makes its last dimension {}", file,
                 t.name(), shape_str(shape), inter, width);
    for (uint64_t e = 0; e < experts; ++e) {
      if (h.down) {
        add(plan, f, opt, expert_slice(hf_expert_name(f, h.name, e, 2, ctx), t, e, inter, shape[2], 0, shape[2]));
        continue;
      }
      if (f.gated)
        add(plan, f, opt, expert_slice(hf_expert_name(f, h.name, e, 0, ctx), t, e, shape[1], width, 0, inter));
      add(plan, f, opt,
          expert_slice(hf_expert_name(f, h.name, e, 1, ctx), t, e, shape[1], width, f.gated ? inter : 0, inter));
    }
  }
}

}  // namespace ckpt
