#include "formats/writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "formats/error.h"
#include "formats/safetensors.h"

namespace ckpt {

namespace fs = std::filesystem;

uint64_t OutTensor::nbytes() const {
  uint64_t n = 0, b = 0;
  if (!checked_numel(shape, n) || !checked_mul(n, dtype_size(dtype), b))
    fail_input("output tensor '{}': byte size of shape {} overflows", name, shape_str(shape));
  return b;
}

ShardLayout layout_shard(std::string file_name, std::vector<OutTensor> tensors) {
  ShardLayout l;
  l.file_name = std::move(file_name);
  l.tensors = std::move(tensors);
  // Built as text: ordered_json's lookups are linear, and shards can hold thousands of tensors.
  std::string& h = l.header;
  h = R"({"__metadata__":{"format":"pt"})";
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

fs::path temp_path_for(const fs::path& final_path) {
  return final_path.parent_path() / ("." + final_path.filename().string() + ".ckptconv-partial");
}

namespace {
void pwrite_all(int fd, const void* data, uint64_t len, uint64_t offset, const fs::path& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    const ssize_t n = ::pwrite(fd, p, std::min<uint64_t>(len, 1ull << 30), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_io_errno(errno, fmt::format("{}: write of {} bytes at offset {}", path.string(), len, offset));
    }
    if (n == 0) fail(ErrorKind::Io, "{}: write at offset {} made no progress", path.string(), offset);
    p += n;
    len -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

// A rename onto `path` can only fail late if something other than a file is in its way: refuse
// that up front, before any output is published.
void check_replaceable(const fs::path& path) {
  std::error_code ec;
  const auto st = fs::symlink_status(path, ec);
  if (!ec && fs::exists(st) && !fs::is_regular_file(st))
    fail(ErrorKind::Io, "{}: exists and is not a regular file", path.string());
}

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);  // best effort: some filesystems refuse fsync on directories
  ::close(fd);
}
}  // namespace

ShardWriter::ShardWriter(const fs::path& dir, const ShardLayout& layout, bool reserve)
    : final_(dir / layout.file_name), temp_(temp_path_for(final_)) {
  check_replaceable(final_);
  fd_ = ::open(temp_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_io_errno(errno, fmt::format("{}: cannot create", temp_.string()));
  try {
    if (layout.file_size > 0) {
      const int rc = reserve ? ::posix_fallocate(fd_, 0, static_cast<off_t>(layout.file_size)) : EOPNOTSUPP;
      // Filesystems without fallocate still get their size from ftruncate; a full disk does not.
      if (rc == ENOSPC || rc == EDQUOT)
        fail_io_errno(rc, fmt::format("{}: reserving {} bytes", temp_.string(), layout.file_size));
      if (rc != 0 && ::ftruncate(fd_, static_cast<off_t>(layout.file_size)) != 0)
        fail_io_errno(errno, fmt::format("{}: setting size to {}", temp_.string(), layout.file_size));
    }
    uint8_t len[8];
    const uint64_t n = layout.header.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    pwrite_all(fd_, len, 8, 0, temp_);
    pwrite_all(fd_, layout.header.data(), n, 8, temp_);
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
  pwrite_all(fd_, data, len, offset, temp_);
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

StagedFile::StagedFile(fs::path final_path, const std::string& content)
    : final_(std::move(final_path)), temp_(temp_path_for(final_)) {
  check_replaceable(final_);
  const int fd = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail_io_errno(errno, fmt::format("{}: cannot create", temp_.string()));
  try {
    pwrite_all(fd, content.data(), content.size(), 0, temp_);
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
