#include "pipeline/writer_lock.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "formats/error.h"

namespace ckpt {

std::string rank_lock_name(uint32_t rank) { return fmt::format("{}.rank-{:05d}", kLockName, rank); }

bool is_lock_name(const std::string& name) { return name.starts_with(kLockName); }

namespace {

// Who holds the lock of `fd`: the name an exclusive holder wrote; shared holders write none.
std::string holder_of(int fd) {
  char buf[256] = {};
  const ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  std::string who(buf, n > 0 ? static_cast<size_t>(n) : 0);
  while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
  return who.empty() ? "the ranks of a split conversion, or a process that has not written its name yet" : who;
}

// Writes "host H, pid P" into the lock file: best effort, the name only serves a second writer's
// refusal message.
void sign(int fd) {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const std::string me = std::string("host ") + host + ", pid " + std::to_string(getpid()) + "\n";
  const bool named = ftruncate(fd, 0) == 0 && pwrite(fd, me.data(), me.size(), 0) == static_cast<ssize_t>(me.size());
  (void)named;
}

}  // namespace

WriterLock::WriterLock(const std::filesystem::path& dir, const std::string& name, Mode mode)
    : path_(dir / name), mode_(mode) {
  // An exclusive holder unlinks the file before letting go; whoever locked that unlinked file
  // meanwhile must try again on the path's new file, or two writers would each hold "the" lock.
  for (;;) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) fail_io_errno(errno, path_.string() + ": cannot create the writer lock");
    if (flock(fd_, (mode == Mode::Shared ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
      const int err = errno;
      const std::string who = err == EWOULDBLOCK ? holder_of(fd_) : "";
      ::close(fd_);
      fd_ = -1;
      if (err != EWOULDBLOCK) fail_io_errno(err, path_.string() + ": cannot lock");
      fail_usage("--out {}: another ckptconv is writing it ({}, lock {}); wait for it to finish, or stop it and --resume",
                 dir.string(), who, name);
    }
    struct stat held{}, now{};
    if (fstat(fd_, &held) == 0 && stat(path_.c_str(), &now) == 0 && held.st_dev == now.st_dev &&
        held.st_ino == now.st_ino)
      break;
    ::close(fd_);
  }
  if (mode == Mode::Exclusive) sign(fd_);
}

WriterLock::~WriterLock() {
  if (fd_ < 0) return;
  // While still held: a waiting writer then locks a fresh file. A shared holder leaves the file
  // to the others that may hold it.
  if (mode_ == Mode::Exclusive) ::unlink(path_.c_str());
  ::close(fd_);
}

}  // namespace ckpt
