#include "pipeline/plan.h"

#include <cctype>
#include <cmath>
#include <unordered_set>

#include "formats/error.h"

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

// FP8 weights become `dtype` under their scale; the scale and the weight's activation/input
// scale siblings are consumed; everything else is copied unchanged.
void plan_dequant(const Checkpoint& ck, const PlanOptions& opt, Plan& plan) {
  const BlockSize block = config_block_size(ck.config() ? &*ck.config() : nullptr).value_or(BlockSize{});
  std::unordered_set<std::string> consumed;
  std::vector<std::optional<Source>> dequant(ck.tensors().size());
  for (size_t i = 0; i < ck.tensors().size(); ++i) {
    const TensorRef& t = ck.tensors()[i];
    if (!is_fp8_weight(t.info->dtype)) continue;
    const std::string scale_name = t.name() + std::string(kScaleSuffix);
    const TensorRef* scale = ck.find(scale_name);
    if (!scale)
      fail_input("{}: tensor '{}' is {} but has no scale '{}'; refusing to write FP8 bytes without "
                 "their scale",
                 file_of(t), t.name(), dtype_name(t.info->dtype), scale_name);
    Source s;
    s.op = Op::Dequant;
    s.input = t;
    s.scale = *scale;
    s.format = t.info->dtype == DType::F8_E4M3 ? Fp8::E4M3 : Fp8::E5M2;
    s.scheme = detect_scheme(*t.info, *scale->info, block, file_of(t));
    dequant[i] = s;
    consumed.insert(scale_name);
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
      if (!t.name().ends_with(kScaleSuffix)) continue;  // siblings are not even read
      plan.input_bytes += t.info->nbytes();
      continue;
    }
    PlannedTensor p;
    p.out.name = t.name();
    p.out.shape = t.info->shape;
    if (dequant[i]) {
      p.src = *dequant[i];
      p.out.dtype = to_dtype(opt.dtype);
      ++plan.dequantized;
    } else {
      p.src.op = Op::Copy;
      p.src.input = t;
      p.out.dtype = t.info->dtype;
    }
    p.nbytes = p.out.nbytes();
    plan.input_bytes += t.info->nbytes();
    plan.output_bytes += p.nbytes;
    plan.tensors.push_back(std::move(p));
  }
}

}  // namespace

Plan make_plan(const Checkpoint& ck, const PlanOptions& opt) {
  Plan plan;
  plan.direction = opt.direction;
  plan.dtype = opt.dtype;
  switch (opt.direction) {
    case Direction::Dequant: plan_dequant(ck, opt, plan); break;
    case Direction::Native:
    case Direction::Hf:
      fail_usage("--to {} is not available yet: this build converts with --to dequant only",
                 opt.direction == Direction::Native ? "native" : "hf");
  }
  if (plan.tensors.empty()) fail_input("{}: nothing to write: the checkpoint has no tensors", ck.dir().string());
  assign_shards(plan, opt.max_shard_size);
  return plan;
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
    plan.shards.push_back(layout_shard(shard_file_name(s, groups.size()), std::move(outs)));
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
