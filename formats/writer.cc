#include "formats/writer.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <xxhash.h>
// The library's runtime-dispatched XXH3 (AVX2/AVX-512 where the CPU has them): 3-4x the
// baseline build's speed on the shards' bytes. Called by name, not through its macros.
#define XXH_DISPATCH_DISABLE_REPLACE
#include <xxh_x86dispatch.h>

#include <cerrno>
#include <cstring>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "formats/error.h"
#include "formats/posix_io.h"
#include "formats/safetensors.h"

namespace ckpt {

namespace fs = std::filesystem;

uint64_t OutTensor::nbytes() const {
  uint64_t n = 0, b = 0;
  if (checked_numel(shape, n) && !fills_whole_bytes(dtype, n))
    fail_input("output tensor '{}': {} {} does not fill whole bytes", name, dtype_name(dtype), shape_str(shape));
  if (!checked_numel(shape, n) || !checked_elements_bytes(dtype, n, b))
    fail_input("output tensor '{}': byte size of shape {} overflows", name, shape_str(shape));
  return b;
}

ShardLayout layout_shard(std::string file_name, std::vector<OutTensor> tensors,
                         const std::map<std::string, std::string>& metadata) {
  ShardLayout l;
  l.file_name = std::move(file_name);
  l.tensors = std::move(tensors);
  // Built as text: ordered_json's lookups are linear, and shards can hold thousands of tensors.
  std::string& h = l.header;
  h = R"({"__metadata__":{"format":"pt")";
  for (const auto& [key, value] : metadata) {
    if (key == "format") continue;  // the bytes are PyTorch's whatever the input's said
    h += ',';
    h += nlohmann::json(key).dump();
    h += ':';
    h += nlohmann::json(value).dump();
  }
  h += '}';
  std::unordered_set<std::string_view> names;
  uint64_t pos = 0;
  std::vector<uint64_t> rel;
  rel.reserve(l.tensors.size());
  for (const auto& t : l.tensors) {
    const uint64_t n = t.nbytes();
    if (t.name == "__metadata__")
      fail_input("output tensor '__metadata__' would collide with the header's metadata in {}", l.file_name);
    if (!names.insert(t.name).second)
      fail_input("output tensor '{}' appears twice in {}", t.name, l.file_name);
    h += ',';
    h += nlohmann::json(t.name).dump();
    h += fmt::format(R"(:{{"dtype":"{}","shape":[{}],"data_offsets":[{},{}]}})",
                     dtype_name(t.dtype), fmt::join(t.shape, ","), pos, pos + n);
    rel.push_back(pos);
    if (__builtin_add_overflow(pos, n, &pos)) fail_input("{}: total size overflows", l.file_name);
  }
  h += '}';
  l.header.append((8 - (8 + l.header.size()) % 8) % 8, ' ');
  if (l.header.size() > kMaxHeaderSize)
    fail_input("{}: header of {} bytes exceeds the safetensors limit", l.file_name, l.header.size());
  l.data_start = 8 + l.header.size();
  l.offsets.reserve(rel.size());
  for (uint64_t r : rel) l.offsets.push_back(l.data_start + r);
  l.file_size = l.data_start + pos;
  return l;
}

std::string shard_file_name(size_t index, size_t count) {
  if (count == 1) return "model.safetensors";
  return fmt::format("model-{:05d}-of-{:05d}.safetensors", index + 1, count);
}

namespace {
constexpr std::string_view kTempSuffix = ".ckptconv-partial";
}

fs::path temp_path_for(const fs::path& final_path) {
  return final_path.parent_path() / ("." + final_path.filename().string() + std::string(kTempSuffix));
}

bool is_temp_name(const std::string& name) {
  return name.size() > kTempSuffix.size() + 1 && name.front() == '.' && name.ends_with(kTempSuffix);
}

namespace {
// A rename onto `path` can only fail late if something other than a file is in its way: refuse
// that up front, before any output is published.
void check_replaceable(const fs::path& path) {
  std::error_code ec;
  const auto st = fs::symlink_status(path, ec);
  if (!ec && fs::exists(st) && !fs::is_regular_file(st))
    fail(ErrorKind::Io, "{}: exists and is not a regular file", path.string());
}

// Reads back `len` bytes of a file this process wrote: a short file is an I/O error.
void pread_all(int fd, uint8_t* dst, uint64_t len, uint64_t offset, const fs::path& path) {
  if (pread_full(fd, dst, len, offset, path) < len)
    fail(ErrorKind::Io, "{}: ends before offset {}", path.string(), offset + len);
}

void put_block_hash(uint8_t* at, const void* data, uint64_t len) {
  XXH64_canonical_t c;
  XXH64_canonicalFromHash(&c, XXH3_64bits_dispatch(data, len));
  std::memcpy(at, c.digest, sizeof c.digest);
}

// One block's worth of buffer per thread, for blocks read back from a file.
uint8_t* block_buffer() {
  thread_local std::unique_ptr<uint8_t[]> buf(new uint8_t[kChecksumBlock]);
  return buf.get();
}
}  // namespace

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);  // best effort: some filesystems refuse fsync on directories
  ::close(fd);
}

uint64_t shard_checksum(const fs::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_io_errno(errno, fmt::format("{}: cannot open", file.string()));
  struct stat st{};
  XXH3_state_t* state = XXH3_createState();
  if (!state) {
    ::close(fd);
    throw std::bad_alloc();
  }
  try {
    if (::fstat(fd, &st) != 0) fail_io_errno(errno, fmt::format("{}: cannot stat", file.string()));
    XXH3_64bits_reset(state);
    // One block per read: hashed while the copy is still in this core's cache.
    uint8_t* buf = block_buffer();
    const auto size = static_cast<uint64_t>(st.st_size);
    for (uint64_t at = 0; at < size; at += kChecksumBlock) {
      const uint64_t n = std::min(kChecksumBlock, size - at);
      pread_all(fd, buf, n, at, file);
      uint8_t h[8];
      put_block_hash(h, buf, n);
      XXH3_64bits_update(state, h, sizeof h);
    }
  } catch (...) {
    XXH3_freeState(state);
    ::close(fd);
    throw;
  }
  const uint64_t sum = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  ::close(fd);
  return sum;
}

ShardWriter::ShardWriter(const fs::path& dir, const ShardLayout& layout, bool reserve, OnComplete on_complete)
    : final_(dir / layout.file_name),
      temp_(temp_path_for(final_)),
      size_(layout.file_size),
      data_start_(layout.data_start),
      on_complete_(std::move(on_complete)) {
  check_replaceable(final_);
  if (on_complete_) {
    blocks_ = (size_ + kChecksumBlock - 1) / kChecksumBlock;
    block_left_.reset(new std::atomic<uint32_t>[blocks_]);
    for (uint64_t k = 0; k < blocks_; ++k)
      block_left_[k].store(static_cast<uint32_t>(std::min(kChecksumBlock, size_ - k * kChecksumBlock)));
    block_hash_.reset(new uint8_t[blocks_ * 8]);
  }
  fd_ = ::open(temp_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_io_errno(errno, fmt::format("{}: cannot create", temp_.string()));
  struct statfs fs {};
  in_memory_ = ::fstatfs(fd_, &fs) == 0 && (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC);
  try {
    if (layout.file_size > 0) {
      const int rc = reserve ? ::posix_fallocate(fd_, 0, static_cast<off_t>(layout.file_size)) : EOPNOTSUPP;
      // Filesystems without fallocate still get their size from ftruncate; a full disk does not.
      if (rc == ENOSPC || rc == EDQUOT)
        fail_io_errno(rc, fmt::format("{}: reserving {} bytes", temp_.string(), layout.file_size));
      if (rc != 0 && ::ftruncate(fd_, static_cast<off_t>(layout.file_size)) != 0)
        fail_io_errno(errno, fmt::format("{}: setting size to {}", temp_.string(), layout.file_size));
    }
    std::string head(8, '\0');
    const uint64_t n = layout.header.size();
    for (int i = 0; i < 8; ++i) head[i] = static_cast<char>(n >> (8 * i));
    head += layout.header;
    pwrite_full(fd_, head.data(), head.size(), 0, temp_);
    if (on_complete_) {
      if (head.size() != data_start_ || data_start_ > size_)
        fail(ErrorKind::Internal, "{}: layout's data start {} does not follow its header", final_.string(),
             data_start_);
      hash_blocks(0, reinterpret_cast<const uint8_t*>(head.data()), head.size());
      if (size_ == data_start_) complete();
    }
  } catch (...) {
    ::close(fd_);
    ::unlink(temp_.c_str());
    throw;
  }
}

ShardWriter::~ShardWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_.c_str());
}

void ShardWriter::write(uint64_t offset, const void* data, uint64_t len) const {
  if (!on_complete_) {
    pwrite_full(fd_, data, len, offset, temp_);
    return;
  }
  uint64_t end = 0;
  if (offset < data_start_ || __builtin_add_overflow(offset, len, &end) || end > size_)
    fail(ErrorKind::Internal, "{}: write of {} bytes at offset {} is outside the data region [{}, {})",
         final_.string(), len, offset, data_start_, size_);
  // One pwrite, then the hashes. Writing and hashing one 1 MiB block at a time, to hash while
  // the bytes are still in cache, measured slower: 6.7% over no checksums against 3.7%.
  pwrite_full(fd_, data, len, offset, temp_);
  hash_blocks(offset, static_cast<const uint8_t*>(data), len);
  // Every block this write finished is hashed before it is counted, so the write that counts
  // the last byte sees every hash (the counter's read-modify-writes form one release sequence).
  const uint64_t total = written_.fetch_add(len, std::memory_order_acq_rel) + len;
  if (total > size_ - data_start_)
    fail(ErrorKind::Internal, "{}: {} data bytes written, the layout has {}", final_.string(), total,
         size_ - data_start_);
  if (total == size_ - data_start_ && len > 0) complete();
}

void ShardWriter::hash_blocks(uint64_t offset, const uint8_t* data, uint64_t len) const {
  const uint64_t end = offset + len;
  for (uint64_t k = offset / kChecksumBlock; k < blocks_ && k * kChecksumBlock < end; ++k) {
    const uint64_t b0 = k * kChecksumBlock, b1 = std::min(size_, b0 + kChecksumBlock);
    const uint64_t lo = std::max(offset, b0), hi = std::min(end, b1);
    if (lo == b0 && hi == b1) {
      put_block_hash(&block_hash_[k * 8], data + (b0 - offset), b1 - b0);
      continue;
    }
    // A block shared with other writes: whichever writes its last bytes reads it back whole.
    const auto part = static_cast<uint32_t>(hi - lo);
    if (block_left_[k].fetch_sub(part, std::memory_order_acq_rel) != part) continue;
    uint8_t* buf = block_buffer();
    pread_all(fd_, buf, b1 - b0, b0, temp_);
    put_block_hash(&block_hash_[k * 8], buf, b1 - b0);
  }
}

void ShardWriter::complete() const {
  if (::fsync(fd_) != 0) fail_io_errno(errno, fmt::format("{}: fsync", temp_.string()));
  on_complete_(final_, size_, XXH3_64bits_dispatch(block_hash_.get(), blocks_ * 8));
}

void ShardWriter::commit() {
  if (::fsync(fd_) != 0) fail_io_errno(errno, fmt::format("{}: fsync", temp_.string()));
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail_io_errno(errno, fmt::format("{}: close", temp_.string()));
  }
  fd_ = -1;
  if (::rename(temp_.c_str(), final_.c_str()) != 0)
    fail_io_errno(errno, fmt::format("{}: rename to {}", temp_.string(), final_.string()));
  committed_ = true;
  fsync_dir(final_.parent_path());
}

void ShardWriter::reserve(uint64_t offset, uint64_t len) const {
  if (len == 0) return;
  int err = 0;
  do {
    err = ::fallocate(fd_, 0, static_cast<off_t>(offset), static_cast<off_t>(len)) == 0 ? 0 : errno;
  } while (err == EINTR);
  if (err == 0) return;
  if (err == EOPNOTSUPP || err == ENOSYS) return;
  fail_io_errno(err, fmt::format("{}: reserving {} bytes at offset {}", temp_.string(), len, offset));
}

void ShardWriter::keep() {
  if (::fsync(fd_) != 0) fail_io_errno(errno, fmt::format("{}: fsync", temp_.string()));
  committed_ = true;
}

FinishedShard::FinishedShard(fs::path final_path, bool under_temp_name)
    : final_(std::move(final_path)), temp_(temp_path_for(final_)), under_temp_(under_temp_name) {
  check_replaceable(final_);
}

FinishedShard::~FinishedShard() {
  if (!committed_ && under_temp_) ::unlink(temp_.c_str());
}

void FinishedShard::write(uint64_t offset, const void*, uint64_t len) const {
  fail(ErrorKind::Internal, "{}: {} bytes at offset {} routed to a shard that is already complete",
       final_.string(), len, offset);
}

void FinishedShard::commit() {
  if (under_temp_) {
    if (::rename(temp_.c_str(), final_.c_str()) != 0)
      fail_io_errno(errno, fmt::format("{}: rename to {}", temp_.string(), final_.string()));
  } else if (::unlink(temp_.c_str()) != 0 && errno != ENOENT) {
    fail_io_errno(errno, fmt::format("{}: cannot remove", temp_.string()));
  }
  committed_ = true;
  fsync_dir(final_.parent_path());
}

StagedFile::StagedFile(fs::path final_path, const std::string& content)
    : final_(std::move(final_path)), temp_(temp_path_for(final_)) {
  check_replaceable(final_);
  const int fd = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail_io_errno(errno, fmt::format("{}: cannot create", temp_.string()));
  try {
    pwrite_full(fd, content.data(), content.size(), 0, temp_);
    if (::fsync(fd) != 0) fail_io_errno(errno, fmt::format("{}: fsync", temp_.string()));
  } catch (...) {
    ::close(fd);
    ::unlink(temp_.c_str());
    throw;
  }
  ::close(fd);
}

StagedFile::StagedFile(StagedFile&& o) noexcept
    : final_(std::move(o.final_)), temp_(std::move(o.temp_)), done_(o.done_) {
  o.done_ = true;
}

StagedFile::~StagedFile() {
  if (!done_) ::unlink(temp_.c_str());
}

void StagedFile::commit() {
  if (::rename(temp_.c_str(), final_.c_str()) != 0)
    fail_io_errno(errno, fmt::format("{}: rename to {}", temp_.string(), final_.string()));
  done_ = true;
  fsync_dir(final_.parent_path());
}

void write_file_atomic(const fs::path& path, const std::string& content) {
  StagedFile(path, content).commit();
}

std::string index_json(const std::vector<ShardLayout>& shards) {
  nlohmann::ordered_json j;
  uint64_t total = 0;
  nlohmann::json wm = nlohmann::json::object();  // sorted by name, as the hub's indexes are
  for (const auto& s : shards)
    for (const auto& t : s.tensors) {
      if (wm.contains(t.name))
        fail_input("output tensor '{}' is in both {} and {}", t.name, wm[t.name].get<std::string>(), s.file_name);
      total += t.nbytes();
      wm[t.name] = s.file_name;
    }
  j["metadata"] = {{"total_size", total}};
  j["weight_map"] = std::move(wm);
  return j.dump(2) + "\n";
}

}  // namespace ckpt
