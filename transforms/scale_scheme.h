// The three FP8 scale schemes of SPEC §2, as a plain enum that device code can include
// (transforms/scheme.h detects them from headers; cuda/ runs them).
#pragma once

#include <cstdint>

namespace ckpt {

enum class ScaleScheme : uint8_t { PerTensor, Block, Mx };

inline constexpr uint64_t kMxBlock = 32;  // MXFP8: one exponent per 32 elements of a row

}  // namespace ckpt
