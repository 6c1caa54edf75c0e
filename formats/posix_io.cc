#include "formats/posix_io.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "formats/error.h"

namespace ckpt {

namespace {
// Linux transfers at most about 2 GiB per call; asking for 1 GiB keeps every call whole.
constexpr uint64_t kMaxCall = 1ull << 30;
}  // namespace

uint64_t pread_full(int fd, uint8_t* dst, uint64_t len, uint64_t offset, const std::filesystem::path& path) {
  uint64_t done = 0;
  while (done < len) {
    const ssize_t n = ::pread(fd, dst + done, std::min(len - done, kMaxCall), static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_io_errno(errno, fmt::format("{}: read of {} bytes at offset {}", path.string(), len, offset));
    }
    if (n == 0) break;
    done += static_cast<uint64_t>(n);
  }
  return done;
}

void pwrite_full(int fd, const void* data, uint64_t len, uint64_t offset, const std::filesystem::path& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t done = 0;
  while (done < len) {
    const ssize_t n = ::pwrite(fd, p + done, std::min(len - done, kMaxCall), static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_io_errno(errno, fmt::format("{}: write of {} bytes at offset {}", path.string(), len, offset));
    }
    if (n == 0) fail(ErrorKind::Io, "{}: write at offset {} made no progress", path.string(), offset + done);
    done += static_cast<uint64_t>(n);
  }
}

}  // namespace ckpt
