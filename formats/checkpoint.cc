#include "formats/checkpoint.h"

#include <simdjson.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "formats/error.h"

namespace ckpt {

namespace fs = std::filesystem;

namespace {

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail(ErrorKind::Io, "{}: cannot open", p.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

using Shards = std::vector<std::unique_ptr<SafetensorsFile>>;
using WeightMap = std::vector<std::pair<std::string, std::string>>;  // (tensor, shard file) in index order
using ShardsByName = std::unordered_map<std::string, const SafetensorsFile*>;

// The shard names the index lists, checked against its weight map later.
WeightMap read_weight_map(const fs::path& index_path) {
  const std::string text = read_text(index_path);
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (auto err = parser.parse(text).get(doc))
    fail_input("{}: not valid JSON: {}", index_path.string(), simdjson::error_message(err));
  simdjson::dom::object wm;
  if (doc["weight_map"].get_object().get(wm))
    fail_input("{}: missing \"weight_map\" object", index_path.string());
  WeightMap out;
  std::set<std::string_view> seen;
  for (auto [k, v] : wm) {
    std::string_view file;
    if (v.get_string().get(file))
      fail_input("{}: weight_map entry '{}' is not a string", index_path.string(), k);
    if (!seen.insert(k).second)
      fail_input("{}: weight_map lists tensor '{}' twice", index_path.string(), k);
    const fs::path fp(file);
    if (file.empty() || fp.has_parent_path() || file == "." || file == "..")
      fail_input("{}: weight_map entry '{}' names '{}', not a file beside the index",
                 index_path.string(), k, file);
    out.emplace_back(std::string(k), std::string(file));
  }
  if (out.empty()) fail_input("{}: weight_map lists no tensors", index_path.string());
  return out;
}

bool is_weight_file(const fs::path& p) {
  static const std::set<std::string> kWeightExt = {".safetensors", ".bin", ".pt", ".pth",
                                                   ".gguf", ".ckpt", ".h5", ".msgpack"};
  const auto name = p.filename().string();
  return kWeightExt.count(p.extension().string()) || name == kIndexName ||
         name.ends_with(".index.json");
}

// The shards the index lists, each once, opened in name order. A missing or irregular one is named
// before any is read (opening a FIFO would block forever, and a directory or device is no shard).
Shards open_listed_shards(const fs::path& dir, const fs::path& index, const WeightMap& entries,
                          ShardsByName& by_file) {
  std::vector<std::string> shard_names;
  for (const auto& [_, f] : entries)
    if (std::find(shard_names.begin(), shard_names.end(), f) == shard_names.end()) shard_names.push_back(f);
  std::sort(shard_names.begin(), shard_names.end());
  Shards files;
  for (const auto& f : shard_names) {
    if (!fs::exists(dir / f))
      fail_input("{}: lists shard '{}', which does not exist", index.string(), f);
    if (!fs::is_regular_file(dir / f))
      fail_input("{}: lists shard '{}', which is not a regular file", index.string(), f);
    files.push_back(std::make_unique<SafetensorsFile>(dir / f));
    by_file[f] = files.back().get();
  }
  return files;
}

// The weight map and the shards' headers must agree both ways: every listed tensor is in its
// shard, and every tensor of a shard is listed.
void check_weight_map(const fs::path& index, const WeightMap& entries, const Shards& files,
                      const ShardsByName& by_file) {
  size_t listed = 0;
  for (const auto& [tensor, f] : entries) {
    if (!by_file.at(f)->find(tensor))
      fail_input("{}: weight_map puts '{}' in {}, whose header has no such tensor",
                 index.string(), tensor, f);
    ++listed;
  }
  size_t in_shards = 0;
  for (const auto& f : files) in_shards += f->tensors().size();
  if (in_shards == listed) return;
  std::set<std::string_view> names;
  for (const auto& [tensor, _] : entries) names.insert(tensor);
  for (const auto& f : files)
    for (const auto& t : f->tensors())
      if (!names.count(t.name))
        fail_input("{}: tensor '{}' of {} is missing from the weight_map", index.string(),
                   t.name, f->path().filename().string());
}

Shards open_indexed(const fs::path& dir, const fs::path& index) {
  const WeightMap entries = read_weight_map(index);
  ShardsByName by_file;
  Shards files = open_listed_shards(dir, index, entries, by_file);
  check_weight_map(index, entries, files, by_file);
  return files;
}

// Without an index: every visible .safetensors file of the directory, in name order.
Shards open_unindexed(const fs::path& dir) {
  std::vector<fs::path> shards;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".safetensors" && e.path().filename().string()[0] != '.')
      shards.push_back(e.path());
  std::sort(shards.begin(), shards.end());
  if (shards.empty()) fail_input("{}: no .safetensors files found", dir.string());
  Shards files;
  for (const auto& s : shards) files.push_back(std::make_unique<SafetensorsFile>(s));
  return files;
}

// config.json when there is one: a JSON object, nested no deeper than writing it back allows.
std::optional<nlohmann::ordered_json> read_config(const fs::path& config) {
  if (!fs::exists(config)) return std::nullopt;
  std::optional<nlohmann::ordered_json> c;
  try {
    // Writing config.json back recurses once per level, so absurd nesting is refused here.
    constexpr int kMaxConfigDepth = 64;
    c = nlohmann::ordered_json::parse(
        read_text(config), [&](int depth, nlohmann::ordered_json::parse_event_t, nlohmann::ordered_json&) {
          if (depth > kMaxConfigDepth)
            fail_input("{}: nested deeper than {} levels", config.string(), kMaxConfigDepth);
          return true;
        });
  } catch (const nlohmann::json::exception& e) {
    fail_input("{}: not valid JSON: {}", config.string(), e.what());
  }
  if (!c->is_object()) fail_input("{}: not a JSON object", config.string());
  return c;
}

}  // namespace

Checkpoint Checkpoint::open(const fs::path& path) {
  Checkpoint c;
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) {
    c.single_file_ = true;
    c.dir_ = path.parent_path().empty() ? fs::path(".") : path.parent_path();
    c.files_.push_back(std::make_unique<SafetensorsFile>(path));
  } else if (fs::is_directory(path, ec)) {
    c.dir_ = path;
    const fs::path index = path / kIndexName;
    c.files_ = fs::exists(index) ? open_indexed(path, index) : open_unindexed(path);
  } else {
    fail(ErrorKind::Io, "{}: no such file or directory", path.string());
  }

  // One name space over all shards: a tensor in two shards is refused, not shadowed.
  for (const auto& f : c.files_) {
    c.metadata_.insert(f->header().metadata.begin(), f->header().metadata.end());  // keeps the first
    for (const auto& t : f->tensors()) {
      auto [it, fresh] = c.by_name_.emplace(t.name, c.tensors_.size());
      if (!fresh)
        fail_input("{}: tensor '{}' also appears in {}", f->path().string(), t.name,
                   c.tensors_[it->second].file->path().string());
      c.tensors_.push_back(TensorRef{f.get(), &t});
      c.total_bytes_ += t.nbytes();
    }
  }
  c.config_ = read_config(c.dir_ / "config.json");
  return c;
}

const TensorRef* Checkpoint::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::vector<fs::path> Checkpoint::side_files() const {
  std::vector<fs::path> out;
  if (single_file_) return out;  // a lone file's neighbours are not known to belong to it
  for (const auto& e : fs::directory_iterator(dir_)) {
    const auto name = e.path().filename().string();
    if (!e.is_regular_file() || name.empty() || name[0] == '.' || name == "config.json" ||
        is_weight_file(e.path()))
      continue;
    out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace ckpt
