#include "formats/error.h"

#include <algorithm>
#include <cstring>

namespace ckpt {

std::string one_line(std::string message) {
  const auto control = [](unsigned char u) { return u < 0x20 || u == 0x7f; };
  if (std::none_of(message.begin(), message.end(), [&](char c) { return control(static_cast<unsigned char>(c)); }))
    return message;
  std::string out;
  for (const char c : message) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (control(u)) out += fmt::format("\\x{:02x}", u);
    else out += c;
  }
  return out;
}

void fail_io_errno(int err, const std::string& what) {
  throw Error(ErrorKind::Io, fmt::format("{}: {}", what, std::strerror(err)));
}

}  // namespace ckpt
