#include "transforms/kernels.h"

#include <cpuid.h>

#include <array>
#include <atomic>
#include <cstring>

#include "transforms/kernels_impl.h"
#include "transforms/quantize.h"
#include "transforms/transpose.h"

namespace ckpt {

namespace detail {
const KernelTable& avx2_table();
const KernelTable& avx512_table();
}  // namespace detail

namespace {

struct Lut {
  std::array<float, 256> v[2];
  Lut() {
    for (int c = 0; c < 256; ++c) {
      v[0][c] = fp8_to_float(static_cast<uint8_t>(c), Fp8::E4M3);
      v[1][c] = fp8_to_float(static_cast<uint8_t>(c), Fp8::E5M2);
    }
  }
};
const Lut& lut() {
  static const Lut l;
  return l;
}

struct ToBf16 {
  using T = uint16_t;
  static T cvt(float f) { return float_to_bf16(f); }
};
struct ToF16 {
  using T = uint16_t;
  static T cvt(float f) { return float_to_f16(f); }
};
struct ToF32 {
  using T = float;
  static T cvt(float f) { return f; }
};

template <Fp8 F, typename Out>
struct ScalarSpan {
  static void run(const uint8_t* s, size_t n, float scale, typename Out::T* d) {
    const float* t = lut().v[static_cast<int>(F)].data();
    for (size_t i = 0; i < n; ++i) d[i] = Out::cvt(t[s[i]] * scale);
  }
};

// A table of the 256 finished outputs makes each F16 output one load: the software rounding is
// paid 256 times per scale instead of once per element. (BF16's rounding is a few integer
// operations, which the compiler vectorises: there the arithmetic loop is as fast as the loads.)
struct ScalarLookup {
  struct Table {
    uint16_t v[256];
  };
  static constexpr size_t kMinSpan = 1;
  static bool build(Table& t, const uint16_t* exact) {
    std::memcpy(t.v, exact, sizeof t.v);
    return true;
  }
  static void run(const uint8_t* s, size_t n, const Table& t, uint16_t* d) {
    for (size_t i = 0; i < n; ++i) d[i] = t.v[s[i]];
  }
};

void quantize_scalar(const float* x, size_t n, float scale, uint8_t* codes) {
  for (size_t j = 0; j < n; ++j) codes[j] = float_to_e4m3_saturate(x[j] / scale);
}

template <Fp8 F>
struct Rows {
  static constexpr DequantRowsFn bf16 = detail::dequant_rows<ScalarSpan<F, ToBf16>, uint16_t>;
  static constexpr DequantRowsFn f16 = detail::dequant_rows_tables<ScalarSpan<F, ToF16>, ScalarLookup>;
  static constexpr DequantRowsFn f32 = detail::dequant_rows<ScalarSpan<F, ToF32>, float>;
};
using E4 = Rows<Fp8::E4M3>;
using E5 = Rows<Fp8::E5M2>;

const KernelTable kScalar{
    Isa::Scalar,
    {{detail::one_row<E4::bf16>, detail::one_row<E4::f16>, detail::one_row<E4::f32>},
     {detail::one_row<E5::bf16>, detail::one_row<E5::f16>, detail::one_row<E5::f32>}},
    {{E4::bf16, E4::f16, E4::f32}, {E5::bf16, E5::f16, E5::f32}},
    quantize_scalar,
    abs_max_scalar,
    quantize_rows_scalar,
    abs_max_rows_scalar,
    detail::quantize_mx_groups<abs_max_rows_scalar, quantize_rows_scalar>,
    transpose16_sse2};

// clang 14's __builtin_cpu_supports does not know "f16c", so CPUID leaf 1 is asked directly.
bool cpu_has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
}

bool cpu_has(Isa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             cpu_has_f16c();
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             cpu_has_f16c();
  }
  return false;
}

const KernelTable* widest() {
  return kernels_for(cpu_has(Isa::Avx512) ? Isa::Avx512 : cpu_has(Isa::Avx2) ? Isa::Avx2 : Isa::Scalar);
}

std::atomic<const KernelTable*> g_chosen{nullptr};

}  // namespace

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

const KernelTable* kernels_for(Isa isa) {
  if (!cpu_has(isa)) return nullptr;
  switch (isa) {
    case Isa::Scalar: return &kScalar;
    case Isa::Avx2: return &detail::avx2_table();
    case Isa::Avx512: return &detail::avx512_table();
  }
  return nullptr;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (cpu_has(i)) out.push_back(i);
  return out;
}

const KernelTable& kernels() {
  const KernelTable* t = g_chosen.load(std::memory_order_acquire);
  if (!t) {
    const KernelTable* best = widest();
    g_chosen.compare_exchange_strong(t, best, std::memory_order_acq_rel);
    t = g_chosen.load(std::memory_order_acquire);
  }
  return *t;
}

bool use_isa(Isa isa) {
  const KernelTable* t = kernels_for(isa);
  if (t) g_chosen.store(t, std::memory_order_release);
  return t != nullptr;
}

std::optional<Isa> parse_isa(std::string_view name) {
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (isa_name(i) == name) return i;
  return std::nullopt;
}

}  // namespace ckpt
