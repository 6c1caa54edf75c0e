// A checkpoint as a whole: one `.safetensors` file, or a directory of shards with (or without)
// `model.safetensors.index.json`, plus `config.json` and the other small files beside them —
// local, or in any CheckpointStore (formats/checkpoint_store.h). All shards are opened (a local
// one mapped) and their headers validated on open; the index's weight map is
// cross-checked against the headers (every entry names a listed shard that holds the tensor,
// every tensor of every shard is in the map, no name in two shards). No tensor data is read.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "formats/checkpoint_store.h"
#include "formats/remote_client.h"
#include "formats/safetensors.h"

namespace ckpt {

struct TensorRef {
  const SafetensorsFile* file = nullptr;
  const TensorInfo* info = nullptr;
  const std::string& name() const { return info->name; }
};

class Checkpoint {
 public:
  static Checkpoint open(const std::filesystem::path& path);
  // `input` as a user names it: a local path, or (built with libcurl) an s3:// or http(s):// URL
  // of a folder or of one .safetensors object (formats/remote_store.h).
  static Checkpoint open_input(const std::string& input, const RemoteOptions& remote);
  // The folder `store` holds, or only its file `single_file`.
  static Checkpoint open(std::shared_ptr<const CheckpointStore> store,
                         std::optional<std::string> single_file = std::nullopt);

  // The directory that holds the weights (the parent of a single-file input).
  const std::filesystem::path& dir() const;
  const CheckpointStore& store() const { return *store_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  // Every tensor, shard by shard in data order.
  const std::vector<TensorRef>& tensors() const { return tensors_; }
  const TensorRef* find(std::string_view name) const;
  // The shards' "__metadata__" entries together; where shards disagree on a key, the first in
  // files() order (the index's shards by name) wins (SPEC §5).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // config.json beside the weights, if any (ordered so that it is written back unchanged), and
  // what identifies its version: the store's identity plus "xxh3" of its text (null without one).
  const std::optional<nlohmann::ordered_json>& config() const { return config_; }
  const nlohmann::ordered_json& config_identity() const { return config_identity_; }
  uint64_t total_tensor_bytes() const { return total_bytes_; }
  // The names of the files beside the weights that a conversion copies (tokenizer, generation
  // config, …), and their bytes.
  std::vector<std::string> side_files() const;
  std::string read_side_file(const std::string& name) const;

 private:
  std::shared_ptr<const CheckpointStore> store_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<TensorRef> tensors_;
  std::unordered_map<std::string_view, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
  std::optional<nlohmann::ordered_json> config_;
  nlohmann::ordered_json config_identity_;
  uint64_t total_bytes_ = 0;
  bool single_file_ = false;
};

inline constexpr const char* kIndexName = "model.safetensors.index.json";

}  // namespace ckpt
