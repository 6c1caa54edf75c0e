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
  const uint64_t len = std::max<uint64_t>(1, t.row_len);
  if (len <= elems || any_transposed(t)) return std::max<uint64_t>(1, elems / len) * len;
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
};

// Writes output elements [first, last) of `t` into `out`.
void produce(const PlannedTensor& t, uint64_t first, uint64_t last, uint8_t* out, Scratch& s) {
  const uint64_t es = dtype_size(t.out.dtype);
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
        convert_run(p, p.in_row0 + (r - pr0), p.in_col0 + (c_lo - p.out_col0), c_hi - c_lo, t.out.dtype,
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
        convert_run(p, p.in_row0 + i0 + i, p.in_col0 + (r_lo - pr0), w, t.out.dtype, s.tile.data() + i * w * es, s.scales);
      transpose_tile(s.tile.data(), n, w, w, out + (r_lo * len + p.out_col0 + i0 - first) * es, len, es);
    }
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
        produce(t, it.first, it.last, it.buffer, scratch);
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
