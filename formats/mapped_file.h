// A read-only memory map of one input file. Tensor bytes are read straight out of the map (no
// copy); once a range has been consumed, `release` tells the kernel the pages are no longer needed
// so that the resident set stays proportional to the data in flight, not to the file size.
#pragma once

#include <boost/iostreams/device/mapped_file.hpp>

#include <cstdint>
#include <filesystem>
#include <string>

namespace ckpt {

class MappedFile {
 public:
  // Maps `path` read-only. A zero-length file is valid and maps to an empty range.
  explicit MappedFile(const std::filesystem::path& path);
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

  // Advice on the pages of [offset, offset+len): `prefetch` asks for read-ahead, `release` drops
  // them from this process's mapping (they stay in the page cache, and a later read of them
  // simply faults them back in). Both are hints and never fail.
  void prefetch(uint64_t offset, uint64_t len) const;
  void release(uint64_t offset, uint64_t len) const;

 private:
  std::filesystem::path path_;
  boost::iostreams::mapped_file_source map_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace ckpt
