// AVX2 variants (+ FMA, F16C): the last elements of a span are staged through a small
// zero-padded buffer so that the tail runs the same vector code.
// Arithmetic path, 8 elements per vector: decoding as in kernels_avx512.cc.
// Table path (16-bit outputs), 32 elements per vector: AVX2 has no 256-entry lookup (vpshufb
// picks among 16 bytes), so a scale's 256 outputs are fitted to a model that needs a few 16-entry
// ones. A code is sign | e | m; while a product stays a normal number of the output type,
// doubling it adds 1 to the output's exponent field, so
//     out = (base[m] + (e << mant_bits)) ^ (sign << 15)
// and base[m] is 8 (e4m3) or 4 (e5m2) values. Codes where that does not hold get a table of their
// own, indexed by the low 4 bits of the magnitude: the lowest classes of 16 magnitudes (the fp8
// subnormals, and F16 outputs that are subnormal under small scales) and the top exponent
// (e4m3's NaN, e5m2's inf and NaN, whose sign need not follow the code's: bf16 NaN is 0x7FC0
// either way), indexed with the sign. The model is checked against all 256 outputs when the
// table is built; when it does not reproduce them (F16 outputs under scales below about 6e-5,
// F16 overflow, a zero or non-finite scale), the table is declined and that scale's spans stay
// on the arithmetic path.
#include <immintrin.h>

#include "transforms/kernels.h"
#include "transforms/kernels_impl.h"
#include "transforms/quantize.h"
#include "transforms/transpose.h"

namespace ckpt::detail {

namespace {

template <Fp8 F>
inline __m256 decode8(const uint8_t* p) {
  constexpr int kM = F == Fp8::E4M3 ? 3 : 2, kBias = F == Fp8::E4M3 ? 7 : 15;
  const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m256i mag = _mm256_and_si256(v, _mm256_set1_epi32(0x7F));
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x80)), 24);
  // Subnormal codes as in kernels_avx512.cc: decoded with exponent 1, its implicit 1 taken off.
  const __m256i sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(1 << kM), mag);
  const __m256i field = _mm256_or_si256(mag, _mm256_and_si256(sub, _mm256_set1_epi32(1 << kM)));
  __m256 f = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(field, 23 - kM)),
                           _mm256_castsi256_ps(_mm256_set1_epi32((127 + 127 - kBias) << 23)));
  const __m256 min_normal = _mm256_castsi256_ps(_mm256_set1_epi32((127 + 1 - kBias) << 23));
  f = _mm256_sub_ps(f, _mm256_and_ps(_mm256_castsi256_ps(sub), min_normal));
  if constexpr (F == Fp8::E4M3) {
    const __m256i nan = _mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7F));
    f = _mm256_blendv_ps(f, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)), _mm256_castsi256_ps(nan));
  } else {
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

// kMant: mantissa bits of the output (7 bf16, 10 f16); kLow: classes of 16 magnitudes looked up
// directly. Fixed per output type, not chosen per scale: spans of MXFP8 rows change scale every
// 32 elements, and a per-span choice among code paths mispredicts at about that rate. BF16 needs
// only the fp8 subnormals (1 class) for any scale from 2^-100 to 2^100; 4 classes keep F16's
// subnormal products in the model down to scales of about 6e-5. Loading F16's 12 planes (more
// than the registers left free) costs more than converting a 32-element MXFP8 span
// arithmetically, so F16 tables serve spans of 64 and more.
template <Fp8 F, int kMant, int kLow>
struct Lookup {
  struct Table {
    // 16-entry byte planes (low, high byte of a 16-bit base): [0] base[m], [1] the top exponent
    // by (sign << 3 | mag & 7), [2 + j] the magnitudes 16j .. 16j + 15.
    alignas(16) uint8_t lo[2 + kLow][16], hi[2 + kLow][16];
  };
  static constexpr size_t kMinSpan = kLow > 1 ? 64 : 1;
  static constexpr int kM = F == Fp8::E4M3 ? 3 : 2;           // fp8 mantissa bits
  static constexpr int kTop = F == Fp8::E4M3 ? 0x78 : 0x7C;   // first magnitude of the top exponent
  static constexpr uint16_t kExpMask = static_cast<uint16_t>(((1u << (7 - kM)) - 1) << kMant);

  static uint16_t exp_part(int mag) { return static_cast<uint16_t>((mag >> kM) << kMant); }

  // Fills t's planes; false (the table is declined, the arithmetic path stays) when the model
  // does not reproduce every one of the 256 outputs.
  static bool build(Table& t, const uint16_t* x) {
    uint16_t base[2 + kLow][16] = {};
    bool seen[8] = {};
    for (int mag = 0; mag < 128; ++mag) {
      if (mag >= kTop) {
        for (int s = 0; s < 2; ++s)
          base[1][s << 3 | (mag & 7)] = static_cast<uint16_t>((x[s << 7 | mag] ^ (s << 15)) - exp_part(mag));
      } else if ((mag >> 4) < kLow) {
        base[2 + (mag >> 4)][mag & 15] = static_cast<uint16_t>(x[mag] - exp_part(mag));
      } else if (!seen[mag & ((1 << kM) - 1)]) {
        seen[mag & ((1 << kM) - 1)] = true;
        base[0][mag & ((1 << kM) - 1)] = static_cast<uint16_t>(x[mag] - exp_part(mag));
      }
    }
    for (int c = 0; c < 256; ++c) {
      const int s = c >> 7, mag = c & 0x7F;
      const uint16_t b = mag >= kTop ? base[1][s << 3 | (mag & 7)]
                         : (mag >> 4) < kLow ? base[2 + (mag >> 4)][mag & 15]
                                             : base[0][mag & ((1 << kM) - 1)];
      if (static_cast<uint16_t>((b + exp_part(mag)) ^ (s << 15)) != x[c]) return false;
    }
    for (int k = 0; k < 2 + kLow; ++k)
      for (int i = 0; i < 16; ++i) {
        t.lo[k][i] = static_cast<uint8_t>(base[k][i]);
        t.hi[k][i] = static_cast<uint8_t>(base[k][i] >> 8);
      }
    return true;
  }

  __attribute__((always_inline)) static void run(const uint8_t* s, size_t n, const Table& t, uint16_t* d) {
    const auto plane = [](const uint8_t* p) {
      return _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(p)));
    };
    __m256i lo[2 + kLow], hi[2 + kLow];
    for (int k = 0; k < 2 + kLow; ++k) {
      lo[k] = plane(t.lo[k]);
      hi[k] = plane(t.hi[k]);
    }
    const __m256i zero = _mm256_setzero_si256();
    // 32 codes; the qword shuffle makes the in-lane byte unpacks below come out in order.
    const auto convert32 = [&](__m256i raw, uint16_t* out) {
      const __m256i c = _mm256_permute4x64_epi64(raw, 0xD8);
      const __m256i mag = _mm256_and_si256(c, _mm256_set1_epi8(0x7F));
      const __m256i nib = _mm256_and_si256(_mm256_srli_epi16(c, 4), _mm256_set1_epi8(0x0F));  // sign<<3 | class
      const __m256i m = _mm256_and_si256(c, _mm256_set1_epi8((1 << kM) - 1));
      __m256i bl = _mm256_shuffle_epi8(lo[0], m), bh = _mm256_shuffle_epi8(hi[0], m);
      const __m256i cls = _mm256_and_si256(nib, _mm256_set1_epi8(7));
      for (int j = 0; j < kLow; ++j) {
        const __m256i sel = _mm256_cmpeq_epi8(cls, _mm256_set1_epi8(static_cast<char>(j)));
        bl = _mm256_blendv_epi8(bl, _mm256_shuffle_epi8(lo[2 + j], mag), sel);
        bh = _mm256_blendv_epi8(bh, _mm256_shuffle_epi8(hi[2 + j], mag), sel);
      }
      const __m256i top = _mm256_cmpgt_epi8(mag, _mm256_set1_epi8(kTop - 1));
      const __m256i ti = _mm256_or_si256(_mm256_and_si256(c, _mm256_set1_epi8(7)),
                                         _mm256_and_si256(nib, _mm256_set1_epi8(8)));
      bl = _mm256_blendv_epi8(bl, _mm256_shuffle_epi8(lo[1], ti), top);
      bh = _mm256_blendv_epi8(bh, _mm256_shuffle_epi8(hi[1], ti), top);
      const __m256i sign = _mm256_and_si256(c, _mm256_set1_epi8(static_cast<char>(0x80)));
      const __m256i halves[2][3] = {
          {_mm256_unpacklo_epi8(bl, bh), _mm256_unpacklo_epi8(c, zero), _mm256_unpacklo_epi8(zero, sign)},
          {_mm256_unpackhi_epi8(bl, bh), _mm256_unpackhi_epi8(c, zero), _mm256_unpackhi_epi8(zero, sign)}};
      for (int h = 0; h < 2; ++h) {
        const __m256i e = _mm256_and_si256(_mm256_slli_epi16(halves[h][1], kMant - kM),
                                           _mm256_set1_epi16(static_cast<short>(kExpMask)));
        const __m256i r = _mm256_xor_si256(_mm256_add_epi16(halves[h][0], e), halves[h][2]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 * h), r);
      }
    };
    size_t i = 0;
    for (; i + 32 <= n; i += 32) convert32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)), d + i);
    if (i < n) {
      uint8_t in[32] = {};
      uint16_t out[32];
      __builtin_memcpy(in, s + i, n - i);
      convert32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in)), out);
      __builtin_memcpy(d + i, out, (n - i) * sizeof(uint16_t));
    }
  }
};

// e4m3 codes (with sign, as 32-bit lanes) of y: the AVX-512 encoder's steps (kernels_avx512.cc)
// with AVX2's compares and blends.
inline __m256i encode8(__m256 y) {
  const __m256i b = _mm256_castps_si256(y);
  const __m256i a = _mm256_and_si256(b, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(b, 24), _mm256_set1_epi32(0x80));
  const __m256i t = _mm256_sub_epi32(a, _mm256_set1_epi32((127 - 7) << 23));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(t, 20), _mm256_set1_epi32(1));
  const __m256i normal = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(t, _mm256_set1_epi32(0x7FFFF)), lsb), 20);
  const __m256 scaled = _mm256_mul_ps(_mm256_castsi256_ps(a), _mm256_set1_ps(512.0f));
  const __m256i sub = _mm256_cvttps_epi32(_mm256_round_ps(scaled, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  // a <= 0x7FFFFFFF, so signed compares order it correctly.
  __m256i code = _mm256_blendv_epi8(normal, sub, _mm256_cmpgt_epi32(_mm256_set1_epi32(0x3C800000), a));
  code = _mm256_min_epu32(code, _mm256_set1_epi32(0x7E));
  code = _mm256_blendv_epi8(code, _mm256_set1_epi32(0x7F), _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7F800000)));
  return _mm256_or_si256(code, sign);
}

void quantize(const float* x, size_t n, float scale, uint8_t* codes) {
  const __m256 s = _mm256_set1_ps(scale);
  const auto at = [&](const float* v) { return encode8(_mm256_div_ps(_mm256_loadu_ps(v), s)); };
  const auto encode32 = [&](const float* v, uint8_t* out) {
    // Packing interleaves the 128-bit lanes; the permute puts the four groups of 8 back in order.
    const __m256i lo = _mm256_packus_epi32(at(v), at(v + 8)), hi = _mm256_packus_epi32(at(v + 16), at(v + 24));
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(lo, hi), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), bytes);
  };
  size_t i = 0;
  for (; i + 32 <= n; i += 32) encode32(x + i, codes + i);
  if (i < n) {
    float in[32] = {};
    uint8_t out[32];
    __builtin_memcpy(in, x + i, (n - i) * sizeof(float));
    encode32(in, out);
    __builtin_memcpy(codes + i, out, n - i);
  }
}

float abs_max(const float* x, size_t n, float init) {
  const __m256i keep = _mm256_set1_epi32(0x7FFFFFFF), inf = _mm256_set1_epi32(0x7F800000);
  __m256i m = _mm256_and_si256(_mm256_set1_epi32(__builtin_bit_cast(int, init)), keep);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i a = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), keep);
    m = _mm256_max_epu32(m, _mm256_and_si256(a, _mm256_cmpgt_epi32(inf, a)));  // non-finite -> 0
  }
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), m);
  uint32_t best = 0;
  for (uint32_t v : lanes) best = v > best ? v : best;
  return abs_max_scalar(x + i, n - i, __builtin_bit_cast(float, best));
}

// 8 BF16 values as float32 lanes: widening is a shift.
inline __m256 widen8(const uint16_t* x) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

void quantize_bf16(const uint16_t* x, size_t rows, size_t n, size_t stride, float scale, uint8_t* codes,
                   size_t codes_stride) {
  const __m256 s = _mm256_set1_ps(scale);
  const size_t body = n / 8 * 8;
  for (size_t r = 0; r < rows; ++r, x += stride, codes += codes_stride) {
    for (size_t i = 0; i < body; i += 8) {
      const __m256i c = encode8(_mm256_div_ps(widen8(x + i), s));
      const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + i), _mm_packus_epi16(w, w));
    }
    quantize_rows_scalar(x + body, 1, n - body, 0, scale, codes + body, 0);
  }
}

// The float32 rule on the upper halves: 16 magnitudes per register, finite ones below 0x7F80
// (signed compares order them: every magnitude is below 0x8000).
float abs_max_bf16(const uint16_t* x, size_t rows, size_t n, size_t stride, float init) {
  const __m256i keep = _mm256_set1_epi16(0x7FFF), inf = _mm256_set1_epi16(0x7F80);
  const size_t body = n / 16 * 16;
  __m256i m = _mm256_setzero_si256();
  float tail = init;
  for (size_t r = 0; r < rows; ++r, x += stride) {
    for (size_t i = 0; i < body; i += 16) {
      const __m256i a = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), keep);
      m = _mm256_max_epu16(m, _mm256_and_si256(a, _mm256_cmpgt_epi16(inf, a)));  // non-finite -> 0
    }
    tail = abs_max_rows_scalar(x + body, 1, n - body, 0, tail);
  }
  alignas(32) uint16_t lanes[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), m);
  uint16_t best = 0;
  for (uint16_t v : lanes) best = v > best ? v : best;
  const uint32_t a = uint32_t{best} << 16, b = elem::f2u(tail) & 0x7FFFFFFFu;
  return elem::u2f(a > b ? a : b);
}

template <Fp8 F>
struct Rows {
  static constexpr DequantRowsFn bf16 = dequant_rows_tables<Span<F, ToBf16>, Lookup<F, 7, 1>>;
  static constexpr DequantRowsFn f16 = dequant_rows_tables<Span<F, ToF16>, Lookup<F, 10, 4>>;
  static constexpr DequantRowsFn f32 = dequant_rows<Span<F, ToF32>, float>;
};
using E4 = Rows<Fp8::E4M3>;
using E5 = Rows<Fp8::E5M2>;

const KernelTable kTable{
    Isa::Avx2,
    {{one_row<E4::bf16>, one_row<E4::f16>, one_row<E4::f32>}, {one_row<E5::bf16>, one_row<E5::f16>, one_row<E5::f32>}},
    {{E4::bf16, E4::f16, E4::f32}, {E5::bf16, E5::f16, E5::f32}},
    quantize,
    abs_max,
    quantize_bf16,
    abs_max_bf16,
    quantize_mx_groups<abs_max_bf16, quantize_bf16>,
    transpose16_sse2};

}  // namespace

const KernelTable& avx2_table() { return kTable; }

}  // namespace ckpt::detail
