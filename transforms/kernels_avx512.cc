// AVX-512 variants (F, BW, VL, DQ + F16C): masked tails.
// Arithmetic path, 16 elements per vector: FP8 is decoded without a table — the 7 magnitude bits
// are shifted into a float32's exponent and mantissa fields and the result is multiplied by
// 2^(127 - bias), which is exact; NaN (and e5m2's inf) codes are patched in with a mask, then the
// sign is or-ed.
// Table path (16-bit outputs), 32 elements per vector: the outputs of a scale sit in four
// registers (Lookup). About 10 instructions per 32 outputs against about 20 per 16.
// 16-bit transpose: 32×8 blocks, one whole destination line per store.
#include <immintrin.h>

#include <algorithm>

#include "transforms/kernels.h"
#include "transforms/kernels_impl.h"
#include "transforms/quantize.h"
#include "transforms/scale_scheme.h"
#include "transforms/transpose.h"

namespace ckpt::detail {

namespace {

template <Fp8 F>
inline __m512 decode16(__m128i bytes) {
  constexpr int kM = F == Fp8::E4M3 ? 3 : 2, kBias = F == Fp8::E4M3 ? 7 : 15;
  const __m512i v = _mm512_cvtepu8_epi32(bytes);
  const __m512i mag = _mm512_and_si512(v, _mm512_set1_epi32(0x7F));
  const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x80)), 24);
  // A subnormal code shifted in place would be a float32 denormal, and a denormal operand costs
  // Intel cores a microcode assist per instruction (about 20x this loop): it is decoded as if its
  // exponent were 1 instead, and that exponent's implicit leading 1 taken off again, exactly.
  const __mmask16 sub = _mm512_cmplt_epi32_mask(mag, _mm512_set1_epi32(1 << kM));
  const __m512i field = _mm512_mask_or_epi32(mag, sub, mag, _mm512_set1_epi32(1 << kM));
  __m512 f = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(field, 23 - kM)),
                           _mm512_castsi512_ps(_mm512_set1_epi32((127 + 127 - kBias) << 23)));
  f = _mm512_mask_sub_ps(f, sub, f, _mm512_castsi512_ps(_mm512_set1_epi32((127 + 1 - kBias) << 23)));
  if constexpr (F == Fp8::E4M3) {
    const __mmask16 nan = _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7F));
    f = _mm512_mask_mov_ps(f, nan, _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000)));
  } else {
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

// The 256 outputs of one scale. Negating a code negates the product, so the outputs of the
// negative codes are those of the positive ones with the sign flipped — except bf16's NaN, which
// is 0x7FC0 either way — and 128 entries in four registers serve all codes. When a scale breaks
// that (0 * inf makes a NaN whose f16 sign is not the code's), all 256 are looked up.
constexpr uint16_t kSignlessNan = 0x7FC0;

struct Lookup {
  struct Table {
    alignas(64) uint16_t v[256];
    bool symmetric;
  };
  static constexpr size_t kMinSpan = 1;

  static bool build(Table& t, const uint16_t* exact) {
    __builtin_memcpy(t.v, exact, sizeof t.v);
    t.symmetric = true;
    for (int c = 0; c < 128; ++c)
      t.symmetric &= exact[c | 0x80] == (exact[c] == kSignlessNan ? exact[c] : exact[c] ^ 0x8000);
    return true;
  }

  __attribute__((always_inline)) static void run(const uint8_t* s, size_t n, const Table& t, uint16_t* d) {
    if (t.symmetric) convert<true>(s, n, t, d);
    else convert<false>(s, n, t, d);
  }

  // 32 outputs per vector: vpermt2w picks from 64 entries by the code's low 6 bits, bit 6 chooses
  // between two picks, and bit 7 flips the sign (symmetric) or chooses between two more.
  template <bool kSymmetric>
  __attribute__((always_inline)) static void convert(const uint8_t* s, size_t n, const Table& t, uint16_t* d) {
    __m512i q[8];
    for (int k = 0; k < (kSymmetric ? 4 : 8); ++k) q[k] = _mm512_load_si512(t.v + 32 * k);
    const auto pick = [&](__m256i codes) {
      const __m512i c = _mm512_cvtepu8_epi16(codes);
      const __mmask32 b6 = _mm512_test_epi16_mask(c, _mm512_set1_epi16(0x40));
      const __mmask32 b7 = _mm512_test_epi16_mask(c, _mm512_set1_epi16(0x80));
      const __m512i lo =
          _mm512_mask_blend_epi16(b6, _mm512_permutex2var_epi16(q[0], c, q[1]), _mm512_permutex2var_epi16(q[2], c, q[3]));
      if constexpr (kSymmetric) {
        const __mmask32 flip = _mm512_mask_cmpneq_epi16_mask(b7, lo, _mm512_set1_epi16(static_cast<short>(kSignlessNan)));
        return _mm512_mask_add_epi16(lo, flip, lo, _mm512_set1_epi16(static_cast<short>(0x8000)));  // sign flip
      } else {
        const __m512i hi =
            _mm512_mask_blend_epi16(b6, _mm512_permutex2var_epi16(q[4], c, q[5]), _mm512_permutex2var_epi16(q[6], c, q[7]));
        return _mm512_mask_blend_epi16(b7, lo, hi);
      }
    };
    const auto at = [s](size_t i) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)); };
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
      const __m512i a = pick(at(i)), b = pick(at(i + 32));
      _mm512_storeu_si512(d + i, a);
      _mm512_storeu_si512(d + i + 32, b);
    }
    if (i + 32 <= n) {
      _mm512_storeu_si512(d + i, pick(at(i)));
      i += 32;
    }
    if (i < n) {
      const __mmask32 m = static_cast<__mmask32>((1u << (n - i)) - 1);
      _mm512_mask_storeu_epi16(d + i, m, pick(_mm256_maskz_loadu_epi8(m, s + i)));
    }
  }
};

// e4m3 codes of y (quantize.h's float_to_e4m3_saturate, lane by lane): normals rebiased and
// rounded to nearest even at bit 20 with integer adds; e4m3 subnormals (|y| < 2^-6) are
// rint(|y| * 2^9), an exact product rounded once; then saturation, NaN and the sign.
inline __m128i encode16(__m512 y) {
  const __m512i b = _mm512_castps_si512(y);
  const __m512i a = _mm512_and_si512(b, _mm512_set1_epi32(0x7FFFFFFF));
  const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(b, 24), _mm512_set1_epi32(0x80));
  const __m512i t = _mm512_sub_epi32(a, _mm512_set1_epi32((127 - 7) << 23));
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(t, 20), _mm512_set1_epi32(1));
  const __m512i normal = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(t, _mm512_set1_epi32(0x7FFFF)), lsb), 20);
  const __m512i sub = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_castsi512_ps(a), _mm512_set1_ps(512.0f)),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512i code = _mm512_mask_mov_epi32(normal, _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32(0x3C800000)), sub);
  code = _mm512_min_epu32(code, _mm512_set1_epi32(0x7E));
  code = _mm512_mask_mov_epi32(code, _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(0x7F800000)), _mm512_set1_epi32(0x7F));
  return _mm512_cvtepi32_epi8(_mm512_or_si512(code, sign));
}

void quantize(const float* x, size_t n, float scale, uint8_t* codes) {
  const __m512 s = _mm512_set1_ps(scale);
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), encode16(_mm512_div_ps(_mm512_loadu_ps(x + i), s)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm_mask_storeu_epi8(codes + i, m, encode16(_mm512_div_ps(_mm512_maskz_loadu_ps(m, x + i), s)));
  }
}

// Finite magnitudes order as their bit patterns, all below +inf's.
float abs_max(const float* x, size_t n, float init) {
  const __m512i keep = _mm512_set1_epi32(0x7FFFFFFF), inf = _mm512_set1_epi32(0x7F800000);
  __m512i m = _mm512_and_si512(_mm512_set1_epi32(__builtin_bit_cast(int, init)), keep);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i a = _mm512_and_si512(_mm512_loadu_si512(x + i), keep);
    m = _mm512_mask_max_epu32(m, _mm512_cmplt_epu32_mask(a, inf), m, a);
  }
  if (i < n) {
    const __mmask16 t = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512i a = _mm512_and_si512(_mm512_maskz_loadu_epi32(t, x + i), keep);
    m = _mm512_mask_max_epu32(m, _mm512_cmplt_epu32_mask(a, inf), m, a);
  }
  return __builtin_bit_cast(float, _mm512_reduce_max_epu32(m));
}

// 16 BF16 values as float32 lanes: widening is a shift.
inline __m512 widen16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

void quantize_bf16(const uint16_t* x, size_t rows, size_t n, size_t stride, float scale, uint8_t* codes,
                   size_t codes_stride) {
  const __m512 s = _mm512_set1_ps(scale);
  const size_t body = n / 16 * 16;
  const __mmask16 m = static_cast<__mmask16>((1u << (n - body)) - 1);
  for (size_t r = 0; r < rows; ++r, x += stride, codes += codes_stride) {
    for (size_t i = 0; i < body; i += 16) {
      const __m512 v = widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), encode16(_mm512_div_ps(v, s)));
    }
    if (m) _mm_mask_storeu_epi8(codes + body, m, encode16(_mm512_div_ps(widen16(_mm256_maskz_loadu_epi16(m, x + body)), s)));
  }
}

// The float32 rule on the upper halves: 32 magnitudes per register, finite ones below 0x7F80.
float abs_max_bf16(const uint16_t* x, size_t rows, size_t n, size_t stride, float init) {
  const __m512i keep = _mm512_set1_epi16(0x7FFF), inf = _mm512_set1_epi16(0x7F80);
  const size_t body = n / 32 * 32;
  const __mmask32 t = static_cast<__mmask32>((uint64_t{1} << (n - body)) - 1);
  const auto fold = [&](__m512i m, __m512i v) {
    const __m512i a = _mm512_and_si512(v, keep);
    return _mm512_mask_max_epu16(m, _mm512_cmplt_epu16_mask(a, inf), m, a);
  };
  __m512i m = _mm512_setzero_si512();
  for (size_t r = 0; r < rows; ++r, x += stride) {
    for (size_t i = 0; i < body; i += 32) m = fold(m, _mm512_loadu_si512(x + i));
    if (t) m = fold(m, _mm512_maskz_loadu_epi16(t, x + body));
  }
  const __m512i wide = _mm512_max_epu32(_mm512_srli_epi32(m, 16), _mm512_and_si512(m, _mm512_set1_epi32(0xFFFF)));
  const uint32_t best = _mm512_reduce_max_epu32(wide) << 16, start = __builtin_bit_cast(uint32_t, init) & 0x7FFFFFFFu;
  return __builtin_bit_cast(float, best > start ? best : start);
}

// One group of 32 values per register: its amax (the finite magnitudes' max, folded to one lane),
// its e8m0 byte, then two halves encoded under it.
void quantize_mx_bf16(const uint16_t* x, size_t n, uint8_t* codes, uint8_t* scales) {
  const __m512i keep = _mm512_set1_epi16(0x7FFF), inf = _mm512_set1_epi16(0x7F80);
  for (size_t g = 0; g < n; g += kMxBlock) {
    const size_t w = std::min<size_t>(kMxBlock, n - g);
    const __mmask32 m = static_cast<__mmask32>((uint64_t{1} << w) - 1);
    const __m512i v = _mm512_maskz_loadu_epi16(m, x + g);
    const __m512i a = _mm512_and_si512(v, keep);
    const __m512i fin = _mm512_maskz_mov_epi16(_mm512_cmplt_epu16_mask(a, inf), a);
    const __m256i h = _mm256_max_epu16(_mm512_castsi512_si256(fin), _mm512_extracti64x4_epi64(fin, 1));
    const __m128i q = _mm_max_epu16(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    // The max of eight as the min of their complements (phminposuw).
    const uint16_t best = static_cast<uint16_t>(~_mm_cvtsi128_si32(_mm_minpos_epu16(_mm_xor_si128(q, _mm_set1_epi16(-1)))));
    const uint8_t e = mx_scale_byte(elem::bf16_to_float(best));
    const __m512 s = _mm512_set1_ps(e8m0_to_float(e));
    const __m128i lo = encode16(_mm512_div_ps(widen16(_mm512_castsi512_si256(v)), s));
    const __m128i hi = encode16(_mm512_div_ps(widen16(_mm512_extracti64x4_epi64(v, 1)), s));
    _mm_mask_storeu_epi8(codes + g, static_cast<__mmask16>(m), lo);
    _mm_mask_storeu_epi8(codes + g + 16, static_cast<__mmask16>(m >> 16), hi);
    scales[g / kMxBlock] = e;
  }
}

// dst(c, r) = src(r, c) for a block of 32 rows × 8 columns of 16-bit elements. Lane L of r[j]
// holds row 8L + j; the SSE2 kernel's unpack network, which works within 128-bit lanes,
// transposes the four 8×8 blocks at once and leaves destination row i's 32 elements in order in
// one register: each destination line is written whole, by one store — a streaming one where
// lines are aligned (kStream), which skips reading the line first.
template <bool kStream>
inline void transpose32x8(const uint16_t* s, size_t ss, uint16_t* d, size_t ds) {
  const auto row = [&](size_t k) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k * ss)); };
  const auto pair = [&](size_t k) { return _mm256_inserti128_si256(_mm256_castsi128_si256(row(k)), row(k + 8), 1); };
  __m512i r[8];
  for (size_t j = 0; j < 8; ++j) r[j] = _mm512_inserti64x4(_mm512_castsi256_si512(pair(j)), pair(16 + j), 1);
  __m512i a[8], b[8];
  for (int k = 0; k < 4; ++k) {
    a[2 * k] = _mm512_unpacklo_epi16(r[2 * k], r[2 * k + 1]);
    a[2 * k + 1] = _mm512_unpackhi_epi16(r[2 * k], r[2 * k + 1]);
  }
  for (int k = 0; k < 2; ++k)
    for (int h = 0; h < 2; ++h) {
      b[4 * k + 2 * h] = _mm512_unpacklo_epi32(a[4 * k + h], a[4 * k + h + 2]);
      b[4 * k + 2 * h + 1] = _mm512_unpackhi_epi32(a[4 * k + h], a[4 * k + h + 2]);
    }
  const auto store = [](uint16_t* at, __m512i v) {
    if constexpr (kStream) _mm512_stream_si512(reinterpret_cast<__m512i*>(at), v);
    else _mm512_storeu_si512(at, v);
  };
  for (int k = 0; k < 4; ++k) {
    store(d + (2 * k) * ds, _mm512_unpacklo_epi64(b[k], b[k + 4]));
    store(d + (2 * k + 1) * ds, _mm512_unpackhi_epi64(b[k], b[k + 4]));
  }
}

// 32×8 blocks where they fit, the right and bottom edges through the baseline kernel. The group
// node's destination is a 16 MiB item buffer, far out of cache: a line read before it is
// overwritten whole was most of the transpose's time (RESULTS.md), so aligned lines are streamed,
// and fenced before the buffer is handed to another thread.
void transpose16(const uint16_t* src, size_t rows, size_t cols, size_t ss, uint16_t* dst, size_t ds) {
  const size_t rk = rows / 32 * 32, ck = cols / 8 * 8;
  if ((reinterpret_cast<uintptr_t>(dst) | ds * 2) % 64 == 0) {
    for (size_t c = 0; c < ck; c += 8)
      for (size_t r = 0; r < rk; r += 32) transpose32x8<true>(src + r * ss + c, ss, dst + c * ds + r, ds);
    _mm_sfence();
  } else {
    for (size_t c = 0; c < ck; c += 8)
      for (size_t r = 0; r < rk; r += 32) transpose32x8<false>(src + r * ss + c, ss, dst + c * ds + r, ds);
  }
  if (ck < cols) transpose16_sse2(src + ck, rows, cols - ck, ss, dst + ck * ds, ds);
  if (rk < rows) transpose16_sse2(src + rk * ss, rows - rk, ck, ss, dst + rk, ds);
}

template <Fp8 F>
struct Rows {
  static constexpr DequantRowsFn bf16 = dequant_rows_tables<Span<F, ToBf16>, Lookup>;
  static constexpr DequantRowsFn f16 = dequant_rows_tables<Span<F, ToF16>, Lookup>;
  static constexpr DequantRowsFn f32 = dequant_rows<Span<F, ToF32>, float>;
};
using E4 = Rows<Fp8::E4M3>;
using E5 = Rows<Fp8::E5M2>;

const KernelTable kTable{
    Isa::Avx512,
    {{one_row<E4::bf16>, one_row<E4::f16>, one_row<E4::f32>}, {one_row<E5::bf16>, one_row<E5::f16>, one_row<E5::f32>}},
    {{E4::bf16, E4::f16, E4::f32}, {E5::bf16, E5::f16, E5::f32}},
    quantize,
    abs_max,
    quantize_bf16,
    abs_max_bf16,
    quantize_mx_bf16,
    transpose16};

}  // namespace

const KernelTable& avx512_table() { return kTable; }

}  // namespace ckpt::detail
