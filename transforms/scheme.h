// Which dequantization scheme an FP8 weight uses, decided from its scale partner's dtype and
// shape alone (SPEC §2):
//   U8 / F8_E8M0 scale of shape [out, ceil(in/32)]        -> MXFP8 1×32 (raw exponents, never
//                                                            read as plain numbers)
//   F32 / BF16 / F16 scale with one element (0-d, [1]…)    -> per-tensor
//   F32 / BF16 / F16 scale [ceil(out/B0), ceil(in/B1)]     -> block B0×B1 (128×128 unless the
//                                                            config's weight_block_size says
//                                                            otherwise)
// Anything else is an error naming the weight, the scale and both shapes: ckptconv never guesses.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string_view>

#include "formats/safetensors.h"
#include "transforms/scale_scheme.h"

namespace ckpt {

std::string_view scheme_name(ScaleScheme s);  // "per-tensor", "block", "mxfp8"

struct BlockSize {
  uint64_t rows = 128;
  uint64_t cols = 128;
};

// The scale grid laid over a weight seen as a matrix [shape[0], the rest]: element (i, j) is
// scaled by grid element (i / block_rows, j / block_cols) of a grid with grid_cols columns.
struct DequantScheme {
  ScaleScheme kind = ScaleScheme::PerTensor;
  DType scale_dtype = DType::F32;
  uint64_t block_rows = 1, block_cols = 1;
  uint64_t grid_cols = 1;
};

// `quantization_config.weight_block_size` of a config (top level or `text_config`), when it is a
// pair of positive integers; null or absent gives nullopt.
std::optional<BlockSize> config_block_size(const nlohmann::ordered_json* config);

DequantScheme detect_scheme(const TensorInfo& weight, const TensorInfo& scale, BlockSize block,
                            std::string_view file);

// Scale grid element `i` as float32: F32 as is, BF16/F16 widened, U8/F8_E8M0 as 2^(e-127).
float scale_value(DType dtype, const uint8_t* base, uint64_t i);

}  // namespace ckpt
