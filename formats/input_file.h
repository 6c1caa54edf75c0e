// One input file, wherever it lives: a local file (formats/mapped_file.h: a memory map and a
// descriptor) or, later, an object behind HTTP or in an object store (ranged reads). Everything
// past opening reads through this interface. `data` is null where the bytes cannot be used in
// place; a run then copies each item's input with `read` (`--io pread`).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <vector>

namespace ckpt {

class InputFile {
 public:
  virtual ~InputFile() = default;

  // The path or URL, for messages.
  virtual const std::filesystem::path& path() const = 0;
  virtual uint64_t size() const = 0;
  // The whole file in memory (a read-only map), or null.
  virtual const uint8_t* data() const { return nullptr; }

  // Reads [offset, offset+len) into `dst`. A file that ends early is an InvalidInput error (it
  // changed since it was opened), a failing read an Io error.
  virtual void read(uint64_t offset, uint64_t len, uint8_t* dst) const = 0;

  // Several reads at once: a remote file has them all in flight together.
  struct Range {
    uint64_t offset = 0, len = 0;
    uint8_t* dst = nullptr;
  };
  virtual void read_many(const std::vector<Range>& ranges) const {
    for (const Range& r : ranges) read(r.offset, r.len, r.dst);
  }

  // Hints about the pages of [offset, offset+len) of a mapped file: read ahead, or drop them from
  // this process's mapping. They never fail.
  virtual void prefetch(uint64_t /*offset*/, uint64_t /*len*/) const {}
  virtual void release(uint64_t /*offset*/, uint64_t /*len*/) const {}

  // Throws InvalidInput if the file is no longer the one that was opened: cheaply after every
  // item, thoroughly (`deep`) at the end of a run.
  virtual void check_intact(bool deep = false) const = 0;

  // What identifies this version of the file for --resume (pipeline/manifest.h), as JSON members
  // beside its name: {"size", "mtime_ns"} for a local file.
  virtual nlohmann::ordered_json identity() const = 0;
};

}  // namespace ckpt
