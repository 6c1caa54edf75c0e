// AVX-512 variants (F, BW, VL, DQ + F16C): 16 elements per vector, masked tails.
// FP8 is decoded without a table: the 7 magnitude bits are shifted into a float32's exponent and
// mantissa fields and the result is multiplied by 2^(127 - bias), which is exact for normals and
// subnormals alike; NaN (and e5m2's inf) codes are patched in with a mask, then the sign is or-ed.
#include <immintrin.h>

#include "transforms/kernels.h"
#include "transforms/kernels_impl.h"

namespace ckpt::detail {

namespace {

template <Fp8 F>
inline __m512 decode16(__m128i bytes) {
  const __m512i v = _mm512_cvtepu8_epi32(bytes);
  const __m512i mag = _mm512_and_si512(v, _mm512_set1_epi32(0x7F));
  const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x80)), 24);
  __m512 f;
  if constexpr (F == Fp8::E4M3) {
    f = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(mag, 20)),
                      _mm512_castsi512_ps(_mm512_set1_epi32((127 + 120) << 23)));
    const __mmask16 nan = _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7F));
    f = _mm512_mask_mov_ps(f, nan, _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000)));
  } else {
    f = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(mag, 21)),
                      _mm512_castsi512_ps(_mm512_set1_epi32((127 + 112) << 23)));
    const __mmask16 inf = _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7C));
    const __mmask16 nan = _mm512_cmpgt_epi32_mask(mag, _mm512_set1_epi32(0x7C));
    f = _mm512_mask_mov_ps(f, inf, _mm512_castsi512_ps(_mm512_set1_epi32(0x7F800000)));
    f = _mm512_mask_mov_ps(f, nan, _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000)));
  }
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(f), sign));
}

inline __m256i to_bf16(__m512 p) {
  const __m512i b = _mm512_castps_si512(p);
  const __mmask16 nan = _mm512_cmp_ps_mask(p, p, _CMP_UNORD_Q);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
}

// How each output type stores 16 products, whole or under a tail mask.
struct ToBf16 {
  using T = uint16_t;
  static void store(T* d, __m512 p) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), to_bf16(p)); }
  static void store(T* d, __mmask16 m, __m512 p) { _mm256_mask_storeu_epi16(d, m, to_bf16(p)); }
};
struct ToF16 {
  using T = uint16_t;
  static __m256i cvt(__m512 p) { return _mm512_cvtps_ph(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static void store(T* d, __m512 p) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), cvt(p)); }
  static void store(T* d, __mmask16 m, __m512 p) { _mm256_mask_storeu_epi16(d, m, cvt(p)); }
};
struct ToF32 {
  using T = float;
  static void store(T* d, __m512 p) { _mm512_storeu_ps(d, p); }
  static void store(T* d, __mmask16 m, __m512 p) { _mm512_mask_storeu_ps(d, m, p); }
};

template <Fp8 F, typename Out>
struct Span {
  static void run(const uint8_t* s, size_t n, float scale, typename Out::T* d) {
    const __m512 vs = _mm512_set1_ps(scale);
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {  // two vectors per trip keep both multipliers busy
      const __m512 a = _mm512_mul_ps(decode16<F>(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))), vs);
      const __m512 b = _mm512_mul_ps(decode16<F>(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16))), vs);
      Out::store(d + i, a);
      Out::store(d + i + 16, b);
    }
    for (; i < n; i += 16) {
      const __mmask16 m = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
      Out::store(d + i, m, _mm512_mul_ps(decode16<F>(_mm_maskz_loadu_epi8(m, s + i)), vs));
    }
  }
};

const KernelTable kTable{
    Isa::Avx512,
    {{dequant_row<Span<Fp8::E4M3, ToBf16>, uint16_t>, dequant_row<Span<Fp8::E4M3, ToF16>, uint16_t>,
      dequant_row<Span<Fp8::E4M3, ToF32>, float>},
     {dequant_row<Span<Fp8::E5M2, ToBf16>, uint16_t>, dequant_row<Span<Fp8::E5M2, ToF16>, uint16_t>,
      dequant_row<Span<Fp8::E5M2, ToF32>, float>}}};

}  // namespace

const KernelTable& avx512_table() { return kTable; }

}  // namespace ckpt::detail
