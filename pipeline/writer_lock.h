// One writer per output directory, by design rather than by luck: a conversion holds an exclusive
// flock on DIR/.ckptconv-lock for as long as it writes there, and the file says who holds it
// ("host pid"), so that a second writer is refused with a line naming the holder. The kernel
// drops a flock when its holder dies, so the file a killed run leaves behind is no obstacle to
// --resume or to a new run: only a live holder is.
#pragma once

#include <filesystem>
#include <string>

namespace ckpt {

inline constexpr const char* kLockName = ".ckptconv-lock";

class WriterLock {
 public:
  // Takes the lock of `dir` (which must exist); Error(Usage) naming the holder when another
  // process has it, Error(Io) when the lock file cannot be created.
  explicit WriterLock(const std::filesystem::path& dir);
  ~WriterLock();  // removes the file, then lets go
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

}  // namespace ckpt
