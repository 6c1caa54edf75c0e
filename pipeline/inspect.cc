#include "pipeline/inspect.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <iterator>
#include <unordered_map>

#include "formats/error.h"
#include "pipeline/progress.h"
#include "transforms/scheme.h"

namespace ckpt {

namespace {

// How an FP8 weight would be dequantized, or why it cannot be; counts the problems.
std::string quant_of(const Checkpoint& ck, const TensorRef& t, BlockSize block, InspectReport& r) {
  ++r.fp8_weights;
  const TensorRef* scale = ck.find(t.name() + "_scale_inv");
  if (!scale) {
    ++r.fp8_problems;
    return "NO SCALE";
  }
  try {
    const DequantScheme d = detect_scheme(*t.info, *scale->info, block, t.file->path().filename().string());
    if (d.kind == ScaleScheme::PerTensor) return "per-tensor";
    return fmt::format("{} {}x{}", scheme_name(d.kind), d.block_rows, d.block_cols);
  } catch (const Error&) {
    ++r.fp8_problems;
    return "SCALE SHAPE FITS NO SCHEME";
  }
}

// Text gathered in memory and handed to the stream in large writes.
class Sink {
 public:
  explicit Sink(std::ostream& out) : out_(out) {}
  fmt::memory_buffer& buf() { return buf_; }
  // Called between records: writes once a good amount has gathered.
  void maybe_flush() {
    if (buf_.size() >= kFlushBytes) flush();
  }
  void flush() {
    out_.write(buf_.data(), static_cast<std::streamsize>(buf_.size()));
    buf_.clear();
  }

 private:
  static constexpr size_t kFlushBytes = 1 << 20;
  std::ostream& out_;
  fmt::memory_buffer buf_;
};

void put(fmt::memory_buffer& b, std::string_view s) { b.append(s.data(), s.data() + s.size()); }

// `s` as a JSON string, as nlohmann's dump writes it: names are almost always printable ASCII
// without quotes or backslashes, which need no escaping and no detour through a json value.
void put_string(fmt::memory_buffer& b, std::string_view s) {
  const bool plain = std::all_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u >= 0x20 && u < 0x7f && u != '"' && u != '\\';
  });
  if (!plain) return put(b, nlohmann::json(std::string(s)).dump());
  b.push_back('"');
  put(b, s);
  b.push_back('"');
}

// The totals, up to the tensors. Keys, dtype names and quantizations are ckptconv's own words:
// plain ASCII that needs no escaping.
void json_totals(fmt::memory_buffer& b, const InspectReport& r, const std::string& path) {
  fmt::format_to(std::back_inserter(b),
                 "{{\n  \"path\": {},\n  \"files\": {},\n  \"tensor_count\": {},\n  \"bytes\": {},\n"
                 "  \"parameters\": {},\n  \"fp8_weights\": {},\n  \"fp8_without_usable_scale\": {},\n"
                 "  \"by_dtype\": {}",
                 path, r.files, r.rows.size(), r.bytes, r.params, r.fp8_weights, r.fp8_problems,
                 r.by_dtype.empty() ? "{}," : "{");
  for (auto it = r.by_dtype.begin(); it != r.by_dtype.end(); ++it)
    fmt::format_to(std::back_inserter(b), "\n    \"{}\": {{\n      \"tensors\": {},\n      \"bytes\": {}\n    }}{}",
                   it->first, it->second.first, it->second.second, std::next(it) == r.by_dtype.end() ? "\n  }," : ",");
  put(b, "\n  \"tensors\": ");
}

void json_row(fmt::memory_buffer& b, const InspectRow& row, const std::string& file) {
  const TensorInfo& t = *row.tensor->info;
  put(b, "\n    {\n      \"name\": ");
  put_string(b, t.name);
  fmt::format_to(std::back_inserter(b), ",\n      \"dtype\": \"{}\",\n      \"shape\": ", dtype_name(t.dtype));
  if (t.shape.empty()) put(b, "[]");
  for (size_t i = 0; i < t.shape.size(); ++i)
    fmt::format_to(std::back_inserter(b), "{}\n        {}", i ? "," : "[", t.shape[i]);
  if (!t.shape.empty()) put(b, "\n      ]");
  fmt::format_to(std::back_inserter(b), ",\n      \"bytes\": {},\n      \"file\": {}", t.nbytes(), file);
  if (!row.quant.empty()) fmt::format_to(std::back_inserter(b), ",\n      \"quantization\": \"{}\"", row.quant);
  put(b, "\n    }");
}

}  // namespace

InspectReport inspect(const Checkpoint& ck, const std::string& path) {
  InspectReport r;
  r.path = path;
  r.files = ck.files().size();
  const BlockSize block = config_block_size(ck.config() ? &*ck.config() : nullptr).value_or(BlockSize{});
  r.rows.reserve(ck.tensors().size());
  for (const auto& t : ck.tensors()) {
    InspectRow row{&t, is_fp8_weight(t.info->dtype) ? quant_of(ck, t, block, r) : ""};
    r.bytes += t.info->nbytes();
    r.params += t.info->numel();
    auto& d = r.by_dtype[std::string(dtype_name(t.info->dtype))];
    ++d.first;
    d.second += t.info->nbytes();
    r.rows.push_back(std::move(row));
  }
  return r;
}

void write_inspect_text(const InspectReport& r, std::ostream& out) {
  size_t w = 4, dw = 8;  // dtype names run to 11 characters (F8_E4M3FNUZ)
  for (const auto& row : r.rows)
    w = std::max(w, row.tensor->name().size()), dw = std::max(dw, dtype_name(row.tensor->info->dtype).size());
  Sink sink(out);
  auto& b = sink.buf();
  fmt::format_to(std::back_inserter(b), "{:<{}}  {:<{}} {:<20} {:>12}  {}\n", "name", w, "dtype", dw, "shape", "bytes",
                 "quantization");
  for (const auto& row : r.rows) {
    const TensorInfo& t = *row.tensor->info;
    fmt::format_to(std::back_inserter(b), "{:<{}}  {:<{}} {:<20} {:>12}  {}\n", t.name, w, dtype_name(t.dtype), dw,
                   shape_str(t.shape), t.nbytes(), row.quant);
    sink.maybe_flush();
  }
  fmt::format_to(std::back_inserter(b), "\n{}: {} tensors in {} file(s), {} ({} bytes), {} parameters\n", r.path,
                 r.rows.size(), r.files, Progress::bytes(static_cast<double>(r.bytes)), r.bytes, r.params);
  for (const auto& [dt, v] : r.by_dtype)
    fmt::format_to(std::back_inserter(b), "  {:<{}} {:>8} tensors  {:>12}\n", dt, dw, v.first,
                   Progress::bytes(static_cast<double>(v.second)));
  fmt::format_to(std::back_inserter(b), "  FP8 weights: {} ({} without a usable scale)\n", r.fp8_weights,
                 r.fp8_problems);
  sink.flush();
}

void write_inspect_json(const InspectReport& r, std::ostream& out) {
  // The strings that may not be UTF-8, escaped before anything is written.
  const std::string path = nlohmann::json(r.path).dump();
  std::unordered_map<const SafetensorsFile*, std::string> files;
  for (const auto& row : r.rows)
    if (!files.contains(row.tensor->file))
      files.emplace(row.tensor->file, nlohmann::json(row.tensor->file->path().filename().string()).dump());

  Sink sink(out);
  auto& b = sink.buf();
  json_totals(b, r, path);
  put(b, r.rows.empty() ? "[]" : "[");
  for (size_t i = 0; i < r.rows.size(); ++i) {
    if (i) put(b, ",");
    json_row(b, r.rows[i], files.at(r.rows[i].tensor->file));
    sink.maybe_flush();
  }
  put(b, r.rows.empty() ? "\n}\n" : "\n  ]\n}\n");
  sink.flush();
}

}  // namespace ckpt
