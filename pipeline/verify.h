// `ckptconv verify A B`: tensor-by-tensor comparison of two checkpoints, by the conformance rule
// — the same set of names, and per tensor the same dtype, shape and bytes, except that NaNs
// equal NaNs whatever their sign and payload (+0 and -0 differ). With `atol`, floating-point
// elements may differ by at most atol instead. Shard layout, tensor order and file names are
// irrelevant. Tensors are compared in parallel, straight from the memory maps.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "formats/checkpoint.h"

namespace ckpt {

struct VerifyOptions {
  std::optional<double> atol;
  unsigned threads = 0;
};

struct VerifyReport {
  uint64_t compared = 0, matched = 0, bytes = 0;
  std::vector<std::string> problems;  // one line each, sorted by tensor name
  double max_abs_diff = 0;            // over compared floating-point elements
  bool ok() const { return problems.empty(); }
};

VerifyReport verify(const Checkpoint& a, const Checkpoint& b, const VerifyOptions& options);

}  // namespace ckpt
