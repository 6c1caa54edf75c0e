// One writer per output directory, by design rather than by luck: a conversion holds an exclusive
// flock on DIR/.ckptconv-lock for as long as it writes there, and the file says who holds it
// ("host pid"), so that a second writer is refused with a line naming the holder. The kernel
// drops a flock when its holder dies, so the file a killed run leaves behind is no obstacle to
// --resume or to a new run: only a live holder is.
//
// The ranks of a conversion split across processes share the directory: each holds
// .ckptconv-lock shared (which keeps a single-process run and the publisher out while any rank
// writes, and lets the ranks in) and its own .ckptconv-lock.rank-RRRRR exclusively (which keeps
// a second process of the same rank out).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace ckpt {

inline constexpr const char* kLockName = ".ckptconv-lock";

// The file of rank `rank`'s exclusive lock.
std::string rank_lock_name(uint32_t rank);
bool is_lock_name(const std::string& file_name);

class WriterLock {
 public:
  enum class Mode : uint8_t { Exclusive, Shared };
  // Takes the lock `name` of `dir` (which must exist); Error(Usage) naming the holder when another
  // process has it, Error(Io) when the lock file cannot be created.
  explicit WriterLock(const std::filesystem::path& dir, const std::string& name = kLockName,
                      Mode mode = Mode::Exclusive);
  ~WriterLock();  // exclusive: removes the file, then lets go
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;

 private:
  std::filesystem::path path_;
  Mode mode_;
  int fd_ = -1;
};

}  // namespace ckpt
