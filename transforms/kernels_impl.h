// Private to transforms/: the row-segment loops shared by every ISA variant, over one row or over
// rows that share their scales (a block band's rows in a tile of the group node). Each variant
// supplies `Span::run(src, n, scale, dst)`, which converts n elements under one scale
// arithmetically; for 16-bit outputs it also supplies a `Lookup` that converts them from a table
// of the 256 finished outputs under that scale. These walk the scale blocks of a segment that may
// start mid-block (`phase`).
//
// Code included here is compiled once per instruction set, so it must not call inline functions
// shared with baseline translation units (std::min included): the linker keeps one copy of such a
// function, possibly an AVX-512 one, which would then run on CPUs without AVX-512. Everything
// below is a template instantiated on a variant's own (translation-unit-local) types.
#pragma once

#include <emmintrin.h>  // SSE2, baseline on x86-64

#include <cstddef>
#include <cstdint>
#include <memory>

#include "transforms/element.h"
#include "transforms/scale_scheme.h"

namespace ckpt::detail {

// `rows` rows under the same scales (rows of one block band): row r reads src + r * ss and
// writes dst + r * ds. The scale blocks are walked once for all rows.
template <typename Span, typename Out>
void dequant_rows(const uint8_t* src, size_t ss, size_t rows, size_t n, const float* scales, size_t block,
                  size_t phase, void* dst_v, size_t ds) {
  Out* dst = static_cast<Out*>(dst_v);
  size_t j = 0;
  size_t len = n < block - phase ? n : block - phase;
  for (size_t b = 0; j < n; ++b) {
    for (size_t r = 0; r < rows; ++r) Span::run(src + r * ss + j, len, scales[b], dst + r * ds + j);
    j += len;
    len = block < n - j ? block : n - j;
  }
}

// One row: the rows kernel `Rows` over a single row.
template <auto Rows>
void one_row(const uint8_t* src, size_t n, const float* scales, size_t block, size_t phase, void* dst) {
  Rows(src, 0, 1, n, scales, block, phase, dst, 0);
}

// A thread's tables, keyed by the bits of the scale they were built for: 128 sets of 4 ways.
// The key, not the position in the tensor, is what recurs — one scale over a whole per-tensor
// row, the same grid_cols scales over the 128 rows of a block band, a handful of exponents over
// an MXFP8 tensor — so a table is built once per distinct scale, however the caller cuts rows.
// A table costs 256 conversions, two 128-element spans' worth, so it is built only for a key seen
// a second time while it still holds its way, or at once where one call converts more than 256
// elements under it (`eager`: rows of a band): a scale used once on a short span (or a grid wider
// than the cache, thrashing it) costs a tag compare per span and falls back to the arithmetic
// path. `build` returns false for a table its ISA cannot use to advantage; the key then stays on the
// arithmetic path without being built again.
template <typename Table>
class TableCache {
 public:
  template <typename Build>
  const Table* find(uint32_t key, bool eager, const Build& build) {
    const uint32_t set = ((key ^ (key >> 15)) * 0x9E3779B1u) >> (32 - kSetBits);
    // The four keys are compared at once: consecutive spans hit different ways, and a
    // mispredicted branch per way costs as much as converting a 32-element span.
    const __m128i eq = _mm_cmpeq_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(keys_[set])),
                                       _mm_set1_epi32(static_cast<int>(key)));
    const uint32_t match = static_cast<uint32_t>(_mm_movemask_ps(_mm_castsi128_ps(eq)));
    if (const uint32_t hit = match & built_[set])
      return hit & declined_[set] ? nullptr : &tables_[__builtin_ctz(hit)][set];
    return admit(set, key, match & seen_[set], eager, build);
  }

 private:
  // 512 tables: a band of DeepSeek-V3's widest input (18432 columns, 144 scales) rarely puts more
  // than 4 keys in one set. One SSE compare covers the 4 ways.
  static constexpr uint32_t kSetBits = 7, kWays = 4;

  // A key without a table: build it if the key was seen before (`seen`: its way) or `eager`, else
  // note it.
  template <typename Build>
  const Table* admit(uint32_t set, uint32_t key, uint32_t seen, bool eager, const Build& build) {
    if (!seen && !eager) {
      note(set, key);
      return nullptr;
    }
    const uint32_t w = seen ? __builtin_ctz(seen) : note(set, key);
    seen_[set] &= ~(1u << w);
    built_[set] |= 1u << w;
    if (build(tables_[w][set])) return &tables_[w][set];
    declined_[set] |= 1u << w;
    return nullptr;
  }

  // Notes a key as seen in a way of its set — an empty one, else each way in turn — and returns
  // the way. (Preferring to evict keys noted but never built would protect built tables, but two
  // new keys of one set would then evict each other's notes forever while the previous band's
  // dead tables stayed.)
  uint32_t note(uint32_t set, uint32_t key) {
    const uint32_t empty = ~(seen_[set] | built_[set]) & 0xF;
    const uint32_t w = empty ? __builtin_ctz(empty) : next_[set]++ % kWays;
    keys_[set][w] = key;
    seen_[set] |= 1u << w;
    built_[set] &= ~(1u << w);
    declined_[set] &= ~(1u << w);
    return w;
  }

  alignas(16) uint32_t keys_[1u << kSetBits][kWays] = {};
  // Bit w: way w's key was seen once / has been built / was built and declined.
  uint8_t seen_[1u << kSetBits] = {}, built_[1u << kSetBits] = {}, declined_[1u << kSetBits] = {};
  uint8_t next_[1u << kSetBits] = {};
  // Way-major: keys mostly sit in way 0 of their sets, and set-major tables 512 bytes apart would
  // then be 2 KiB apart, all in the same few L1 sets.
  Table tables_[kWays][1u << kSetBits];
};

// dequant_rows for 16-bit outputs: each span goes through its scale's table when the thread's
// cache has one (`Lookup::run`), arithmetically otherwise. A table holds exactly what Span
// produces for each code — it is built by running Span over the 256 codes — so the two paths
// agree bit for bit by construction. Spans shorter than Lookup::kMinSpan stay arithmetic: there
// loading the table costs more than it saves. The table is looked up once per span for all the
// rows, which share its scale.
template <typename Span, typename Lookup>
void dequant_rows_tables(const uint8_t* src, size_t ss, size_t rows, size_t n, const float* scales, size_t block,
                         size_t phase, void* dst_v, size_t ds) {
  using Table = typename Lookup::Table;
  thread_local std::unique_ptr<TableCache<Table>> cache;
  if (!cache) cache.reset(new TableCache<Table>());
  // Once per call: each thread_local access may be a call (__tls_get_addr under -fPIC).
  TableCache<Table>& tables = *cache;
  uint16_t* dst = static_cast<uint16_t*>(dst_v);
  size_t j = 0;
  size_t len = n < block - phase ? n : block - phase;
  for (size_t b = 0; j < n; ++b) {
    const float scale = scales[b];
    const auto build = [scale](Table& fresh) {
      uint8_t codes[256];
      uint16_t exact[256];
      for (int c = 0; c < 256; ++c) codes[c] = static_cast<uint8_t>(c);
      Span::run(codes, 256, scale, exact);
      return Lookup::build(fresh, exact);
    };
    const bool eager = rows * len > 256;  // this call alone pays for the table
    const Table* t = len >= Lookup::kMinSpan ? tables.find(__builtin_bit_cast(uint32_t, scale), eager, build) : nullptr;
    for (size_t r = 0; r < rows; ++r) {
      if (t) Lookup::run(src + r * ss + j, len, *t, dst + r * ds + j);
      else Span::run(src + r * ss + j, len, scale, dst + r * ds + j);
    }
    j += len;
    len = block < n - j ? block : n - j;
  }
}

// MXFP8 export of a row of n BF16 values, group of 32 by group (the last may be shorter), through
// an ISA's BF16 amax and quantize kernels (transforms/kernels.h's signatures): each group's e8m0
// byte from its finite amax, then its codes under that scale.
template <auto AbsMaxRows, auto QuantizeRows>
void quantize_mx_groups(const uint16_t* x, size_t n, uint8_t* codes, uint8_t* scales) {
  for (size_t g = 0; g < n; g += kMxBlock) {
    const size_t w = kMxBlock < n - g ? kMxBlock : n - g;
    const uint8_t e = elem::mx_scale_byte(AbsMaxRows(x + g, 1, w, 0, 0.0f));
    QuantizeRows(x + g, 1, w, 0, elem::e8m0_to_float(e), codes + g, 0);
    scales[g / kMxBlock] = e;
  }
}

}  // namespace ckpt::detail
