#include "pipeline/executor.h"

#include <oneapi/tbb/concurrent_queue.h>
#include <oneapi/tbb/flow_graph.h>
#include <oneapi/tbb/info.h>
#include <oneapi/tbb/task_arena.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <deque>
#include <mutex>

#include "formats/error.h"
#include "transforms/cast.h"
#include "transforms/kernels.h"
#include "transforms/quantize.h"
#include "transforms/transpose.h"

namespace ckpt {

namespace {

namespace flow = oneapi::tbb::flow;
using Clock = std::chrono::steady_clock;

struct Item {
  uint32_t tensor = 0;
  uint64_t first = 0, last = 0;  // element range [first, last) of the output tensor
  uint8_t* buffer = nullptr;
  std::atomic<uint32_t>* segment_left = nullptr;  // items of this item's segment not yet written
};

// Reusable output buffers: allocated on first use, then recycled, so the hot path never touches
// fresh memory (first-touch page faults cost more than the conversion itself).
class BufferPool {
 public:
  explicit BufferPool(uint64_t bytes) : bytes_(bytes) {}
  uint8_t* acquire() {
    uint8_t* b = nullptr;
    if (free_.try_pop(b)) return b;
    std::lock_guard lock(mu_);
    owned_.emplace_back(new (std::align_val_t(64)) uint8_t[bytes_]);
    return owned_.back().get();
  }
  void release(uint8_t* b) { free_.push(b); }
  size_t allocated() {
    std::lock_guard lock(mu_);
    return owned_.size();
  }

 private:
  struct Free {
    void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  uint64_t bytes_;
  oneapi::tbb::concurrent_queue<uint8_t*> free_;
  std::mutex mu_;
  std::vector<std::unique_ptr<uint8_t[], Free>> owned_;
};

// Accumulates nanoseconds spent in a stage.
struct StageTimer {
  std::atomic<uint64_t>& sink;
  Clock::time_point start = Clock::now();
  ~StageTimer() {
    sink += static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count());
  }
};

bool any_transposed(const PlannedTensor& t) {
  for (const auto& p : t.pieces)
    if (p.transpose) return true;
  return false;
}

// Output elements per item: whole rows where a row fits in a chunk (transposed pieces need whole
// rows), otherwise slices of a row aligned to the scale blocks.
uint64_t item_elems(const PlannedTensor& t, uint64_t chunk_bytes) {
  const uint64_t elems = std::max<uint64_t>(1, chunk_bytes / dtype_size(t.out.dtype));
  if (t.is_copy()) return elems;
  if (t.scale_of >= 0) return t.rows * t.row_len;  // scales are small: one item computes them all
  if (t.quantize == QuantizeMode::Real && t.qscheme == ScaleScheme::Block)  // whole 128-row bands
    return std::max<uint64_t>(1, elems / (128 * t.row_len)) * 128 * t.row_len;
  const uint64_t len = std::max<uint64_t>(1, t.row_len);
  if (len <= elems || any_transposed(t) || t.quantize != QuantizeMode::None) return std::max<uint64_t>(1, elems / len) * len;
  const uint64_t bc = t.pieces[0].scale.info ? t.pieces[0].scheme.block_cols : 1;
  return bc <= elems ? elems / bc * bc : elems;
}

const uint8_t* input_at(const Piece& p, uint64_t row, uint64_t col) {
  return p.input.file->data(*p.input.info) + (row * p.in_cols + col) * dtype_size(p.input.info->dtype);
}

// dst[0..n) = input (row, col .. col+n) converted to `out`: dequantized under the piece's scale
// grid, or cast.
void convert_run(const Piece& p, uint64_t row, uint64_t col, uint64_t n, DType out, void* dst,
                 std::vector<float>& scales) {
  const uint8_t* src = input_at(p, row, col);
  if (!p.scale.info) {
    cast_run(src, p.input.info->dtype, n, dst, out);
    return;
  }
  const DequantScheme& d = p.scheme;
  const uint8_t* grid = p.scale.file->data(*p.scale.info);
  const uint64_t g0 = col / d.block_cols, g1 = (col + n - 1) / d.block_cols + 1;
  const uint64_t grow = (row / d.block_rows) * d.grid_cols;
  scales.resize(g1 - g0);
  for (uint64_t g = g0; g < g1; ++g) scales[g - g0] = scale_value(d.scale_dtype, grid, grow + g);
  const OutType o = out == DType::BF16 ? OutType::BF16 : out == DType::F16 ? OutType::F16 : OutType::F32;
  kernels().get(p.format, o)(src, n, scales.data(), d.block_cols, col % d.block_cols, dst);
}

struct Scratch {
  std::vector<float> scales;
  std::vector<uint8_t> tile;
  std::vector<float> values;  // float32 values of a tensor being quantized
};

// Writes output elements [first, last) of `t`, as `as` elements, into `out`.
void produce(const PlannedTensor& t, DType as, uint64_t first, uint64_t last, uint8_t* out, Scratch& s) {
  const uint64_t es = dtype_size(as);
  const uint64_t len = t.row_len;
  for (const Piece& p : t.pieces) {
    const uint64_t pr0 = p.out_row0, pr1 = p.out_row0 + p.out_rows();
    const uint64_t r_lo = std::max(pr0, first / len), r_hi = std::min(pr1, (last - 1) / len + 1);
    if (r_lo >= r_hi) continue;
    if (!p.transpose) {
      for (uint64_t r = r_lo; r < r_hi; ++r) {
        const uint64_t c_lo = std::max(p.out_col0, r == first / len ? first % len : 0);
        const uint64_t row_end = r == (last - 1) / len ? (last - 1) % len + 1 : len;
        const uint64_t c_hi = std::min(p.out_col0 + p.out_cols(), row_end);
        if (c_lo >= c_hi) continue;
        convert_run(p, p.in_row0 + (r - pr0), p.in_col0 + (c_lo - p.out_col0), c_hi - c_lo, as,
                    out + (r * len + c_lo - first) * es, s.scales);
      }
      continue;
    }
    // Transposed: output rows [r_lo, r_hi) are input columns; walk the input rows in tiles,
    // convert each tile's band of columns, then transpose it into place.
    constexpr uint64_t kTile = 32;
    const uint64_t w = r_hi - r_lo;
    s.tile.resize(kTile * w * es);
    for (uint64_t i0 = 0; i0 < p.rows; i0 += kTile) {
      const uint64_t n = std::min(kTile, p.rows - i0);
      for (uint64_t i = 0; i < n; ++i)
        convert_run(p, p.in_row0 + i0 + i, p.in_col0 + (r_lo - pr0), w, as, s.tile.data() + i * w * es, s.scales);
      transpose_tile(s.tile.data(), n, w, w, out + (r_lo * len + p.out_col0 + i0 - first) * es, len, es);
    }
  }
}

// The amax of whole tensors, for per-tensor FP8 export: computed once, by the first item that
// needs it, in chunks so that no tensor is ever held whole.
class AmaxCache {
 public:
  explicit AmaxCache(size_t n) : once_(n), value_(n, 0.0f) {}
  float get(const Plan& plan, size_t i, uint64_t chunk_elems, Scratch& s) {
    std::call_once(once_[i], [&] {
      const PlannedTensor& t = plan.tensors[i];
      const uint64_t n = t.rows * t.row_len;
      const uint64_t step = std::max<uint64_t>(1, chunk_elems / t.row_len) * t.row_len;
      float amax = 0.0f;
      for (uint64_t e = 0; e < n; e += step) {
        const uint64_t last = std::min(n, e + step);
        s.values.resize(last - e);
        produce(t, DType::F32, e, last, reinterpret_cast<uint8_t*>(s.values.data()), s);
        amax = abs_max(s.values.data(), last - e, amax);
      }
      value_[i] = amax;
    });
    return value_[i];
  }

 private:
  std::vector<std::once_flag> once_;
  std::vector<float> value_;
};

// float32 values of `w`'s rows [r0, r1) into s.values.
const float* weight_rows(const PlannedTensor& w, uint64_t r0, uint64_t r1, Scratch& s) {
  s.values.resize((r1 - r0) * w.row_len);
  produce(w, DType::F32, r0 * w.row_len, r1 * w.row_len, reinterpret_cast<uint8_t*>(s.values.data()), s);
  return s.values.data();
}

// Block (128x128) amax of rows [0, n) × columns [c0, c1) of a row-major float matrix.
float band_amax(const float* v, uint64_t n, uint64_t len, uint64_t c0, uint64_t c1) {
  float amax = 0.0f;
  for (uint64_t r = 0; r < n; ++r) amax = abs_max(v + r * len + c0, c1 - c0, amax);
  return amax;
}

// FP8 export of one item: e4m3 codes of the weight's values (t.scale_of < 0), or the scales
// (t.scale_of >= 0). Both sides derive each scale from the same float32 values, so the codes and
// the scale grid written in different items agree.
void produce_quantized(const Plan& plan, size_t index, uint64_t first, uint64_t last, uint8_t* out, Scratch& s,
                       AmaxCache& amax, uint64_t chunk_elems) {
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
  const uint64_t n = last - first;
  s.values.resize(n);
  produce(t, DType::F32, first, last, reinterpret_cast<uint8_t*>(s.values.data()), s);
  const float* v = s.values.data();
  if (!real) {
    cast_span_torch(v, n, out);
    return;
  }
  const uint64_t len = t.row_len;
  switch (t.qscheme) {
    case ScaleScheme::PerTensor:
      quantize_span(v, n, fp8_block_scale(amax.get(plan, index, chunk_elems, s)), out);
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

// Drops input pages once consumed so that the resident set follows the items in flight, not the
// bytes converted so far. Untransposed pieces release the input rows an item read; transposed ones
// read whole input regions, released when the segment's last item is written.
void release_rows(const Piece& p, uint64_t in_r0, uint64_t in_r1) {
  const uint64_t es = dtype_size(p.input.info->dtype);
  const auto& f = *p.input.file;
  f.map().release(f.file_offset(*p.input.info) + in_r0 * p.in_cols * es, (in_r1 - in_r0) * p.in_cols * es);
  if (!p.scale.info) return;
  const DequantScheme& d = p.scheme;
  const auto& sf = *p.scale.file;
  const uint64_t ses = dtype_size(p.scale.info->dtype);
  const uint64_t g0 = in_r0 / d.block_rows, g1 = (in_r1 - 1) / d.block_rows + 1;
  sf.map().release(sf.file_offset(*p.scale.info) + g0 * d.grid_cols * ses, (g1 - g0) * d.grid_cols * ses);
}

void release_item(const PlannedTensor& t, uint64_t first, uint64_t last, bool segment_done) {
  const uint64_t len = t.row_len;
  const uint64_t row0 = first / len, row1 = (last - 1) / len + 1;
  const uint64_t seg0 = t.segment_rows ? row0 / t.segment_rows * t.segment_rows : 0;
  const uint64_t seg1 = t.segment_rows ? std::min(t.rows, seg0 + t.segment_rows) : t.rows;
  for (const Piece& p : t.pieces) {
    const uint64_t pr0 = p.out_row0, pr1 = p.out_row0 + p.out_rows();
    if (!p.transpose) {
      const uint64_t a = std::max(pr0, row0), b = std::min(pr1, row1);
      if (a < b) release_rows(p, p.in_row0 + (a - pr0), p.in_row0 + (b - pr0));
    } else if (segment_done && pr0 < seg1 && seg0 < pr1) {
      release_rows(p, p.in_row0, p.in_row0 + p.rows);
    }
  }
}

}  // namespace

void size_pipeline(uint64_t budget, unsigned threads, uint64_t& chunk_bytes, uint64_t& items) {
  // Enough items to keep every thread busy in each stage, each holding one output chunk plus at
  // most as many input bytes; a chunk stays within 1–16 MiB so syscalls and scheduling stay cheap.
  items = 2ull * threads + 2;
  chunk_bytes = std::clamp<uint64_t>(budget / (2 * items), 1ull << 20, 16ull << 20);
  items = std::max<uint64_t>(2, std::min(items, budget / (2 * chunk_bytes)));
}

ExecStats execute(const Plan& plan, const std::vector<std::unique_ptr<ShardWriter>>& writers,
                  const ExecOptions& opt) {
  ExecStats stats;
  stats.threads = opt.threads ? opt.threads : static_cast<unsigned>(oneapi::tbb::info::default_concurrency());
  size_pipeline(opt.memory_budget, stats.threads, stats.chunk_bytes, stats.buffers);

  BufferPool pool(stats.chunk_bytes);
  AmaxCache amax(plan.tensors.size());
  std::atomic<uint64_t> read_ns{0}, transform_ns{0}, write_ns{0}, items{0};
  std::atomic<bool> failed{false};
  std::exception_ptr first_error;
  std::mutex error_mu;
  const auto record = [&](std::exception_ptr e) {
    std::lock_guard lock(error_mu);
    if (!first_error) first_error = e;
    failed = true;
  };

  size_t next_tensor = 0;
  uint64_t next_elem = 0;
  std::deque<std::atomic<uint32_t>> segment_left;  // stable addresses as it grows
  oneapi::tbb::task_arena arena(static_cast<int>(stats.threads));
  arena.execute([&] {
    flow::graph g;
    flow::input_node<Item> source(g, [&](oneapi::tbb::flow_control& fc) -> Item {
      while (next_tensor < plan.tensors.size() && !failed) {
        const PlannedTensor& t = plan.tensors[next_tensor];
        const uint64_t n = t.nbytes / dtype_size(t.out.dtype);
        if (next_elem >= n) {
          ++next_tensor;
          next_elem = 0;
          continue;
        }
        const uint64_t step = item_elems(t, stats.chunk_bytes);
        const uint64_t seg_elems = (t.segment_rows ? t.segment_rows : t.rows) * t.row_len;
        const uint64_t seg_end = std::min(n, (next_elem / seg_elems + 1) * seg_elems);
        if (next_elem % seg_elems == 0) {  // a new segment: count its items
          const uint64_t seg_items = (seg_end - next_elem + step - 1) / step;
          segment_left.emplace_back(static_cast<uint32_t>(seg_items));
        }
        Item it{static_cast<uint32_t>(next_tensor), next_elem, std::min(seg_end, next_elem + step), nullptr,
                &segment_left.back()};
        next_elem = it.last;
        return it;
      }
      fc.stop();
      return {};
    });
    flow::limiter_node<Item> limiter(g, stats.buffers);
    flow::function_node<Item, Item> read(g, flow::unlimited, [&](Item it) {
      if (failed) return it;
      StageTimer timer{read_ns};
      const PlannedTensor& t = plan.tensors[it.tensor];
      for (const Piece& p : t.pieces) {  // read-ahead for the rows this item starts with
        if (p.transpose) continue;
        const uint64_t es = dtype_size(p.input.info->dtype);
        const uint64_t r0 = it.first / t.row_len;
        if (r0 < p.out_row0 || r0 >= p.out_row0 + p.rows) continue;
        p.input.file->map().prefetch(p.input.file->file_offset(*p.input.info) +
                                         (p.in_row0 + r0 - p.out_row0) * p.in_cols * es,
                                     (it.last - it.first) * es);
      }
      return it;
    });
    flow::function_node<Item, Item> transform(g, flow::unlimited, [&](Item it) {
      const PlannedTensor& t = plan.tensors[it.tensor];
      if (failed || t.is_copy()) return it;
      StageTimer timer{transform_ns};
      try {
        thread_local Scratch scratch;
        it.buffer = pool.acquire();
        if (t.quantize != QuantizeMode::None)
          produce_quantized(plan, it.tensor, it.first, it.last, it.buffer, scratch, amax,
                            stats.chunk_bytes / sizeof(float));
        else
          produce(t, t.out.dtype, it.first, it.last, it.buffer, scratch);
      } catch (...) {
        record(std::current_exception());
      }
      return it;
    });
    flow::function_node<Item, flow::continue_msg> write(g, flow::unlimited, [&](Item it) {
      const PlannedTensor& t = plan.tensors[it.tensor];
      if (!failed) {
        StageTimer timer{write_ns};
        try {
          const uint64_t es = dtype_size(t.out.dtype);
          const uint64_t len = (it.last - it.first) * es;
          const uint8_t* bytes = it.buffer ? it.buffer : input_at(t.pieces[0], 0, 0) + it.first * es;
          writers[t.shard]->write(t.offset + it.first * es, bytes, len);
          release_item(t, it.first, it.last, it.segment_left->fetch_sub(1) == 1);
          if (opt.progress) *opt.progress += len;
          ++items;
        } catch (...) {
          record(std::current_exception());
        }
      }
      if (it.buffer) pool.release(it.buffer);
      return flow::continue_msg();
    });
    flow::make_edge(source, limiter);
    flow::make_edge(limiter, read);
    flow::make_edge(read, transform);
    flow::make_edge(transform, write);
    flow::make_edge(write, limiter.decrementer());
    source.activate();
    g.wait_for_all();
  });
  if (first_error) std::rethrow_exception(first_error);
  stats.items = items;
  stats.buffers_allocated = pool.allocated();
  stats.read_s = static_cast<double>(read_ns) * 1e-9;
  stats.transform_s = static_cast<double>(transform_ns) * 1e-9;
  stats.write_s = static_cast<double>(write_ns) * 1e-9;
  return stats;
}

}  // namespace ckpt
