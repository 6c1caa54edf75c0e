// AVX2 variants (+ FMA, F16C): 8 elements per vector; the last < 8 elements are staged through a
// small zero-padded buffer so that the tail runs the same vector code. Decoding as in
// kernels_avx512.cc.
#include <immintrin.h>

#include "transforms/kernels.h"
#include "transforms/kernels_impl.h"

namespace ckpt::detail {

namespace {

template <Fp8 F>
inline __m256 decode8(const uint8_t* p) {
  const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m256i mag = _mm256_and_si256(v, _mm256_set1_epi32(0x7F));
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x80)), 24);
  __m256 f;
  if constexpr (F == Fp8::E4M3) {
    f = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(mag, 20)),
                      _mm256_castsi256_ps(_mm256_set1_epi32((127 + 120) << 23)));
    const __m256i nan = _mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7F));
    f = _mm256_blendv_ps(f, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)), _mm256_castsi256_ps(nan));
  } else {
    f = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(mag, 21)),
                      _mm256_castsi256_ps(_mm256_set1_epi32((127 + 112) << 23)));
    const __m256i inf = _mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7C));
    const __m256i nan = _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x7C));
    f = _mm256_blendv_ps(f, _mm256_castsi256_ps(_mm256_set1_epi32(0x7F800000)), _mm256_castsi256_ps(inf));
    f = _mm256_blendv_ps(f, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)), _mm256_castsi256_ps(nan));
  }
  return _mm256_castsi256_ps(_mm256_or_si256(_mm256_castps_si256(f), sign));
}

inline __m128i to_bf16(__m256 p) {
  const __m256i b = _mm256_castps_si256(p);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(p, p, _CMP_UNORD_Q));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
  // Values fit in 16 bits, so the saturating pack is exact; fix its lane interleave.
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08));
}

// How each output type stores 8 products.
struct ToBf16 {
  using T = uint16_t;
  static void store(T* d, __m256 p) { _mm_storeu_si128(reinterpret_cast<__m128i*>(d), to_bf16(p)); }
};
struct ToF16 {
  using T = uint16_t;
  static void store(T* d, __m256 p) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d), _mm256_cvtps_ph(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};
struct ToF32 {
  using T = float;
  static void store(T* d, __m256 p) { _mm256_storeu_ps(d, p); }
};

template <Fp8 F, typename Out>
struct Span {
  static void run(const uint8_t* s, size_t n, float scale, typename Out::T* d) {
    const __m256 vs = _mm256_set1_ps(scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) Out::store(d + i, _mm256_mul_ps(decode8<F>(s + i), vs));
    if (i < n) {
      uint8_t in[8] = {};
      typename Out::T out[8];
      __builtin_memcpy(in, s + i, n - i);
      Out::store(out, _mm256_mul_ps(decode8<F>(in), vs));
      __builtin_memcpy(d + i, out, (n - i) * sizeof(typename Out::T));
    }
  }
};

const KernelTable kTable{
    Isa::Avx2,
    {{dequant_row<Span<Fp8::E4M3, ToBf16>, uint16_t>, dequant_row<Span<Fp8::E4M3, ToF16>, uint16_t>,
      dequant_row<Span<Fp8::E4M3, ToF32>, float>},
     {dequant_row<Span<Fp8::E5M2, ToBf16>, uint16_t>, dequant_row<Span<Fp8::E5M2, ToF16>, uint16_t>,
      dequant_row<Span<Fp8::E5M2, ToF32>, float>}}};

}  // namespace

const KernelTable& avx2_table() { return kTable; }

}  // namespace ckpt::detail
