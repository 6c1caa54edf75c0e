#include "pipeline/plan.h"

#include <cctype>
#include <cmath>
#include <unordered_set>

#include "formats/error.h"
#include "transforms/cast.h"
#include "transforms/family.h"

namespace ckpt {

std::optional<Direction> parse_direction(std::string_view s) {
  if (s == "dequant") return Direction::Dequant;
  if (s == "native") return Direction::Native;
  if (s == "hf") return Direction::Hf;
  return std::nullopt;
}

namespace {

constexpr std::string_view kScaleSuffix = "_scale_inv";

std::string file_of(const TensorRef& r) { return r.file->path().string(); }

const TensorRef& require_scale(const Checkpoint& ck, const TensorRef& t) {
  const std::string scale_name = t.name() + std::string(kScaleSuffix);
  const TensorRef* scale = ck.find(scale_name);
  if (!scale)
    fail_input("{}: tensor '{}' is {} but has no scale '{}'; refusing to write FP8 bytes without "
               "their scale",
               file_of(t), t.name(), dtype_name(t.info->dtype), scale_name);
  return *scale;
}

// What a planned tensor would have to do to its input `p`, in words, for errors.
std::string transform_of(const PlannedTensor& t, const Piece& p) {
  if (t.quantize != QuantizeMode::None) return "quantized to FP8";
  if (p.transpose) return "transposed (grouped or split experts)";
  if (p.input.info->dtype != t.out.dtype) return fmt::format("cast to {}", dtype_name(t.out.dtype));
  return "assembled from pieces";
}

// The input as a matrix: rows = shape[0] (1 for a scalar), cols = the product of the rest.
void matrix_of(const TensorInfo& t, uint64_t& rows, uint64_t& cols) {
  rows = t.shape.empty() ? 1 : t.shape[0];
  cols = 1;
  for (size_t i = 1; i < t.shape.size(); ++i) cols *= t.shape[i];  // numel checked on parse
}

// FP8 weights become `dtype` under their scale; the scale and the weight's activation/input
// scale siblings are consumed; everything else is copied unchanged.
void plan_dequant(const Checkpoint& ck, const PlanOptions& opt, Plan& plan) {
  const BlockSize block = config_block_size(ck.config() ? &*ck.config() : nullptr).value_or(BlockSize{});
  std::unordered_set<std::string> consumed;
  std::vector<const TensorRef*> scale_of(ck.tensors().size(), nullptr);
  for (size_t i = 0; i < ck.tensors().size(); ++i) {
    const TensorRef& t = ck.tensors()[i];
    refuse_scaled_copy_only(ck, t);
    if (!is_fp8_weight(t.info->dtype)) continue;
    scale_of[i] = &require_scale(ck, t);
    consumed.insert(scale_of[i]->name());
    if (t.name().ends_with(".weight")) {
      const std::string base = t.name().substr(0, t.name().size() - 7);
      for (const char* sib : {".activation_scale", ".input_scale"})
        if (ck.find(base + sib)) consumed.insert(base + sib);
    }
  }
  for (size_t i = 0; i < ck.tensors().size(); ++i) {
    const TensorRef& t = ck.tensors()[i];
    if (consumed.count(t.name())) {
      plan.dropped.push_back(t.name());
      continue;
    }
    if (scale_of[i]) {
      const DequantScheme d = detect_scheme(*t.info, *scale_of[i]->info, block, file_of(t));
      plan.tensors.push_back(dequantized_tensor(t.name(), t, *scale_of[i], d, to_dtype(opt.dtype)));
    } else {
      plan.tensors.push_back(whole_tensor(t.name(), t, t.info->dtype));
    }
  }
}

}  // namespace

const FamilyRules& resolve_family(const Checkpoint& ck, std::string_view name) {
  if (name != "auto") return family(name);
  if (!ck.config()) fail_usage("{}: no config.json to detect the family from; pass --family", ck.dir().string());
  return detect_family(*ck.config());
}

bool PlannedTensor::dequantizes() const {
  for (const auto& p : pieces)
    if (p.scale.info) return true;
  return false;
}

bool PlannedTensor::is_copy() const {
  return pieces.size() == 1 && !pieces[0].transpose && !pieces[0].scale.info &&
         pieces[0].input.info->dtype == out.dtype && pieces[0].rows * pieces[0].cols == rows * row_len;
}

void refuse_scaled_copy_only(const Checkpoint& ck, const TensorRef& t) {
  if (!is_copy_only(t.info->dtype)) return;
  const std::string scale_name = t.name() + std::string(kScaleSuffix);
  if (ck.find(scale_name))
    fail_input("{}: tensor '{}' is {} with a scale '{}', but ckptconv cannot dequantize {}; refusing to write "
               "quantized bytes apart from their scale",
               file_of(t), t.name(), dtype_name(t.info->dtype), scale_name, dtype_name(t.info->dtype));
}

PlannedTensor whole_tensor(std::string name, const TensorRef& input, DType dtype) {
  PlannedTensor t;
  t.out = {std::move(name), dtype, input.info->shape};
  t.nbytes = t.out.nbytes();
  Piece p;
  p.input = input;
  matrix_of(*input.info, p.rows, p.cols);
  p.in_cols = p.cols;
  t.rows = p.rows;
  t.row_len = p.cols;
  t.pieces.push_back(p);
  return t;
}

PlannedTensor dequantized_tensor(std::string name, const TensorRef& weight, const TensorRef& scale,
                                 const DequantScheme& scheme, DType dtype) {
  PlannedTensor t = whole_tensor(std::move(name), weight, dtype);
  Piece& p = t.pieces[0];
  p.scale = scale;
  p.scheme = scheme;
  p.format = weight.info->dtype == DType::F8_E5M2 ? Fp8::E5M2 : Fp8::E4M3;
  return t;
}

Plan make_plan(const Checkpoint& ck, const PlanOptions& opt) {
  // A family name is checked whatever the direction: dequant needs none, but a misspelt one is a
  // mistake the caller should hear about, as the command line's own check says.
  if (opt.family != "auto") family(opt.family);
  Plan plan;
  plan.dtype = opt.dtype;
  switch (opt.direction) {
    case Direction::Dequant: plan_dequant(ck, opt, plan); break;
    case Direction::Native: plan_native(ck, opt, plan); break;
    case Direction::Hf: plan_hf(ck, opt, plan); break;
  }
  std::unordered_set<const TensorInfo*> read;
  for (const auto& t : plan.tensors) {
    // Every element conversion must exist before anything is written: an integer tensor routed
    // into a floating-point output (grouped experts, an F32 upcast, FP8 export, which computes
    // in F32) would otherwise stop the run half-way with an internal error.
    const DType target = t.quantize != QuantizeMode::None && t.scale_of < 0 ? DType::F32 : t.out.dtype;
    // No kernel reads a copy-only dtype (F4, F6, FNUZ, C64), not even to transpose it.
    for (const auto& p : t.pieces)
      if (is_copy_only(p.input.info->dtype) && (!t.is_copy() || t.quantize != QuantizeMode::None))
        fail_input("{}: tensor '{}' is {}, which ckptconv can only copy unchanged, but '{}' needs it {}",
                   file_of(p.input), p.input.name(), dtype_name(p.input.info->dtype), t.out.name, transform_of(t, p));
    for (const auto& p : t.pieces)
      if (!p.scale.info && !castable(p.input.info->dtype, target))
        fail_input("{}: tensor '{}' is {}, which cannot be converted to {} for '{}'", file_of(p.input),
                   p.input.name(), dtype_name(p.input.info->dtype), dtype_name(target), t.out.name);
    plan.output_bytes += t.nbytes;
    plan.dequantized += t.dequantizes();
    plan.quantized += t.quantize != QuantizeMode::None && t.scale_of < 0;
    for (const auto& p : t.pieces)
      for (const TensorInfo* i : {p.input.info, p.scale.info})
        if (i && read.insert(i).second) plan.input_bytes += i->nbytes();
  }
  if (plan.tensors.empty()) fail_input("{}: nothing to write: the checkpoint has no tensors", ck.dir().string());
  plan.metadata = ck.metadata();
  plan.metadata.erase("format");  // the output's is always "pt"
  assign_shards(plan, opt.max_shard_size);
  return plan;
}

InputRect input_rect(const PlannedTensor& t, const Piece& p, uint64_t first, uint64_t last) {
  const uint64_t len = t.row_len;
  const uint64_t row0 = first / len, row1 = (last - 1) / len + 1;
  const uint64_t pr0 = p.out_row0, pr1 = p.out_row0 + p.out_rows();
  const uint64_t r_lo = std::max(pr0, row0), r_hi = std::min(pr1, row1);
  if (r_lo >= r_hi) return {};
  if (p.transpose) return {p.in_row0, p.in_row0 + p.rows, p.in_col0 + (r_lo - pr0), p.in_col0 + (r_hi - pr0)};
  InputRect r{p.in_row0 + (r_lo - pr0), p.in_row0 + (r_hi - pr0), p.in_col0, p.in_col0 + p.cols};
  if (r_hi - r_lo == 1) {  // part of one row
    const uint64_t c_lo = std::max(p.out_col0, r_lo == row0 ? first % len : 0);
    const uint64_t c_hi = std::min(p.out_col0 + p.out_cols(), r_lo == (last - 1) / len ? (last - 1) % len + 1 : len);
    if (c_lo >= c_hi) return {};
    r.col0 = p.in_col0 + (c_lo - p.out_col0);
    r.col1 = p.in_col0 + (c_hi - p.out_col0);
  }
  return r;
}

int64_t scale_tensor_of(const Plan& plan, size_t i) {
  const bool paired = i + 1 < plan.tensors.size() && plan.tensors[i + 1].scale_of == static_cast<int64_t>(i);
  return paired ? static_cast<int64_t>(i + 1) : -1;
}

void ep_range(uint32_t experts, uint32_t rank, uint32_t size, uint32_t& first, uint32_t& last) {
  const uint32_t base = experts / size, rem = experts % size;
  first = rank < rem ? rank * (base + 1) : rank * base + rem;
  last = first + base + (rank < rem ? 1 : 0);
}

void assign_shards(Plan& plan, uint64_t max_shard_size) {
  std::vector<std::vector<size_t>> groups(1);
  uint64_t used = 0;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const uint64_t n = plan.tensors[i].nbytes;
    if (!groups.back().empty() && used + n > max_shard_size) {
      groups.emplace_back();
      used = 0;
    }
    groups.back().push_back(i);
    used += n;
  }
  plan.shards.clear();
  for (size_t s = 0; s < groups.size(); ++s) {
    std::vector<OutTensor> outs;
    outs.reserve(groups[s].size());
    for (size_t i : groups[s]) outs.push_back(plan.tensors[i].out);
    plan.shards.push_back(layout_shard(shard_file_name(s, groups.size()), std::move(outs), plan.metadata));
    for (size_t k = 0; k < groups[s].size(); ++k) {
      PlannedTensor& t = plan.tensors[groups[s][k]];
      t.shard = static_cast<uint32_t>(s);
      t.offset = plan.shards[s].offsets[k];
    }
  }
}

uint64_t parse_size(std::string_view text, std::string_view option) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  const std::string number(text.substr(0, i));
  std::string unit(text.substr(i));
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double value = 0;
  try {
    size_t used = 0;
    value = std::stod(number, &used);
    if (used != number.size()) throw std::invalid_argument("trailing");
  } catch (const std::exception&) {
    fail_usage("{}: '{}' is not a size (examples: 5GB, 512MiB, 1048576)", option, text);
  }
  double mult = 0;
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1},          {"B", 1},          {"K", 1e3},        {"KB", 1e3},       {"KIB", 1024.0},
      {"M", 1e6},       {"MB", 1e6},       {"MIB", 1048576.0}, {"G", 1e9},       {"GB", 1e9},
      {"GIB", 1073741824.0}, {"T", 1e12}, {"TB", 1e12},      {"TIB", 1099511627776.0}};
  for (const auto& [name, m] : kUnits)
    if (unit == name) mult = m;
  if (mult == 0 || !(value * mult >= 1) || value * mult > 1.8e19)
    fail_usage("{}: '{}' is not a positive size (examples: 5GB, 512MiB, 1048576)", option, text);
  return static_cast<uint64_t>(std::llround(value * mult));
}

}  // namespace ckpt
