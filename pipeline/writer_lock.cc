#include "pipeline/writer_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "formats/error.h"

namespace ckpt {

namespace {

std::string holder_of(int fd) {
  char buf[256] = {};
  const ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  std::string who(buf, n > 0 ? static_cast<size_t>(n) : 0);
  while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
  return who.empty() ? "a process that has not written its name yet" : who;
}

}  // namespace

WriterLock::WriterLock(const std::filesystem::path& dir) : path_(dir / kLockName) {
  // A holder unlinks the file before letting go; whoever locked that unlinked file meanwhile
  // must try again on the path's new file, or two writers would each hold "the" lock.
  for (;;) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) fail_io_errno(errno, path_.string() + ": cannot create the writer lock");
    if (flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      const std::string who = err == EWOULDBLOCK ? holder_of(fd_) : "";
      ::close(fd_);
      fd_ = -1;
      if (err != EWOULDBLOCK) fail_io_errno(err, path_.string() + ": cannot lock");
      fail_usage("--out {}: another ckptconv is writing it ({}); wait for it to finish, or stop it and --resume",
                 dir.string(), who);
    }
    struct stat held{}, now{};
    if (fstat(fd_, &held) == 0 && stat(path_.c_str(), &now) == 0 && held.st_dev == now.st_dev &&
        held.st_ino == now.st_ino)
      break;
    ::close(fd_);
  }
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const std::string me = std::string("host ") + host + ", pid " + std::to_string(getpid()) + "\n";
  // Best effort: the name only serves a second writer's refusal message.
  const bool named = ftruncate(fd_, 0) == 0 && pwrite(fd_, me.data(), me.size(), 0) == static_cast<ssize_t>(me.size());
  (void)named;
}

WriterLock::~WriterLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // while still held: a waiting writer then locks a fresh file
  ::close(fd_);
}

}  // namespace ckpt
