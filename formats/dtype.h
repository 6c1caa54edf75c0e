// The safetensors element types and their sizes. `parse_dtype` accepts exactly the names the
// safetensors format defines for the types ckptconv knows (SPEC: BOOL, U8…U64, I8…I64, F16, BF16,
// F32, F64, F8_E4M3, F8_E5M2, F8_E8M0); anything else is reported by the caller as an unknown dtype.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace ckpt {

enum class DType : uint8_t {
  BOOL, U8, I8, U16, I16, U32, I32, U64, I64, F16, BF16, F32, F64, F8_E4M3, F8_E5M2, F8_E8M0
};

std::optional<DType> parse_dtype(std::string_view name);
std::string_view dtype_name(DType t);
size_t dtype_size(DType t);

inline bool is_fp8_weight(DType t) { return t == DType::F8_E4M3 || t == DType::F8_E5M2; }
inline bool is_float(DType t) {
  return t == DType::F16 || t == DType::BF16 || t == DType::F32 || t == DType::F64 ||
         t == DType::F8_E4M3 || t == DType::F8_E5M2;
}

// The output element types a conversion can produce (`--dtype`).
enum class OutType : uint8_t { BF16, F16, F32 };
DType to_dtype(OutType t);
std::optional<OutType> parse_out_type(std::string_view s);  // "bf16" | "f16" | "f32"
std::string_view torch_dtype_name(OutType t);                // "bfloat16" …

}  // namespace ckpt
