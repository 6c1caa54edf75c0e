#include "transforms/transpose.h"

#include <emmintrin.h>

#include <cstdint>

#include "transforms/kernels.h"

namespace ckpt {

namespace {

// 8×8 blocks of 16-bit elements through SSE2 unpacks (baseline x86-64, so no dispatch).
inline void transpose8x8_u16(const uint16_t* s, size_t ss, uint16_t* d, size_t ds) {
  __m128i r[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i * ss));
  const __m128i a0 = _mm_unpacklo_epi16(r[0], r[1]), a1 = _mm_unpackhi_epi16(r[0], r[1]);
  const __m128i a2 = _mm_unpacklo_epi16(r[2], r[3]), a3 = _mm_unpackhi_epi16(r[2], r[3]);
  const __m128i a4 = _mm_unpacklo_epi16(r[4], r[5]), a5 = _mm_unpackhi_epi16(r[4], r[5]);
  const __m128i a6 = _mm_unpacklo_epi16(r[6], r[7]), a7 = _mm_unpackhi_epi16(r[6], r[7]);
  const __m128i b0 = _mm_unpacklo_epi32(a0, a2), b1 = _mm_unpackhi_epi32(a0, a2);
  const __m128i b2 = _mm_unpacklo_epi32(a1, a3), b3 = _mm_unpackhi_epi32(a1, a3);
  const __m128i b4 = _mm_unpacklo_epi32(a4, a6), b5 = _mm_unpackhi_epi32(a4, a6);
  const __m128i b6 = _mm_unpacklo_epi32(a5, a7), b7 = _mm_unpackhi_epi32(a5, a7);
  const __m128i c[8] = {_mm_unpacklo_epi64(b0, b4), _mm_unpackhi_epi64(b0, b4), _mm_unpacklo_epi64(b1, b5),
                        _mm_unpackhi_epi64(b1, b5), _mm_unpacklo_epi64(b2, b6), _mm_unpackhi_epi64(b2, b6),
                        _mm_unpacklo_epi64(b3, b7), _mm_unpackhi_epi64(b3, b7)};
  for (int i = 0; i < 8; ++i) _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i * ds), c[i]);
}

// 4×4 blocks of 32-bit elements.
inline void transpose4x4_u32(const uint32_t* s, size_t ss, uint32_t* d, size_t ds) {
  __m128 r0 = _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  __m128 r1 = _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + ss)));
  __m128 r2 = _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 2 * ss)));
  __m128 r3 = _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 3 * ss)));
  _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(d), _mm_castps_si128(r0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(d + ds), _mm_castps_si128(r1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 2 * ds), _mm_castps_si128(r2));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 3 * ds), _mm_castps_si128(r3));
}

template <typename T>
void transpose_scalar(const T* src, size_t r0, size_t r1, size_t c0, size_t c1, size_t ss, T* dst, size_t ds) {
  for (size_t c = c0; c < c1; ++c)
    for (size_t r = r0; r < r1; ++r) dst[c * ds + r] = src[r * ss + c];
}

// Whole K×K register blocks where they fit, the ragged right and bottom edges element by element.
// Columns outermost: each destination row (rows apart by a whole output row, often a page or
// more) is finished in one visit — a full cache line for a 32-row tile — instead of being
// revisited once per block row, which cost a TLB miss per visit.
template <typename T, size_t K, void (*Block)(const T*, size_t, T*, size_t)>
void transpose_blocked(const T* src, size_t rows, size_t cols, size_t ss, T* dst, size_t ds) {
  const size_t rk = rows / K * K, ck = cols / K * K;
  for (size_t c = 0; c < ck; c += K)
    for (size_t r = 0; r < rk; r += K) Block(src + r * ss + c, ss, dst + c * ds + r, ds);
  transpose_scalar(src, 0, rows, ck, cols, ss, dst, ds);
  transpose_scalar(src, rk, rows, 0, ck, ss, dst, ds);
}

}  // namespace

void transpose16_sse2(const uint16_t* src, size_t rows, size_t cols, size_t src_stride, uint16_t* dst,
                      size_t dst_stride) {
  transpose_blocked<uint16_t, 8, transpose8x8_u16>(src, rows, cols, src_stride, dst, dst_stride);
}

void transpose_tile(const void* src, size_t rows, size_t cols, size_t src_stride, void* dst,
                    size_t dst_stride, size_t elem) {
  if (elem == 2)
    kernels().transpose16(static_cast<const uint16_t*>(src), rows, cols, src_stride, static_cast<uint16_t*>(dst),
                          dst_stride);
  else if (elem == 4)
    transpose_blocked<uint32_t, 4, transpose4x4_u32>(static_cast<const uint32_t*>(src), rows, cols, src_stride,
                                                     static_cast<uint32_t*>(dst), dst_stride);
  else
    transpose_scalar(static_cast<const uint8_t*>(src), 0, rows, 0, cols, src_stride, static_cast<uint8_t*>(dst),
                     dst_stride);
}

}  // namespace ckpt
