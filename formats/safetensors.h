// The safetensors file format, and a strict reader for it.
//
//   bytes [0, 8)        N, the header length, unsigned 64-bit little-endian, N <= 100,000,000
//   bytes [8, 8+N)      the header: a UTF-8 JSON object that starts with '{' (trailing spaces
//                       pad it), mapping each tensor name to
//                         {"dtype": "BF16", "shape": [d0, d1, ...], "data_offsets": [begin, end]}
//                       plus an optional "__metadata__" object of string -> string
//   bytes [8+N, EOF)    the data buffer; a tensor's bytes are [8+N+begin, 8+N+end)
//
// `parse_header` enforces every rule of the reference reader and a few more: known dtypes only,
// shapes of non-negative integers whose byte size (elements × bits / 8, computed with overflow
// checks; sub-byte elements must fill whole bytes) equals end - begin, tensors tiling the data buffer from offset 0 with no gap or overlap and ending
// exactly at end of file, no duplicate names, no unknown fields. Violations throw
// `Error(InvalidInput)` naming the file, the tensor and the rule.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "formats/dtype.h"
#include "formats/mapped_file.h"

namespace ckpt {

inline constexpr uint64_t kMaxHeaderSize = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // relative to the data buffer
  uint64_t end = 0;
  uint64_t numel() const;  // validated not to overflow when parsed
  uint64_t nbytes() const { return end - begin; }
};

struct Header {
  uint64_t data_start = 0;                        // 8 + N
  std::vector<TensorInfo> tensors;                // in data-offset order
  std::map<std::string, std::string> metadata;    // "__metadata__"
};

// Parses and validates the header of a safetensors file of `file_size` bytes whose first
// `available` bytes are `bytes` (at least the header must be available). `file` names the file
// in error messages. Pure: touches nothing but its arguments, so it is also the fuzz target.
Header parse_header(const uint8_t* bytes, uint64_t available, uint64_t file_size,
                    std::string_view file);

// One safetensors file, open and validated: a local file is mapped (formats/mapped_file.h).
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);
  // Reads and validates the header of `source` (the 8-byte length, then the header).
  explicit SafetensorsFile(std::unique_ptr<InputFile> source);

  const std::filesystem::path& path() const { return source_->path(); }
  const Header& header() const { return header_; }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const TensorInfo* find(std::string_view name) const;

  // The tensor's bytes inside the map (only where source().data() is not null), and its absolute
  // file offset.
  const uint8_t* data(const TensorInfo& t) const { return source_->data() + header_.data_start + t.begin; }
  uint64_t file_offset(const TensorInfo& t) const { return header_.data_start + t.begin; }
  const InputFile& source() const { return *source_; }
  // XXH3-64 of the header's bytes (the length prefix included): part of the input's identity.
  uint64_t header_hash() const { return header_hash_; }

 private:
  std::unique_ptr<InputFile> source_;
  Header header_;
  uint64_t header_hash_ = 0;
  std::unordered_map<std::string_view, size_t> index_;
};

// A human-readable shape: "[128, 7168]".
std::string shape_str(const std::vector<uint64_t>& shape);

// numel and byte size with overflow checks; false when the product does not fit in 64 bits.
bool checked_numel(const std::vector<uint64_t>& shape, uint64_t& out);
bool checked_mul(uint64_t a, uint64_t b, uint64_t& out);

}  // namespace ckpt
