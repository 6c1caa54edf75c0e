#include "formats/mapped_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <system_error>

#include "formats/error.h"
#include "formats/posix_io.h"

namespace ckpt {

namespace {

// The SIGBUS handler's table of guarded maps. A handler may not lock or allocate, so the table is
// a fixed array of atomics: `used` claims a slot, `begin` (stored last, cleared first) publishes
// it. Checkpoints have at most a few hundred files; maps past the table's size run unguarded.
struct GuardSlot {
  std::atomic<bool> used{false};
  std::atomic<uintptr_t> begin{0}, end{0};
  std::atomic<uint64_t> lost{UINT64_MAX};  // offset of the first vanished page, relative to begin
};
constexpr int kGuardSlots = 4096;
GuardSlot g_slots[kGuardSlots];
std::atomic<uint64_t> g_faults{0};
struct sigaction g_previous{};
uintptr_t g_page = 4096;

void on_sigbus(int sig, siginfo_t* info, void* context) {
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (auto& s : g_slots) {
    const uintptr_t b = s.begin.load(std::memory_order_acquire);
    if (b == 0 || addr < b || addr >= s.end.load(std::memory_order_acquire)) continue;
    // The page is gone from the file: put zeros in its place so the faulting read completes;
    // check_intact() reports the loss before anything computed from them is published.
    const uintptr_t page = addr & ~(g_page - 1);
    if (mmap(reinterpret_cast<void*>(page), g_page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
        MAP_FAILED)
      break;
    uint64_t none = UINT64_MAX;
    s.lost.compare_exchange_strong(none, page > b ? page - b : 0);
    g_faults.fetch_add(1, std::memory_order_release);
    return;
  }
  // Not one of ours: whatever was there before decides (by default the process dies on return,
  // when the access faults again).
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction) return g_previous.sa_sigaction(sig, info, context);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN && g_previous.sa_handler) {
    return g_previous.sa_handler(sig);
  }
  signal(SIGBUS, SIG_DFL);
}

}  // namespace

void MappedFile::install_sigbus_guard() {
  static std::once_flag once;
  std::call_once(once, [] {
    g_page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    struct sigaction sa{};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &g_previous);
  });
}

namespace {

int claim_slot(const uint8_t* data, uint64_t size) {
  for (int i = 0; i < kGuardSlots; ++i) {
    bool free = false;
    if (!g_slots[i].used.compare_exchange_strong(free, true)) continue;
    g_slots[i].lost.store(UINT64_MAX);
    g_slots[i].end.store(reinterpret_cast<uintptr_t>(data) + size, std::memory_order_release);
    g_slots[i].begin.store(reinterpret_cast<uintptr_t>(data), std::memory_order_release);
    return i;
  }
  return -1;
}

bool same_file(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

}  // namespace

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) fail_io_errno(errno, path.string() + ": cannot open");
  if (fstat(fd_, &opened_) != 0) {
    const int err = errno;
    ::close(fd_);
    fail_io_errno(err, path.string() + ": cannot stat");
  }
  if (!S_ISREG(opened_.st_mode)) {
    ::close(fd_);
    fail(ErrorKind::Io, "{}: cannot open: not a regular file", path.string());
  }
  if (opened_.st_size == 0) return;  // boost refuses to map empty files; an empty range is the right answer
  try {
    map_.open(path.string());
    struct stat now{};
    if (stat(path.c_str(), &now) != 0 || !same_file(now, opened_))
      fail(ErrorKind::Io, "{}: replaced while being opened", path.string());
  } catch (const Error&) {
    ::close(fd_);
    throw;
  } catch (const std::exception& e) {
    ::close(fd_);
    fail(ErrorKind::Io, "{}: cannot map: {}", path.string(), e.what());
  }
  data_ = reinterpret_cast<const uint8_t*>(map_.data());
  size_ = map_.size();
  guard_slot_ = claim_slot(data_, size_);
}

MappedFile::~MappedFile() {
  if (guard_slot_ >= 0) {
    g_slots[guard_slot_].begin.store(0, std::memory_order_release);
    g_slots[guard_slot_].used.store(false, std::memory_order_release);
  }
  if (fd_ >= 0) ::close(fd_);
}

void MappedFile::read(uint64_t offset, uint64_t len, uint8_t* dst) const {
  const uint64_t got = pread_full(fd_, dst, len, offset, path_);
  if (got < len)
    fail_input("{}: the file ends before offset {}, which its header covers (truncated while being read?)",
               path_.string(), offset + got);
}

void MappedFile::check_intact(bool deep) const {
  if (guard_slot_ >= 0) {
    const uint64_t lost = g_slots[guard_slot_].lost.load(std::memory_order_acquire);
    if (lost != UINT64_MAX)
      fail_input("{}: the file was truncated while being read: the bytes at offset {} are gone (it had {} when "
                 "opened)",
                 path_.string(), lost, size_);
  }
  if (!deep) return;
  struct stat now{};
  if (fstat(fd_, &now) != 0) fail_io_errno(errno, path_.string() + ": cannot stat");
  if (now.st_size != opened_.st_size || now.st_mtim.tv_sec != opened_.st_mtim.tv_sec ||
      now.st_mtim.tv_nsec != opened_.st_mtim.tv_nsec)
    fail_input("{}: the file changed while being converted (size {} when opened, {} now)", path_.string(),
               opened_.st_size, now.st_size);
  if (stat(path_.c_str(), &now) != 0 || !same_file(now, opened_))
    fail_input("{}: the file was replaced or removed while being converted", path_.string());
}

bool MappedFile::any_fault() { return g_faults.load(std::memory_order_acquire) != 0; }

namespace {
// The map starts on a page boundary, so file offsets round to pages directly; both hints cover
// every page the range touches. Dropping a page that a neighbouring work item still reads is
// safe — the map is read-only and file-backed, so the next access re-faults it from the page
// cache — while keeping partial pages would leave one resident per item boundary, a resident set
// that grows with the model.
void advise(const uint8_t* base, uint64_t size, uint64_t offset, uint64_t len, int advice, uint64_t margin) {
  if (!base || offset >= size || len == 0) return;
  if (len > size - offset) len = size - offset;
  static const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t begin = (offset > margin ? offset - margin : 0) / page * page;
  const uint64_t end = std::min(size, offset + len + margin);
  madvise(const_cast<uint8_t*>(base + begin), end - begin, advice);
}

// A page fault on a file mapping also maps the cached pages around it (the kernel's fault-around,
// 64 KiB by default), including pages of neighbours that were already released; a release covers
// that much on either side so such pages do not pile up, one boundary at a time.
constexpr uint64_t kFaultAround = 64 * 1024;
}  // namespace

void MappedFile::prefetch(uint64_t offset, uint64_t len) const {
  advise(data_, size_, offset, len, MADV_WILLNEED, 0);
}

void MappedFile::release(uint64_t offset, uint64_t len) const {
  advise(data_, size_, offset, len, MADV_DONTNEED, kFaultAround);
}

nlohmann::ordered_json stat_identity(const struct stat& st) {
  const uint64_t mtime_ns =
      static_cast<uint64_t>(st.st_mtim.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(st.st_mtim.tv_nsec);
  return {{"size", static_cast<uint64_t>(st.st_size)}, {"mtime_ns", mtime_ns}};
}

nlohmann::ordered_json MappedFile::identity() const { return stat_identity(opened_); }

}  // namespace ckpt
