// libFuzzer target: the input is a whole safetensors file. `parse_header` must either return a
// header that satisfies its contract (formats/safetensors.h) or throw Error(InvalidInput); any
// other exception, a crash, a sanitizer report or a returned header that breaks the contract is a
// finding. The contract is re-checked here from the raw bytes, independently of the parser.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>

#include "formats/error.h"
#include "formats/safetensors.h"

namespace {

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "fuzz_header: %s\n", what);
  std::abort();
}

uint64_t header_length(const uint8_t* data) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  return n;
}

void check(const ckpt::Header& h, const uint8_t* data, uint64_t size) {
  if (h.data_start != 8 + header_length(data)) finding("data_start is not 8 + the header length");
  if (h.data_start > size) finding("data_start past the end of the file");
  uint64_t expect = 0;
  std::set<std::string> names;
  for (const auto& t : h.tensors) {
    if (!names.insert(t.name).second) finding("duplicate tensor name accepted");
    if (t.name == "__metadata__") finding("__metadata__ returned as a tensor");
    if (t.begin != expect) finding("tensors do not tile the data buffer");
    uint64_t numel = 0, bytes = 0;
    if (!ckpt::checked_numel(t.shape, numel)) finding("accepted a shape whose element count overflows");
    // Bits, not bytes: elements × bits must be whole bytes (F4, F6) and fit in 64 bits.
    const uint64_t bits = ckpt::dtype_bits(t.dtype);
    if (numel * bits % 8 != 0) finding("accepted sub-byte elements that do not fill whole bytes");
    if (numel != 0 && (numel / 8 > UINT64_MAX / bits)) finding("accepted a shape whose byte size overflows");
    bytes = numel / 8 * bits + numel % 8 * bits / 8;
    if (bytes != t.nbytes() || t.numel() != numel) finding("byte size does not match the shape");
    expect = t.end;
  }
  if (h.data_start + expect != size) finding("tensors do not end at the end of the file");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bool accepted = false;
  try {
    check(ckpt::parse_header(data, size, size, "fuzz.safetensors"), data, size);
    accepted = true;
  } catch (const ckpt::Error& e) {
    if (e.kind() != ckpt::ErrorKind::InvalidInput) finding("an error other than InvalidInput");
  }
  // With only the header readable (a reader that has not mapped the data yet) the verdict must
  // be the same: it may depend on the file's size, never on the data bytes.
  if (size >= 8 && header_length(data) <= size - 8) {
    bool head_accepted = false;
    try {
      ckpt::parse_header(data, 8 + header_length(data), size, "fuzz.safetensors");
      head_accepted = true;
    } catch (const ckpt::Error&) {
    }
    if (head_accepted != accepted) finding("the verdict depends on bytes past the header");
  }
  return 0;
}
