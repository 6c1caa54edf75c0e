// ckptconv — convert safetensors checkpoints between the HuggingFace layout and NeMo AutoModel's
// native layout, as a library.
//
// A conversion is staged:
//
//   Conversion c = Conversion::plan("/models/MiniMax-M2", options);    // headers only, no data read
//   c.execute(sink);              // every output tensor, or a Selection of them, into a TensorSink
//   c.write("/out");              // or: the file sink and publishing (shards, config, index)
//
// The plan is computed once from the input's headers and config.json and is the single source of
// truth: every output tensor's name, dtype, shape and bytes (`tensors()`), and the shard and offset
// it has in a written checkpoint. `execute` streams it through a bounded pipeline (read → transform
// → deliver) into a sink of the caller's choosing; `write` is `execute` into shard files followed
// by publishing, with the guarantees of the `ckptconv convert` command (nothing under a final name
// until complete, resume of an interrupted run). Peak memory is the memory budget plus what a sink
// keeps: a MemorySink holds each tensor only until the caller's callback has taken it.
//
// Threading: the pipeline runs on its own worker threads (Options::threads). TensorSink callbacks
// are called from those threads, concurrently; see TensorSink. A Conversion may be executed any
// number of times, but not from two threads at once.
//
// Errors: every failure is a ckptconv::Error (std::runtime_error) with a kind — Usage, InvalidInput
// (the input breaks the safetensors format or the conversion rules), Io (disk full, permissions),
// Other — and one line naming the file and tensor where it has them. An exception thrown by a sink
// callback stops the run and is rethrown from `execute` unchanged.
//
// Side effects: none beyond the files the caller asks for. The library prints nothing (progress is
// Options::on_progress), reads no environment variable, and installs no signal handler unless
// Options::guard_sigbus asks for one (see there).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#if defined(__GNUC__)
#define CKPTCONV_API __attribute__((visibility("default")))
#else
#define CKPTCONV_API
#endif

namespace ckptconv {

// ---------------------------------------------------------------------------------------------
// Errors

enum class ErrorKind : int { Other = 1, Usage = 2, InvalidInput = 3, Io = 4 };

class CKPTCONV_API Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }
  // The process exit status the command line uses for this kind: 1, 2, 3 or 4.
  int exit_code() const noexcept { return static_cast<int>(kind_); }

 private:
  ErrorKind kind_;
};

// ---------------------------------------------------------------------------------------------
// Options

enum class Direction { Dequant, Native, Hf };         // SPEC §1: HF->HF dequantized, HF->native, native->HF
enum class OutDType { BF16, F16, F32 };               // --dtype
enum class Mtp { Auto, On, Off };                     // --mtp
enum class Quantize { None, Placeholder, Real };      // --quantize (Direction::Hf)
enum class IoMode { Mmap, Pread };                    // --io
enum class Isa { Auto, Scalar, Avx2, Avx512 };        // kernel instruction set

struct Progress {
  uint64_t done_bytes = 0, total_bytes = 0;  // output bytes delivered so far / to deliver
};

struct Options {
  Direction to = Direction::Dequant;
  std::string family = "auto";   // minimax_m2, minimax_m3, minimax_m3_vl, mistral3_vlm,
                                 // mistral3_causal, nemotron_v3, deepseek_v3, or auto (config.json)
  OutDType dtype = OutDType::BF16;
  Mtp mtp = Mtp::Auto;
  std::optional<uint32_t> ep_rank;  // with ep_size > 1: this expert-parallel rank's experts only
  uint32_t ep_size = 1;
  Quantize quantize = Quantize::None;
  uint64_t max_shard_size = 5'000'000'000;  // bytes of tensors per output shard (write only)
  unsigned threads = 0;                     // 0: all cores
  uint64_t memory_budget = 1ull << 30;      // bytes held by work in flight (at least 4 MiB)
  IoMode io = IoMode::Mmap;
  // The kernels' instruction set; not Auto switches it for the whole process (Error(Usage) when
  // this CPU lacks it). Results are bit-identical on every ISA.
  Isa isa = Isa::Auto;
  // Called a few times a second from a worker thread while a run moves bytes; may be empty.
  std::function<void(const Progress&)> on_progress;
  // With IoMode::Mmap, an input file truncated under a run makes its pages vanish, and touching
  // one raises SIGBUS, which kills the process. With guard_sigbus the library installs a SIGBUS
  // handler (chaining to any previous one for other addresses) that maps zeros over a vanished
  // input page and turns the run into an InvalidInput error. It is process-wide, so it is off
  // unless asked for; IoMode::Pread needs no guard (a short read is an error).
  bool guard_sigbus = false;
  // Where the transform runs: "cpu"; "cuda" or "cuda:N" (dequantize, group and FP8 export on that
  // GPU through pinned staging and CUDA streams, bit-identical to the CPU; Error(Usage) saying why
  // when it cannot be used or the library was built without CUDA); "auto" (the GPU when one is
  // usable and the plan has FP8 or grouping work, else the CPU). A DeviceTensorSink needs a GPU.
  std::string device = "cpu";
  // An s3:// or http(s):// input (a build with libcurl reads them in place, by ranged GETs):
  // requests in flight, retries of a failed request, the seconds a request may stall, and the
  // credentials. The library reads no environment: pass what AWS_ACCESS_KEY_ID,
  // AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL (S3-compatible stores,
  // path-style) or HF_TOKEN (a bearer token for HTTP) would hold. Never written anywhere.
  struct Remote {
    unsigned concurrency = 16, retries = 6;
    double timeout_s = 60;
    std::string aws_access_key_id, aws_secret_access_key, aws_session_token, aws_region = "us-east-1",
        aws_endpoint_url, bearer_token;
  } remote;
};

// Parsers for the command line's spellings ("native", "bf16", "5GB", …): Error(Usage) otherwise.
CKPTCONV_API Direction parse_direction(std::string_view s);
CKPTCONV_API OutDType parse_dtype(std::string_view s);
CKPTCONV_API uint64_t parse_size(std::string_view s, std::string_view option_name = "size");

// ---------------------------------------------------------------------------------------------
// The plan

// One output tensor of the plan.
struct TensorDesc {
  size_t index = 0;             // its place in Conversion::tensors()
  std::string name;
  std::string dtype;            // safetensors dtype name: "BF16", "F8_E4M3", "F32", …
  std::vector<uint64_t> shape;
  uint64_t nbytes = 0;
  uint32_t shard = 0;           // the output shard a written checkpoint puts it in
  std::string subdir;           // "" or, with ep_size > 1 and no ep_rank, "rank-0000" …
};

struct PlanSummary {
  size_t input_tensors = 0, output_tensors = 0, dequantized = 0, quantized = 0, dropped = 0;
  uint64_t input_bytes = 0, output_bytes = 0;
  size_t shards = 0;
  std::string family;   // the family the rules came from ("" for the dequant direction)
};

// Which output tensors a run delivers. Empty: all of them.
struct Selection {
  std::vector<size_t> tensors;  // indices into Conversion::tensors()
  // The tensors of these names (Error(Usage) for a name the plan does not have), or of these
  // output shards.
  CKPTCONV_API static Selection names(const class Conversion& c, const std::vector<std::string>& names);
  CKPTCONV_API static Selection shards(const class Conversion& c, const std::vector<uint32_t>& shards);
};

// ---------------------------------------------------------------------------------------------
// Sinks

// Receives converted tensors. For each selected tensor: `write` calls that together cover its
// bytes exactly once, in any order and from any worker thread — several at once, for the same or
// different tensors — each a byte range of the tensor (`offset` from its first byte; runs of
// whole rows for converted tensors, any range for tensors copied unchanged; `data` valid only
// during the call); then exactly one `complete` call, after every write of that tensor has
// returned (a tensor of 0 bytes gets only `complete`). Tensors complete in any order. A sink
// must be thread-safe for concurrent calls on different tensors and on different ranges of one
// tensor.
class CKPTCONV_API TensorSink {
 public:
  virtual ~TensorSink() = default;
  virtual void write(const TensorDesc& tensor, uint64_t offset, const void* data, uint64_t len) = 0;
  virtual void complete(const TensorDesc& tensor) = 0;
};

// Assembles whole tensors in memory the caller provides: `allocate` is called once per tensor,
// before its first byte, and returns `nbytes` of writable memory (or nullptr to skip the tensor:
// its bytes are dropped and `ready` is not called; a tensor of 0 bytes is never skipped and may
// get nullptr); `ready` is called when the tensor is whole, with that memory, and may keep it.
// The library never frees it. Peak memory is the budget plus the tensors being assembled plus
// what the caller keeps. Both callbacks may be called from several worker threads at once.
class CKPTCONV_API MemorySink final : public TensorSink {
 public:
  using Allocate = std::function<void*(const TensorDesc&)>;
  using Ready = std::function<void(const TensorDesc&, void* data)>;
  MemorySink(Allocate allocate, Ready ready);
  ~MemorySink() override;
  void write(const TensorDesc& tensor, uint64_t offset, const void* data, uint64_t len) override;
  void complete(const TensorDesc& tensor) override;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Receives converted tensors in GPU memory (Options::device a GPU): each byte range arrives as
// a device pointer on that GPU and a CUDA stream (a cudaStream_t) in whose order its bytes are
// ready. The sink enqueues its own use of them on that stream (a cudaMemcpyAsync into its tensor,
// say) and returns; the library waits for the stream before it reuses the memory and before it
// calls `complete`. The rules of TensorSink hold otherwise; `write` (host bytes) is never called.
class CKPTCONV_API DeviceTensorSink : public TensorSink {
 public:
  virtual void write_device(const TensorDesc& tensor, uint64_t offset, const void* device_data, uint64_t len,
                            void* stream) = 0;
  void write(const TensorDesc& tensor, uint64_t offset, const void* data, uint64_t len) final;
};

// Assembles whole tensors in GPU memory the caller provides, as MemorySink does in host memory:
// `allocate` returns `nbytes` of device memory on the run's GPU (cudaMalloc, a framework's tensor
// storage; nullptr skips the tensor), `ready` is called once the tensor is whole there. Each range
// is copied device to device on the library's stream: no output byte passes through the host.
class CKPTCONV_API DeviceMemorySink final : public DeviceTensorSink {
 public:
  using Allocate = std::function<void*(const TensorDesc&)>;
  using Ready = std::function<void(const TensorDesc&, void* device_data)>;
  DeviceMemorySink(Allocate allocate, Ready ready);
  ~DeviceMemorySink() override;
  void write_device(const TensorDesc& tensor, uint64_t offset, const void* device_data, uint64_t len,
                    void* stream) override;
  void complete(const TensorDesc& tensor) override;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// ---------------------------------------------------------------------------------------------
// Runs

struct RunStats {
  uint64_t output_bytes = 0;    // bytes delivered
  size_t tensors = 0;           // tensors completed
  double seconds = 0;
  double read_s = 0, transform_s = 0, write_s = 0;  // stage time summed over threads
  unsigned threads = 0;
  uint64_t chunk_bytes = 0, items_in_flight = 0;
  std::string isa;
  std::string device = "cpu";             // "cpu", or the GPU that transformed ("cuda:0 (NVIDIA H200)")
  uint64_t h2d_bytes = 0, d2h_bytes = 0;  // bytes copied to and from the GPU
};

struct WriteOptions {
  bool overwrite = false;  // replace a checkpoint already in the directory
  bool resume = false;     // finish an interrupted `write` into the same directory
};

struct WriteStats : RunStats {
  size_t shards = 0, reused_shards = 0;
};

class CKPTCONV_API Conversion {
 public:
  // Opens the input (a checkpoint directory or one .safetensors file), validates every header and
  // plans the conversion. Reads no tensor data.
  static Conversion plan(const std::filesystem::path& input, const Options& options = {});

  Conversion(Conversion&&) noexcept;
  Conversion& operator=(Conversion&&) noexcept;
  ~Conversion();

  const std::vector<TensorDesc>& tensors() const;
  const TensorDesc* find(std::string_view name) const;
  PlanSummary summary() const;
  const Options& options() const;

  // Converts the selected tensors (all by default) into `sink`. (With ep_size > 1 and no ep_rank
  // every rank's tensors are in the plan: names repeat, TensorDesc::subdir tells them apart.)
  RunStats execute(TensorSink& sink, const Selection& selection = {}) const;
  // Writes the whole conversion as a checkpoint into `out_dir` and publishes it (config.json,
  // side files, index): what `ckptconv convert` does.
  WriteStats write(const std::filesystem::path& out_dir, const WriteOptions& options = {}) const;

 private:
  struct Impl;
  explicit Conversion(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The library's version, "MAJOR.MINOR.PATCH".
CKPTCONV_API std::string_view version();

}  // namespace ckptconv
