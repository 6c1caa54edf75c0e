// CUDA failures as ckpt::Error, thrown from a host-compiled unit so that kernel sources need no
// formatting library.
#pragma once

namespace ckpt::cuda {

// Throws Error(Io): "CUDA <what>: <message>".
[[noreturn]] void fail_cuda(const char* what, const char* message);

}  // namespace ckpt::cuda
