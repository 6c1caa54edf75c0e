// Where a checkpoint's files are found: a local directory, or a folder behind HTTP or in an
// object store (pipeline/remote_store.h). Checkpoint::open asks a store for the index, the
// shards, config.json and the side files by name, and validates the same way whatever serves
// them.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "formats/input_file.h"

namespace ckpt {

class CheckpointStore {
 public:
  virtual ~CheckpointStore() = default;

  // The folder, as a path (a URL for a remote one): for messages, and Checkpoint::dir().
  virtual const std::filesystem::path& root() const = 0;

  enum class Kind : uint8_t { Missing, File, Other };
  // Whether `name` is there, and a regular file (a FIFO or a directory is no shard).
  virtual Kind kind(const std::string& name) const = 0;
  // A small file's bytes (index, config, side files). Io error if it cannot be read.
  virtual std::string read(const std::string& name) const = 0;
  virtual std::unique_ptr<InputFile> open(const std::string& name) const = 0;
  // What identifies this version of `name` for --resume: {"size", "mtime_ns"} locally.
  virtual nlohmann::ordered_json identity(const std::string& name) const = 0;
  // Every regular file's name in the folder, sorted; nothing where the store cannot list (HTTP).
  virtual std::optional<std::vector<std::string>> list() const = 0;

  // What a remote store has fetched so far (nothing for a local one).
  struct FetchStats {
    uint64_t requests = 0;       // HTTP requests sent, retries included
    uint64_t bytes_fetched = 0;  // body bytes of successful responses
    uint64_t retries = 0;        // requests that repeated a failed one
  };
  virtual std::optional<FetchStats> fetch_stats() const { return std::nullopt; }
};

// A local directory.
std::shared_ptr<const CheckpointStore> local_store(const std::filesystem::path& dir);

}  // namespace ckpt
