// Writing safetensors output. A shard's layout (header text, tensor offsets, file size) is fixed
// before any data exists, so workers can write tensors — or parts of tensors — at their final
// offsets in any order. A shard lives under a hidden temporary name at its final size until
// `commit` fsyncs it and renames it into place: a failed or killed run leaves nothing under a
// final name. The header is padded with spaces so the data starts at a multiple of 8 and carries
// `"__metadata__": {"format": "pt"}`; tensors lie back to back in the order given.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "formats/dtype.h"

namespace ckpt {

struct OutTensor {
  std::string name;
  DType dtype;
  std::vector<uint64_t> shape;
  uint64_t nbytes() const;
};

struct ShardLayout {
  std::string file_name;
  std::vector<OutTensor> tensors;
  std::string header;             // the JSON text, padded
  uint64_t data_start = 0;        // 8 + header.size()
  std::vector<uint64_t> offsets;  // absolute file offset of each tensor's first byte
  uint64_t file_size = 0;
};

// Computes header, offsets and size. Throws on a name or size the format cannot hold.
ShardLayout layout_shard(std::string file_name, std::vector<OutTensor> tensors);

// The conventional shard names: "model.safetensors" for one, else
// "model-00001-of-0000N.safetensors".
std::string shard_file_name(size_t index, size_t count);

// Where shards are written before they are committed.
std::filesystem::path temp_path_for(const std::filesystem::path& final_path);

// Where a shard's bytes go: positional, thread-safe writes, then one commit.
class ShardSink {
 public:
  virtual ~ShardSink() = default;
  virtual void write(uint64_t offset, const void* data, uint64_t len) const = 0;
  virtual void commit() = 0;
};

// Discards everything: `convert --sink null` measures the pipeline without storage.
class NullSink final : public ShardSink {
 public:
  void write(uint64_t, const void*, uint64_t) const override {}
  void commit() override {}
};

class ShardWriter final : public ShardSink {
 public:
  // Creates the temporary file, reserves its full size (so a full disk fails here, not half-way)
  // and writes the header. Without `reserve` the file only gets its size: a sparse file whose
  // unwritten tensors read as zeros (synthetic header-only checkpoints).
  ShardWriter(const std::filesystem::path& dir, const ShardLayout& layout, bool reserve = true);
  ~ShardWriter();  // removes the temporary file unless committed
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Thread-safe positional write of `len` bytes at absolute file offset `offset`.
  void write(uint64_t offset, const void* data, uint64_t len) const override;
  // fsync, then rename to the final name.
  void commit() override;
  const std::filesystem::path& final_path() const { return final_; }

 private:
  std::filesystem::path final_, temp_;
  int fd_ = -1;
  bool committed_ = false;
};

// Writes `content` to `path` atomically (temporary file, fsync, rename).
void write_file_atomic(const std::filesystem::path& path, const std::string& content);

// A small file written and synced under its temporary name, published by `commit` (a rename).
// Lets a conversion prepare every side file before the first shard appears under a final name.
class StagedFile {
 public:
  StagedFile(std::filesystem::path final_path, const std::string& content);
  ~StagedFile();  // removes the temporary file unless committed
  StagedFile(StagedFile&&) noexcept;
  StagedFile(const StagedFile&) = delete;
  void commit();

 private:
  std::filesystem::path final_, temp_;
  bool done_ = false;
};

// model.safetensors.index.json for the given shards.
std::string index_json(const std::vector<ShardLayout>& shards);

}  // namespace ckpt
