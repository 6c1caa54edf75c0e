#include "transforms/cast.h"

#include <cstring>

#include "formats/error.h"
#include "transforms/fp8.h"

namespace ckpt {

namespace {

bool readable(DType t) { return t == DType::BF16 || t == DType::F16 || t == DType::F32 || t == DType::F64; }
bool writable(DType t) { return t == DType::BF16 || t == DType::F16 || t == DType::F32; }

template <typename Load>
void store_all(Load load, size_t n, void* dst, DType to) {
  switch (to) {
    case DType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t j = 0; j < n; ++j) d[j] = float_to_bf16(load(j));
      return;
    }
    case DType::F16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t j = 0; j < n; ++j) d[j] = float_to_f16(load(j));
      return;
    }
    case DType::F32: {
      auto* d = static_cast<float*>(dst);
      for (size_t j = 0; j < n; ++j) d[j] = load(j);
      return;
    }
    default: break;
  }
}

}  // namespace

bool castable(DType from, DType to) { return from == to || (readable(from) && writable(to)); }

void cast_run(const void* src, DType from, size_t n, void* dst, DType to) {
  if (from == to) {
    std::memcpy(dst, src, n * dtype_size(from));
    return;
  }
  if (!castable(from, to))
    fail(ErrorKind::Internal, "no cast from {} to {}", dtype_name(from), dtype_name(to));
  switch (from) {
    case DType::BF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      return store_all([s](size_t j) { return bf16_to_float(s[j]); }, n, dst, to);
    }
    case DType::F16: {
      const auto* s = static_cast<const uint16_t*>(src);
      return store_all([s](size_t j) { return f16_to_float(s[j]); }, n, dst, to);
    }
    case DType::F32: {
      const auto* s = static_cast<const float*>(src);
      return store_all([s](size_t j) { return s[j]; }, n, dst, to);
    }
    case DType::F64: {
      const auto* s = static_cast<const double*>(src);
      return store_all([s](size_t j) { return static_cast<float>(s[j]); }, n, dst, to);
    }
    default: break;
  }
}

}  // namespace ckpt
