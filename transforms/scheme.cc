#include "transforms/scheme.h"

#include <cstring>

#include "formats/error.h"
#include "transforms/fp8.h"

namespace ckpt {

std::string_view scheme_name(ScaleScheme s) {
  switch (s) {
    case ScaleScheme::PerTensor: return "per-tensor";
    case ScaleScheme::Block: return "block";
    case ScaleScheme::Mx: return "mxfp8";
  }
  return "?";
}

std::optional<BlockSize> config_block_size(const nlohmann::ordered_json* config) {
  if (!config || !config->is_object()) return std::nullopt;
  for (const auto* scope : {config, config->contains("text_config") ? &(*config)["text_config"] : nullptr}) {
    if (!scope || !scope->is_object() || !scope->contains("quantization_config")) continue;
    const auto& q = (*scope)["quantization_config"];
    if (!q.is_object() || !q.contains("weight_block_size")) continue;
    const auto& b = q["weight_block_size"];
    if (b.is_null()) continue;  // per-tensor releases write null
    // Present but unusable: guessing 128 x 128 instead could dequantize with the wrong blocks.
    if (!b.is_array() || b.size() != 2 || !b[0].is_number_unsigned() || !b[1].is_number_unsigned() ||
        b[0].get<uint64_t>() == 0 || b[1].get<uint64_t>() == 0)
      fail_input("config.json: quantization_config.weight_block_size must be [rows, cols] of positive integers, got {}",
                 b.is_primitive() || b.size() <= 4 ? b.dump() : std::string(b.type_name()));
    return BlockSize{b[0].get<uint64_t>(), b[1].get<uint64_t>()};
  }
  return std::nullopt;
}

namespace {
uint64_t ceil_div(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }
}  // namespace

DequantScheme detect_scheme(const TensorInfo& w, const TensorInfo& s, BlockSize block,
                            std::string_view file) {
  DequantScheme d;
  d.scale_dtype = s.dtype;
  const auto& ws = w.shape;
  uint64_t rows = 1, cols = 1;
  if (!ws.empty()) {
    rows = ws[0];
    for (size_t i = 1; i < ws.size(); ++i) cols *= ws[i];  // numel was overflow-checked on parse
  }
  const bool exponent_scale = s.dtype == DType::U8 || s.dtype == DType::F8_E8M0;
  const bool number_scale = s.dtype == DType::F32 || s.dtype == DType::BF16 || s.dtype == DType::F16;
  const auto misfit = [&](std::string_view why) {
    fail_input("{}: tensor '{}' ({} {}): scale '{}' ({} {}) fits no dequantization scheme: {}", file,
               w.name, dtype_name(w.dtype), shape_str(ws), s.name, dtype_name(s.dtype),
               shape_str(s.shape), why);
  };
  if (exponent_scale) {
    if (ws.size() != 2 || s.shape.size() != 2 || s.shape[0] != ws[0] ||
        s.shape[1] != ceil_div(ws[1], kMxBlock))
      misfit(ws.size() != 2 ? std::string("an exponent scale needs a 2-d weight")
                            : fmt::format("an exponent scale must be [out, ceil(in/32)] = [{}, {}]", ws[0],
                                          ceil_div(ws[1], kMxBlock)));
    d.kind = ScaleScheme::Mx;
    d.block_rows = 1;
    d.block_cols = kMxBlock;
    d.grid_cols = s.shape[1];
    return d;
  }
  if (!number_scale) misfit("scale dtype must be F32, BF16, F16, U8 or F8_E8M0");
  if (s.numel() == 1) {  // 0-d, [1], [1, 1]…: one number for the whole tensor
    d.kind = ScaleScheme::PerTensor;
    d.block_rows = rows == 0 ? 1 : rows;
    d.block_cols = cols == 0 ? 1 : cols;
    d.grid_cols = 1;
    return d;
  }
  if (ws.size() != 2 || s.shape.size() != 2 || s.shape[0] != ceil_div(ws[0], block.rows) ||
      s.shape[1] != ceil_div(ws[1], block.cols))
    misfit(fmt::format("expected a scalar or a [ceil(out/{}), ceil(in/{})] block grid", block.rows,
                       block.cols));
  d.kind = ScaleScheme::Block;
  d.block_rows = block.rows;
  d.block_cols = block.cols;
  d.grid_cols = s.shape[1];
  return d;
}

float scale_value(DType dtype, const uint8_t* base, uint64_t i) {
  switch (dtype) {
    case DType::F32: {
      float f;
      std::memcpy(&f, base + 4 * i, 4);
      return f;
    }
    case DType::BF16: {
      uint16_t h;
      std::memcpy(&h, base + 2 * i, 2);
      return bf16_to_float(h);
    }
    case DType::F16: {
      uint16_t h;
      std::memcpy(&h, base + 2 * i, 2);
      return f16_to_float(h);
    }
    case DType::U8:
    case DType::F8_E8M0: return e8m0_to_float(base[i]);
    default: break;
  }
  fail(ErrorKind::Internal, "scale dtype {} has no value", dtype_name(dtype));
}

}  // namespace ckpt
