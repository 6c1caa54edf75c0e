#include "pipeline/executor.h"

#include <oneapi/tbb/concurrent_queue.h>
#include <oneapi/tbb/flow_graph.h>
#include <oneapi/tbb/info.h>
#include <oneapi/tbb/task_arena.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <mutex>

#include "formats/error.h"
#include "transforms/kernels.h"

namespace ckpt {

namespace {

namespace flow = oneapi::tbb::flow;
using Clock = std::chrono::steady_clock;

struct Item {
  uint32_t tensor = 0;
  uint64_t first = 0, last = 0;  // element range [first, last) of the output tensor
  uint8_t* buffer = nullptr;
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

uint64_t input_elem_size(const Source& s) { return dtype_size(s.input.info->dtype); }

// Output elements per item for one tensor: whole rows where a row fits in a chunk, so scale rows
// are looked up once per row; otherwise slices of a row.
uint64_t item_elems(const PlannedTensor& t, uint64_t chunk_bytes) {
  const uint64_t es = dtype_size(t.out.dtype);
  uint64_t elems = std::max<uint64_t>(1, chunk_bytes / es);
  if (t.src.op == Op::Dequant) {
    const uint64_t cols = std::max<uint64_t>(1, t.src.scheme.cols);
    if (cols <= elems) return elems / cols * cols;
    const uint64_t bc = t.src.scheme.block_cols;
    if (bc <= elems) return elems / bc * bc;
  }
  return elems;
}

// out[0 .. last-first) = dequantize(input elements [first, last)).
void dequantize(const PlannedTensor& t, uint64_t first, uint64_t last, uint8_t* out,
                std::vector<float>& scales) {
  const Source& s = t.src;
  const DequantScheme& d = s.scheme;
  const uint8_t* w = s.input.file->data(*s.input.info);
  const uint8_t* grid = s.scale.file->data(*s.scale.info);
  const DequantRowFn fn = kernels().get(s.format, t.out.dtype == DType::BF16 ? OutType::BF16
                                                  : t.out.dtype == DType::F16 ? OutType::F16
                                                                              : OutType::F32);
  const uint64_t es = dtype_size(t.out.dtype);
  uint64_t e = first;
  while (e < last) {
    const uint64_t row = e / d.cols, col = e % d.cols;
    const uint64_t len = std::min(d.cols - col, last - e);
    const uint64_t g0 = col / d.block_cols, g1 = (col + len - 1) / d.block_cols + 1;
    const uint64_t grow = (row / d.block_rows) * d.grid_cols;
    scales.resize(g1 - g0);
    for (uint64_t g = g0; g < g1; ++g) scales[g - g0] = scale_value(d.scale_dtype, grid, grow + g);
    fn(w + e, len, scales.data(), d.block_cols, col % d.block_cols, out + (e - first) * es);
    e += len;
  }
}

// Drops the input pages an item has consumed — its weight rows and their scale-grid rows — so
// the resident set follows the items in flight, not the bytes converted so far.
void release_inputs(const PlannedTensor& t, uint64_t first, uint64_t last) {
  const TensorRef& in = t.src.input;
  const uint64_t ies = input_elem_size(t.src);
  in.file->map().release(in.file->file_offset(*in.info) + first * ies, (last - first) * ies);
  if (t.src.op != Op::Dequant) return;
  const DequantScheme& d = t.src.scheme;
  const TensorRef& sc = t.src.scale;
  const uint64_t ses = dtype_size(sc.info->dtype);
  const uint64_t g0 = first / d.cols / d.block_rows, g1 = (last - 1) / d.cols / d.block_rows + 1;
  sc.file->map().release(sc.file->file_offset(*sc.info) + g0 * d.grid_cols * ses, (g1 - g0) * d.grid_cols * ses);
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
        Item it{static_cast<uint32_t>(next_tensor), next_elem,
                std::min(n, next_elem + item_elems(t, stats.chunk_bytes)), nullptr};
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
      const uint64_t ies = input_elem_size(t.src);
      t.src.input.file->map().prefetch(t.src.input.file->file_offset(*t.src.input.info) + it.first * ies,
                                      (it.last - it.first) * ies);
      return it;
    });
    flow::function_node<Item, Item> transform(g, flow::unlimited, [&](Item it) {
      const PlannedTensor& t = plan.tensors[it.tensor];
      if (failed || t.src.op == Op::Copy) return it;
      StageTimer timer{transform_ns};
      try {
        thread_local std::vector<float> scales;
        it.buffer = pool.acquire();
        dequantize(t, it.first, it.last, it.buffer, scales);
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
          const uint64_t es = dtype_size(t.out.dtype), ies = input_elem_size(t.src);
          const uint64_t len = (it.last - it.first) * es;
          const uint8_t* bytes = it.buffer ? it.buffer : t.src.input.file->data(*t.src.input.info) + it.first * es;
          writers[t.shard]->write(t.offset + it.first * es, bytes, len);
          release_inputs(t, it.first, it.last);
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
