// ckptconv's one error type. Every failure that reaches a user is an `Error` whose `kind` maps to
// the process exit status of SPEC §6 (2 usage, 3 invalid input, 4 I/O, 1 anything else) and whose
// message is one line naming what, where (file, tensor, offset) and why. Library code throws it;
// the CLI catches it once, prints `ckptconv: <message>` and exits with `exit_code()`.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace ckpt {

enum class ErrorKind { Internal = 1, Usage = 2, InvalidInput = 3, Io = 4 };

// `message` with every control character written as an escape (\n, \x1b, ...): names taken from
// a file (tensors, shards, config values) must not break the message's single line.
std::string one_line(std::string message);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message) : std::runtime_error(one_line(std::move(message))), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }
  int exit_code() const noexcept { return static_cast<int>(kind_); }

 private:
  ErrorKind kind_;
};

template <typename... Args>
[[noreturn]] void fail(ErrorKind kind, fmt::format_string<Args...> f, Args&&... args) {
  throw Error(kind, fmt::format(f, std::forward<Args>(args)...));
}

template <typename... Args>
[[noreturn]] void fail_input(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(ErrorKind::InvalidInput, fmt::format(f, std::forward<Args>(args)...));
}

template <typename... Args>
[[noreturn]] void fail_usage(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(ErrorKind::Usage, fmt::format(f, std::forward<Args>(args)...));
}

// An I/O failure that carries errno's text; `what` is e.g. "writing model.safetensors".
[[noreturn]] void fail_io_errno(int err, const std::string& what);

}  // namespace ckpt
