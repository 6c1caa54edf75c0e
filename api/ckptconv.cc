// The public façade (include/ckptconv/ckptconv.h) over the internal pipeline: it translates
// options and errors at the boundary and adapts the caller's TensorSink to the executor's.
// Everything it calls stays private to the library.
#include "ckptconv/ckptconv.h"

#include <chrono>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "cuda/choice.h"
#include "formats/error.h"
#include "formats/mapped_file.h"
#include "pipeline/convert.h"
#include "transforms/kernels.h"
#if defined(CKPT_HAVE_CUDA)
#include "cuda/kernels.h"
#endif

namespace ckptconv {

namespace {

// Runs `f`, turning the library's internal errors into the public type; anything else (a sink's
// own exception, bad_alloc) passes through unchanged.
template <typename F>
auto translated(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const ckpt::Error& e) {
    const ErrorKind kind = e.kind() == ckpt::ErrorKind::Usage          ? ErrorKind::Usage
                           : e.kind() == ckpt::ErrorKind::InvalidInput ? ErrorKind::InvalidInput
                           : e.kind() == ckpt::ErrorKind::Io           ? ErrorKind::Io
                                                                       : ErrorKind::Other;
    throw Error(kind, e.what());
  }
}

ckpt::RemoteOptions remote_options(const Options::Remote& r) {
  ckpt::RemoteOptions o;
  o.concurrency = r.concurrency;
  o.retries = r.retries;
  o.timeout_s = r.timeout_s;
  o.aws_access_key_id = r.aws_access_key_id;
  o.aws_secret_access_key = r.aws_secret_access_key;
  o.aws_session_token = r.aws_session_token;
  o.aws_region = r.aws_region;
  o.aws_endpoint_url = r.aws_endpoint_url;
  o.bearer_token = r.bearer_token;
  return o;
}

ckpt::PlanOptions plan_options(const Options& o) {
  ckpt::PlanOptions p;
  p.direction = static_cast<ckpt::Direction>(o.to);
  p.dtype = static_cast<ckpt::OutType>(o.dtype);
  p.max_shard_size = o.max_shard_size;
  p.family = o.family;
  p.mtp = static_cast<ckpt::MtpMode>(o.mtp);
  p.ep_rank = o.ep_rank;
  p.ep_size = o.ep_size;
  p.quantize = static_cast<ckpt::QuantizeMode>(o.quantize);
  return p;
}

ckpt::RunOptions run_options(const Options& o) {
  ckpt::RunOptions r;
  r.threads = o.threads;
  r.memory_budget = o.memory_budget;
  r.io = static_cast<ckpt::IoMode>(o.io);
  if (o.on_progress)
    r.on_progress = [cb = o.on_progress](uint64_t done, uint64_t total) { cb(Progress{done, total}); };
  r.device = ckpt::device_choice(o.device);
  return r;
}

// The options' process-wide requests, and the checks a plan cannot make.
void apply(const Options& o) {
  static_assert(static_cast<int>(Direction::Hf) == static_cast<int>(ckpt::Direction::Hf));
  static_assert(static_cast<int>(OutDType::F32) == static_cast<int>(ckpt::OutType::F32));
  static_assert(static_cast<int>(Mtp::Off) == static_cast<int>(ckpt::MtpMode::Off));
  static_assert(static_cast<int>(Quantize::Real) == static_cast<int>(ckpt::QuantizeMode::Real));
  static_assert(static_cast<int>(IoMode::Pread) == static_cast<int>(ckpt::IoMode::Pread));
  if (o.memory_budget < ckpt::kMinMemoryBudget)
    ckpt::fail_usage("memory_budget must be at least {} bytes", ckpt::kMinMemoryBudget);
  if (o.ep_rank && *o.ep_rank >= o.ep_size) ckpt::fail_usage("ep_rank {} is not below ep_size {}", *o.ep_rank, o.ep_size);
  if (o.ep_size == 0) ckpt::fail_usage("ep_size must be at least 1");
  if (o.isa != Isa::Auto) {
    const auto isa = static_cast<ckpt::Isa>(static_cast<int>(o.isa) - 1);
    if (!ckpt::use_isa(isa)) ckpt::fail_usage("isa {}: this CPU does not support it", ckpt::isa_name(isa));
  }
  ckpt::device_choice(o.device);  // an unusable GPU is refused before planning, saying why
  if (o.guard_sigbus) ckpt::MappedFile::install_sigbus_guard();
}

// The caller's sink as the executor's.
class SinkAdapter final : public ckpt::TensorSink {
 public:
  SinkAdapter(const std::vector<TensorDesc>& descs, ckptconv::TensorSink& sink)
      : descs_(descs), sink_(sink), device_(dynamic_cast<DeviceTensorSink*>(&sink)) {}
  void write(size_t t, uint64_t offset, const void* data, uint64_t len) override {
    sink_.write(descs_[t], offset, data, len);
  }
  void complete(size_t t) override { sink_.complete(descs_[t]); }
  bool on_device() const override { return device_ != nullptr; }
  void write_device(size_t t, uint64_t offset, const void* data, uint64_t len, void* stream) override {
    device_->write_device(descs_[t], offset, data, len, stream);
  }

 private:
  const std::vector<TensorDesc>& descs_;
  ckptconv::TensorSink& sink_;
  DeviceTensorSink* device_;
};

RunStats run_stats(const ckpt::ExecStats& e, double seconds, uint64_t bytes, size_t tensors) {
  RunStats r;
  r.output_bytes = bytes;
  r.tensors = tensors;
  r.seconds = seconds;
  r.read_s = e.read_s;
  r.transform_s = e.transform_s;
  r.write_s = e.write_s;
  r.threads = e.threads;
  r.chunk_bytes = e.chunk_bytes;
  r.items_in_flight = e.buffers;
  r.isa = std::string(ckpt::isa_name(ckpt::kernels().isa));
  if (e.device) {
    r.device = e.device->name;
    r.h2d_bytes = e.device->h2d_bytes;
    r.d2h_bytes = e.device->d2h_bytes;
  }
  return r;
}

std::vector<bool> selected_of(const Selection& s, size_t n) {
  if (s.tensors.empty()) return {};
  std::vector<bool> v(n, false);
  for (size_t i : s.tensors) {
    if (i >= n) ckpt::fail_usage("selection: tensor index {} is past the plan's {} tensors", i, n);
    v[i] = true;
  }
  return v;
}

}  // namespace

struct Conversion::Impl {
  ckpt::Conversion conv;
  Options options;
  std::vector<TensorDesc> tensors;
  std::unordered_map<std::string_view, size_t> by_name;  // the first tensor of each name
};

Conversion::Conversion(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Conversion::Conversion(Conversion&&) noexcept = default;
Conversion& Conversion::operator=(Conversion&&) noexcept = default;
Conversion::~Conversion() = default;

Conversion Conversion::plan(const std::filesystem::path& input, const Options& options) {
  return translated([&] {
    apply(options);
    auto conv = ckpt::Conversion::plan(input, plan_options(options), remote_options(options.remote));
    auto impl = std::make_unique<Impl>(Impl{std::move(conv), options, {}, {}});
    const ckpt::Plan& p = impl->conv.plan();
    std::vector<std::string> subdir(p.shards.size());
    for (const auto& t : impl->conv.targets())
      for (uint32_t k = t.first_shard; k < t.last_shard; ++k) subdir[k] = t.rel;
    impl->tensors.reserve(p.tensors.size());
    for (size_t i = 0; i < p.tensors.size(); ++i) {
      const ckpt::PlannedTensor& t = p.tensors[i];
      impl->tensors.push_back(
          {i, t.out.name, std::string(ckpt::dtype_name(t.out.dtype)), t.out.shape, t.nbytes, t.shard, subdir[t.shard]});
    }
    for (const auto& d : impl->tensors) impl->by_name.emplace(d.name, d.index);
    return Conversion(std::move(impl));
  });
}

const std::vector<TensorDesc>& Conversion::tensors() const { return impl_->tensors; }

const TensorDesc* Conversion::find(std::string_view name) const {
  const auto it = impl_->by_name.find(name);
  return it == impl_->by_name.end() ? nullptr : &impl_->tensors[it->second];
}

const Options& Conversion::options() const { return impl_->options; }

PlanSummary Conversion::summary() const {
  const ckpt::Plan& p = impl_->conv.plan();
  PlanSummary s;
  s.input_tensors = impl_->conv.checkpoint().tensors().size();
  s.output_tensors = p.tensors.size();
  s.dequantized = p.dequantized;
  s.quantized = p.quantized;
  s.dropped = p.dropped.size();
  s.input_bytes = p.input_bytes;
  s.output_bytes = p.output_bytes;
  s.shards = p.shards.size();
  return s;
}

RunStats Conversion::execute(ckptconv::TensorSink& sink, const Selection& selection) const {
  return translated([&] {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<bool> selected = selected_of(selection, impl_->tensors.size());
    uint64_t bytes = 0;
    size_t count = 0;
    for (const auto& d : impl_->tensors)
      if (selected.empty() || selected[d.index]) bytes += d.nbytes, ++count;
    SinkAdapter adapter(impl_->tensors, sink);
    // In-process sinks have no file lock to spread writes over: items in plan order keep the
    // tensors a MemorySink holds half-assembled to about one.
    ckpt::RunOptions run = run_options(impl_->options);
    run.lanes = 1;
    const ckpt::ExecStats e = impl_->conv.execute(adapter, run, std::move(selected));
    return run_stats(e, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), bytes, count);
  });
}

WriteStats Conversion::write(const std::filesystem::path& out_dir, const WriteOptions& options) const {
  return translated([&] {
    const ckpt::WriteSummary w =
        impl_->conv.write(out_dir, ckpt::WriteOptions{options.overwrite, options.resume}, run_options(impl_->options));
    WriteStats s;
    static_cast<RunStats&>(s) =
        run_stats(w.exec, w.execute_s, impl_->conv.plan().output_bytes, impl_->tensors.size());
    s.shards = impl_->conv.plan().shards.size();
    s.reused_shards = w.reused_shards;
    return s;
  });
}

Selection Selection::names(const Conversion& c, const std::vector<std::string>& names) {
  Selection s;
  for (const auto& n : names) {
    const TensorDesc* d = c.find(n);
    if (!d) throw Error(ErrorKind::Usage, ckpt::one_line("selection: the plan has no tensor '" + n + "'"));
    s.tensors.push_back(d->index);
  }
  return s;
}

Selection Selection::shards(const Conversion& c, const std::vector<uint32_t>& shards) {
  Selection s;
  for (const auto& d : c.tensors())
    for (uint32_t k : shards)
      if (d.shard == k) s.tensors.push_back(d.index);
  return s;
}

// ---------------------------------------------------------------------------------------------

namespace {

// The bookkeeping of a sink that assembles whole tensors in the caller's memory (host or device):
// one allocation per tensor, before its first byte, and `ready` once it is whole.
struct Assembly {
  std::function<void*(const TensorDesc&)> allocate;
  std::function<void(const TensorDesc&, void*)> ready;
  std::mutex mu;
  std::unordered_map<size_t, void*> buffers;  // tensors being assembled (nullptr: skipped)

  // The tensor's memory (nullptr: skipped). The allocation happens under the lock so that a
  // tensor gets exactly one; the caller's copy does not.
  void* buffer(const TensorDesc& t) {
    std::lock_guard lock(mu);
    auto [it, fresh] = buffers.try_emplace(t.index, nullptr);
    if (fresh) it->second = allocate(t);
    return it->second;
  }

  void complete(const TensorDesc& t) {
    void* data = nullptr;
    {
      std::lock_guard lock(mu);
      const auto it = buffers.find(t.index);
      if (it == buffers.end()) {  // no bytes were written: a tensor of 0 bytes
        data = allocate(t);
      } else {
        data = it->second;
        buffers.erase(it);
        if (!data) return;  // skipped
      }
    }
    ready(t, data);
  }
};

}  // namespace

struct MemorySink::State : Assembly {};

MemorySink::MemorySink(Allocate allocate, Ready ready) : state_(std::make_unique<State>()) {
  state_->allocate = std::move(allocate);
  state_->ready = std::move(ready);
}

MemorySink::~MemorySink() = default;

void MemorySink::write(const TensorDesc& t, uint64_t offset, const void* data, uint64_t len) {
  if (void* dst = state_->buffer(t)) std::memcpy(static_cast<uint8_t*>(dst) + offset, data, len);
}

void MemorySink::complete(const TensorDesc& t) { state_->complete(t); }

// ---------------------------------------------------------------------------------------------

void DeviceTensorSink::write(const TensorDesc& t, uint64_t, const void*, uint64_t) {
  throw Error(ErrorKind::Usage, "a device sink got host bytes of '" + t.name + "': run it with Options::device a GPU");
}

struct DeviceMemorySink::State : Assembly {};

DeviceMemorySink::DeviceMemorySink(Allocate allocate, Ready ready) : state_(std::make_unique<State>()) {
  state_->allocate = std::move(allocate);
  state_->ready = std::move(ready);
}

DeviceMemorySink::~DeviceMemorySink() = default;

void DeviceMemorySink::write_device(const TensorDesc& t, uint64_t offset, const void* data, uint64_t len,
                                    void* stream) {
  void* dst = state_->buffer(t);
  if (!dst) return;
#if defined(CKPT_HAVE_CUDA)
  translated([&] { ckpt::cuda::copy_async(static_cast<uint8_t*>(dst) + offset, data, len, stream); });
#else
  (void)offset, (void)data, (void)len, (void)stream;
  throw Error(ErrorKind::Usage, "DeviceMemorySink: this library was built without CUDA");
#endif
}

void DeviceMemorySink::complete(const TensorDesc& t) { state_->complete(t); }

// ---------------------------------------------------------------------------------------------

Direction parse_direction(std::string_view s) {
  return translated([&] {
    const auto d = ckpt::parse_direction(s);
    if (!d) ckpt::fail_usage("'{}' is not a direction: native, hf or dequant", s);
    return static_cast<Direction>(*d);
  });
}

OutDType parse_dtype(std::string_view s) {
  return translated([&] {
    const auto d = ckpt::parse_out_type(s);
    if (!d) ckpt::fail_usage("'{}' is not an output dtype: bf16, f16 or f32", s);
    return static_cast<OutDType>(*d);
  });
}

uint64_t parse_size(std::string_view s, std::string_view option_name) {
  return translated([&] { return ckpt::parse_size(s, option_name); });
}

std::string_view version() { return CKPTCONV_VERSION; }

}  // namespace ckptconv
