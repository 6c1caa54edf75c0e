// The Python binding's native part (module ckptconv._ckptconv), over the public C++ API only
// (include/ckptconv/ckptconv.h, libckptconv.so). The pure-Python package (ckptconv/__init__.py)
// is the interface; this module offers it:
//
//   plan(input, to, family, dtype, mtp, ep_rank, ep_size, quantize, max_shard_size, threads,
//        memory_budget, io) -> Plan          headers only, GIL released
//   Plan.tensors() / summary() / write(out, overwrite, resume, progress) / stream(indices, progress)
//   Stream: the pull iterator over the push engine (below)
//   Error: RuntimeError with .kind ("usage", "invalid_input", "io", "other") and .exit_code
//
// Stream. Conversion::execute runs on a background std::thread into Stream::Sink, which assembles
// each tensor in plain C++ memory (no Python object, no GIL on worker threads) and, when the
// tensor is whole, pushes it into a queue of capacity 1, blocking while the queue is full; nor
// does it start a new tensor while the queue is full. So the engine holds the pipeline's buffers
// (the memory budget), at most one finished tensor the caller has not taken, and the tensors
// being assembled (about one per worker thread). `next` pops with the GIL released and wraps
// the bytes in a numpy array without copying (a capsule owns them). Closing (end of iteration,
// close(), garbage collection) cancels: every later sink call and the progress hook throw
// Cancelled, which stops the engine; the thread is joined with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <ckptconv/ckptconv.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace py = pybind11;
using namespace std::chrono_literals;

namespace {

PyObject* g_error = nullptr;  // ckptconv.Error

const char* kind_name(ckptconv::ErrorKind k) {
  switch (k) {
    case ckptconv::ErrorKind::Usage: return "usage";
    case ckptconv::ErrorKind::InvalidInput: return "invalid_input";
    case ckptconv::ErrorKind::Io: return "io";
    default: return "other";
  }
}

// Sets ckptconv.Error(message) with its kind and exit code as the pending Python exception.
void set_error(const ckptconv::Error& e) {
  PyObject* exc = PyObject_CallFunction(g_error, "s", e.what());
  if (!exc) return;  // the pending error (MemoryError) stands
  PyObject* kind = PyUnicode_FromString(kind_name(e.kind()));
  PyObject* code = PyLong_FromLong(e.exit_code());
  if (kind && code) {
    PyObject_SetAttrString(exc, "kind", kind);
    PyObject_SetAttrString(exc, "exit_code", code);
  }
  Py_XDECREF(kind);
  Py_XDECREF(code);
  PyErr_SetObject(g_error, exc);
  Py_DECREF(exc);
}

[[noreturn]] void usage(const std::string& message) { throw ckptconv::Error(ckptconv::ErrorKind::Usage, message); }

// Thrown by the sink and the progress hook to stop a run the caller abandoned.
struct Cancelled {};

// ---------------------------------------------------------------------------------------------
// Tensor memory, counted so that tests (and curious callers) can see how much the binding holds.

struct BufferCounters {
  std::atomic<uint64_t> live{0}, live_bytes{0}, peak{0}, peak_bytes{0}, allocated{0};
} g_buffers;

void raise_to(std::atomic<uint64_t>& peak, uint64_t v) {
  uint64_t p = peak.load();
  while (v > p && !peak.compare_exchange_weak(p, v)) {
  }
}

// Large tensors live in their own anonymous mappings (transparent huge pages where the kernel
// allows). A fresh mapping costs the kernel zeroing every page on first touch — as much CPU as the
// conversion itself — so while a stream runs, the mapping of the array the caller freed last is
// kept (one only) and reused, shrunk or grown in place, for the next tensor. It is kept only
// while some stream runs, and the caller freeing an array while the engine is blocked on the
// queue is exactly when the engine wants the next buffer, so this adds no resident memory at
// the peak: a tensor's pages change hands instead of being freed and faulted again.
class Mappings {
 public:
  static constexpr uint64_t kMin = 4ull << 20;  // smaller tensors: the heap

  uint8_t* get(uint64_t n) {
    void* p = nullptr;
    uint64_t cap = 0;
    {
      std::lock_guard lock(mu_);
      std::swap(p, spare_);
      std::swap(cap, spare_bytes_);
    }
    if (p) {
      const uint64_t have = round_up(cap), want = round_up(n);
      if (have > want) ::munmap(static_cast<uint8_t*>(p) + want, have - want);
      if (have >= want) return static_cast<uint8_t*>(p);
      void* q = ::mremap(p, have, want, MREMAP_MAYMOVE);
      if (q != MAP_FAILED) {
        ::madvise(q, want, MADV_HUGEPAGE);
        return static_cast<uint8_t*>(q);
      }
      ::munmap(p, have);
    }
    p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    ::madvise(p, n, MADV_HUGEPAGE);
    return static_cast<uint8_t*>(p);
  }

  void put(uint8_t* p, uint64_t n) {
    void* drop = p;
    uint64_t drop_bytes = n;
    {
      std::lock_guard lock(mu_);
      if (streams_ > 0) {
        std::swap(drop, spare_);
        std::swap(drop_bytes, spare_bytes_);
      }
    }
    if (drop) ::munmap(drop, drop_bytes);
  }

  void stream_started() {
    std::lock_guard lock(mu_);
    ++streams_;
  }
  void stream_finished() {
    void* drop = nullptr;
    uint64_t drop_bytes = 0;
    {
      std::lock_guard lock(mu_);
      if (--streams_ == 0) {
        std::swap(drop, spare_);
        std::swap(drop_bytes, spare_bytes_);
      }
    }
    if (drop) ::munmap(drop, drop_bytes);
  }

 private:
  static uint64_t round_up(uint64_t n) {
    static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    return (n + page - 1) / page * page;
  }
  std::mutex mu_;
  void* spare_ = nullptr;
  uint64_t spare_bytes_ = 0;
  int streams_ = 0;
};

Mappings& mappings() {
  static Mappings* m = new Mappings;  // never destroyed: arrays may be freed at interpreter exit
  return *m;
}

// One tensor's bytes: plain C++ memory, uninitialized (every byte is written by the engine).
struct Buffer {
  explicit Buffer(uint64_t n) : nbytes(n) {
    data = n >= Mappings::kMin ? mappings().get(n) : n ? new uint8_t[n] : nullptr;
    raise_to(g_buffers.peak, ++g_buffers.live);
    raise_to(g_buffers.peak_bytes, g_buffers.live_bytes += n);
    ++g_buffers.allocated;
  }
  ~Buffer() {
    if (nbytes >= Mappings::kMin) mappings().put(data, nbytes);
    else delete[] data;
    --g_buffers.live;
    g_buffers.live_bytes -= nbytes;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  uint8_t* data = nullptr;
  uint64_t nbytes;
};

// ---------------------------------------------------------------------------------------------
struct RunState;
// The run whose progress callable this (worker) thread is running, if any: that run's stream must
// not be iterated or closed from there (closing joins the very run that is calling).
thread_local const RunState* in_progress_callback = nullptr;

void check_not_in_progress_callback(const RunState* run) {
  if (in_progress_callback == run)
    throw std::runtime_error("ckptconv: a stream cannot be iterated or closed from its own progress callback");
}

// Runs: the state a progress hook and a sink share with the Python thread for one execution.

struct RunState {
  std::atomic<bool> cancel{false};
  PyObject* progress = nullptr;  // a Python callable (a reference is held), or null
  std::exception_ptr progress_error;  // what the callable raised (a py::error_already_set)

  explicit RunState(py::object cb) {
    if (!cb.is_none()) progress = cb.release().ptr();
  }
  ~RunState() {
    if (progress && Py_IsInitialized()) {
      py::gil_scoped_acquire gil;
      Py_DECREF(progress);
    }
  }
  RunState(const RunState&) = delete;
  RunState& operator=(const RunState&) = delete;

  // Options::on_progress, on a worker thread: the callable with the GIL held.
  void report(const ckptconv::Progress& p) {
    if (cancel) throw Cancelled{};
    if (!progress) return;
    py::gil_scoped_acquire gil;
    struct Mark {
      explicit Mark(const RunState* r) { in_progress_callback = r; }
      ~Mark() { in_progress_callback = nullptr; }
    } mark(this);
    try {
      py::handle cb(progress);
      cb(p.done_bytes, p.total_bytes);
    } catch (py::error_already_set&) {
      if (!progress_error) progress_error = std::current_exception();  // under the GIL
      cancel = true;
      throw Cancelled{};
    }
  }
};

// The plan, shared by the Python Plan object and the streams it started (which may outlive it).
struct Core {
  std::optional<ckptconv::Conversion> conv;
  std::string input;
  // The run the progress hook reports to; set before each execution (runs never overlap: busy).
  std::shared_ptr<RunState> run;
  std::atomic<bool> busy{false};
};

struct BusyGuard {
  explicit BusyGuard(Core& c) : core(c) {
    if (core.busy.exchange(true))
      usage("this plan is already being executed (one run at a time; plan again for another)");
  }
  ~BusyGuard() { core.busy = false; }
  Core& core;
};

// Waits on `cv` until `done()` holds, in slices, checking for KeyboardInterrupt (and other
// signal handlers) in between with the GIL. Called with the GIL released and `lock` held; throws
// py::error_already_set (re-acquiring the GIL on the way out) when a handler raised.
template <typename Done>
void wait_interruptibly(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, Done done) {
  while (!done()) {
    cv.wait_for(lock, 100ms);
    if (done()) return;
    lock.unlock();
    {
      py::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
    lock.lock();
  }
}

// Runs `f` on its own thread while this (Python) thread waits without the GIL, answering
// KeyboardInterrupt: `cancel` stops the run, which is joined before the interrupt propagates.
template <typename F>
void run_released(RunState& run, F f) {
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  std::exception_ptr error;
  std::thread worker([&] {
    try {
      f();
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard lock(mu);
    finished = true;
    cv.notify_all();
  });
  {
    py::gil_scoped_release nogil;
    std::unique_lock lock(mu);
    try {
      wait_interruptibly(cv, lock, [&] { return finished; });
    } catch (...) {
      run.cancel = true;
      if (lock.owns_lock()) lock.unlock();
      worker.join();
      throw;
    }
  }
  worker.join();
  if (run.progress_error) std::rethrow_exception(run.progress_error);
  if (error) std::rethrow_exception(error);
}

// ---------------------------------------------------------------------------------------------
// Options

uint64_t size_of(const py::handle& v, const char* name) {
  if (py::isinstance<py::bool_>(v)) usage(std::string(name) + ": expected a byte count or a size like '5GB'");
  if (py::isinstance<py::int_>(v)) {
    const auto n = v.cast<long long>();
    if (n < 0) usage(std::string(name) + ": a size cannot be negative");
    return static_cast<uint64_t>(n);
  }
  if (py::isinstance<py::str>(v)) return ckptconv::parse_size(v.cast<std::string>(), name);
  usage(std::string(name) + ": expected a byte count or a size like '5GB'");
}

template <typename E>
E one_of(const std::string& value, const char* name, std::initializer_list<std::pair<const char*, E>> choices) {
  std::string list;
  for (const auto& [s, e] : choices) {
    if (value == s) return e;
    list += list.empty() ? s : std::string(", ") + s;
  }
  usage(std::string(name) + ": '" + value + "' is not one of " + list);
}

// The command line's convert options, checked as the command line checks them.
ckptconv::Options make_options(const std::string& to, const std::string& family, const std::string& dtype,
                               const std::string& mtp, std::optional<long long> ep_rank, long long ep_size,
                               const std::string& quantize, const py::handle& max_shard_size, long long threads,
                               const py::handle& memory_budget, const std::string& io) {
  ckptconv::Options o;
  o.to = ckptconv::parse_direction(to);
  o.family = family;
  o.dtype = ckptconv::parse_dtype(dtype);
  o.mtp = one_of<ckptconv::Mtp>(mtp, "mtp", {{"auto", ckptconv::Mtp::Auto}, {"on", ckptconv::Mtp::On},
                                              {"off", ckptconv::Mtp::Off}});
  o.quantize = one_of<ckptconv::Quantize>(quantize, "quantize",
                                          {{"none", ckptconv::Quantize::None},
                                           {"placeholder", ckptconv::Quantize::Placeholder},
                                           {"real", ckptconv::Quantize::Real}});
  o.io = one_of<ckptconv::IoMode>(io, "io", {{"mmap", ckptconv::IoMode::Mmap}, {"pread", ckptconv::IoMode::Pread}});
  if (ep_size < 1 || ep_size > UINT32_MAX) usage("ep_size must be at least 1");
  if (ep_rank && (*ep_rank < 0 || *ep_rank >= ep_size))
    usage("ep_rank " + std::to_string(*ep_rank) + " is not below ep_size " + std::to_string(ep_size));
  if (o.to == ckptconv::Direction::Dequant && (ep_rank || ep_size != 1))
    usage("ep_rank/ep_size apply to to='native' only");
  if (o.to != ckptconv::Direction::Hf && o.quantize != ckptconv::Quantize::None)
    usage("quantize applies to to='hf' only");
  if (ep_rank) o.ep_rank = static_cast<uint32_t>(*ep_rank);
  o.ep_size = static_cast<uint32_t>(ep_size);
  o.max_shard_size = size_of(max_shard_size, "max_shard_size");
  o.memory_budget = size_of(memory_budget, "memory_budget");
  if (threads < 0 || threads > 4096) usage("threads: " + std::to_string(threads) + " is not a thread count");
  o.threads = static_cast<unsigned>(threads);
  return o;
}

// Options::remote from a dict of its fields (None: the defaults, no credentials).
void set_remote(ckptconv::Options& o, const py::object& remote) {
  if (remote.is_none()) return;
  if (!py::isinstance<py::dict>(remote)) usage("remote must be a dict (see ckptconv.remote_from_env)");
  auto& r = o.remote;
  for (const auto& [k, v] : remote.cast<py::dict>()) {
    const std::string key = py::str(k);
    if (key == "concurrency") r.concurrency = v.cast<unsigned>();
    else if (key == "retries") r.retries = v.cast<unsigned>();
    else if (key == "timeout_s") r.timeout_s = v.cast<double>();
    else if (key == "aws_access_key_id") r.aws_access_key_id = v.cast<std::string>();
    else if (key == "aws_secret_access_key") r.aws_secret_access_key = v.cast<std::string>();
    else if (key == "aws_session_token") r.aws_session_token = v.cast<std::string>();
    else if (key == "aws_region") r.aws_region = v.cast<std::string>();
    else if (key == "aws_endpoint_url") r.aws_endpoint_url = v.cast<std::string>();
    else if (key == "bearer_token") r.bearer_token = v.cast<std::string>();
    else usage("remote: unknown key '" + key + "'");
  }
}

// ---------------------------------------------------------------------------------------------
// numpy views

// The numpy dtype of a safetensors dtype; empty for sub-byte types (handed as raw bytes).
const char* numpy_dtype(const std::string& st) {
  static const std::unordered_map<std::string, const char*> map = {
      {"BOOL", "bool"},    {"U8", "uint8"},        {"I8", "int8"},          {"U16", "uint16"},
      {"I16", "int16"},    {"U32", "uint32"},      {"I32", "int32"},        {"U64", "uint64"},
      {"I64", "int64"},    {"F16", "float16"},     {"BF16", "uint16"},      {"F32", "float32"},
      {"F64", "float64"},  {"F8_E4M3", "uint8"},   {"F8_E5M2", "uint8"},    {"F8_E8M0", "uint8"},
      {"F8_E4M3FNUZ", "uint8"}, {"F8_E5M2FNUZ", "uint8"}, {"C64", "complex64"}};
  const auto it = map.find(st);
  return it == map.end() ? "" : it->second;
}

// A numpy array over `buf` without a copy: a capsule that owns the buffer is its base.
py::array to_array(const ckptconv::TensorDesc& d, std::unique_ptr<Buffer> buf) {
  const char* dt = numpy_dtype(d.dtype);
  std::vector<py::ssize_t> shape;
  if (*dt) {
    for (uint64_t s : d.shape) shape.push_back(static_cast<py::ssize_t>(s));
  } else {  // F4, F6_*: packed bits, no numpy element; the bytes, flat
    dt = "uint8";
    shape.push_back(static_cast<py::ssize_t>(d.nbytes));
  }
  const py::dtype dtype(dt);
  if (!buf || buf->nbytes == 0) return py::array(dtype, shape);  // numpy owns an empty array
  Buffer* raw = buf.release();
  py::capsule owner(raw, [](void* p) { delete static_cast<Buffer*>(p); });
  return py::array(dtype, shape, {}, raw->data, owner);
}

py::tuple desc_tuple(const ckptconv::TensorDesc& d) {
  py::tuple shape(d.shape.size());
  for (size_t i = 0; i < d.shape.size(); ++i) shape[i] = py::int_(d.shape[i]);
  return py::make_tuple(d.index, d.name, d.dtype, shape, d.nbytes, d.shard, d.subdir);
}

// ---------------------------------------------------------------------------------------------
// The pull iterator

class Stream {
 public:
  Stream(std::shared_ptr<Core> core, std::vector<size_t> indices, py::object progress)
      : core_(std::move(core)), indices_(std::move(indices)), run_(std::make_shared<RunState>(std::move(progress))) {
    if (core_->busy.exchange(true))
      usage("this plan is already being executed (one run at a time; plan again for another)");
    owns_busy_ = true;
  }
  ~Stream() {
    try {
      close();
    } catch (...) {
    }
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // The next (index, array), in completion order; StopIteration at the end.
  py::tuple next() {
    check_not_in_progress_callback(run_.get());
    if (closed_) throw py::stop_iteration();
    if (!worker_.joinable() && !finished_) start();
    Item item;
    {
      py::gil_scoped_release nogil;
      std::unique_lock lock(mu_);
      wait_interruptibly(has_item_, lock, [&] { return !queue_.empty() || finished_; });
      if (!queue_.empty()) {
        item = std::move(queue_.front());
        queue_.pop_front();
        has_space_.notify_all();
      }
    }
    if (!item.buffer) {  // finished: the run is over
      finish();
      if (run_->progress_error) std::rethrow_exception(run_->progress_error);
      if (error_) std::rethrow_exception(error_);
      throw py::stop_iteration();
    }
    const ckptconv::TensorDesc& d = core_->conv->tensors()[item.index];
    ++delivered_;
    return py::make_tuple(item.index, to_array(d, std::move(item.buffer)));
  }

  // Stops the engine (if it runs), joins it and frees what it had assembled. Idempotent.
  void close() {
    if (closed_) return;
    check_not_in_progress_callback(run_.get());
    closed_ = true;
    {
      std::lock_guard lock(mu_);
      run_->cancel = true;
      has_space_.notify_all();
    }
    finish();
    std::lock_guard lock(mu_);
    queue_.clear();
  }

  bool closed() const { return closed_; }
  size_t delivered() const { return delivered_; }

 private:
  struct Item {
    size_t index = 0;
    std::unique_ptr<Buffer> buffer;
  };

  // Assembles tensors in C++ memory and queues each whole one; never touches Python.
  class Sink final : public ckptconv::TensorSink {
   public:
    explicit Sink(Stream& s) : s_(s) {}
    void write(const ckptconv::TensorDesc& t, uint64_t offset, const void* data, uint64_t len) override {
      if (s_.run_->cancel) throw Cancelled{};
      Buffer* b = nullptr;
      {
        std::lock_guard lock(mu_);
        const auto it = assembling_.find(t.index);
        if (it != assembling_.end()) b = it->second.get();
      }
      if (!b) {
        // A new tensor: not started while a finished one waits for the consumer, so the engine
        // holds at most one finished tensor ahead of the caller. (Waiting on the consumer alone
        // cannot deadlock: the queue is full, so the consumer is not waiting for the engine.)
        {
          std::unique_lock lock(s_.mu_);
          s_.has_space_.wait(lock, [&] { return s_.queue_.size() < kCapacity || s_.run_->cancel; });
          if (s_.run_->cancel) throw Cancelled{};
        }
        std::lock_guard lock(mu_);
        auto& slot = assembling_[t.index];
        if (!slot) slot = std::make_unique<Buffer>(t.nbytes);
        b = slot.get();
      }
      std::memcpy(b->data + offset, data, len);
    }
    void complete(const ckptconv::TensorDesc& t) override {
      std::unique_ptr<Buffer> b;
      {
        std::lock_guard lock(mu_);
        const auto it = assembling_.find(t.index);
        if (it != assembling_.end()) {
          b = std::move(it->second);
          assembling_.erase(it);
        }
      }
      if (!b) b = std::make_unique<Buffer>(0);  // a tensor of no bytes
      std::unique_lock lock(s_.mu_);
      s_.has_space_.wait(lock, [&] { return s_.queue_.size() < kCapacity || s_.run_->cancel; });
      if (s_.run_->cancel) throw Cancelled{};
      s_.queue_.push_back(Item{t.index, std::move(b)});
      s_.has_item_.notify_one();
    }

   private:
    Stream& s_;
    std::mutex mu_;
    std::unordered_map<size_t, std::unique_ptr<Buffer>> assembling_;
  };

  static constexpr size_t kCapacity = 1;

  void start() {
    core_->run = run_;
    mappings().stream_started();
    counted_ = true;
    worker_ = std::thread([this] {
      std::exception_ptr error;
      try {
        Sink sink(*this);
        ckptconv::Selection sel;
        sel.tensors = indices_;
        core_->conv->execute(sink, sel);
      } catch (const Cancelled&) {
      } catch (...) {
        error = std::current_exception();
      }
      std::lock_guard lock(mu_);
      error_ = error;
      finished_ = true;
      has_item_.notify_all();
    });
  }

  // Joins the worker (without the GIL: the progress hook may be waiting for it) and releases the
  // plan for the next run.
  void finish() {
    if (worker_.joinable()) {
      py::gil_scoped_release nogil;
      worker_.join();
    }
    finished_ = true;
    if (counted_) {
      counted_ = false;
      mappings().stream_finished();
    }
    if (owns_busy_) {
      owns_busy_ = false;
      core_->busy = false;
    }
  }

  std::shared_ptr<Core> core_;
  std::vector<size_t> indices_;
  std::shared_ptr<RunState> run_;
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable has_item_, has_space_;
  std::deque<Item> queue_;
  bool finished_ = false;
  std::exception_ptr error_;
  bool closed_ = false, owns_busy_ = false, counted_ = false;
  size_t delivered_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Plan

class Plan {
 public:
  explicit Plan(std::shared_ptr<Core> core) : core_(std::move(core)) {}

  py::list tensors() const {
    py::list out;
    for (const auto& d : core_->conv->tensors()) out.append(desc_tuple(d));
    return out;
  }

  py::dict summary() const {
    const ckptconv::PlanSummary s = core_->conv->summary();
    py::dict d;
    d["input_tensors"] = s.input_tensors;
    d["output_tensors"] = s.output_tensors;
    d["dequantized"] = s.dequantized;
    d["quantized"] = s.quantized;
    d["dropped"] = s.dropped;
    d["input_bytes"] = s.input_bytes;
    d["output_bytes"] = s.output_bytes;
    d["shards"] = s.shards;
    return d;
  }

  bool busy() const { return core_->busy; }

  // Indices of the tensors with these keys ("name", or "rank-NNNN/name" for all-ranks plans).
  std::vector<size_t> select(const std::vector<std::string>& keys) const {
    std::unordered_map<std::string, size_t> index;
    for (const auto& d : core_->conv->tensors())
      index.emplace(d.subdir.empty() ? d.name : d.subdir + "/" + d.name, d.index);
    std::vector<size_t> out;
    out.reserve(keys.size());
    for (const auto& k : keys) {
      const auto it = index.find(k);
      if (it == index.end()) usage("names: the plan has no tensor '" + k + "'");
      out.push_back(it->second);
    }
    return out;
  }

  std::unique_ptr<Stream> stream(std::optional<std::vector<std::string>> names, py::object progress) const {
    std::vector<size_t> indices;
    if (names) indices = select(*names);
    auto s = std::make_unique<Stream>(core_, indices, std::move(progress));
    if (names && names->empty()) s->close();  // nothing selected (an empty Selection means all)
    return s;
  }

  py::dict write(const std::string& out, bool overwrite, bool resume, py::object progress) const {
    BusyGuard busy(*core_);
    auto run = std::make_shared<RunState>(std::move(progress));
    core_->run = run;
    ckptconv::WriteStats w;
    run_released(*run, [&] { w = core_->conv->write(out, ckptconv::WriteOptions{overwrite, resume}); });
    py::dict d = summary();
    d["reused_shards"] = w.reused_shards;
    d["execute_seconds"] = w.seconds;
    d["threads"] = w.threads;
    d["chunk_bytes"] = w.chunk_bytes;
    d["items_in_flight"] = w.items_in_flight;
    d["isa"] = w.isa;
    d["device"] = w.device;
    py::dict stages;
    stages["read"] = w.read_s;
    stages["dequantize"] = w.transform_s;
    stages["write"] = w.write_s;
    d["stage_seconds"] = stages;
    return d;
  }

 private:
  std::shared_ptr<Core> core_;
};

Plan make_plan(const std::string& input, const std::string& to, const std::string& family, const std::string& dtype,
               const std::string& mtp, std::optional<long long> ep_rank, long long ep_size,
               const std::string& quantize, py::object max_shard_size, long long threads, py::object memory_budget,
               const std::string& io, const py::object& remote, const std::string& device) {
  ckptconv::Options o = make_options(to, family, dtype, mtp, ep_rank, ep_size, quantize, max_shard_size, threads,
                                     memory_budget, io);
  set_remote(o, remote);
  o.device = device;
  auto core = std::make_shared<Core>();
  core->input = input;
  // The hook outlives no run it reports to: each execution sets core->run first. A weak pointer
  // keeps the Conversion (inside Core) from owning its own Core.
  std::weak_ptr<Core> weak = core;
  o.on_progress = [weak](const ckptconv::Progress& p) {
    if (auto c = weak.lock())
      if (auto run = c->run) run->report(p);
  };
  {
    py::gil_scoped_release nogil;
    core->conv.emplace(ckptconv::Conversion::plan(input, o));
  }
  return Plan(std::move(core));
}

}  // namespace

PYBIND11_MODULE(_ckptconv, m) {
  m.doc() = "ckptconv's native part; use the ckptconv package.";

  g_error = PyErr_NewExceptionWithDoc(
      "ckptconv.Error",
      "A conversion failed. str(e) is the one line `ckptconv` prints after 'ckptconv: '; e.kind is "
      "'usage', 'invalid_input', 'io' or 'other' and e.exit_code the command's exit status for it "
      "(2, 3, 4, 1).",
      PyExc_RuntimeError, nullptr);
  if (!g_error) throw py::error_already_set();
  py::handle err(g_error);
  err.attr("kind") = "other";  // class defaults, for instances made without them
  err.attr("exit_code") = 1;
  m.attr("Error") = err;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ckptconv::Error& e) {
      set_error(e);
    }
  });

  m.def("version", [] { return std::string(ckptconv::version()); });
  m.def(
      "parse_size", [](py::object v, const std::string& name) { return size_of(v, name.c_str()); },
      py::arg("value"), py::arg("name") = "size");
  m.def("buffer_stats", [] {
    py::dict d;
    d["live"] = g_buffers.live.load();
    d["live_bytes"] = g_buffers.live_bytes.load();
    d["peak"] = g_buffers.peak.load();
    d["peak_bytes"] = g_buffers.peak_bytes.load();
    d["allocated"] = g_buffers.allocated.load();
    return d;
  });
  m.def("reset_buffer_peak", [] {
    g_buffers.peak = g_buffers.live.load();
    g_buffers.peak_bytes = g_buffers.live_bytes.load();
  });

  m.def("plan", &make_plan, py::arg("input"), py::arg("to"), py::arg("family"), py::arg("dtype"), py::arg("mtp"),
        py::arg("ep_rank"), py::arg("ep_size"), py::arg("quantize"), py::arg("max_shard_size"), py::arg("threads"),
        py::arg("memory_budget"), py::arg("io"), py::arg("remote") = py::none(), py::arg("device") = "cpu");

  py::class_<Stream>(m, "Stream")
      .def("__iter__", [](py::object self) { return self; })
      .def("__next__", &Stream::next)
      .def("close", &Stream::close)
      .def_property_readonly("closed", &Stream::closed)
      .def_property_readonly("delivered", &Stream::delivered);

  py::class_<Plan>(m, "Plan")
      .def("tensors", &Plan::tensors)
      .def("summary", &Plan::summary)
      .def_property_readonly("busy", &Plan::busy)
      .def("stream", &Plan::stream, py::arg("names"), py::arg("progress"))
      .def("write", &Plan::write, py::arg("out"), py::arg("overwrite"), py::arg("resume"), py::arg("progress"));
}
