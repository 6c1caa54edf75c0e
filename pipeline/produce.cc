#include "pipeline/produce.h"

#include <algorithm>
#include <cstring>

#include "transforms/cast.h"
#include "transforms/kernels.h"
#include "transforms/quantize.h"
#include "transforms/transpose.h"

namespace ckpt {

namespace {

// dst[0..n) = input (row, col .. col+n) converted to `out`: dequantized under the piece's scale
// grid, or cast.
void convert_run(const Piece& p, size_t i, uint64_t row, uint64_t col, uint64_t n, DType out, void* dst,
                 std::vector<float>& scales, const ItemInputs& in) {
  const uint8_t* src = in.input(p, i, row, col);
  if (!p.scale.info) {
    cast_run(src, p.input.info->dtype, n, dst, out);
    return;
  }
  const DequantScheme& d = p.scheme;
  const uint8_t* grid_row = in.scale_row(p, i, row / d.block_rows);
  const uint64_t g0 = col / d.block_cols, g1 = (col + n - 1) / d.block_cols + 1;
  scales.resize(g1 - g0);
  for (uint64_t g = g0; g < g1; ++g) scales[g - g0] = scale_value(d.scale_dtype, grid_row, g);
  const OutType o = out == DType::BF16 ? OutType::BF16 : out == DType::F16 ? OutType::F16 : OutType::F32;
  kernels().get(p.format, o)(src, n, scales.data(), d.block_cols, col % d.block_cols, dst);
}

// float32 values of elements [first, last) of `w` into s.values, read the scratch's way.
const float* values_of(const PlannedTensor& w, uint64_t first, uint64_t last, Scratch& s) {
  s.values.resize(last - first);
  if (s.io == IoMode::Pread) s.side.stage(w, first, last);
  else s.side.unstage();  // scratch outlives conversions: nothing staged by an earlier one is valid
  produce(w, DType::F32, first, last, reinterpret_cast<uint8_t*>(s.values.data()), s, s.side);
  return s.values.data();
}

// float32 values of `w`'s rows [r0, r1) into s.values.
const float* weight_rows(const PlannedTensor& w, uint64_t r0, uint64_t r1, Scratch& s) {
  return values_of(w, r0 * w.row_len, r1 * w.row_len, s);
}

// Block (128x128) amax of rows [0, n) × columns [c0, c1) of a row-major float matrix.
float band_amax(const float* v, uint64_t n, uint64_t len, uint64_t c0, uint64_t c1) {
  float amax = 0.0f;
  for (uint64_t r = 0; r < n; ++r) amax = abs_max(v + r * len + c0, c1 - c0, amax);
  return amax;
}

}  // namespace

// Writes output elements [first, last) of `t`, as `as` elements, into `out`.
void produce(const PlannedTensor& t, DType as, uint64_t first, uint64_t last, uint8_t* out, Scratch& s,
             const ItemInputs& in) {
  const uint64_t es = dtype_size(as);
  const uint64_t len = t.row_len;
  for (size_t i = 0; i < t.pieces.size(); ++i) {
    const Piece& p = t.pieces[i];
    const uint64_t pr0 = p.out_row0, pr1 = p.out_row0 + p.out_rows();
    const uint64_t r_lo = std::max(pr0, first / len), r_hi = std::min(pr1, (last - 1) / len + 1);
    if (r_lo >= r_hi) continue;
    if (!p.transpose) {
      for (uint64_t r = r_lo; r < r_hi; ++r) {
        const uint64_t c_lo = std::max(p.out_col0, r == first / len ? first % len : 0);
        const uint64_t row_end = r == (last - 1) / len ? (last - 1) % len + 1 : len;
        const uint64_t c_hi = std::min(p.out_col0 + p.out_cols(), row_end);
        if (c_lo >= c_hi) continue;
        convert_run(p, i, p.in_row0 + (r - pr0), p.in_col0 + (c_lo - p.out_col0), c_hi - c_lo, as,
                    out + (r * len + c_lo - first) * es, s.scales, in);
      }
      continue;
    }
    // Transposed: output rows [r_lo, r_hi) are input columns; walk the input rows in tiles,
    // convert each tile's band of columns, then transpose it into place.
    // Tile rows are padded by a cache line: model widths are powers of two, and rows a power of
    // two apart fall into one L1 set, so the transpose's 32 row streams would evict each other.
    constexpr uint64_t kTile = 32;
    const uint64_t w = r_hi - r_lo, stride = w + 64 / es;
    s.tile.resize(kTile * stride * es);
    for (uint64_t i0 = 0; i0 < p.rows; i0 += kTile) {
      const uint64_t n = std::min(kTile, p.rows - i0);
      for (uint64_t k = 0; k < n; ++k)
        convert_run(p, i, p.in_row0 + i0 + k, p.in_col0 + (r_lo - pr0), w, as, s.tile.data() + k * stride * es,
                    s.scales, in);
      transpose_tile(s.tile.data(), n, w, stride, out + (r_lo * len + p.out_col0 + i0 - first) * es, len, es);
    }
  }
}

float AmaxCache::get(const Plan& plan, size_t i, uint64_t chunk_elems, Scratch& s) {
  std::call_once(once_[i], [&] {
    const PlannedTensor& t = plan.tensors[i];
    const uint64_t n = t.rows * t.row_len;
    const uint64_t step = std::max<uint64_t>(1, chunk_elems / t.row_len) * t.row_len;
    float amax = 0.0f;
    for (uint64_t e = 0; e < n; e += step) {
      const uint64_t last = std::min(n, e + step);
      amax = abs_max(values_of(t, e, last, s), last - e, amax);
    }
    value_[i] = amax;
  });
  return value_[i];
}

// FP8 export of one item: e4m3 codes of the weight's values (t.scale_of < 0), or the scales
// (t.scale_of >= 0). Both sides derive each scale from the same float32 values, so the codes and
// the scale grid written in different items agree.
void produce_quantized(const Plan& plan, size_t index, uint64_t first, uint64_t last, uint8_t* out, Scratch& s,
                       AmaxCache& amax, uint64_t chunk_elems, const ItemInputs& in) {
  const PlannedTensor& t = plan.tensors[index];
  const bool real = t.quantize == QuantizeMode::Real;
  if (t.scale_of >= 0) {
    const PlannedTensor& w = plan.tensors[static_cast<size_t>(t.scale_of)];
    switch (t.qscheme) {
      case ScaleScheme::PerTensor: {
        if (!real) {  // a BF16 1.0
          out[0] = 0x80;
          out[1] = 0x3F;
          return;
        }
        const float sc = fp8_block_scale(amax.get(plan, static_cast<size_t>(t.scale_of), chunk_elems, s));
        std::memcpy(out, &sc, 4);
        return;
      }
      case ScaleScheme::Block: {
        auto* o = reinterpret_cast<float*>(out);
        for (uint64_t g = first; g < last; ++g) o[g - first] = 1.0f;
        if (!real) return;
        for (uint64_t gr = first / t.row_len; gr * t.row_len < last; ++gr) {
          const uint64_t r0 = gr * 128, r1 = std::min(w.rows, r0 + 128);
          const float* v = weight_rows(w, r0, r1, s);
          for (uint64_t gc = 0; gc < t.row_len; ++gc)
            o[gr * t.row_len + gc - first] =
                fp8_block_scale(band_amax(v, r1 - r0, w.row_len, gc * 128, std::min(w.row_len, gc * 128 + 128)));
        }
        return;
      }
      case ScaleScheme::Mx: {
        if (!real) {
          std::memset(out, 127, last - first);
          return;
        }
        for (uint64_t r = first / t.row_len; r * t.row_len < last; ++r) {
          const float* v = weight_rows(w, r, r + 1, s);
          for (uint64_t gc = 0; gc < t.row_len; ++gc) {
            const uint64_t c0 = gc * kMxBlock, c1 = std::min(w.row_len, c0 + kMxBlock);
            out[r * t.row_len + gc - first] = mx_scale_byte(abs_max(v + c0, c1 - c0));
          }
        }
        return;
      }
    }
    return;
  }
  // A per-tensor scale first: computing it streams the tensor through s.values.
  const float tensor_scale =
      real && t.qscheme == ScaleScheme::PerTensor ? fp8_block_scale(amax.get(plan, index, chunk_elems, s)) : 0.0f;
  const uint64_t n = last - first;
  s.values.resize(n);
  produce(t, DType::F32, first, last, reinterpret_cast<uint8_t*>(s.values.data()), s, in);
  const float* v = s.values.data();
  if (!real) {
    cast_span_torch(v, n, out);
    return;
  }
  const uint64_t len = t.row_len;
  switch (t.qscheme) {
    case ScaleScheme::PerTensor:
      quantize_span(v, n, tensor_scale, out);
      return;
    case ScaleScheme::Mx:  // items hold whole rows
      for (uint64_t r = 0; r * len < n; ++r)
        for (uint64_t c0 = 0; c0 < len; c0 += kMxBlock) {
          const uint64_t c1 = std::min(len, c0 + kMxBlock);
          const float* x = v + r * len + c0;
          quantize_span(x, c1 - c0, e8m0_to_float(mx_scale_byte(abs_max(x, c1 - c0))), out + r * len + c0);
        }
      return;
    case ScaleScheme::Block:  // items hold whole 128-row bands
      for (uint64_t b0 = 0; b0 * len < n; b0 += 128) {
        const uint64_t rows = std::min<uint64_t>(128, n / len - b0);
        for (uint64_t c0 = 0; c0 < len; c0 += 128) {
          const uint64_t c1 = std::min(len, c0 + 128);
          const float sc = fp8_block_scale(band_amax(v + b0 * len, rows, len, c0, c1));
          for (uint64_t r = 0; r < rows; ++r)
            quantize_span(v + (b0 + r) * len + c0, c1 - c0, sc, out + (b0 + r) * len + c0);
        }
      }
      return;
  }
}

}  // namespace ckpt
