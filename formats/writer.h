// Writing safetensors output. A shard's layout (header text, tensor offsets, file size) is fixed
// before any data exists, so workers can write tensors — or parts of tensors — at their final
// offsets in any order. A shard lives under a hidden temporary name at its final size until
// `commit` fsyncs it and renames it into place: a failed or killed run leaves nothing under a
// final name. The header is padded with spaces so the data starts at a multiple of 8 and carries
// `"__metadata__": {"format": "pt"}` plus the entries the caller passes on (SPEC §5: the input's
// own); tensors lie back to back in the order given.
//
// For resuming, a writer can also report when its shard is complete, with its checksum: the
// XXH3-64 of the sequence of XXH3-64s (canonical, big-endian) of the file's consecutive 1 MiB
// blocks. A list of block hashes rather than one hash of the file lets the writer hash each block
// straight from the bytes being written, on whichever thread writes it, in any order; only the
// blocks that several writes share are read back from the file. `shard_checksum` computes the
// same value from a file.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
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

// Computes header, offsets and size. The header's "__metadata__" is {"format": "pt"} and the
// other entries of `metadata` (its own "format" is ignored: the tensors are always written as
// PyTorch's). Throws on a name, size or header length the format cannot hold.
ShardLayout layout_shard(std::string file_name, std::vector<OutTensor> tensors,
                         const std::map<std::string, std::string>& metadata = {});

// The conventional shard names: "model.safetensors" for one, else
// "model-00001-of-0000N.safetensors".
std::string shard_file_name(size_t index, size_t count);

// Where shards are written before they are committed.
std::filesystem::path temp_path_for(const std::filesystem::path& final_path);
// True for the names temp_path_for gives.
bool is_temp_name(const std::string& file_name);

inline constexpr uint64_t kChecksumBlock = 1ull << 20;
inline constexpr const char* kShardChecksumName = "xxh3-64 of 1 MiB block xxh3-64s";
// The checksum of a whole file, as a completed ShardWriter reports it. Io error if unreadable.
uint64_t shard_checksum(const std::filesystem::path& file);

// Where a shard's bytes go: positional, thread-safe writes, then one commit.
class ShardSink {
 public:
  virtual ~ShardSink() = default;
  virtual void write(uint64_t offset, const void* data, uint64_t len) const = 0;
  virtual void commit() = 0;
  // Leaves a complete shard under its temporary name for another process to commit (a rank of a
  // split conversion; pipeline/partition.h): fsync, and the destructor no longer removes it.
  virtual void keep() = 0;
};

// Discards everything: `convert --sink null` measures the pipeline without storage.
class NullSink final : public ShardSink {
 public:
  void write(uint64_t, const void*, uint64_t) const override {}
  void commit() override {}
  void keep() override {}
};

class ShardWriter final : public ShardSink {
 public:
  // Called once, by the write that completes the shard (every data byte written exactly once;
  // by the constructor for a shard without data), after the temporary file has been fsynced.
  // What it throws, that write throws.
  using OnComplete = std::function<void(const std::filesystem::path& final_path, uint64_t size, uint64_t checksum)>;

  // Creates the temporary file, reserves its full size (so a full disk fails here, not half-way)
  // and writes the header. Without `reserve` the file only gets its size: a sparse file whose
  // unwritten tensors read as zeros (synthetic header-only checkpoints). With `on_complete`,
  // writes must not overlap and must stay within the data region.
  ShardWriter(const std::filesystem::path& dir, const ShardLayout& layout, bool reserve = true,
              OnComplete on_complete = {});
  ~ShardWriter();  // removes the temporary file unless committed
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Thread-safe positional write of `len` bytes at absolute file offset `offset`.
  void write(uint64_t offset, const void* data, uint64_t len) const override;
  // fsync, then rename to the final name.
  void commit() override;
  void keep() override;
  // Allocates the file's blocks in [offset, offset+len) while writes go on (fallocate without
  // glibc's byte-writing fallback, which would race with them): ENOSPC is an Io error naming the
  // shard; a filesystem without fallocate is left to allocate as it is written.
  void reserve(uint64_t offset, uint64_t len) const;
  // The file lives in memory (tmpfs, ramfs): there, reserving allocates and charges its pages,
  // as much work as writing them, and holds the file's lock against the writers meanwhile.
  bool in_memory() const { return in_memory_; }
  uint64_t size() const { return size_; }
  const std::filesystem::path& final_path() const { return final_; }

 private:
  // Hashes the blocks [offset, offset+len) touches: whole ones from `data`, shared ones from the
  // file once their last byte is written.
  void hash_blocks(uint64_t offset, const uint8_t* data, uint64_t len) const;
  void complete() const;

  std::filesystem::path final_, temp_;
  int fd_ = -1;
  bool committed_ = false, in_memory_ = false;
  uint64_t size_ = 0, data_start_ = 0;
  OnComplete on_complete_;
  // Completion tracking, with on_complete only.
  std::unique_ptr<std::atomic<uint32_t>[]> block_left_;  // bytes of each block not yet written
  std::unique_ptr<uint8_t[]> block_hash_;                // 8 canonical bytes per block
  uint64_t blocks_ = 0;
  mutable std::atomic<uint64_t> written_{0};             // data bytes
};

// A shard that an interrupted run wrote completely and the caller verified (its size and
// checksum match the record). It takes no writes; `commit` publishes it: renames the temporary
// file, or — when it is already under its final name — only drops a stale temporary file.
// Uncommitted, it removes its temporary file like a ShardWriter; a final-named one stays.
class FinishedShard final : public ShardSink {
 public:
  FinishedShard(std::filesystem::path final_path, bool under_temp_name);
  ~FinishedShard();
  FinishedShard(const FinishedShard&) = delete;
  FinishedShard& operator=(const FinishedShard&) = delete;

  // Internal error: the plan must not route bytes to a finished shard.
  void write(uint64_t offset, const void* data, uint64_t len) const override;
  void commit() override;
  void keep() override { committed_ = true; }

 private:
  std::filesystem::path final_, temp_;
  bool under_temp_, committed_ = false;
};

// fsync of a directory, so that renames in it are durable; best effort (some filesystems refuse).
void fsync_dir(const std::filesystem::path& dir);

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
