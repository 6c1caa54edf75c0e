#include "formats/dtype.h"

#include <array>
#include <numeric>

#include "formats/error.h"

namespace ckpt {

namespace {
struct DTypeRow {
  DType type;
  std::string_view name;
  unsigned bits;
};
constexpr std::array<DTypeRow, 22> kTable{{
    {DType::BOOL, "BOOL", 8},       {DType::U8, "U8", 8},           {DType::I8, "I8", 8},
    {DType::U16, "U16", 16},        {DType::I16, "I16", 16},        {DType::U32, "U32", 32},
    {DType::I32, "I32", 32},        {DType::U64, "U64", 64},        {DType::I64, "I64", 64},
    {DType::F16, "F16", 16},        {DType::BF16, "BF16", 16},      {DType::F32, "F32", 32},
    {DType::F64, "F64", 64},        {DType::F8_E4M3, "F8_E4M3", 8}, {DType::F8_E5M2, "F8_E5M2", 8},
    {DType::F8_E8M0, "F8_E8M0", 8}, {DType::F4, "F4", 4},           {DType::F6_E2M3, "F6_E2M3", 6},
    {DType::F6_E3M2, "F6_E3M2", 6}, {DType::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
    {DType::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8}, {DType::C64, "C64", 64},
}};
constexpr bool table_in_enum_order() {
  for (size_t i = 0; i < kTable.size(); ++i)
    if (static_cast<size_t>(kTable[i].type) != i) return false;
  return true;
}
static_assert(table_in_enum_order(), "kTable is indexed by DType value");
}  // namespace

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& row : kTable)
    if (row.name == name) return row.type;
  return std::nullopt;
}

std::string_view dtype_name(DType t) { return kTable[static_cast<size_t>(t)].name; }
unsigned dtype_bits(DType t) { return kTable[static_cast<size_t>(t)].bits; }

size_t dtype_size(DType t) {
  const unsigned bits = dtype_bits(t);
  if (bits % 8) fail(ErrorKind::Internal, "{} elements have no byte size ({} bits each)", dtype_name(t), bits);
  return bits / 8;
}

// n × bits / 8 as (n / 8) × bits + (n % 8) × bits / 8, so that no intermediate overflows where
// the result fits: the same bound as n × bytes for the whole-byte types.
bool checked_elements_bytes(DType t, uint64_t n, uint64_t& out) {
  const uint64_t bits = dtype_bits(t), tail_bits = (n % 8) * bits;
  if (!fills_whole_bytes(t, n)) return false;
  uint64_t head = 0;
  return !__builtin_mul_overflow(n / 8, bits, &head) && !__builtin_add_overflow(head, tail_bits / 8, &out);
}

uint64_t elements_bytes(DType t, uint64_t n) { return n / 8 * dtype_bits(t) + (n % 8) * dtype_bits(t) / 8; }

uint64_t whole_byte_elems(DType t) { return 8 / std::gcd(dtype_bits(t), 8u); }
bool fills_whole_bytes(DType t, uint64_t n) { return n % whole_byte_elems(t) == 0; }

// bytes × 8 / bits as q × 8 + r × 8 / bits for bytes = q × bits + r: no product to overflow.
uint64_t bytes_elements(DType t, uint64_t bytes) {
  const uint64_t bits = dtype_bits(t);
  return bytes / bits * 8 + bytes % bits * 8 / bits;
}

bool is_copy_only(DType t) {
  return t == DType::F4 || t == DType::F6_E2M3 || t == DType::F6_E3M2 || t == DType::F8_E4M3FNUZ ||
         t == DType::F8_E5M2FNUZ || t == DType::C64;
}

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
