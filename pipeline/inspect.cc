#include "pipeline/inspect.h"

#include <fmt/format.h>

#include "formats/error.h"
#include "pipeline/progress.h"
#include "transforms/scheme.h"

namespace ckpt {

InspectReport inspect(const Checkpoint& ck, const std::string& path) {
  InspectReport r;
  r.path = path;
  r.files = ck.files().size();
  const BlockSize block = config_block_size(ck.config() ? &*ck.config() : nullptr).value_or(BlockSize{});
  for (const auto& t : ck.tensors()) {
    InspectRow row{t.name(), t.file->path().filename().string(), t.info->dtype, t.info->shape,
                   t.info->nbytes(), ""};
    if (is_fp8_weight(t.info->dtype)) {
      ++r.fp8_weights;
      const TensorRef* scale = ck.find(t.name() + "_scale_inv");
      if (!scale) {
        row.quant = "NO SCALE";
        ++r.fp8_problems;
      } else {
        try {
          const DequantScheme d = detect_scheme(*t.info, *scale->info, block, row.file);
          row.quant = d.kind == ScaleScheme::PerTensor
                          ? "per-tensor"
                          : fmt::format("{} {}x{}", scheme_name(d.kind), d.block_rows, d.block_cols);
        } catch (const Error&) {
          row.quant = "SCALE SHAPE FITS NO SCHEME";
          ++r.fp8_problems;
        }
      }
    }
    r.bytes += row.bytes;
    r.params += t.info->numel();
    auto& d = r.by_dtype[std::string(dtype_name(row.dtype))];
    ++d.first;
    d.second += row.bytes;
    r.rows.push_back(std::move(row));
  }
  return r;
}

std::string inspect_text(const InspectReport& r) {
  size_t w = 4;
  for (const auto& row : r.rows) w = std::max(w, row.name.size());
  std::string out = fmt::format("{:<{}}  {:<8} {:<20} {:>12}  {}\n", "name", w, "dtype", "shape", "bytes", "quantization");
  for (const auto& row : r.rows)
    out += fmt::format("{:<{}}  {:<8} {:<20} {:>12}  {}\n", row.name, w, dtype_name(row.dtype),
                       shape_str(row.shape), row.bytes, row.quant);
  out += fmt::format("\n{}: {} tensors in {} file(s), {} ({} bytes), {} parameters\n", r.path,
                     r.rows.size(), r.files, Progress::bytes(static_cast<double>(r.bytes)), r.bytes,
                     r.params);
  for (const auto& [dt, v] : r.by_dtype)
    out += fmt::format("  {:<8} {:>8} tensors  {:>12}\n", dt, v.first, Progress::bytes(static_cast<double>(v.second)));
  out += fmt::format("  FP8 weights: {} ({} without a usable scale)\n", r.fp8_weights, r.fp8_problems);
  return out;
}

nlohmann::ordered_json inspect_json(const InspectReport& r) {
  nlohmann::ordered_json j;
  j["path"] = r.path;
  j["files"] = r.files;
  j["tensor_count"] = r.rows.size();
  j["bytes"] = r.bytes;
  j["parameters"] = r.params;
  j["fp8_weights"] = r.fp8_weights;
  j["fp8_without_usable_scale"] = r.fp8_problems;
  auto& by = j["by_dtype"] = nlohmann::ordered_json::object();
  for (const auto& [dt, v] : r.by_dtype) by[dt] = {{"tensors", v.first}, {"bytes", v.second}};
  auto& ts = j["tensors"] = nlohmann::ordered_json::array();
  for (const auto& row : r.rows) {
    nlohmann::ordered_json t = {{"name", row.name}, {"dtype", dtype_name(row.dtype)}, {"shape", row.shape},
                                {"bytes", row.bytes}, {"file", row.file}};
    if (!row.quant.empty()) t["quantization"] = row.quant;
    ts.push_back(std::move(t));
  }
  return j;
}

}  // namespace ckpt
