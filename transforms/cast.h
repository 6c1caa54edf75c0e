// Element-wise casts between the floating-point dtypes a conversion writes (BF16, F16, F32) and
// reads (those plus F64), with SPEC §2 rounding: float32 → bfloat16 and → float16 round to
// nearest even (bf16 NaN → 0x7FC0). Wider → narrower goes through float32 as torch does
// (F64 → F32 first). Same-dtype casts are plain copies.
#pragma once

#include <cstddef>

#include "formats/dtype.h"

namespace ckpt {

// True when `cast_run` converts `from` to `to`.
bool castable(DType from, DType to);

// dst[j] = cast(src[j]) for j in [0, n); src and dst are arrays of `from` and `to` elements.
void cast_run(const void* src, DType from, size_t n, void* dst, DType to);

}  // namespace ckpt
