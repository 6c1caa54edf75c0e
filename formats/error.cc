#include "formats/error.h"

#include <cstring>

namespace ckpt {

void fail_io_errno(int err, const std::string& what) {
  throw Error(ErrorKind::Io, fmt::format("{}: {}", what, std::strerror(err)));
}

}  // namespace ckpt
