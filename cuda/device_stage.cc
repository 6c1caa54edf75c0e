#include "cuda/device_stage.h"

#include <cuda_runtime.h>
#include <oneapi/tbb/concurrent_queue.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <vector>

#include "cuda/device.h"
#include "cuda/errors.h"
#include "cuda/kernels.h"
#include "formats/error.h"
#include "transforms/element.h"

namespace ckpt::cuda {

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail_cuda(what, cudaGetErrorString(e));
}

uint64_t align_up(uint64_t n) { return (n + 255) / 256 * 256; }

// One rectangle of a piece that an item converts: input rows [row0, +rows) × columns [col0, +cols),
// written at element `dst` of the item's output (relative to its first element), rows of the
// output `row_len` apart; transposed pieces write input (r, c) at output (c, r).
struct Rect {
  const Piece* piece = nullptr;
  size_t index = 0;
  uint64_t row0 = 0, rows = 0, col0 = 0, cols = 0;
  uint64_t dst = 0;
};

// The rectangles of output elements [first, last) of `t`: the same cut as the CPU's produce()
// (pipeline/produce.cc), from the same input_rect rule. An untransposed piece's rows all span
// the piece's width, except the item's first and last output rows, which may be partial.
void rects_of(const PlannedTensor& t, uint64_t first, uint64_t last, std::vector<Rect>& out) {
  out.clear();
  const uint64_t len = t.row_len;
  for (size_t i = 0; i < t.pieces.size(); ++i) {
    const Piece& p = t.pieces[i];
    const InputRect rect = input_rect(t, p, first, last);
    if (rect.empty()) continue;
    if (p.transpose) {
      const uint64_t at = (p.out_row0 + rect.col0 - p.in_col0) * len + p.out_col0 + (rect.row0 - p.in_row0);
      out.push_back({&p, i, rect.row0, rect.row1 - rect.row0, rect.col0, rect.col1 - rect.col0, at - first});
      continue;
    }
    auto columns = [&](uint64_t r_in) {  // output columns [lo, hi) of input row r_in
      const uint64_t r = p.out_row0 + (r_in - p.in_row0);
      const uint64_t lo = std::max(p.out_col0, r == first / len ? first % len : 0);
      const uint64_t row_end = r == (last - 1) / len ? (last - 1) % len + 1 : len;
      return std::pair{lo, std::min(p.out_col0 + p.out_cols(), row_end)};
    };
    const uint64_t a = rect.row0, b = rect.row1;
    std::vector<uint64_t> cuts{a};
    if (b - a > 1 && columns(a) != columns(a + 1)) cuts.push_back(a + 1);
    if (b - a > 2 && columns(b - 1) != columns(b - 2)) cuts.push_back(b - 1);
    cuts.push_back(b);
    for (size_t k = 0; k + 1 < cuts.size(); ++k) {
      const auto [lo, hi] = columns(cuts[k]);
      if (lo >= hi) continue;
      const uint64_t at = (p.out_row0 + cuts[k] - p.in_row0) * len + lo;
      out.push_back({&p, i, cuts[k], cuts[k + 1] - cuts[k], p.in_col0 + (lo - p.out_col0), hi - lo, at - first});
    }
  }
}

// The dtype a piece's elements are read as on the device.
DType source_dtype(const Piece& p) {
  if (!p.scale.info) return p.input.info->dtype;
  return p.format == Fp8::E4M3 ? DType::F8_E4M3 : DType::F8_E5M2;
}

// A slot's stream, events and buffers (pinned host memory and device memory), freed with it.
struct CudaSlot : DeviceStage::Slot {
  int gpu = 0;
  // The staging buffer's two halves take turns: one is filled while the other's copy runs.
  // sent[h]: the last copy out of half h (blocking sync: waiters sleep).
  cudaEvent_t sent[2] = {nullptr, nullptr};
  cudaEvent_t done = nullptr;
  uint8_t* staging = nullptr;  // pinned: an item's inputs on their way to the device
  uint8_t* device_in = nullptr;
  uint8_t* device_values = nullptr;  // float32 values of an FP8 export, allocated on first use
  uint64_t values_bytes = 0;
  int half = 0;         // the half being filled
  uint64_t cursor = 0;  // its bytes in use

  cudaStream_t cuda_stream() const { return static_cast<cudaStream_t>(stream); }

  ~CudaSlot() {
    cudaSetDevice(gpu);  // destructors report nothing: the run's error, if any, is already out
    if (stream) cudaStreamSynchronize(cuda_stream());
    cudaFreeHost(host);
    cudaFreeHost(staging);
    cudaFree(device);
    cudaFree(device_in);
    cudaFree(device_values);
    for (cudaEvent_t e : {sent[0], sent[1], done})
      if (e) cudaEventDestroy(e);
    if (stream) cudaStreamDestroy(cuda_stream());
  }
};

// Switches to the slot's other staging half once the copy out of it is done.
void flip(CudaSlot& s, const char* what) {
  s.half ^= 1;
  check(cudaEventSynchronize(s.sent[s.half]), what);
  s.cursor = 0;
}

class CudaStage final : public DeviceStage {
 public:
  CudaStage(const StageOptions& o, const DeviceInfo& info) : options_(o) {
    stats_.name = fmt::format("cuda:{} ({})", info.index, info.name);
    // The device's context now, not inside the first item, where every thread would wait for it.
    const auto start = std::chrono::steady_clock::now();
    check(cudaSetDevice(o.device), "set device");
    check(cudaFree(nullptr), "context");
    stats_.init_seconds = static_cast<double>(elapsed_ns(start)) * 1e-9;
  }

  ~CudaStage() override { free_slots(); }

  void begin(uint64_t out_bytes, uint64_t scales_at) override {
    free_slots();
    out_bytes_ = out_bytes;
    scales_at_ = scales_at;
    // Items larger than the staging buffer go through it in batches; 4 MiB keeps the pinned
    // memory (slow to allocate) small while each copy stays long enough to run at full speed.
    staging_bytes_ = options_.staging_bytes ? options_.staging_bytes : std::clamp<uint64_t>(out_bytes, 1ull << 20, 4ull << 20);
    half_bytes_ = staging_bytes_ / 2 / 256 * 256;
  }

  bool runs(const PlannedTensor& t) const override {
    if (t.is_copy() || t.quantize == QuantizeMode::Placeholder) return false;
    const DType target = t.quantize == QuantizeMode::Real ? DType::F32 : t.out.dtype;
    for (const Piece& p : t.pieces) {
      const bool scaled = p.scale.info != nullptr;
      if (!convertible(source_dtype(p), scaled, scaled ? p.scale.info->dtype : DType::F32, target)) return false;
    }
    return true;
  }

  Slot* acquire() override {
    CudaSlot* s = nullptr;
    if (free_.try_pop(s)) return s;
    return make_slot();
  }

  void release(Slot* slot) override { free_.push(static_cast<CudaSlot*>(slot)); }

  uint8_t* host_buffer(Slot& slot) override {
    if (!slot.host) {
      const auto start = std::chrono::steady_clock::now();
      check(cudaSetDevice(options_.device), "set device");
      check(cudaHostAlloc(reinterpret_cast<void**>(&slot.host), out_bytes_, cudaHostAllocDefault), "pinned allocation");
      pinned_bytes_ += out_bytes_;
      setup_ns_ += elapsed_ns(start);
    }
    return slot.host;
  }

  ScaleRange transform(Slot& slot, const Plan& plan, size_t index, uint64_t first, uint64_t last,
                       const ItemInputs& in, AmaxCache& amax, bool to_host) override {
    const auto start = std::chrono::steady_clock::now();
    auto& s = static_cast<CudaSlot&>(slot);
    check(cudaSetDevice(s.gpu), "set device");
    const PlannedTensor& t = plan.tensors[index];
    thread_local std::vector<Rect> rects;
    rects_of(t, first, last, rects);
    s.cursor = 0;
    ScaleRange scales;
    uint64_t bytes = elements_bytes(t.out.dtype, last - first);
    if (t.quantize == QuantizeMode::Real) {
      uint8_t* values = values_buffer(s, (last - first) * 4);
      for (const Rect& r : rects) send(s, t, r, in, values, DType::F32);
      scales = quantize_item(s, plan, index, first, last, values, amax);
    } else {
      for (const Rect& r : rects) send(s, t, r, in, s.device, t.out.dtype);
    }
    if (to_host) {
      host_buffer(s);
      copy_back(s, 0, bytes);
      if (scales.last > scales.first) {
        const PlannedTensor& st = plan.tensors[static_cast<size_t>(scale_tensor_of(plan, index))];
        copy_back(s, scales_at_, (scales.last - scales.first) * dtype_size(st.out.dtype));
      }
    }
    items_ += 1;
    ns_ += elapsed_ns(start);
    return scales;
  }

  void upload(Slot& slot, uint64_t at, const uint8_t* host, uint64_t len) override {
    auto& s = static_cast<CudaSlot&>(slot);
    check(cudaSetDevice(s.gpu), "set device");
    for (uint64_t off = 0; off < len;) {
      const uint64_t n = std::min(half_bytes_, len - off);
      flip(s, "upload");
      uint8_t* staged = s.staging + s.half * half_bytes_;
      std::memcpy(staged, host + off, n);
      check(cudaMemcpyAsync(s.device + at + off, staged, n, cudaMemcpyHostToDevice, s.cuda_stream()), "upload");
      check(cudaEventRecord(s.sent[s.half], s.cuda_stream()), "event");
      h2d_ += n;
      off += n;
    }
    check(cudaEventSynchronize(s.sent[s.half]), "upload");
  }

  void wait(Slot& slot) override {
    auto& s = static_cast<CudaSlot&>(slot);
    check(cudaSetDevice(s.gpu), "set device");
    check(cudaEventRecord(s.done, s.cuda_stream()), "event");
    check(cudaEventSynchronize(s.done), "device sink");
  }

  DeviceStats stats() const override {
    DeviceStats d = stats_;
    d.items = items_;
    d.h2d_bytes = h2d_;
    d.d2h_bytes = d2h_;
    d.device_bytes = device_bytes_;
    d.pinned_bytes = pinned_bytes_;
    d.seconds = static_cast<double>(ns_) * 1e-9;
    d.setup_seconds = static_cast<double>(setup_ns_) * 1e-9;
    return d;
  }

 private:
  static uint64_t elapsed_ns(std::chrono::steady_clock::time_point since) {
    return static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - since).count());
  }

  CudaSlot* make_slot() {
    const auto start = std::chrono::steady_clock::now();
    auto s = std::make_unique<CudaSlot>();
    s->gpu = options_.device;
    check(cudaSetDevice(s->gpu), "set device");
    cudaStream_t stream = nullptr;
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    s->stream = stream;
    for (cudaEvent_t* e : {&s->sent[0], &s->sent[1], &s->done})
      check(cudaEventCreateWithFlags(e, cudaEventBlockingSync | cudaEventDisableTiming), "event");
    for (cudaEvent_t e : s->sent) check(cudaEventRecord(e, s->cuda_stream()), "event");  // nothing in flight yet
    check(cudaHostAlloc(reinterpret_cast<void**>(&s->staging), staging_bytes_, cudaHostAllocDefault),
          "pinned allocation");
    uint8_t* out = nullptr;
    check(cudaMalloc(reinterpret_cast<void**>(&out), out_bytes_), "device allocation");
    s->device = out;
    check(cudaMalloc(reinterpret_cast<void**>(&s->device_in), staging_bytes_), "device allocation");
    pinned_bytes_ += staging_bytes_;
    device_bytes_ += out_bytes_ + staging_bytes_;
    setup_ns_ += elapsed_ns(start);
    std::lock_guard lock(mu_);
    return owned_.emplace_back(std::move(s)).get();
  }

  void free_slots() {
    std::lock_guard lock(mu_);
    free_.clear();
    owned_.clear();
  }

  uint8_t* values_buffer(CudaSlot& s, uint64_t bytes) {
    if (s.values_bytes < bytes) {
      check(cudaStreamSynchronize(s.cuda_stream()), "values");
      cudaFree(s.device_values);
      s.device_values = nullptr;
      s.values_bytes = 0;
      check(cudaMalloc(reinterpret_cast<void**>(&s.device_values), bytes), "device allocation");
      device_bytes_ += bytes;
      s.values_bytes = bytes;
    }
    return s.device_values;
  }

  // Staging bytes for n rows × w columns of a piece: the elements, then whole scale-grid rows.
  struct Cost {
    uint64_t es, grid_row_bytes, block_rows;
    uint64_t of(uint64_t n, uint64_t w) const {
      return align_up(n * w * es) + (grid_row_bytes ? align_up((n / block_rows + 2) * grid_row_bytes) : 0);
    }
  };

  // Converts rectangle r into `dst` (device), through the staging buffer in as many batches as
  // it takes: column slices where one row does not fit, then runs of rows.
  void send(CudaSlot& s, const PlannedTensor& t, const Rect& r, const ItemInputs& in, uint8_t* dst, DType out) {
    const Piece& p = *r.piece;
    const bool scaled = p.scale.info != nullptr;
    const Cost cost{dtype_size(p.input.info->dtype), scaled ? p.scheme.grid_cols * dtype_size(p.scale.info->dtype) : 0,
                    scaled ? p.scheme.block_rows : 1};
    const uint64_t cap = half_bytes_;
    if (cost.of(1, 1) > cap)
      fail(ErrorKind::Usage, "CUDA staging buffer of {} bytes cannot hold one element of '{}'", staging_bytes_,
           t.out.name);
    uint64_t w = r.cols;
    while (w > 1 && cost.of(1, w) > cap) w = (w + 1) / 2;
    for (uint64_t c = 0; c < r.cols; c += w) {
      const uint64_t cw = std::min(w, r.cols - c);
      uint64_t n = 1;
      while (n < r.rows && cost.of(n * 2, cw) <= cap) n *= 2;
      for (uint64_t k = 0; k < r.rows; k += n) {
        const uint64_t rows = std::min(n, r.rows - k);
        if (s.cursor + cost.of(rows, cw) > cap) flip(s, "copy to device");  // fill one while the other's copy runs
        batch(s, t, r, in, k, rows, c, cw, cost, dst, out);
      }
    }
  }

  // One batch: rows [k, k + rows) × columns [c, c + cw) of the rectangle (and their scale-grid
  // rows) into staging, to the device, converted into place.
  void batch(CudaSlot& s, const PlannedTensor& t, const Rect& r, const ItemInputs& in, uint64_t k, uint64_t rows,
             uint64_t c, uint64_t cw, const Cost& cost, uint8_t* dst, DType out) {
    const Piece& p = *r.piece;
    if (options_.fail_at_batch && ++batches_ == options_.fail_at_batch)
      fail_cuda("copy to device", "injected failure (StageOptions::fail_at_batch)");
    const uint64_t row = r.row0 + k, col = r.col0 + c, row_bytes = cw * cost.es;
    const uint64_t base = s.half * half_bytes_ + s.cursor;  // the same offset in both buffers
    uint8_t* host = s.staging + base;
    for (uint64_t j = 0; j < rows; ++j) std::memcpy(host + j * row_bytes, in.input(p, r.index, row + j, col), row_bytes);
    uint64_t used = align_up(rows * row_bytes);
    Convert cv;
    cv.src = s.device_in + base;
    cv.src_dtype = source_dtype(p);
    cv.rows = rows;
    cv.cols = cw;
    cv.src_stride = cw;
    if (p.scale.info) {
      const DequantScheme& d = p.scheme;
      const uint64_t g0 = row / d.block_rows, g1 = (row + rows - 1) / d.block_rows + 1;
      for (uint64_t g = g0; g < g1; ++g)
        std::memcpy(host + used + (g - g0) * cost.grid_row_bytes, in.scale_row(p, r.index, g), cost.grid_row_bytes);
      cv.scales = s.device_in + base + used;
      cv.scale_dtype = p.scale.info->dtype;
      cv.block_rows = d.block_rows;
      cv.block_cols = d.block_cols;
      cv.grid_cols = d.grid_cols;
      cv.row_phase = row - g0 * d.block_rows;
      cv.col_phase = col;
      used += align_up((g1 - g0) * cost.grid_row_bytes);
    }
    check(cudaMemcpyAsync(s.device_in + base, host, used, cudaMemcpyHostToDevice, s.cuda_stream()), "copy to device");
    check(cudaEventRecord(s.sent[s.half], s.cuda_stream()), "event");
    h2d_ += used;
    s.cursor += used;
    const uint64_t len = t.row_len;
    const uint64_t at = p.transpose ? r.dst + c * len + k : r.dst + k * len + c;
    cv.dst = dst + at * dtype_size(out);
    cv.out = out;
    cv.dst_stride = len;
    cv.transpose = p.transpose;
    convert(cv, s.cuda_stream());
  }

  // FP8 export of the item's float32 values: codes at the start of the device buffer, scales
  // from scales_at — the layout the CPU's produce_quantized writes.
  ScaleRange quantize_item(CudaSlot& s, const Plan& plan, size_t index, uint64_t first, uint64_t last,
                           const uint8_t* values, AmaxCache& amax) {
    const PlannedTensor& t = plan.tensors[index];
    uint8_t* out = s.device;
    Quantize q;
    q.src = reinterpret_cast<const float*>(values);
    q.rows = (last - first) / t.row_len;
    q.cols = t.row_len;
    q.scheme = t.qscheme;
    q.codes = out;
    q.scales = out + scales_at_;
    if (t.qscheme == ScaleScheme::PerTensor) {
      // Its scale depends on every element: the CPU's amax pass, shared with the tensor's other items.
      static_assert(sizeof(float) == 4);
      const float sc = elem::fp8_block_scale(amax.get(plan, index));
      check(cudaMemcpyAsync(out + scales_at_, &sc, 4, cudaMemcpyHostToDevice, s.cuda_stream()), "copy to device");
    }
    quantize(q, s.cuda_stream());
    return scale_elements(t, first, last);
  }

  void copy_back(CudaSlot& s, uint64_t at, uint64_t bytes) {
    check(cudaMemcpyAsync(s.host + at, s.device + at, bytes, cudaMemcpyDeviceToHost, s.cuda_stream()), "copy to host");
    d2h_ += bytes;
  }

  StageOptions options_;
  DeviceStats stats_;
  uint64_t out_bytes_ = 0, scales_at_ = 0, staging_bytes_ = 0, half_bytes_ = 0;
  oneapi::tbb::concurrent_queue<CudaSlot*> free_;
  std::mutex mu_;
  std::vector<std::unique_ptr<CudaSlot>> owned_;
  std::atomic<uint64_t> items_{0}, h2d_{0}, d2h_{0}, device_bytes_{0}, pinned_bytes_{0}, ns_{0}, setup_ns_{0}, batches_{0};
};

}  // namespace

std::unique_ptr<DeviceStage> open_stage(const StageOptions& options) {
  const DeviceInfo info = usable_device(options.device);
  return std::make_unique<CudaStage>(options, info);
}

}  // namespace ckpt::cuda
