#include "pipeline/executor.h"

#include <oneapi/tbb/concurrent_queue.h>
#include <thread>
#include <oneapi/tbb/flow_graph.h>
#include <oneapi/tbb/info.h>
#include <oneapi/tbb/task_arena.h>

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <deque>
#include <mutex>

#include "formats/error.h"
#include "pipeline/produce.h"
#include "pipeline/write_turns.h"

namespace ckpt {

namespace {

namespace flow = oneapi::tbb::flow;
using Clock = std::chrono::steady_clock;

struct Item {
  uint32_t tensor = 0;
  uint64_t first = 0, last = 0;  // element range [first, last) of the output tensor
  uint8_t* buffer = nullptr;
  ItemInputs* inputs = nullptr;  // pread: the staged input bytes
  std::atomic<uint32_t>* segment_left = nullptr;  // items of this item's segment not yet written
  ScaleRange scales;  // FP8 export: the scale tensor's elements this item computed, after the codes
  DeviceStage::Slot* slot = nullptr;  // with a device stage: the item's buffers (`buffer` is its host side)
  bool on_device = false;             // its bytes were made on the device
};

// Reusable output buffers: allocated on first use, then recycled, so the hot path never touches
// fresh memory (first-touch page faults cost more than the conversion itself). They are backed by
// transparent huge pages where the kernel allows: the group node writes each expert's transpose
// one output row apart, so with 4 KiB pages nearly every row of a tile is a TLB miss.
class BufferPool {
 public:
  explicit BufferPool(uint64_t bytes) : bytes_((bytes + kHuge - 1) / kHuge * kHuge) {}
  uint8_t* acquire() {
    uint8_t* b = nullptr;
    if (free_.try_pop(b)) return b;
    std::lock_guard lock(mu_);
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(kHuge, bytes_));
    if (!p) throw std::bad_alloc();
    madvise(p, bytes_, MADV_HUGEPAGE);
    owned_.emplace_back(p);
    return p;
  }
  void release(uint8_t* b) { free_.push(b); }
  size_t allocated() {
    std::lock_guard lock(mu_);
    return owned_.size();
  }

 private:
  static constexpr uint64_t kHuge = 2ull << 20;
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  uint64_t bytes_;
  oneapi::tbb::concurrent_queue<uint8_t*> free_;
  std::mutex mu_;
  std::vector<std::unique_ptr<uint8_t, Free>> owned_;
};

// Staging buffers for `--io pread`, recycled like the output buffers.
class InputsPool {
 public:
  explicit InputsPool(uint64_t band_bytes) : bands_(band_bytes) {}
  ItemInputs* acquire() {
    ItemInputs* b = nullptr;
    if (free_.try_pop(b)) return b;
    std::lock_guard lock(mu_);
    return owned_.emplace_back(std::make_unique<ItemInputs>(&bands_)).get();
  }
  void release(ItemInputs* b) { free_.push(b); }
  uint64_t bytes_read() {
    std::lock_guard lock(mu_);
    uint64_t n = 0;
    for (const auto& b : owned_) n += b->bytes_read();
    return n;
  }

 private:
  BandCache bands_;
  oneapi::tbb::concurrent_queue<ItemInputs*> free_;
  std::mutex mu_;
  std::vector<std::unique_ptr<ItemInputs>> owned_;
};

// The input files a plan reads.
std::vector<const SafetensorsFile*> input_files(const Plan& plan) {
  std::vector<const SafetensorsFile*> files;
  for (const auto& t : plan.tensors)
    for (const auto& p : t.pieces)
      for (const SafetensorsFile* f : {p.input.file, p.scale.file})
        if (f) files.push_back(f);
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());
  return files;
}

// Whether every input (weights and scales) is in memory to read in place; bytes that are not (a
// remote input) are read into each item's buffers, whatever the options asked.
bool in_memory(const Plan& plan) {
  const auto files = input_files(plan);
  return std::all_of(files.begin(), files.end(), [](const SafetensorsFile* f) { return f->source().data(); });
}

// Whether this item's inputs are still the files that were planned: after a SIGBUS somewhere
// in the process (a lost page), or — `deep` — after a failed write (a copy from a truncated map
// fails inside the kernel without a signal).
void check_item_inputs(const PlannedTensor& t, bool deep) {
  for (const auto& p : t.pieces) {
    p.input.file->source().check_intact(deep);
    if (p.scale.file) p.scale.file->source().check_intact(deep);
  }
}

// Inputs read in place from the maps (--io mmap).
const ItemInputs& mapped_inputs() {
  static const ItemInputs mapped;
  return mapped;
}

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

// A copy's items are runs of whole bytes: F4 and F6 elements share bytes, so a copy of them is
// cut only where a byte starts (every 2 F4 or 4 F6 elements); it needs no rows.
uint64_t copy_item_elems(DType t, uint64_t chunk_bytes) {
  const uint64_t group = whole_byte_elems(t);
  return std::max<uint64_t>(1, chunk_bytes / elements_bytes(t, group)) * group;
}

// A tensor of transposed pieces (grouped experts) is cut per segment (an expert's slot): an item
// of k output rows reads a k-column strip of every input row, so strips as wide as possible —
// the whole slot where it is at most two chunks, else equal parts of it. Narrow strips cost
// small reads (per input row: a request each from a remote input) and the rows read twice.
uint64_t transposed_item_elems(const PlannedTensor& t, uint64_t chunk_bytes) {
  const uint64_t len = std::max<uint64_t>(1, t.row_len);
  const uint64_t seg_rows = t.segment_rows ? t.segment_rows : t.rows;
  const uint64_t row_bytes = len * dtype_size(t.out.dtype);
  if (seg_rows * row_bytes <= 2 * chunk_bytes) return seg_rows * len;
  const uint64_t per_chunk = std::max<uint64_t>(1, chunk_bytes / row_bytes);
  const uint64_t parts = (seg_rows + per_chunk - 1) / per_chunk;
  return (seg_rows + parts - 1) / parts * len;
}

// Output elements per item: whole rows where a row fits in a chunk (transposed pieces need whole
// rows), otherwise slices of a row aligned to the scale blocks.
uint64_t item_elems(const PlannedTensor& t, uint64_t chunk_bytes) {
  if (t.is_copy()) return copy_item_elems(t.out.dtype, chunk_bytes);
  if (any_transposed(t) && t.quantize == QuantizeMode::None) return transposed_item_elems(t, chunk_bytes);
  const uint64_t elems = std::max<uint64_t>(1, chunk_bytes / dtype_size(t.out.dtype));
  if (t.quantize != QuantizeMode::None && t.qscheme == ScaleScheme::Block)  // whole 128-row bands
    return std::max<uint64_t>(1, elems / (128 * t.row_len)) * 128 * t.row_len;
  const uint64_t len = std::max<uint64_t>(1, t.row_len);
  if (len <= elems || any_transposed(t) || t.quantize != QuantizeMode::None) return std::max<uint64_t>(1, elems / len) * len;
  const uint64_t bc = t.pieces[0].scale.info ? t.pieces[0].scheme.block_cols : 1;
  return bc <= elems ? elems / bc * bc : elems;
}

bool is_selected(const std::vector<bool>& selected, int64_t i) {
  return i >= 0 && (selected.empty() || selected[static_cast<size_t>(i)]);
}

// Scale tensors of FP8 export are written by their weight's items, which run when either of the
// two is selected.
bool has_items(const Plan& plan, const std::vector<bool>& selected, size_t i) {
  if (plan.tensors[i].scale_of >= 0) return false;
  return is_selected(selected, static_cast<int64_t>(i)) || is_selected(selected, scale_tensor_of(plan, i));
}

// Cuts the plan into items, in each shard's tensor order. A write into a file holds that file's
// inode lock for its whole copy into the page cache, so writers of one shard queue behind each
// other (on tmpfs the copy is most of a conversion's time): items are dealt round-robin from as
// many shards as there are threads, so that concurrent writes land in different files. One
// thread gets plain plan order.
class ItemSource {
 public:
  ItemSource(const Plan& plan, const std::vector<bool>& selected, uint64_t chunk_bytes, unsigned lanes)
      : plan_(plan), chunk_bytes_(chunk_bytes), lanes_(std::max(1u, lanes)) {
    for (uint32_t i = 0; i < plan.tensors.size(); ++i) {
      if (!has_items(plan, selected, i)) continue;
      const uint32_t shard = plan.tensors[i].shard;
      if (shard >= shards_.size()) shards_.resize(shard + 1);
      shards_[shard].tensors.push_back(i);
    }
  }

  // The next item, or false when every tensor has been dealt.
  bool next(Item& it) {
    for (;;) {
      while (open_.size() < lanes_ && next_shard_ < shards_.size()) open_.push_back(next_shard_++);
      if (open_.empty()) return false;
      turn_ %= open_.size();
      if (deal(shards_[open_[turn_]], it)) {
        ++turn_;
        return true;
      }
      open_.erase(open_.begin() + static_cast<std::ptrdiff_t>(turn_));  // that shard is dealt out
    }
  }

 private:
  struct Stream {
    std::vector<uint32_t> tensors;  // plan indices, in plan order
    size_t pos = 0;                 // the tensor being cut
    uint64_t elem = 0;              // its next element
    std::atomic<uint32_t>* segment = nullptr;
  };

  bool deal(Stream& s, Item& it) {
    for (; s.pos < s.tensors.size(); ++s.pos, s.elem = 0) {
      const PlannedTensor& t = plan_.tensors[s.tensors[s.pos]];
      const uint64_t n = bytes_elements(t.out.dtype, t.nbytes);  // 0 bytes (a resumed shard's): no items
      if (s.elem >= n) continue;
      const uint64_t step = item_elems(t, chunk_bytes_);
      const uint64_t seg_elems = (t.segment_rows ? t.segment_rows : t.rows) * t.row_len;
      const uint64_t seg_end = std::min(n, (s.elem / seg_elems + 1) * seg_elems);
      if (s.elem % seg_elems == 0)  // a new segment: count its items
        s.segment = &segment_left_.emplace_back(static_cast<uint32_t>((seg_end - s.elem + step - 1) / step));
      it.tensor = s.tensors[s.pos];
      it.first = s.elem;
      it.last = std::min(seg_end, s.elem + step);
      it.segment_left = s.segment;
      s.elem = it.last;
      return true;
    }
    return false;
  }

  const Plan& plan_;
  uint64_t chunk_bytes_;
  unsigned lanes_;
  std::vector<Stream> shards_;
  std::vector<size_t> open_;  // shards being dealt
  size_t next_shard_ = 0, turn_ = 0;
  std::deque<std::atomic<uint32_t>> segment_left_;  // stable addresses as it grows
};

// The bytes an item's buffer must hold: its largest output run, then (FP8 export) the scales it
// computes. Usually one chunk; more where a tensor's items must hold whole rows or bands longer
// than a chunk, so that no item ever writes past its buffer.
uint64_t item_buffer_bytes(const Plan& plan, uint64_t chunk_bytes, uint64_t& scales_at) {
  uint64_t out = chunk_bytes, side = 0;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    const uint64_t n = t.rows * t.row_len;
    if (t.scale_of >= 0 || n == 0) continue;
    const uint64_t step = std::min(n, item_elems(t, chunk_bytes));
    out = std::max(out, elements_bytes(t.out.dtype, step));
    const int64_t sc = scale_tensor_of(plan, i);
    if (sc < 0) continue;
    const ScaleRange r = scale_elements(t, 0, step);
    side = std::max(side, (r.last - r.first) * dtype_size(plan.tensors[static_cast<size_t>(sc)].out.dtype));
  }
  scales_at = (out + 63) / 64 * 64;
  return scales_at + side;
}

// Drops input pages once consumed so that the resident set follows the items in flight, not the
// bytes converted so far. Untransposed pieces release the input rows an item read; transposed ones
// read whole input regions, released when the segment's last item is written.
void release_rows(const Piece& p, uint64_t in_r0, uint64_t in_r1) {
  const DType in = p.input.info->dtype;
  const auto& f = *p.input.file;
  const uint64_t at = elements_bytes(in, in_r0 * p.in_cols);  // rows of sub-byte copies: rounded down
  f.source().release(f.file_offset(*p.input.info) + at, elements_bytes(in, in_r1 * p.in_cols) - at);
  if (!p.scale.info) return;
  const DequantScheme& d = p.scheme;
  const auto& sf = *p.scale.file;
  const uint64_t ses = dtype_size(p.scale.info->dtype);
  const uint64_t g0 = in_r0 / d.block_rows, g1 = (in_r1 - 1) / d.block_rows + 1;
  sf.source().release(sf.file_offset(*p.scale.info) + g0 * d.grid_cols * ses, (g1 - g0) * d.grid_cols * ses);
}

void release_item(const PlannedTensor& t, uint64_t first, uint64_t last, bool segment_done) {
  const uint64_t row0 = first / t.row_len;
  const uint64_t seg0 = t.segment_rows ? row0 / t.segment_rows * t.segment_rows : 0;
  const uint64_t seg1 = t.segment_rows ? std::min(t.rows, seg0 + t.segment_rows) : t.rows;
  for (const Piece& p : t.pieces) {
    if (!p.transpose) {
      const InputRect r = input_rect(t, p, first, last);
      if (!r.empty()) release_rows(p, r.row0, r.row1);
    } else if (segment_done && !input_rect(t, p, seg0 * t.row_len, seg1 * t.row_len).empty()) {
      release_rows(p, p.in_row0, p.in_row0 + p.rows);
    }
  }
}

// Hands bytes to the sink, counts each selected tensor's bytes down, and completes it when the
// last of them has been written; reports progress a few times a second.
class Delivery {
 public:
  Delivery(const Plan& plan, const std::vector<bool>& selected, TensorSink& sink, const ExecOptions& opt)
      : plan_(plan), sink_(sink), opt_(opt), left_(plan.tensors.size()) {
    for (size_t i = 0; i < plan.tensors.size(); ++i) {
      left_[i] = is_selected(selected, static_cast<int64_t>(i)) ? plan.tensors[i].nbytes : 0;
      total_ += left_[i];
    }
  }
  // Tensors of no bytes have no items: they are complete from the start.
  void complete_empty(const std::vector<bool>& selected) {
    for (size_t i = 0; i < plan_.tensors.size(); ++i)
      if (plan_.tensors[i].nbytes == 0 && is_selected(selected, static_cast<int64_t>(i))) sink_.complete(i);
  }
  void write(size_t tensor, uint64_t offset, const void* data, uint64_t len) {
    sink_.write(tensor, offset, data, len);
    delivered(tensor, len);
  }
  // The same for a device sink: the bytes are in device memory, ready in `stream` order. The
  // caller waits for the stream before the tensor's completion can be reported (`delivered`).
  void write_device(size_t tensor, uint64_t offset, const void* data, uint64_t len, void* stream) {
    sink_.write_device(tensor, offset, data, len, stream);
  }
  void delivered(size_t tensor, uint64_t len) {
    if (left_[tensor].fetch_sub(len) == len) sink_.complete(tensor);
    report(done_ += len);
  }

 private:
  void report(uint64_t done) {
    if (!opt_.on_progress) return;
    const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch()).count();
    int64_t last = last_report_ms_.load();
    if (done < total_ && now - last < 200) return;
    if (last_report_ms_.compare_exchange_strong(last, now) || done == total_) opt_.on_progress(done, total_);
  }

  const Plan& plan_;
  TensorSink& sink_;
  const ExecOptions& opt_;
  std::vector<std::atomic<uint64_t>> left_;
  uint64_t total_ = 0;
  std::atomic<uint64_t> done_{0};
  std::atomic<int64_t> last_report_ms_{0};
};

// Where an FP8 export item's scales go: the weight's scale tensor (when selected), at `offset`,
// `len` bytes; len 0 when there is nothing to write.
struct ScalesOut {
  size_t tensor = 0;
  uint64_t offset = 0, len = 0;
};
ScalesOut scales_out(const Plan& plan, const std::vector<bool>& selected, const Item& it) {
  const int64_t sc = scale_tensor_of(plan, it.tensor);
  if (!is_selected(selected, sc) || it.scales.first == it.scales.last) return {};
  const auto s = static_cast<size_t>(sc);
  const uint64_t es = dtype_size(plan.tensors[s].out.dtype);
  return {s, it.scales.first * es, (it.scales.last - it.scales.first) * es};
}

}  // namespace

void TensorSink::write_device(size_t, uint64_t, const void*, uint64_t, void*) {
  fail(ErrorKind::Internal, "this sink takes no device memory");
}

bool wants_device(const Plan& plan) {
  for (const PlannedTensor& t : plan.tensors)
    if (t.dequantizes() || t.quantize != QuantizeMode::None || any_transposed(t)) return true;
  return false;
}

void size_pipeline(uint64_t budget, unsigned threads, uint64_t& chunk_bytes, uint64_t& items) {
  // Enough items to keep every thread busy in each stage, each holding one output chunk plus at
  // most as many input bytes; a chunk stays within 1–16 MiB so syscalls and scheduling stay cheap.
  items = 2ull * threads + 2;
  chunk_bytes = std::clamp<uint64_t>(budget / (2 * items), 1ull << 20, 16ull << 20);
  items = std::max<uint64_t>(2, std::min(items, budget / (2 * chunk_bytes)));
}

namespace {

// One execution: the state the graph's stages share, and the stages as named steps. Each stage
// catches what it throws, records the first error and lets later items pass through untouched,
// so the graph always drains and every buffer goes back to its pool.
class Run {
 public:
  Run(const Plan& plan, TensorSink& sink, const ExecOptions& opt, const ExecStats& stats)
      : plan_(plan),
        opt_(opt),
        pread_(opt.io == IoMode::Pread || !in_memory(plan)),
        pool_(item_buffer_bytes(plan, stats.chunk_bytes, scales_at_)),
        staging_(opt.memory_budget / 16),  // rows two items read, kept for the second (inputs.h)
        amax_(plan.tensors.size(), pread_ ? IoMode::Pread : IoMode::Mmap),
        items_of_(plan, opt.selected, stats.chunk_bytes, opt.lanes ? opt.lanes : stats.threads),
        out_(plan, opt.selected, sink, opt),
        device_(opt.device),
        device_sink_(sink.on_device()) {
    if (sink.serial_shards()) turns_.emplace(plan.shards.size());
    if (device_sink_ && !device_) fail(ErrorKind::Usage, "a device sink needs a device to run on (--device cuda)");
    if (device_) device_->begin(item_buffer_bytes(plan, stats.chunk_bytes, scales_at_), scales_at_);
  }

  bool next(Item& it) { return !failed_ && items_of_.next(it); }
  void start() { out_.complete_empty(opt_.selected); }

  // Brings the item's inputs close: stages them (pread) or asks for read-ahead (mmap).
  Item read(Item it) {
    if (failed_) return it;
    StageTimer timer{read_ns_};
    const PlannedTensor& t = plan_.tensors[it.tensor];
    if (pread_) {
      it.inputs = staging_.acquire();
      guarded([&] { it.inputs->stage(t, it.first, it.last); });
      return it;
    }
    for (const Piece& p : t.pieces) {  // a transposed piece's reads stride over many rows: no hint
      const InputRect r = input_rect(t, p, it.first, it.last);
      if (p.transpose || r.empty()) continue;
      const DType in = p.input.info->dtype;
      const uint64_t at = elements_bytes(in, r.row0 * p.in_cols);
      p.input.file->source().prefetch(p.input.file->file_offset(*p.input.info) + at,
                                   elements_bytes(in, r.row1 * p.in_cols) - at);
    }
    return it;
  }

  // The item's output bytes (and an FP8 export's scales) into a buffer — pooled, or with a device
  // stage the item's slot, made on the device where the stage runs the tensor; copies skip it
  // (for a device sink they still take a slot, to go up to the device when written).
  Item transform(Item it) {
    const PlannedTensor& t = plan_.tensors[it.tensor];
    if (failed_ || (t.is_copy() && !device_sink_)) return it;
    StageTimer timer{transform_ns_};
    guarded([&] {
      const ItemInputs& in = it.inputs ? *it.inputs : mapped_inputs();
      if (device_) {
        it.slot = device_->acquire();
        if (t.is_copy()) return;
        if (device_->runs(t)) {
          it.scales = device_->transform(*it.slot, plan_, it.tensor, it.first, it.last, in, amax_, !device_sink_);
          it.on_device = true;
          if (!device_sink_) it.buffer = it.slot->host;
          return;
        }
        it.buffer = device_->host_buffer(*it.slot);
      } else {
        it.buffer = pool_.acquire();
      }
      thread_local Scratch scratch;
      if (t.quantize != QuantizeMode::None)
        it.scales = produce_quantized(plan_, it.tensor, it.first, it.last, it.buffer, it.buffer + scales_at_, scratch,
                                      amax_, in);
      else
        produce(t, t.out.dtype, it.first, it.last, it.buffer, scratch, in);
    });
    return it;
  }

  // Waits for the device work of an item (on the waiter's thread, not a worker's).
  void await(const Item& it) {
    if (it.on_device) guarded([&] { device_->wait(*it.slot); });
  }

  // write(item) for `it`, now or by the thread writing its shard (WriteTurns); done() after each
  // item written, whichever it is.
  template <typename Done>
  void write_in_turn(const Item& it, Done&& done) {
    if (!turns_) {
      write(it);
      return done();
    }
    turns_->take(plan_.tensors[it.tensor].shard, it, [&](const Item& x) {
      write(x);
      done();
    });
  }

  // Delivers the bytes to the sink, releases the inputs consumed, returns the buffers.
  void write(Item it) {
    if (!failed_) {
      StageTimer timer{write_ns_};
      guarded([&] { deliver(it); });
    }
    if (it.slot) device_->release(it.slot);
    else if (it.buffer) pool_.release(it.buffer);
    if (it.inputs) staging_.release(it.inputs);
  }

  // The first error, rethrown; then the final check that the inputs are still the planned files.
  void finish(ExecStats& stats) {
    if (first_error_) std::rethrow_exception(first_error_);
    // Whatever the items saw, a rewrite in place or a replacement of an input shows only here.
    for (const SafetensorsFile* f : input_files(plan_)) f->source().check_intact(true);
    stats.items = items_;
    stats.bytes_read = staging_.bytes_read();
    stats.buffers_allocated = pool_.allocated();
    stats.read_s = static_cast<double>(read_ns_) * 1e-9;
    stats.transform_s = static_cast<double>(transform_ns_) * 1e-9;
    stats.write_s = static_cast<double>(write_ns_) * 1e-9;
    if (device_) stats.device = device_->stats();
  }

 private:
  template <typename F>
  void guarded(F&& f) {
    try {
      f();
    } catch (...) {
      std::lock_guard lock(error_mu_);
      if (!first_error_) first_error_ = std::current_exception();
      failed_ = true;
    }
  }

  void deliver(const Item& it) {
    const PlannedTensor& t = plan_.tensors[it.tensor];
    // Items start and end on whole bytes (copy_item_elems), sub-byte dtypes too.
    const uint64_t at = elements_bytes(t.out.dtype, it.first);
    const uint64_t len = elements_bytes(t.out.dtype, it.last) - at;
    if (MappedFile::any_fault()) check_item_inputs(t, false);  // before the bytes leave
    const ItemInputs& in = it.inputs ? *it.inputs : mapped_inputs();
    // Host bytes: the item's buffer, or a copy's input; none for what a device sink gets from the device.
    const uint8_t* bytes = it.buffer ? it.buffer : it.on_device ? nullptr : in.copy_bytes(t, it.first);
    const bool selected = is_selected(opt_.selected, it.tensor);
    const bool transformed = it.buffer || it.on_device;  // copies have no scales
    const ScalesOut sc = transformed ? scales_out(plan_, opt_.selected, it) : ScalesOut{};
    try {
      if (device_sink_) {
        deliver_device(it, bytes, selected ? len : 0, at, sc);
      } else {
        if (selected) out_.write(it.tensor, at, bytes, len);
        if (sc.len) out_.write(sc.tensor, sc.offset, it.buffer + scales_at_, sc.len);
      }
    } catch (const Error&) {
      check_item_inputs(t, true);  // a copy from a truncated map fails inside the kernel: say why
      throw;
    }
    const bool segment_done = it.segment_left->fetch_sub(1) == 1;
    if (!pread_) release_item(t, it.first, it.last, segment_done);
    ++items_;
  }

  // A device sink's delivery: bytes the CPU made or copied go up first; the sink enqueues its
  // copies on the slot's stream, which is waited for before the bytes count as delivered.
  void deliver_device(const Item& it, const uint8_t* bytes, uint64_t len, uint64_t at, const ScalesOut& sc) {
    DeviceStage::Slot& slot = *it.slot;
    if (!it.on_device) {
      device_->upload(slot, 0, bytes, len);
      if (sc.len) device_->upload(slot, scales_at_, it.buffer + scales_at_, sc.len);
    }
    if (len) out_.write_device(it.tensor, at, slot.device, len, slot.stream);
    if (sc.len) out_.write_device(sc.tensor, sc.offset, slot.device + scales_at_, sc.len, slot.stream);
    device_->wait(slot);
    if (len) out_.delivered(it.tensor, len);
    if (sc.len) out_.delivered(sc.tensor, sc.len);
  }

  const Plan& plan_;
  const ExecOptions& opt_;
  const bool pread_;
  uint64_t scales_at_ = 0;
  BufferPool pool_;
  InputsPool staging_;
  AmaxCache amax_;
  ItemSource items_of_;
  Delivery out_;
  DeviceStage* device_;
  const bool device_sink_;
  std::optional<WriteTurns<Item>> turns_;
  std::atomic<uint64_t> read_ns_{0}, transform_ns_{0}, write_ns_{0}, items_{0};
  std::atomic<bool> failed_{false};
  std::exception_ptr first_error_;
  std::mutex error_mu_;
};

}  // namespace

namespace {

using AwaitNode = flow::async_node<Item, Item>;

// Items whose device work is still running wait here, in order, on a thread of their own, so that
// no worker of the graph sleeps on a stream: the workers read, stage and write other items
// meanwhile. Each item goes back into the graph (to `write`) once its stream is done.
class DeviceWaiter {
 public:
  explicit DeviceWaiter(Run& run) : run_(run), thread_([this] { loop(); }) {}
  ~DeviceWaiter() {
    queue_.push({});  // the end
    thread_.join();
  }
  void push(const Item& it, AwaitNode::gateway_type& gateway) {
    gateway.reserve_wait();
    queue_.push({it, &gateway});
  }

 private:
  struct Entry {
    Item it;
    AwaitNode::gateway_type* gateway = nullptr;
  };
  void loop() {
    for (;;) {
      Entry e;
      queue_.pop(e);
      if (!e.gateway) return;
      run_.await(e.it);
      e.gateway->try_put(e.it);
      e.gateway->release_wait();
    }
  }
  Run& run_;
  oneapi::tbb::concurrent_bounded_queue<Entry> queue_;
  std::thread thread_;
};

}  // namespace

ExecStats execute(const Plan& plan, TensorSink& sink, const ExecOptions& opt) {
  ExecStats stats;
  stats.threads = opt.threads ? opt.threads : static_cast<unsigned>(oneapi::tbb::info::default_concurrency());
  size_pipeline(opt.memory_budget, stats.threads, stats.chunk_bytes, stats.buffers);
  // Items larger than a chunk (a whole expert slot) hold more each: fewer of them are in flight.
  uint64_t scales_at = 0;
  const uint64_t buffer = item_buffer_bytes(plan, stats.chunk_bytes, scales_at);
  stats.buffers = std::max<uint64_t>(2, std::min(stats.buffers, opt.memory_budget / (2 * buffer)));
  Run run(plan, sink, opt, stats);
  run.start();
  std::optional<DeviceWaiter> waiter;
  if (opt.device) waiter.emplace(run);
  oneapi::tbb::task_arena arena(static_cast<int>(stats.threads));
  arena.execute([&] {
    flow::graph g;
    flow::input_node<Item> source(g, [&](oneapi::tbb::flow_control& fc) {
      Item it;
      if (!run.next(it)) fc.stop();
      return it;
    });
    flow::limiter_node<Item> limiter(g, stats.buffers);
    flow::function_node<Item, Item> read(g, flow::unlimited, [&](Item it) { return run.read(it); });
    flow::function_node<Item, Item> transform(g, flow::unlimited, [&](Item it) { return run.transform(it); });
    AwaitNode await(g, flow::unlimited, [&](const Item& it, AwaitNode::gateway_type& gateway) {
      if (it.on_device) waiter->push(it, gateway);
      else gateway.try_put(it);
    });
    // An item written frees its buffer for the limiter; a write may write items left by others.
    using WriteNode = flow::multifunction_node<Item, std::tuple<flow::continue_msg>>;
    WriteNode write(g, flow::unlimited, [&](const Item& it, WriteNode::output_ports_type& freed) {
      run.write_in_turn(it, [&] { std::get<0>(freed).try_put(flow::continue_msg()); });
    });
    flow::make_edge(source, limiter);
    flow::make_edge(limiter, read);
    flow::make_edge(read, transform);
    if (waiter) {  // device items wait off the workers; the CPU path goes straight on
      flow::make_edge(transform, await);
      flow::make_edge(await, write);
    } else {
      flow::make_edge(transform, write);
    }
    flow::make_edge(flow::output_port<0>(write), limiter.decrementer());
    source.activate();
    g.wait_for_all();
  });
  waiter.reset();
  run.finish(stats);
  return stats;
}

}  // namespace ckpt
