#include "formats/dtype.h"

#include <array>

namespace ckpt {

namespace {
struct DTypeRow {
  DType type;
  std::string_view name;
  size_t size;
};
constexpr std::array<DTypeRow, 16> kTable{{
    {DType::BOOL, "BOOL", 1},       {DType::U8, "U8", 1},           {DType::I8, "I8", 1},
    {DType::U16, "U16", 2},         {DType::I16, "I16", 2},         {DType::U32, "U32", 4},
    {DType::I32, "I32", 4},         {DType::U64, "U64", 8},         {DType::I64, "I64", 8},
    {DType::F16, "F16", 2},         {DType::BF16, "BF16", 2},       {DType::F32, "F32", 4},
    {DType::F64, "F64", 8},         {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1},
    {DType::F8_E8M0, "F8_E8M0", 1},
}};
}  // namespace

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& row : kTable)
    if (row.name == name) return row.type;
  return std::nullopt;
}

std::string_view dtype_name(DType t) { return kTable[static_cast<size_t>(t)].name; }
size_t dtype_size(DType t) { return kTable[static_cast<size_t>(t)].size; }

DType to_dtype(OutType t) {
  switch (t) {
    case OutType::BF16: return DType::BF16;
    case OutType::F16: return DType::F16;
    case OutType::F32: return DType::F32;
  }
  return DType::BF16;
}

std::optional<OutType> parse_out_type(std::string_view s) {
  if (s == "bf16" || s == "bfloat16") return OutType::BF16;
  if (s == "f16" || s == "float16" || s == "fp16") return OutType::F16;
  if (s == "f32" || s == "float32" || s == "fp32") return OutType::F32;
  return std::nullopt;
}

std::string_view torch_dtype_name(OutType t) {
  switch (t) {
    case OutType::BF16: return "bfloat16";
    case OutType::F16: return "float16";
    case OutType::F32: return "float32";
  }
  return "bfloat16";
}

}  // namespace ckpt
