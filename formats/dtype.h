// The safetensors element types and their sizes. `parse_dtype` accepts exactly the names the
// reference safetensors reader accepts (SPEC §5): BOOL, U8…U64, I8…I64, F16, BF16, F32, F64,
// F8_E4M3, F8_E5M2, F8_E8M0, and F4, F6_E2M3, F6_E3M2, F8_E4M3FNUZ, F8_E5M2FNUZ, C64; anything else
// is reported by the caller as an unknown dtype.
//
// Sizes are counted in bits: F4 and the F6 types pack elements into bytes, so "bytes per element"
// does not exist for them. Every size goes through `dtype_bits` / `elements_bytes`; `dtype_size`
// remains for the whole-byte types the transforms compute on.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace ckpt {

// New values go at the end: the name table in dtype.cc is indexed by value.
enum class DType : uint8_t {
  BOOL, U8, I8, U16, I16, U32, I32, U64, I64, F16, BF16, F32, F64, F8_E4M3, F8_E5M2, F8_E8M0,
  F4, F6_E2M3, F6_E3M2, F8_E4M3FNUZ, F8_E5M2FNUZ, C64
};

std::optional<DType> parse_dtype(std::string_view name);
std::string_view dtype_name(DType t);
unsigned dtype_bits(DType t);
// Bytes per element of a whole-byte dtype. F4 and F6 elements have none: asking is an internal
// error, never a silent 0 that would size a buffer or an offset wrong.
size_t dtype_size(DType t);

// The bytes of `n` elements, n × bits / 8 (the reference reader's rule); false when that
// overflows or the bits do not fill whole bytes (F4 [3] is 12 bits: invalid).
bool checked_elements_bytes(DType t, uint64_t n, uint64_t& out);
// The same for a count inside a validated tensor, rounded down to whole bytes: exact at every
// multiple of `whole_byte_elems(t)` and at the tensor's end.
uint64_t elements_bytes(DType t, uint64_t n);
// The fewest elements that fill whole bytes: 2 for F4, 4 for the F6 types, 1 otherwise. A copy
// is cut only at multiples of it.
uint64_t whole_byte_elems(DType t);
// Whether `n` elements fill whole bytes (a multiple of `whole_byte_elems`).
bool fills_whole_bytes(DType t, uint64_t n);
// The elements that begin in the first `bytes` bytes of a tensor, bytes × 8 / bits rounded down:
// the inverse of `elements_bytes` (exact for a whole tensor's bytes).
uint64_t bytes_elements(DType t, uint64_t bytes);

// Dtypes ckptconv can store but not compute on — no decode, cast, transpose or quantize kernel
// reads them (the FNUZ types are not e4m3fn/e5m2: their NaN, zero and bias differ). They are
// copied unchanged where the rules only rename or pass a tensor through; anything else is an
// error at plan time.
bool is_copy_only(DType t);

inline bool is_fp8_weight(DType t) { return t == DType::F8_E4M3 || t == DType::F8_E5M2; }
// The dtypes whose elements verify decodes to compare values (NaN == NaN, --atol).
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
