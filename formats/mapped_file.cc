#include "formats/mapped_file.h"

#include <sys/mman.h>

#include <algorithm>
#include <unistd.h>

#include <system_error>

#include "formats/error.h"

namespace ckpt {

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::is_regular_file(status))
    fail(ErrorKind::Io, "{}: cannot open: {}", path.string(),
         ec ? ec.message() : std::string("not a regular file"));
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) fail(ErrorKind::Io, "{}: cannot stat: {}", path.string(), ec.message());
  if (size == 0) return;  // boost refuses to map empty files; an empty range is the right answer
  try {
    map_.open(path.string());
  } catch (const std::exception& e) {
    fail(ErrorKind::Io, "{}: cannot map: {}", path.string(), e.what());
  }
  data_ = reinterpret_cast<const uint8_t*>(map_.data());
  size_ = map_.size();
}

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

}  // namespace ckpt
