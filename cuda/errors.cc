#include "cuda/errors.h"

#include "formats/error.h"

namespace ckpt::cuda {

void fail_cuda(const char* what, const char* message) { fail(ErrorKind::Io, "CUDA {}: {}", what, message); }

}  // namespace ckpt::cuda
