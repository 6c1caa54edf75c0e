#include "pipeline/produce.h"

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/collaborative_call_once.h>
#include <oneapi/tbb/enumerable_thread_specific.h>
#include <oneapi/tbb/parallel_reduce.h>

#include <algorithm>
#include <cstring>

#include "transforms/cast.h"
#include "transforms/kernels.h"
#include "transforms/quantize.h"
#include "transforms/transpose.h"

namespace ckpt {

namespace {

OutType out_type(DType t) {
  return t == DType::BF16 ? OutType::BF16 : t == DType::F16 ? OutType::F16 : OutType::F32;
}

// dst row k of n (rows `ds` elements apart) = input (row0 + k, col .. col + w) converted to `out`:
// dequantized under the piece's scale grid, rows that share a grid row in one kernel call, or cast.
void convert_rows(const Piece& p, size_t i, uint64_t row0, uint64_t n, uint64_t col, uint64_t w, DType out,
                  uint8_t* dst, uint64_t ds, std::vector<float>& scales, const ItemInputs& in) {
  const uint64_t es = dtype_size(out);
  if (!p.scale.info) {
    for (uint64_t k = 0; k < n; ++k)
      cast_run(in.input(p, i, row0 + k, col), p.input.info->dtype, w, dst + k * ds * es, out);
    return;
  }
  const DequantScheme& d = p.scheme;
  const uint64_t g0 = col / d.block_cols, g1 = (col + w - 1) / d.block_cols + 1;
  scales.resize(g1 - g0);
  for (uint64_t r = row0; r < row0 + n;) {
    const uint64_t grid_row = r / d.block_rows, r1 = std::min(row0 + n, (grid_row + 1) * d.block_rows);
    const uint8_t* grid = in.scale_row(p, i, grid_row);
    for (uint64_t g = g0; g < g1; ++g) scales[g - g0] = scale_value(d.scale_dtype, grid, g);
    const uint8_t* src = in.input(p, i, r, col);
    kernels().get_rows(p.format, out_type(out))(src, in.row_bytes(p, i), r1 - r, w, scales.data(), d.block_cols,
                                                col % d.block_cols, dst + (r - row0) * ds * es, ds);
    r = r1;
  }
}

// Asks for the input lines of rows [row0, row0 + n) × columns [col, col + w) ahead of their use:
// a tile of the group node reads 32 short runs a row apart, which the hardware prefetchers miss.
void prefetch_rows(const Piece& p, size_t i, uint64_t row0, uint64_t n, uint64_t col, uint64_t w,
                   const ItemInputs& in) {
  const uint64_t bytes = w * dtype_size(p.input.info->dtype);
  for (uint64_t k = 0; k < n; ++k) {
    const uint8_t* at = in.input(p, i, row0 + k, col);
    for (uint64_t b = 0; b < bytes; b += 64) __builtin_prefetch(at + b);
    __builtin_prefetch(at + bytes - 1);
  }
}

uint64_t ceil_div(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

// Weight values produced at a time (2 MiB as float32, 1 MiB as BF16; a core's L2 here): amax and
// encode then read them from cache. Measured on split experts (RESULTS.md): 32 MiB spans, which read
// longer runs of each strided input row, were 30% slower; 0.5–2 MiB were alike.
constexpr uint64_t kValueElems = 1u << 19;
uint64_t value_rows(const PlannedTensor& t) { return std::max<uint64_t>(1, kValueElems / t.row_len); }

// A weight whose pieces are all unscaled BF16 (every native checkpoint's): its values are
// produced as BF16 — split experts then transpose 2-byte, not 4-byte, elements — and amax and
// the encoder widen them inside their kernels. Exact either way: widening BF16 is a shift.
bool bf16_source(const PlannedTensor& w) {
  for (const Piece& p : w.pieces)
    if (p.scale.info || p.input.info->dtype != DType::BF16) return false;
  return true;
}

// A run of a weight's values, float32 or BF16, read as `rows` rows of n values `stride` apart
// (codes rows `codes_stride` apart); element `at` counts from the run's start.
struct Values {
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;

  float amax(uint64_t at, uint64_t rows, uint64_t n, uint64_t stride, float init = 0.0f) const {
    if (bf16) return abs_max_rows(bf16 + at, rows, n, stride, init);
    for (uint64_t r = 0; r < rows; ++r) init = abs_max(f32 + at + r * stride, n, init);
    return init;
  }
  void encode(uint64_t at, uint64_t rows, uint64_t n, uint64_t stride, float scale, uint8_t* codes,
              uint64_t codes_stride) const {
    if (bf16) return quantize_rows(bf16 + at, rows, n, stride, scale, codes, codes_stride);
    for (uint64_t r = 0; r < rows; ++r) quantize_span(f32 + at + r * stride, n, scale, codes + r * codes_stride);
  }
  void placeholder(uint64_t at, uint64_t n, uint8_t* codes) const {
    if (bf16) cast_span_torch(bf16 + at, n, codes);
    else cast_span_torch(f32 + at, n, codes);
  }
};

// Values of weight elements [e0, e0 + n), in the scratch's buffers.
Values weight_values(const PlannedTensor& w, uint64_t e0, uint64_t n, Scratch& s, const ItemInputs& in) {
  if (bf16_source(w)) {
    s.half.resize(n);
    produce(w, DType::BF16, e0, e0 + n, reinterpret_cast<uint8_t*>(s.half.data()), s, in);
    return {nullptr, s.half.data()};
  }
  s.values.resize(n);
  produce(w, DType::F32, e0, e0 + n, reinterpret_cast<uint8_t*>(s.values.data()), s, in);
  return {s.values.data(), nullptr};
}

// Values of elements [first, last) of `w`, read the scratch's way: the amax pass of a
// per-tensor export, which runs outside any item and so stages its own inputs.
Values values_of(const PlannedTensor& w, uint64_t first, uint64_t last, Scratch& s) {
  if (s.io == IoMode::Pread) s.side.stage(w, first, last);
  else s.side.unstage();  // scratch outlives conversions: nothing staged by an earlier one is valid
  return weight_values(w, first, last - first, s, s.side);
}

}  // namespace

// Writes output elements [first, last) of `t`, as `as` elements, into `out`.
void produce(const PlannedTensor& t, DType as, uint64_t first, uint64_t last, uint8_t* out, Scratch& s,
             const ItemInputs& in) {
  const uint64_t es = dtype_size(as);
  const uint64_t len = t.row_len;
  for (size_t i = 0; i < t.pieces.size(); ++i) {
    const Piece& p = t.pieces[i];
    const InputRect rect = input_rect(t, p, first, last);  // the rule staging and release use too
    if (rect.empty()) continue;
    if (!p.transpose) {
      // Input row by input row; an item's first and last output rows may be partial.
      for (uint64_t r_in = rect.row0; r_in < rect.row1; ++r_in) {
        const uint64_t r = p.out_row0 + (r_in - p.in_row0);
        const uint64_t c_lo = std::max(p.out_col0, r == first / len ? first % len : 0);
        const uint64_t row_end = r == (last - 1) / len ? (last - 1) % len + 1 : len;
        const uint64_t c_hi = std::min(p.out_col0 + p.out_cols(), row_end);
        if (c_lo >= c_hi) continue;
        convert_rows(p, i, r_in, 1, p.in_col0 + (c_lo - p.out_col0), c_hi - c_lo, as,
                     out + (r * len + c_lo - first) * es, 0, s.scales, in);
      }
      continue;
    }
    // Transposed: the rectangle's columns are the item's output rows. It is walked in tiles of
    // 32 input rows × 256 columns, which stay in L1: each tile is converted (its rows share their
    // scales) and transposed into place, so each input line is read once and each output line
    // written in one visit. Tile rows are padded by a cache line: rows a power of two apart fall
    // into one L1 set. (Tiles of 128 and 512 columns measured slower, RESULTS.md.)
    constexpr uint64_t kTileRows = 32, kTileCols = 256;
    const uint64_t stride = kTileCols + 64 / es;
    const uint64_t r_lo = p.out_row0 + (rect.col0 - p.in_col0);
    s.tile.resize(kTileRows * stride * es);
    // Nothing to convert: the transpose reads the input rows itself, one pass instead of a copy
    // into the tile and a transpose out of it (FP8 export of native experts: 1.86 -> 1.65 s, RESULTS.md).
    const bool copies = !p.scale.info && p.input.info->dtype == as;
    for (uint64_t i0 = rect.row0; i0 < rect.row1; i0 += kTileRows) {
      const uint64_t n = std::min(kTileRows, rect.row1 - i0);
      for (uint64_t c0 = rect.col0; c0 < rect.col1;) {
        const uint64_t c1 = std::min(rect.col1, (c0 / kTileCols + 1) * kTileCols);  // whole scale blocks
        if (c1 < rect.col1) prefetch_rows(p, i, i0, n, c1, std::min(kTileCols, rect.col1 - c1), in);  // the next tile
        uint8_t* dst = out + ((r_lo + c0 - rect.col0) * len + p.out_col0 + (i0 - p.in_row0) - first) * es;
        if (copies) {
          transpose_tile(in.input(p, i, i0, c0), n, c1 - c0, in.row_bytes(p, i) / es, dst, len, es);
        } else {
          convert_rows(p, i, i0, n, c0, c1 - c0, as, s.tile.data(), stride, s.scales, in);
          transpose_tile(s.tile.data(), n, c1 - c0, stride, dst, len, es);
        }
        c0 = c1;
      }
    }
  }
}

ScaleRange scale_elements(const PlannedTensor& w, uint64_t first, uint64_t last) {
  const uint64_t len = w.row_len;
  switch (w.qscheme) {
    case ScaleScheme::PerTensor: return first == 0 ? ScaleRange{0, 1} : ScaleRange{};
    case ScaleScheme::Mx: {
      const uint64_t groups = ceil_div(len, kMxBlock);
      return {first / len * groups, ceil_div(last, len) * groups};
    }
    case ScaleScheme::Block: {
      const uint64_t groups = ceil_div(len, 128);
      return {first / (128 * len) * groups, ceil_div(ceil_div(last, len), 128) * groups};
    }
  }
  return {};
}

float AmaxCache::get(const Plan& plan, size_t i) {
  oneapi::tbb::collaborative_call_once(once_[i], [&] {
    // The first pass of a per-tensor export: the tensor's amax, over row bands in parallel; the
    // threads of other items that need it join in rather than wait.
    const PlannedTensor& t = plan.tensors[i];
    const uint64_t step = value_rows(t), len = t.row_len;
    oneapi::tbb::enumerable_thread_specific<Scratch> scratch([this] {
      Scratch s;
      s.io = io_;
      return s;
    });
    value_[i] = oneapi::tbb::parallel_reduce(
        oneapi::tbb::blocked_range<uint64_t>(0, ceil_div(t.rows, step)), 0.0f,
        [&](const oneapi::tbb::blocked_range<uint64_t>& bands, float amax) {
          Scratch& s = scratch.local();
          for (uint64_t b = bands.begin(); b < bands.end(); ++b) {
            const uint64_t r0 = b * step, r1 = std::min(t.rows, r0 + step);
            amax = values_of(t, r0 * len, r1 * len, s).amax(0, 1, (r1 - r0) * len, 0, amax);
          }
          return amax;
        },
        [](float a, float b) { return std::max(a, b); });
  });
  return value_[i];
}

namespace {

// Block 128x128: each 128-row band's values once, then per column block its amax, scale and
// codes from those same values (in cache).
void quantize_block(const PlannedTensor& w, uint64_t first, uint64_t last, bool real, uint8_t* codes,
                    float* scales, Scratch& s, const ItemInputs& in) {
  const uint64_t len = w.row_len, groups = ceil_div(len, 128);
  const uint64_t span = std::max<uint64_t>(1, value_rows(w) / 128) * 128;  // whole bands at a time
  for (uint64_t r0 = first / len; r0 * len < last; r0 += span) {
    const uint64_t rows = std::min(span, last / len - r0);
    const uint64_t e0 = r0 * len, n = rows * len;
    const Values v = weight_values(w, e0, n, s, in);
    uint8_t* out = codes + (e0 - first);
    if (!real) {
      v.placeholder(0, n, out);
      std::fill_n(scales, ceil_div(rows, 128) * groups, 1.0f);
      scales += ceil_div(rows, 128) * groups;
      continue;
    }
    for (uint64_t b = 0; b < rows; b += 128) {
      const uint64_t band = std::min<uint64_t>(128, rows - b);
      for (uint64_t g = 0; g < groups; ++g) {
        const uint64_t at = b * len + g * 128, w = std::min<uint64_t>(128, len - g * 128);
        const float sc = fp8_block_scale(v.amax(at, band, w, len));
        v.encode(at, band, w, len, sc, out + at, len);
        *scales++ = sc;
      }
    }
  }
}

// MXFP8 1x32: rows in groups; each 32-element run's exponent from its own values.
void quantize_mx(const PlannedTensor& w, uint64_t first, uint64_t last, bool real, uint8_t* codes,
                 uint8_t* scales, Scratch& s, const ItemInputs& in) {
  const uint64_t len = w.row_len, step = value_rows(w) * len;
  for (uint64_t e0 = first; e0 < last; e0 += step) {
    const uint64_t n = std::min(step, last - e0);
    const Values v = weight_values(w, e0, n, s, in);
    uint8_t* out = codes + (e0 - first);
    uint8_t* sc = scales + (e0 - first) / len * ceil_div(len, kMxBlock);
    if (!real) {
      v.placeholder(0, n, out);
      std::fill_n(sc, n / len * ceil_div(len, kMxBlock), uint8_t{127});
      continue;
    }
    if (v.bf16) {  // a row per kernel call
      for (uint64_t r = 0; r < n; r += len, sc += ceil_div(len, kMxBlock)) quantize_mx_row(v.bf16 + r, len, out + r, sc);
      continue;
    }
    for (uint64_t r = 0; r < n; r += len)
      for (uint64_t c0 = 0; c0 < len; c0 += kMxBlock) {
        const uint64_t c1 = std::min(len, c0 + kMxBlock);
        const uint8_t e = mx_scale_byte(v.amax(r + c0, 1, c1 - c0, 0));
        v.encode(r + c0, 1, c1 - c0, 0, e8m0_to_float(e), out + r + c0, 0);
        *sc++ = e;
      }
  }
}

// Per-tensor: the tensor's amax (the cache's pass, shared by all its items), then the codes.
void quantize_per_tensor(const Plan& plan, size_t index, uint64_t first, uint64_t last, bool real,
                         uint8_t* codes, uint8_t* scale, Scratch& s, AmaxCache& amax, const ItemInputs& in) {
  const PlannedTensor& w = plan.tensors[index];
  const float sc = real ? fp8_block_scale(amax.get(plan, index)) : 1.0f;
  const uint64_t step = value_rows(w) * w.row_len;
  for (uint64_t e0 = first; e0 < last; e0 += step) {
    const uint64_t n = std::min(step, last - e0);
    const Values v = weight_values(w, e0, n, s, in);
    if (real) v.encode(0, 1, n, 0, sc, codes + (e0 - first), 0);
    else v.placeholder(0, n, codes + (e0 - first));
  }
  if (first != 0) return;
  if (real) {
    std::memcpy(scale, &sc, 4);
  } else {  // a BF16 1.0
    scale[0] = 0x80;
    scale[1] = 0x3F;
  }
}

}  // namespace

ScaleRange produce_quantized(const Plan& plan, size_t index, uint64_t first, uint64_t last, uint8_t* codes,
                             uint8_t* scales, Scratch& s, AmaxCache& amax, const ItemInputs& in) {
  const PlannedTensor& w = plan.tensors[index];
  const bool real = w.quantize == QuantizeMode::Real;
  switch (w.qscheme) {
    case ScaleScheme::Block:
      quantize_block(w, first, last, real, codes, reinterpret_cast<float*>(scales), s, in);
      break;
    case ScaleScheme::Mx: quantize_mx(w, first, last, real, codes, scales, s, in); break;
    case ScaleScheme::PerTensor: quantize_per_tensor(plan, index, first, last, real, codes, scales, s, amax, in); break;
  }
  return scale_elements(w, first, last);
}

}  // namespace ckpt
