// ckptconv's command line: a thin client of the library. It parses options (SPEC §6), calls one
// library entry point per subcommand, prints results, and maps every failure to one line on
// stderr and the exit status of its kind: 0 success, 1 other, 2 usage, 3 invalid input, 4 I/O.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>

#include "bench/harness.h"
#include "dist/launch.h"
#include "formats/checkpoint.h"
#include "formats/error.h"
#include "formats/mapped_file.h"
#include "pipeline/convert.h"
#include "pipeline/inspect.h"
#include "pipeline/progress.h"
#include "pipeline/summary.h"
#include "pipeline/synth.h"
#include "pipeline/verify.h"
#include "transforms/family.h"
#include "transforms/kernels.h"
#include "cuda/choice.h"
#if defined(CKPT_HAVE_MPI)
#include <xxhash.h>

#include "dist/mpi_job.h"
#include "pipeline/manifest.h"
#endif

namespace {

using namespace ckpt;

struct ConvertArgs {
  std::string in, out, family = "auto", to = "dequant", dtype = "bf16", mtp = "auto",
              quantize = "none", max_shard = "5GB", budget = "1GiB", device = "auto";
  std::optional<unsigned> ep_rank, ep_size, rank, world_size;
  unsigned threads = 0;
  bool overwrite = false, resume = false, json = false, dry_run = false, wait = false;
  std::string sink = "file", io = "mmap";
  unsigned remote_concurrency = RemoteOptions{}.concurrency, remote_retries = RemoteOptions{}.retries;
  double remote_timeout = RemoteOptions{}.timeout_s;
};

// Credentials and endpoints of remote inputs come from the usual environment variables
// (formats/remote_client.h); the library never reads them itself.
RemoteOptions remote_options(unsigned concurrency = RemoteOptions{}.concurrency,
                             unsigned retries = RemoteOptions{}.retries,
                             double timeout_s = RemoteOptions{}.timeout_s) {
  RemoteOptions r;
#if defined(CKPT_HAVE_CURL)
  r = remote_options_from_env([](const char* n) { return std::getenv(n); });
#endif
  if (concurrency == 0) fail_usage("--remote-concurrency must be at least 1");
  r.concurrency = concurrency;
  r.retries = retries;
  // libcurl counts connect and low-speed (stall) limits in whole seconds.
  if (!(timeout_s >= 1)) fail_usage("--remote-timeout must be at least 1 second");
  r.timeout_s = timeout_s;
  return r;
}

// The library's options for the command line, refusing option combinations that mean nothing.
// CLI11's check of --device (convert and bench).
std::string device_spelling(const std::string& v) {
  return is_device_spelling(v) ? std::string() : "not one of auto, cpu, cuda[:N]";
}

// The device stage's test hooks, from the environment (the device tests set them; see
// cuda/choice.h): CKPTCONV_CUDA_STAGING (staging bytes per slot), CKPTCONV_CUDA_FAIL_AT_BATCH.
DeviceHooks device_hooks() {
  DeviceHooks h;
  for (auto [name, value] : {std::pair{"CKPTCONV_CUDA_STAGING", &h.staging_bytes},
                             std::pair{"CKPTCONV_CUDA_FAIL_AT_BATCH", &h.fail_at_batch}})
    if (const char* v = std::getenv(name); v && *v) *value = parse_size(v, name);
  return h;
}

ConvertOptions convert_options(const ConvertArgs& a) {
  ConvertOptions o;
  o.in = a.in;
  o.out = a.out;
  const auto dir = parse_direction(a.to);
  if (!dir) fail_usage("--to: '{}' is not one of native, hf, dequant", a.to);
  const auto dtype = parse_out_type(a.dtype);
  if (!dtype) fail_usage("--dtype: '{}' is not one of bf16, f16, f32", a.dtype);
  if (*dir == Direction::Dequant) {
    if (a.ep_rank || a.ep_size) fail_usage("--ep-rank/--ep-size apply to --to native only");
    if (a.quantize != "none") fail_usage("--quantize applies to --to hf only");
  }
  if (*dir != Direction::Dequant) {
    if (a.ep_rank && !a.ep_size) fail_usage("--ep-rank needs --ep-size");
    if (a.ep_size && *a.ep_size == 0) fail_usage("--ep-size must be at least 1");
    if (a.ep_rank && *a.ep_rank >= *a.ep_size)
      fail_usage("--ep-rank {} is not below --ep-size {}", *a.ep_rank, *a.ep_size);
    if (*dir == Direction::Native && a.quantize != "none") fail_usage("--quantize applies to --to hf only");
  }
  o.run.device = device_choice(a.device, device_hooks(), local_rank([](const char* n) { return std::getenv(n); }));
  o.plan.direction = *dir;
  o.plan.dtype = *dtype;
  o.plan.max_shard_size = parse_size(a.max_shard, "--max-shard-size");
  o.plan.family = a.family;
  o.plan.mtp = a.mtp == "on" ? MtpMode::On : a.mtp == "off" ? MtpMode::Off : MtpMode::Auto;
  o.plan.ep_rank = a.ep_rank;
  o.plan.ep_size = a.ep_size.value_or(1);
  o.plan.quantize = a.quantize == "real"          ? QuantizeMode::Real
                    : a.quantize == "placeholder" ? QuantizeMode::Placeholder
                                                  : QuantizeMode::None;
  o.run.memory_budget = parse_size(a.budget, "--memory-budget");
  o.run.threads = a.threads;
  o.run.io = a.io == "pread" ? IoMode::Pread : IoMode::Mmap;
  o.remote = remote_options(a.remote_concurrency, a.remote_retries, a.remote_timeout);
  o.write.overwrite = a.overwrite;
  o.write.resume = a.resume;
  o.dry_run = a.dry_run;
  o.null_sink = a.sink == "null";
  return o;
}

// `publisher`: who publishes a split conversion when this rank does not.
void print_summary(const ConvertArgs& a, const ConvertSummary& s,
                   const std::string& publisher = "`ckptconv publish OUT` once every rank is complete") {
  const double gbps = s.execute_s > 0 ? static_cast<double>(s.output_bytes) / s.execute_s / 1e9 : 0;
  if (a.json) {
    std::cout << summary_json(s, {a.in, a.out, a.to, a.dtype, a.io}).dump(2) << "\n";
    return;
  }
  if (s.part && a.dry_run) {
    fmt::print("rank {} of {} would write {} of {} shard(s), {} (partition max/mean {:.3f})\n", s.part->rank,
               s.part->world, s.part_shards, s.shards, Progress::bytes(static_cast<double>(s.part_bytes)), s.balance);
  } else if (s.part) {
    fmt::print("rank {} of {}: {} of {} shard(s), {} written in {:.2f} s (partition max/mean {:.3f}); {}\n",
               s.part->rank, s.part->world, s.part_shards, s.shards,
               Progress::bytes(static_cast<double>(s.part_bytes)), s.total_s, s.balance,
               s.published ? "published " + a.out : "published by " + publisher);
  } else {
    fmt::print("{} -> {}: {} tensors ({} dequantized, {} dropped) in {} shard(s), {} written in {:.2f} s "
               "({}/s), peak RSS {}\n",
               a.in, a.out, s.output_tensors, s.dequantized, s.dropped, s.shards,
               Progress::bytes(static_cast<double>(s.output_bytes)), s.total_s, Progress::bytes(gbps * 1e9),
               Progress::bytes(static_cast<double>(s.peak_rss_bytes)));
  }
  if (s.reused_shards > 0) fmt::print("resumed: {} shard(s) were complete and kept\n", s.reused_shards);
  if (const auto& d = s.exec.device)
    fmt::print("device {}: {} item(s) in {:.2f} s of stage time, {} to the device, {} back; {} device memory, {} pinned\n",
               d->name, d->items, d->seconds, Progress::bytes(static_cast<double>(d->h2d_bytes)),
               Progress::bytes(static_cast<double>(d->d2h_bytes)), Progress::bytes(static_cast<double>(d->device_bytes)),
               Progress::bytes(static_cast<double>(d->pinned_bytes)));
  if (s.fetched)
    fmt::print("fetched {} in {} request(s), {} retried\n", Progress::bytes(static_cast<double>(s.fetched->bytes_fetched)),
               s.fetched->requests, s.fetched->retries);
}

ConvertSummary convert_with_progress(const ConvertArgs& a, ConvertOptions& o) {
  Progress progress("converting", 0, isatty(STDERR_FILENO) && !a.json);
  o.run.on_progress = [&progress](uint64_t done, uint64_t total) { progress.update(done, total); };
  const ConvertSummary s = convert(o);
  progress.finish();
  return s;
}

#if defined(CKPT_HAVE_MPI)
// A conversion under an MPI launcher: every rank plans, all check that they planned the same
// conversion, each writes its share, and after a barrier rank 0 publishes and tells the others
// how that went. A rank that fails before the barrier ends the whole job (MPI_Abort) after one
// line naming it, so that nothing is published and the ranks' records stay for --resume.
int run_convert_mpi(const ConvertArgs& a, ConvertOptions o) {
  const MpiJob job;
  const Part part = job.part();
  if (part.world == 1) {
    print_summary(a, convert_with_progress(a, o));
    return 0;
  }
  o.write.part = part;
  bool collective = false, past_barrier = false;
  o.on_planned = [&](const Conversion& c) {
    const std::string identity = conversion_identity(c.checkpoint(), c.options()).dump();
    const int other = job.first_differing(XXH3_64bits(identity.data(), identity.size()));
    collective = other >= 0;
    if (collective)
      fail_input("rank {} of {} planned from other input files or options than rank 0 (an input changed, or "
                 "differs between nodes); every rank must see the same checkpoint",
                 other, part.world);
  };
  o.on_part_written = [&] {
    job.barrier();
    past_barrier = true;
    return part.rank == 0;
  };
  int rc = 0;
  try {
    print_summary(a, convert_with_progress(a, o), "rank 0");
  } catch (const ckpt::Error& e) {
    rc = e.exit_code();
    if (!collective || part.rank == 0) fmt::print(stderr, "ckptconv: rank {} of {}: {}\n", part.rank, part.world, e.what());
    if (!collective && !past_barrier) job.abort(rc);
  }
  return past_barrier ? job.broadcast(rc) : rc;
}
#endif

int run_convert(const ConvertArgs& a) {
  ConvertOptions o = convert_options(a);
  const Launch launch = detect_launch(a.rank, a.world_size, [](const char* n) { return std::getenv(n); });
  if (launch.kind == Launch::Kind::Mpi) {
#if defined(CKPT_HAVE_MPI)
    return run_convert_mpi(a, std::move(o));
#else
    fail_usage("started by {} as one of several processes, but this ckptconv was built without MPI (no "
               "libopenmpi-dev at build time), so every process would convert everything; rebuild with MPI, or "
               "give each process --rank R --world-size N",
               launch.source);
#endif
  }
  if (launch.kind == Launch::Kind::Ranks) o.write.part = launch.part;
  if (a.wait && !o.write.part) fail_usage("--wait applies to a split conversion (--rank/--world-size, RANK/WORLD_SIZE)");
  o.publish.wait = a.wait;
  print_summary(a, convert_with_progress(a, o));
  return 0;
}

struct PublishArgs {
  std::string out;
};

int run_publish(const PublishArgs& a) {
  PublishOptions po;
  po.remote = remote_options();
  const uint32_t world = publish_split(a.out, po);
  fmt::print("{}: published the conversion of {} ranks\n", a.out, world);
  return 0;
}

// What this process wants and the library leaves to its caller: a file-size limit (ulimit -f)
// fails a write with EFBIG, reported as an I/O error, instead of killing the process with
// SIGXFSZ; an input truncated under a mapped read is an error, not a SIGBUS death; CKPT_ISA
// (scalar | avx2 | avx512) forces the kernels' instruction set when the CPU has it.
void configure_process() {
  std::signal(SIGXFSZ, SIG_IGN);
  MappedFile::install_sigbus_guard();
  if (const char* name = std::getenv("CKPT_ISA"))
    if (const auto isa = parse_isa(name)) use_isa(*isa);
}

struct InspectArgs {
  std::string path;
  bool json = false;
};

int run_inspect(const InspectArgs& a) {
  const Checkpoint ck = Checkpoint::open_input(a.path, remote_options());
  const InspectReport r = inspect(ck, a.path);
  if (a.json) write_inspect_json(r, std::cout);
  else write_inspect_text(r, std::cout);
  return 0;
}

struct VerifyArgs {
  std::string a, b;
  std::optional<double> atol;
};

int run_verify(const VerifyArgs& a) {
  const Checkpoint ca = Checkpoint::open(a.a), cb = Checkpoint::open(a.b);
  const VerifyReport r = verify(ca, cb, VerifyOptions{a.atol, 0});
  for (size_t i = 0; i < r.problems.size() && i < 20; ++i) fmt::print(stderr, "mismatch {}\n", r.problems[i]);
  if (r.problems.size() > 20) fmt::print(stderr, "... and {} more\n", r.problems.size() - 20);
  const std::string tail = a.atol ? fmt::format(", max |diff| {:g}", r.max_abs_diff) : "";
  if (r.ok()) {
    fmt::print("match: {} tensors, {} bytes{}\n", r.compared, r.bytes, tail);
    return 0;
  }
  fmt::print("MISMATCH: {} problem(s); {} of {} common tensors match{}\n", r.problems.size(), r.matched,
             r.compared, tail);
  return 1;
}

struct SynthArgs {
  SynthOptions options;
  std::string size;
};

int run_synth(const SynthArgs& a) {
  SynthOptions o = a.options;
  if (!a.size.empty()) o.target_bytes = parse_size(a.size, "--size");
  const SynthSummary s = synth(o);
  fmt::print("{}: {} {} checkpoint, {} layers, {} tensors in {} shard(s), {}\n", o.out.string(), o.family,
             "HF-layout", s.layers, s.tensors, s.shards, Progress::bytes(static_cast<double>(s.bytes)));
  return 0;
}

struct BenchArgs {
  std::string in, family = "minimax_m2", sizes = "2GB", threads = "1,2", to = "native", io = "mmap", sink = "file",
              budget = "1GiB", max_shard_size, work, report, plot, device = "auto";
  unsigned runs = 5;
  bool json = false, no_floor = false;
};

template <typename T>
std::vector<T> split_list(const std::string& text, const std::string& option, T (*parse)(const std::string&)) {
  std::vector<T> v;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, end - start);
    if (item.empty()) fail_usage("{}: empty item in '{}'", option, text);
    v.push_back(parse(item));
    start = end + 1;
  }
  return v;
}

// bench's options: this executable for the child conversions, the parsed lists, and the scratch
// directory (a fresh one under /dev/shm unless --work names one).
BenchOptions bench_options(const BenchArgs& a) {
  BenchOptions o;
  o.exe = "/proc/self/exe";
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) o.exe = std::string(self, static_cast<size_t>(n));
  o.in = a.in;
  o.family = a.family;
  o.sizes = split_list<uint64_t>(a.sizes, "--sizes", [](const std::string& s) { return parse_size(s, "--sizes"); });
  o.threads = split_list<unsigned>(a.threads, "--threads", [](const std::string& s) {
    try {
      size_t used = 0;
      const unsigned long v = std::stoul(s, &used);
      if (used == s.size() && v <= 4096) return static_cast<unsigned>(v);
    } catch (const std::exception&) {
    }
    fail_usage("--threads: '{}' is not a thread count", s);
  });
  o.runs = a.runs;
  o.floor = !a.no_floor;
  // The floors copy and rewrite the output's files, which a null sink never creates.
  if (o.floor && a.sink == "null")
    fail_usage("bench: --sink null writes no output to take floors against; add --no-floor");
  device_choice(a.device);  // refuses an unusable --device before any conversion
  o.convert_args = {"--to", a.to, "--io", a.io, "--sink", a.sink, "--memory-budget", a.budget, "--device", a.device};
  if (!a.in.empty()) o.convert_args.insert(o.convert_args.end(), {"--family", a.family});
  if (!a.max_shard_size.empty()) o.convert_args.insert(o.convert_args.end(), {"--max-shard-size", a.max_shard_size});
  o.work = a.work.empty() ? (std::filesystem::is_directory("/dev/shm") ? std::filesystem::path("/dev/shm")
                                                                       : std::filesystem::temp_directory_path()) /
                                fmt::format("ckptconv-bench-{}", getpid())
                          : std::filesystem::path(a.work);
  if (!a.json) o.log = [](const std::string& line) { fmt::print(stderr, "{}\n", line); };
  return o;
}

int run_bench(const BenchArgs& a, const std::string& invocation) {
  const BenchOptions o = bench_options(a);
  struct Cleanup {  // the scratch directory bench made for itself
    std::filesystem::path dir;
    bool owned;
    ~Cleanup() {
      std::error_code ec;
      if (owned) std::filesystem::remove_all(dir, ec);
    }
  } cleanup{o.work, a.work.empty()};
  const BenchResult r = ckpt::run_bench(o);
  if (a.json) std::cout << bench_json(r).dump(2) << "\n";
  else std::cout << bench_table(r);
  if (!a.report.empty()) {
    std::ofstream(a.report) << bench_markdown(r, invocation);
    if (!a.json) fmt::print("report: {}\n", a.report);
  }
  if (!a.plot.empty()) {
    bench_plot(r, a.plot);
    if (!a.json) fmt::print("plots: {0}-threads.png {0}-size.png\n", a.plot);
  }
  return 0;
}

// Each subcommand's options, bound to the arguments its run_ function reads. Options are listed
// in --help in the order they are added.

// convert's switches and its I/O choices, after its valued options.
void add_convert_flags(CLI::App* conv, ConvertArgs& a) {
  conv->add_flag("--overwrite", a.overwrite, "Replace the checkpoint in a non-empty --out");
  conv->add_flag("--resume", a.resume,
                 "Finish an interrupted conversion in --out: complete shards are verified and kept, "
                 "the rest written (same options and inputs required)");
  conv->add_flag("--json", a.json, "Print a JSON summary of the run on stdout");
  conv->add_flag("--dry-run", a.dry_run, "Open, validate and plan only: report what would be written");
  conv->add_option("--io", a.io,
                   "How inputs are read: mmap (in place, no copy) or pread (large positional reads into reused "
                   "buffers; for network filesystems, and on tmpfs the faster mode for --to native and FP8 export)")
      ->capture_default_str()
      ->check(CLI::IsMember({"mmap", "pread"}));
  conv->add_option("--sink", a.sink, "file: write the output; null: convert everything but discard it (benchmarks; on a GPU, in device memory)")
      ->capture_default_str()
      ->check(CLI::IsMember({"file", "null"}));
  conv->add_option("--remote-concurrency", a.remote_concurrency,
                   "Requests in flight at once when --in is a URL (all threads together)")
      ->capture_default_str();
  conv->add_option("--remote-retries", a.remote_retries,
                   "Retries of a failed request (5xx, 429, timeouts, resets, short bodies), with backoff; then exit 4")
      ->capture_default_str();
  conv->add_option("--remote-timeout", a.remote_timeout,
                   "Seconds a request may spend connecting, or receiving nothing, before it fails (and is "
                   "retried); whole seconds, at least 1")
      ->capture_default_str();
  conv->add_option("--rank", a.rank,
                   "This process's rank in a conversion split across --world-size processes (default: from "
                   "RANK/WORLD_SIZE, a Slurm job array, or MPI when started by mpirun/srun)");
  conv->add_option("--world-size", a.world_size,
                   "Processes sharing the conversion: each writes its share of the shards by bytes, and "
                   "`ckptconv publish OUT` (or rank 0 with --wait) publishes; 1 ignores the environment");
  conv->add_flag("--wait", a.wait, "Rank 0 of a split conversion: wait for every rank, then publish");
}

CLI::App* add_convert(CLI::App& app, ConvertArgs& a) {
  auto* conv = app.add_subcommand("convert", "Convert a checkpoint (HF -> native, native -> HF, or FP8 -> dequantized HF)");
  conv->add_option("--in", a.in,
                   "Input checkpoint: a directory of shards or one .safetensors file, local or at an s3:// or "
                   "http(s):// URL (credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, "
                   "AWS_REGION, AWS_ENDPOINT_URL; HF_TOKEN for HTTP)")
      ->required();
  conv->add_option("--out", a.out, "Output directory (created; must be empty unless --overwrite)")->required();
  std::vector<std::string> families{"auto"};
  for (const auto& f : family_names()) families.push_back(f);
  conv->add_option("--family", a.family, "Model family, or auto to read config.json")
      ->capture_default_str()
      ->check(CLI::IsMember(families));
  conv->add_option("--to", a.to, "Direction: dequant (FP8 weights to --dtype, names unchanged), native, hf")
      ->capture_default_str();
  conv->add_option("--dtype", a.dtype, "Output dtype of dequantized weights: bf16, f16, f32")->capture_default_str();
  conv->add_option("--ep-rank", a.ep_rank, "Expert-parallel rank to write (with --ep-size)");
  conv->add_option("--ep-size", a.ep_size,
                   "Expert-parallel world size; without --ep-rank every rank is written, to rank-0000/ ...");
  conv->add_option("--mtp", a.mtp, "Multi-token-prediction layers: auto, on, off")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "on", "off"}));
  conv->add_option("--quantize", a.quantize, "FP8 export for --to hf: none, placeholder, real")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "placeholder", "real"}));
  conv->add_option("--max-shard-size", a.max_shard, "Largest output shard (e.g. 5GB, 512MiB)")->capture_default_str();
  conv->add_option("--threads", a.threads, "Worker threads (0: all cores)")->capture_default_str();
  conv->add_option("--memory-budget", a.budget, "Bytes in flight at once (e.g. 1GiB, 256MiB)")->capture_default_str();
  conv->add_option("--device", a.device,
                   "Where to transform: cpu; cuda[:N] (dequantize, group and FP8 export on that GPU, bit-identical "
                   "to the CPU; refused with the reason when it cannot be used); auto: the GPU when one is usable "
                   "and the plan dequantizes, exports FP8 or groups experts, else the CPU")
      ->capture_default_str()
      ->check(device_spelling);
  add_convert_flags(conv, a);
  return conv;
}

CLI::App* add_publish(CLI::App& app, PublishArgs& a) {
  auto* pub = app.add_subcommand(
      "publish", "Publish a conversion split across processes once every rank has completed: checks each rank's "
                 "record, then renames the shards into place and writes config, side files and index");
  pub->add_option("OUT", a.out, "The output directory the ranks wrote")->required();
  return pub;
}

CLI::App* add_inspect(CLI::App& app, InspectArgs& a) {
  auto* insp = app.add_subcommand("inspect", "List tensors, dtypes, shapes, sizes and detected FP8 schemes");
  insp->add_option("PATH", a.path, "Checkpoint directory or .safetensors file, local or at an s3:// or http(s):// URL")
      ->required();
  insp->add_flag("--json", a.json, "Machine-readable output");
  return insp;
}

CLI::App* add_verify(CLI::App& app, VerifyArgs& a) {
  auto* ver = app.add_subcommand("verify", "Compare two checkpoints tensor by tensor (exit 0 only if they match)");
  ver->add_option("A", a.a, "First checkpoint")->required();
  ver->add_option("B", a.b, "Second checkpoint")->required();
  ver->add_option("--atol", a.atol, "Allow floating-point elements to differ by this much");
  return ver;
}

CLI::App* add_synth(CLI::App& app, SynthArgs& a) {
  SynthOptions& so = a.options;
  auto* syn = app.add_subcommand("synth", "Write a synthetic HF-layout FP8 checkpoint of a model family");
  syn->add_option("--family", so.family, "Family: " + fmt::format("{}", fmt::join(synth_families(), ", ")))->required();
  syn->add_option("--out", so.out, "Output directory (must not exist or be empty)")->required();
  syn->add_option("--layers", so.layers, "Decoder layers")->capture_default_str();
  syn->add_option("--experts", so.experts, "Routed experts per MoE layer")->capture_default_str();
  syn->add_option("--hidden", so.hidden, "Hidden size")->capture_default_str();
  syn->add_option("--inter", so.inter, "Expert (MoE) intermediate size")->capture_default_str();
  syn->add_option("--shards", so.shards, "Number of shard files")->capture_default_str();
  syn->add_option("--seed", so.seed, "Random seed")->capture_default_str();
  syn->add_option("--size", a.size, "Target total size (e.g. 2GB); picks the number of layers");
  syn->add_option("--threads", so.threads, "Worker threads (0: all cores)");
  syn->add_flag("--sparse", so.sparse, "Headers and file sizes only (data reads as zeros, takes no disk)");
  return syn;
}

CLI::App* add_bench(CLI::App& app, BenchArgs& a) {
  auto* bench = app.add_subcommand(
      "bench", "Measure conversions against the floor of this machine: median wall time, GB/s, peak RSS, "
               "time per stage, and in the same rounds the floors: a write of zeros of the output's size, a cp of "
               "the output, and a large memcpy");
  bench->add_option("--in", a.in, "Convert this checkpoint (default: synthesize one per --sizes)");
  bench->add_option("--family", a.family, "Family to synthesize (or of --in)")->capture_default_str();
  bench->add_option("--sizes", a.sizes, "Synthesized input sizes, comma-separated (e.g. 1GB,2GB,4GB)")
      ->capture_default_str();
  bench->add_option("--threads", a.threads, "Thread counts to compare, comma-separated (0: all cores)")
      ->capture_default_str();
  bench->add_option("--runs", a.runs, "Rounds per point (medians are reported)")->capture_default_str();
  bench->add_option("--to", a.to, "Conversion direction: native, dequant, hf")->capture_default_str();
  bench->add_option("--io", a.io, "Input reads: mmap or pread")->capture_default_str()->check(CLI::IsMember({"mmap", "pread"}));
  bench->add_option("--sink", a.sink, "file, or null to convert without storing")
      ->capture_default_str()
      ->check(CLI::IsMember({"file", "null"}));
  bench->add_option("--memory-budget", a.budget, "Bytes in flight per conversion")->capture_default_str();
  bench->add_option("--max-shard-size", a.max_shard_size,
                    "Output shard size of the conversions (default: convert's). Concurrent writes into one file "
                    "queue on its lock; real checkpoints have many shards");
  bench->add_option("--device", a.device, "Where the conversions transform: auto, cpu, or cuda[:N] (as convert)")
      ->capture_default_str()
      ->check(device_spelling);
  bench->add_option("--work", a.work, "Scratch directory for inputs, outputs and copies (default: /dev/shm)");
  bench->add_option("--report", a.report, "Also write a markdown report to this file");
  bench->add_option("--plot", a.plot, "Write PREFIX-threads.png and PREFIX-size.png with gnuplot");
  bench->add_flag("--no-floor", a.no_floor, "Skip the write, cp and memcpy floors");
  bench->add_flag("--json", a.json, "Print the results as JSON on stdout");
  return bench;
}

// Every subcommand's arguments, and which subcommand the command line chose.
struct Command {
  ConvertArgs convert;
  InspectArgs inspect;
  VerifyArgs verify;
  SynthArgs synth;
  BenchArgs bench;
  PublishArgs publish;
  CLI::App *convert_app, *publish_app, *inspect_app, *verify_app, *synth_app, *bench_app;

  explicit Command(CLI::App& app)
      : convert_app(add_convert(app, convert)),
        publish_app(add_publish(app, publish)),
        inspect_app(add_inspect(app, inspect)),
        verify_app(add_verify(app, verify)),
        synth_app(add_synth(app, synth)),
        bench_app(add_bench(app, bench)) {}
};

// Runs the chosen subcommand, mapping every failure to one line on stderr and the exit status of
// its kind.
int run_command(const Command& c, int argc, char** argv) {
  try {
    if (*c.convert_app) return run_convert(c.convert);
    if (*c.publish_app) return run_publish(c.publish);
    if (*c.inspect_app) return run_inspect(c.inspect);
    if (*c.verify_app) return run_verify(c.verify);
    if (*c.synth_app) return run_synth(c.synth);
    if (*c.bench_app) {
      std::string invocation = "ckptconv";
      for (int i = 1; i < argc; ++i) invocation += std::string(" ") + argv[i];
      return run_bench(c.bench, invocation);
    }
  } catch (const ckpt::Error& e) {
    fmt::print(stderr, "ckptconv: {}\n", e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "ckptconv: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "ckptconv: {}\n", e.what());
    return 1;
  }
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ckptconv: streaming conversion of safetensors checkpoints between the HuggingFace layout "
               "and NeMo AutoModel's native layout, with exact FP8 dequantization.\n"
               "Exit status: 0 success, 2 usage error, 3 invalid input, 4 I/O failure, 1 other."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ckptconv 0.1.0");
  const Command command(app);

  configure_process();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return run_command(command, argc, argv);
}
