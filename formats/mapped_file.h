// One input file, open for reading two ways: a read-only memory map (tensor bytes are used in
// place, no copy) and a descriptor for positional reads (`--io pread`: one copy, but no page
// faults and nothing mapped, which network filesystems prefer). After a range has been consumed,
// `release` tells the kernel its pages are no longer needed, so the resident set stays
// proportional to the data in flight, not to the file size.
//
// Files change under long conversions. A mapped file that is truncated makes the next access to
// a vanished page raise SIGBUS. Once `install_sigbus_guard` has been called (a process-wide
// handler, so only on request: the command line does, a library caller may), every mapped file
// is covered: the handler maps a page of zeros over the hole and records the fault, so the access
// completes instead of killing the process, and `check_intact` — which the executor calls after
// each item and at the end — turns the record into an error naming the file and offset. Nothing
// computed from those zeros is ever published: the error fails the conversion before its outputs
// are committed. Without the guard, such a truncation kills the process as SIGBUS does.
#pragma once

#include <boost/iostreams/device/mapped_file.hpp>

#include <sys/stat.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <string>

#include "formats/input_file.h"

namespace ckpt {

// A local file's identity for --resume, from its stat: {"size", "mtime_ns"}.
nlohmann::ordered_json stat_identity(const struct stat& st);

class MappedFile final : public InputFile {
 public:
  // Opens and maps `path` read-only. A zero-length file is valid and maps to an empty range.
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::filesystem::path& path() const override { return path_; }
  const uint8_t* data() const override { return data_; }
  uint64_t size() const override { return size_; }

  // Reads [offset, offset+len) into `dst` with pread, whatever the map holds. A file that ends
  // early is an InvalidInput error (it changed since it was opened), a failing read an Io error.
  void read(uint64_t offset, uint64_t len, uint8_t* dst) const override;

  // Advice on the pages of [offset, offset+len): `prefetch` asks for read-ahead, `release` drops
  // them from this process's mapping (they stay in the page cache, and a later read of them
  // simply faults them back in). Both are hints and never fail.
  void prefetch(uint64_t offset, uint64_t len) const override;
  void release(uint64_t offset, uint64_t len) const override;

  // Throws InvalidInput if a page of the map vanished under a read (the file was truncated while
  // mapped), or — with `deep` — if the file at the path is no longer the one that was opened or
  // its size or modification time changed. The first check is one atomic load.
  void check_intact(bool deep = false) const override;

  // Size and modification time when opened.
  nlohmann::ordered_json identity() const override;

  // Whether any mapped file of the process has lost a page since it was opened: one atomic load,
  // cheap enough to test after every work item.
  static bool any_fault();

  // Installs the SIGBUS handler described above, once per process; a SIGBUS at any other address
  // goes to the handler that was there before (by default the process dies).
  static void install_sigbus_guard();

 private:
  std::filesystem::path path_;
  boost::iostreams::mapped_file_source map_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  int fd_ = -1;
  struct stat opened_{};  // identity, size and mtime when opened
  int guard_slot_ = -1;   // this map's entry in the SIGBUS handler's table, -1: unguarded
};

}  // namespace ckpt
