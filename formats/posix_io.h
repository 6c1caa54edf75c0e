// Positional reads and writes of whole ranges: pread and pwrite may transfer less than asked
// (signals, a filesystem's own limits, files over 2 GiB per call), so both loop until the range
// is done, retrying EINTR. A failing call is an Io error naming `path`, the range and errno's
// text; end of file is the caller's to judge, so a read reports how far it got.
#pragma once

#include <cstdint>
#include <filesystem>

namespace ckpt {

// Reads [offset, offset+len) of `fd` into `dst`; returns the bytes read, less than `len` only
// when the file ends first.
uint64_t pread_full(int fd, uint8_t* dst, uint64_t len, uint64_t offset, const std::filesystem::path& path);

// Writes `len` bytes at `offset` of `fd`.
void pwrite_full(int fd, const void* data, uint64_t len, uint64_t offset, const std::filesystem::path& path);

}  // namespace ckpt
