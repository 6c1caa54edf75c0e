#include "formats/checkpoint.h"

#include <simdjson.h>
#include <xxhash.h>

#include <algorithm>
#include <set>

#include "formats/error.h"
#if defined(CKPT_HAVE_CURL)
#include "formats/remote_store.h"
#endif

namespace ckpt {

namespace fs = std::filesystem;

namespace {

using Shards = std::vector<std::unique_ptr<SafetensorsFile>>;
using WeightMap = std::vector<std::pair<std::string, std::string>>;  // (tensor, shard file) in index order
using ShardsByName = std::unordered_map<std::string, const SafetensorsFile*>;

// The shard names the index lists, checked against its weight map later.
WeightMap read_weight_map(const std::string& text, const fs::path& index_path) {
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
Shards open_listed_shards(const CheckpointStore& store, const fs::path& index, const WeightMap& entries,
                          ShardsByName& by_file) {
  std::vector<std::string> shard_names;
  for (const auto& [_, f] : entries)
    if (std::find(shard_names.begin(), shard_names.end(), f) == shard_names.end()) shard_names.push_back(f);
  std::sort(shard_names.begin(), shard_names.end());
  for (const auto& f : shard_names) {
    const auto kind = store.kind(f);
    if (kind == CheckpointStore::Kind::Missing)
      fail_input("{}: lists shard '{}', which does not exist", index.string(), f);
    if (kind != CheckpointStore::Kind::File)
      fail_input("{}: lists shard '{}', which is not a regular file", index.string(), f);
  }
  Shards files;
  for (const auto& f : shard_names) {
    files.push_back(std::make_unique<SafetensorsFile>(store.open(f)));
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

Shards open_indexed(const CheckpointStore& store) {
  const fs::path index = store.root() / kIndexName;
  const WeightMap entries = read_weight_map(store.read(kIndexName), index);
  ShardsByName by_file;
  Shards files = open_listed_shards(store, index, entries, by_file);
  check_weight_map(index, entries, files, by_file);
  return files;
}

// Without an index: every visible .safetensors file of the folder, in name order.
Shards open_unindexed(const CheckpointStore& store) {
  const auto names = store.list();
  if (!names) fail_input("{}: no {}; a folder that cannot be listed needs its index", store.root().string(), kIndexName);
  Shards files;
  for (const auto& n : *names)
    if (fs::path(n).extension() == ".safetensors" && n[0] != '.')
      files.push_back(std::make_unique<SafetensorsFile>(store.open(n)));
  if (files.empty()) fail_input("{}: no .safetensors files found", store.root().string());
  return files;
}

// config.json when there is one: a JSON object, nested no deeper than writing it back allows.
std::optional<nlohmann::ordered_json> parse_config(const std::string& text, const fs::path& config) {
  std::optional<nlohmann::ordered_json> c;
  try {
    // Writing config.json back recurses once per level, so absurd nesting is refused here.
    constexpr int kMaxConfigDepth = 64;
    c = nlohmann::ordered_json::parse(
        text, [&](int depth, nlohmann::ordered_json::parse_event_t, nlohmann::ordered_json&) {
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

// The small files a model folder usually holds beside its weights: what is copied from a store
// that cannot list its folder.
constexpr const char* kKnownSideFiles[] = {
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "preprocessor_config.json", "processor_config.json"};

}  // namespace

Checkpoint Checkpoint::open(const fs::path& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec))
    return open(local_store(path.parent_path().empty() ? fs::path(".") : path.parent_path()),
                path.filename().string());
  if (fs::is_directory(path, ec)) return open(local_store(path));
  fail(ErrorKind::Io, "{}: no such file or directory", path.string());
}

Checkpoint Checkpoint::open_input(const std::string& input, const RemoteOptions& remote) {
#if defined(CKPT_HAVE_CURL)
  if (const auto url = parse_remote_url(input)) {
    const RemoteCheckpoint r = open_remote(*url, remote);
    return open(r.store, r.single_file);
  }
#else
  (void)remote;
  if (input.starts_with("s3://") || input.starts_with("http://") || input.starts_with("https://"))
    fail_usage("--in {}: this ckptconv reads local files only (built without libcurl)", input);
#endif
  return open(fs::path(input));
}

Checkpoint Checkpoint::open(std::shared_ptr<const CheckpointStore> store, std::optional<std::string> single_file) {
  Checkpoint c;
  c.store_ = std::move(store);
  const CheckpointStore& st = *c.store_;
  c.single_file_ = single_file.has_value();
  if (single_file) c.files_.push_back(std::make_unique<SafetensorsFile>(st.open(*single_file)));
  else c.files_ = st.kind(kIndexName) != CheckpointStore::Kind::Missing ? open_indexed(st) : open_unindexed(st);

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
  if (st.kind("config.json") != CheckpointStore::Kind::Missing) {
    const std::string text = st.read("config.json");
    c.config_ = parse_config(text, st.root() / "config.json");
    c.config_identity_ = st.identity("config.json");
    c.config_identity_["xxh3"] = fmt::format("{:016x}", XXH3_64bits(text.data(), text.size()));
  }
  return c;
}

const TensorRef* Checkpoint::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::vector<std::string> Checkpoint::side_files() const {
  std::vector<std::string> out;
  if (single_file_) return out;  // a lone file's neighbours are not known to belong to it
  const auto names = store_->list();
  if (!names) {
    for (const char* n : kKnownSideFiles)
      if (store_->kind(n) == CheckpointStore::Kind::File) out.push_back(n);
    std::sort(out.begin(), out.end());
    return out;
  }
  for (const auto& name : *names)
    if (!name.empty() && name[0] != '.' && name != "config.json" && !is_weight_file(name)) out.push_back(name);
  return out;
}

std::string Checkpoint::read_side_file(const std::string& name) const { return store_->read(name); }

const fs::path& Checkpoint::dir() const { return store_->root(); }

}  // namespace ckpt
