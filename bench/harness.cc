#include "bench/harness.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <thread>

#include "formats/error.h"
#include "pipeline/progress.h"
#include "pipeline/summary.h"
#include "pipeline/synth.h"

extern char** environ;

namespace ckpt {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

struct Child {
  int status = 0;
  rusage usage{};
  double wall_s = 0;
  std::string out, err;
};

std::string drain(int fd) {
  std::string s;
  char buf[65536];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    s.append(buf, static_cast<size_t>(n));
  }
  return s;
}

// Runs argv[0] (searched in PATH) to completion. A real fork, not posix_spawn's vfork: the
// child's peak RSS (wait4) then starts from this process's current resident set, not from the
// high-water mark of a shared address space, so it measures the child.
Child spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) fail_io_errno(errno, "bench: pipe");
  Child c;
  const auto t0 = Clock::now();
  const pid_t pid = fork();
  if (pid == 0) {  // only async-signal-safe calls until exec
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    execvp(argv[0], argv.data());
    const char msg[] = "cannot execute\n";
    (void)!::write(STDERR_FILENO, msg, sizeof msg - 1);
    _exit(127);
  }
  ::close(out[1]);
  ::close(err[1]);
  if (pid < 0) {
    ::close(out[0]);
    ::close(err[0]);
    fail_io_errno(errno, fmt::format("bench: cannot run {}", args[0]));
  }
  // stderr is small (one line on failure); stdout (a JSON summary) is read while the child runs.
  std::thread err_reader([&] { c.err = drain(err[0]); });
  c.out = drain(out[0]);
  err_reader.join();
  ::close(out[0]);
  ::close(err[0]);
  while (wait4(pid, &c.status, 0, &c.usage) < 0 && errno == EINTR) {
  }
  c.wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  return c;
}

void must_succeed(const Child& c, const std::string& what) {
  if (WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0) return;
  std::string why = c.err;
  while (!why.empty() && why.back() == '\n') why.pop_back();
  fail(ErrorKind::Io, "bench: {} failed ({}): {}", what,
       WIFEXITED(c.status) ? fmt::format("exit {}", WEXITSTATUS(c.status))
                           : fmt::format("signal {}", WTERMSIG(c.status)),
       why);
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

uint64_t safetensors_bytes(const fs::path& dir) {
  if (fs::is_regular_file(dir)) return fs::file_size(dir);
  uint64_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") n += e.file_size();
  return n;
}

// Every file under `dir`, in bytes: what cp copies.
uint64_t file_bytes(const fs::path& dir) {
  uint64_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

std::string machine() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model = "unknown CPU";
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  return fmt::format("{}, {} cores", model, std::thread::hardware_concurrency());
}

std::string filesystem_of(const fs::path& p) {
  struct statfs s{};
  if (statfs(p.c_str(), &s) != 0) return "unknown";
  switch (static_cast<unsigned long>(s.f_type)) {
    case 0x01021994: return "tmpfs";
    case 0xEF53: return "ext4";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x794C7630: return "overlayfs";
    case 0x6969: return "nfs";
    default: return fmt::format("fs type {:#x}", static_cast<unsigned long>(s.f_type));
  }
}

// Tells the compiler that `p`'s bytes are used, so that it keeps the stores before: a memset of
// a buffer the timed memcpy then overwrites would otherwise be dropped, leaving the buffer's first
// touch on the clock.
void used(const void* p) { asm volatile("" : : "r"(p) : "memory"); }

constexpr size_t kMemcpyBytes = 512ull << 20;
constexpr int kMemcpyCopies = 4;
constexpr size_t kWriteChunk = 16ull << 20;

// GB/s of copying buffers far larger than the caches: both written before the clock starts, each
// copy timed on its own and the best one counting, so that no page fault is timed. They are
// freed straight after, so that they never count in a conversion's peak RSS.
double memcpy_gbps() {
  const std::unique_ptr<uint8_t[]> a(new uint8_t[kMemcpyBytes]), b(new uint8_t[kMemcpyBytes]);
  std::memset(a.get(), 1, kMemcpyBytes);
  std::memset(b.get(), 2, kMemcpyBytes);
  used(a.get());
  used(b.get());
  double best = 0;
  for (int i = 0; i < kMemcpyCopies; ++i) {
    const auto t0 = Clock::now();
    std::memcpy(i % 2 ? a.get() : b.get(), i % 2 ? b.get() : a.get(), kMemcpyBytes);
    used(a.get());
    used(b.get());
    best = std::max(best, static_cast<double>(kMemcpyBytes) / seconds_since(t0) / 1e9);
  }
  return best;
}

// The write floor, `dd`-style: `bytes` of zeros into a new file `path` in 16 MiB writes, then
// fsync (as the conversion's writer does each shard); returns the seconds from open to close and
// removes the file, so that the next writer gets its pages. The buffer is written before the
// clock starts and freed after, out of the conversions' peak RSS.
double write_zeros(const fs::path& path, uint64_t bytes) {
  const std::unique_ptr<char[]> zeros(new char[kWriteChunk]);
  std::memset(zeros.get(), 0, kWriteChunk);
  used(zeros.get());
  const auto t0 = Clock::now();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail_io_errno(errno, fmt::format("bench: cannot create {}", path.string()));
  int err = 0;
  for (uint64_t left = bytes; left > 0 && !err;) {
    const ssize_t n = ::write(fd, zeros.get(), std::min<uint64_t>(left, kWriteChunk));
    if (n > 0) left -= static_cast<uint64_t>(n);
    else if (n == 0 || errno != EINTR) err = n == 0 ? ENOSPC : errno;
  }
  if (!err && ::fsync(fd) != 0) err = errno;
  ::close(fd);
  const double s = seconds_since(t0);
  fs::remove(path);
  if (err) fail_io_errno(err, fmt::format("bench: cannot write {}", path.string()));
  return s;
}

BenchRun parse_run(const Child& c, BenchPoint& point) {
  BenchRun r;
  r.wall_s = c.wall_s;
  r.peak_rss = static_cast<uint64_t>(c.usage.ru_maxrss) * 1024;
  const ConvertSummary s = summary_from_json(c.out);
  r.plan_s = s.plan_s;
  r.execute_s = s.execute_s;
  r.read_s = s.exec.read_s;
  r.transform_s = s.exec.transform_s;
  r.write_s = s.exec.write_s;
  point.threads = s.exec.threads;
  point.input_bytes = s.input_bytes;
  point.output_bytes = s.output_bytes;
  point.shards = s.shards;
  return r;
}

void say(const BenchOptions& o, const std::string& line) {
  if (o.log) o.log(line);
}

std::vector<std::string> convert_command(const BenchOptions& o, const fs::path& in, const fs::path& out,
                                         unsigned threads) {
  std::vector<std::string> args = {o.exe.string(), "convert", "--in", in.string(), "--out", out.string(),
                                   "--json", "--threads", std::to_string(threads)};
  args.insert(args.end(), o.convert_args.begin(), o.convert_args.end());
  return args;
}

fs::path synthesize(const BenchOptions& o, uint64_t size) {
  const fs::path in = o.work / "in";
  fs::remove_all(in);
  SynthOptions so;
  so.family = o.family;
  so.out = in;
  so.hidden = 4096;  // MiniMax-M2-sized experts: [1536, 4096] FP8 with 128×128 scales
  so.inter = 1536;
  so.experts = 16;
  so.shards = 4;
  so.target_bytes = size;
  say(o, fmt::format("synthesizing a {} {} checkpoint in {}", Progress::bytes(static_cast<double>(size)), o.family,
                     in.string()));
  synth(so);
  return in;
}

// Before round 1, a file of the planned output's size is written and removed, so that the first
// conversion, like every later writer, gets pages that were just freed rather than pages the
// hypervisor has not backed yet.
void warm_up(const BenchOptions& o, const fs::path& in, const fs::path& out) {
  std::vector<std::string> args = convert_command(o, in, out, o.threads.front());
  args.push_back("--dry-run");
  const Child c = spawn(args);
  must_succeed(c, "convert --dry-run");
  write_zeros(o.work / "zeros", summary_from_json(c.out).output_bytes);
}

void convert_once(const BenchOptions& o, const fs::path& in, const fs::path& out, unsigned round, size_t t,
                  BenchSize& bs) {
  fs::remove_all(out);  // the previous writer's pages, for this one
  const Child c = spawn(convert_command(o, in, out, o.threads[t]));
  must_succeed(c, "convert");
  BenchPoint& p = bs.points[t];
  p.runs.push_back(parse_run(c, p));
  bs.output_bytes = p.output_bytes;
  const BenchRun& r = p.runs.back();
  say(o, fmt::format("round {}/{}: convert, {} thread(s): {:.2f} s, {}/s out, peak RSS {}", round, o.runs,
                     p.threads, r.wall_s, Progress::bytes(static_cast<double>(p.output_bytes) / r.wall_s),
                     Progress::bytes(static_cast<double>(r.peak_rss))));
}

// The floors of one round, after its conversions: `out` holds the last one's output. cp writes
// into the pages of a same-size file removed just before it, as each conversion writes into its
// predecessor's; the write floor into the output's own, once it is removed.
void take_floors(const BenchOptions& o, const fs::path& out, unsigned round, BenchSize& bs, BenchResult& res) {
  const fs::path copy = o.work / "copy", zeros = o.work / "zeros";
  bs.floor_bytes = file_bytes(out);
  write_zeros(zeros, bs.floor_bytes);
  const Child c = spawn({"cp", "-r", out.string(), copy.string()});
  must_succeed(c, "cp");
  bs.cp_s.push_back(c.wall_s);
  fs::remove_all(copy);
  fs::remove_all(out);
  bs.floor_s.push_back(write_zeros(zeros, bs.floor_bytes));
  res.memcpy_gbps.push_back(memcpy_gbps());
  say(o, fmt::format("round {}/{}: write floor {:.2f} s, cp of the output {:.2f} s, memcpy {:.1f} GB/s", round,
                     o.runs, bs.floor_s.back(), c.wall_s, res.memcpy_gbps.back()));
}

template <typename F>
std::vector<double> each(const std::vector<BenchRun>& runs, F f) {
  std::vector<double> v;
  for (const auto& r : runs) v.push_back(f(r));
  return v;
}

double gb(uint64_t bytes) { return static_cast<double>(bytes) / 1e9; }

struct Row {
  const BenchSize* size;
  const BenchPoint* point;
  double wall, exec, rss, in_gbps, out_gbps, read, transform, write, wait, cp, floor, speedup;
};

// A floor's median seconds, and conversion time over it ("-" where the floor was not taken).
std::string seconds_or_dash(double s, const char* unit) { return s > 0 ? fmt::format("{:.2f}{}", s, unit) : "-"; }
std::string ratio_or_dash(double wall, double floor) { return floor > 0 ? fmt::format("{:.2f}", wall / floor) : "-"; }

// The figures of every (size, threads) point, medians over rounds.
std::vector<Row> rows(const BenchResult& r) {
  std::vector<Row> out;
  for (const auto& s : r.sizes) {
    double one_thread = 0;
    for (const auto& p : s.points) {
      Row row{&s, &p};
      row.wall = median(each(p.runs, [](const BenchRun& x) { return x.wall_s; }));
      row.exec = median(each(p.runs, [](const BenchRun& x) { return x.execute_s; }));
      row.rss = 0;
      for (const auto& x : p.runs) row.rss = std::max(row.rss, static_cast<double>(x.peak_rss));
      row.in_gbps = gb(p.input_bytes) / row.wall;
      row.out_gbps = gb(p.output_bytes) / row.wall;
      // Stage shares of the executor's thread-time; what no stage accounts for is waiting.
      const double total = row.exec * p.threads;
      row.read = median(each(p.runs, [](const BenchRun& x) { return x.read_s; })) / total;
      row.transform = median(each(p.runs, [](const BenchRun& x) { return x.transform_s; })) / total;
      row.write = median(each(p.runs, [](const BenchRun& x) { return x.write_s; })) / total;
      row.wait = std::max(0.0, 1.0 - row.read - row.transform - row.write);
      row.cp = median(s.cp_s);
      row.floor = median(s.floor_s);
      if (p.threads == 1) one_thread = row.wall;
      row.speedup = one_thread > 0 ? one_thread / row.wall : 0;
      out.push_back(row);
    }
  }
  return out;
}

}  // namespace

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

BenchResult run_bench(const BenchOptions& o) {
  if (o.runs == 0) fail_usage("bench: --runs must be at least 1");
  if (o.threads.empty()) fail_usage("bench: --threads needs at least one count");
  BenchResult res;
  res.machine = machine();
  res.runs = o.runs;
  std::error_code ec;
  fs::create_directories(o.work, ec);
  if (ec) fail(ErrorKind::Io, "bench: cannot create {}: {}", o.work.string(), ec.message());
  res.filesystem = filesystem_of(o.work);
  res.command = fmt::format("convert {}", fmt::join(o.convert_args, " "));

  const std::vector<uint64_t> sizes = o.in.empty() ? o.sizes : std::vector<uint64_t>{0};
  for (uint64_t size : sizes) {
    const fs::path in = o.in.empty() ? synthesize(o, size) : o.in, out = o.work / "out";
    BenchSize bs;
    bs.input_bytes = safetensors_bytes(in);
    bs.points.resize(o.threads.size());
    warm_up(o, in, out);
    for (unsigned round = 1; round <= o.runs; ++round) {
      for (size_t t = 0; t < o.threads.size(); ++t) convert_once(o, in, out, round, t, bs);
      if (o.floor) take_floors(o, out, round, bs, res);
    }
    fs::remove_all(out);
    if (o.in.empty()) fs::remove_all(in);
    res.sizes.push_back(std::move(bs));
  }
  return res;
}

std::string bench_floors_note(const BenchResult& r) {
  return fmt::format(
      "Floors, in every round after its conversions, each writer starting right after a file of its size was "
      "removed (pages just freed): floor = zeros of the output's size written to one new file ({} MiB writes from "
      "a filled buffer, then fsync); cp = `cp -r` of the output.\n"
      "memcpy: {:.1f} GB/s, two {} MiB buffers filled before timing, the best of {} copies per round, median "
      "over rounds.",
      kWriteChunk >> 20, median(r.memcpy_gbps), kMemcpyBytes >> 20, kMemcpyCopies);
}

std::string bench_table(const BenchResult& r) {
  std::string s = fmt::format(
      "{:>9} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>5} {:>5} {:>5} {:>5} {:>7} {:>7} {:>7} {:>10} {:>7}\n", "input",
      "output", "threads", "wall", "in GB/s", "out GB/s", "peak RSS", "read", "deq", "write", "wait", "cp", "conv/cp",
      "floor", "conv/floor", "speedup");
  for (const Row& x : rows(r)) {
    s += fmt::format(
        "{:>9} {:>9} {:>7} {:>8.2f}s {:>9.2f} {:>9.2f} {:>9} {:>4.0f}% {:>4.0f}% {:>4.0f}% {:>4.0f}% {:>7} {:>7} {:>7} "
        "{:>10} {:>7}\n",
        Progress::bytes(static_cast<double>(x.size->input_bytes)),
        Progress::bytes(static_cast<double>(x.point->output_bytes)), x.point->threads, x.wall, x.in_gbps, x.out_gbps,
        Progress::bytes(x.rss), 100 * x.read, 100 * x.transform, 100 * x.write, 100 * x.wait,
        seconds_or_dash(x.cp, "s"), ratio_or_dash(x.wall, x.cp), seconds_or_dash(x.floor, "s"),
        ratio_or_dash(x.wall, x.floor), x.speedup > 0 ? fmt::format("{:.2f}x", x.speedup) : "-");
  }
  if (!r.memcpy_gbps.empty()) s += fmt::format("{}\n", bench_floors_note(r));
  s += fmt::format("{} rounds after a warm-up write of the output's size, medians; {}; work on {}\n", r.runs,
                   r.machine, r.filesystem);
  return s;
}

std::string bench_markdown(const BenchResult& r, const std::string& invocation) {
  std::string s = "# ckptconv bench\n\n";
  s += fmt::format("```\n{}\n```\n\n", invocation);
  s += fmt::format("Machine: {}. Work directory on {}. Each conversion: `ckptconv {}` as a child process; "
                   "{} interleaved rounds after a warm-up (a file of the output's size written and removed), "
                   "medians. Stage shares are of the executor's thread-time (read = input faults or preads, deq = "
                   "dequantize/transpose, write = output writes, wait = the rest).\n\n",
                   r.machine, r.filesystem, r.command, r.runs);
  s += "| input | output (shards) | threads | wall (s) | in GB/s | out GB/s | peak RSS | read | deq | write | wait | "
       "cp (s) | conv/cp | write floor (s) | conv/floor | speedup vs 1 |\n";
  s += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const Row& x : rows(r)) {
    s += fmt::format(
        "| {} | {} ({}) | {} | {:.2f} | {:.2f} | {:.2f} | {} | {:.0f}% | {:.0f}% | {:.0f}% | {:.0f}% | {} | {} | {} | "
        "{} | {} |\n",
        Progress::bytes(static_cast<double>(x.size->input_bytes)),
        Progress::bytes(static_cast<double>(x.point->output_bytes)), x.point->shards, x.point->threads, x.wall,
        x.in_gbps, x.out_gbps, Progress::bytes(x.rss), 100 * x.read, 100 * x.transform, 100 * x.write, 100 * x.wait,
        seconds_or_dash(x.cp, ""), ratio_or_dash(x.wall, x.cp), seconds_or_dash(x.floor, ""),
        ratio_or_dash(x.wall, x.floor), x.speedup > 0 ? fmt::format("{:.2f}x", x.speedup) : "-");
  }
  if (!r.memcpy_gbps.empty())
    s += fmt::format("\n{}\n", bench_floors_note(r));
  return s;
}

nlohmann::ordered_json bench_json(const BenchResult& r) {
  nlohmann::ordered_json j = {{"machine", r.machine}, {"filesystem", r.filesystem}, {"command", r.command},
                              {"rounds", r.runs}, {"memcpy_gb_per_s", r.memcpy_gbps},
                              {"floors", r.memcpy_gbps.empty() ? "" : bench_floors_note(r)}};
  j["points"] = nlohmann::ordered_json::array();
  for (const Row& x : rows(r)) {
    nlohmann::ordered_json runs = nlohmann::ordered_json::array();
    for (const auto& b : x.point->runs)
      runs.push_back({{"wall_seconds", b.wall_s}, {"plan_seconds", b.plan_s}, {"execute_seconds", b.execute_s},
                      {"read_seconds", b.read_s}, {"dequantize_seconds", b.transform_s},
                      {"write_seconds", b.write_s}, {"peak_rss_bytes", b.peak_rss}});
    j["points"].push_back({{"input_file_bytes", x.size->input_bytes}, {"input_bytes", x.point->input_bytes},
                           {"output_bytes", x.point->output_bytes}, {"output_shards", x.point->shards},
                           {"threads", x.point->threads}, {"median_wall_seconds", x.wall},
                           {"input_gb_per_s", x.in_gbps}, {"output_gb_per_s", x.out_gbps},
                           {"max_peak_rss_bytes", static_cast<uint64_t>(x.rss)},
                           {"stage_share", {{"read", x.read}, {"dequantize", x.transform}, {"write", x.write}, {"wait", x.wait}}},
                           {"cp_seconds", x.size->cp_s}, {"median_cp_seconds", x.cp},
                           {"convert_over_cp", x.cp > 0 ? x.wall / x.cp : 0.0},
                           {"floor_bytes", x.size->floor_bytes}, {"floor_seconds", x.size->floor_s},
                           {"median_floor_seconds", x.floor},
                           {"convert_over_floor", x.floor > 0 ? x.wall / x.floor : 0.0},
                           {"speedup_over_one_thread", x.speedup}, {"runs", runs}});
  }
  return j;
}

void bench_plot(const BenchResult& r, const fs::path& prefix) {
  // Data: one block per thread count (x = input GB), then the cp and write floors per size.
  std::string dat, threads_dat;
  std::vector<unsigned> counts;
  for (const auto& s : r.sizes)
    for (const auto& p : s.points)
      if (std::find(counts.begin(), counts.end(), p.threads) == counts.end()) counts.push_back(p.threads);
  const auto all = rows(r);
  for (unsigned t : counts) {
    dat += fmt::format("# threads {}\n", t);
    for (const Row& x : all)
      if (x.point->threads == t) dat += fmt::format("{:.3f} {:.4f}\n", gb(x.size->input_bytes), x.out_gbps);
    dat += "\n\n";
  }
  dat += "# cp\n";
  for (const auto& s : r.sizes)
    if (!s.cp_s.empty()) dat += fmt::format("{:.3f} {:.4f}\n", gb(s.input_bytes), gb(s.output_bytes) / median(s.cp_s));
  dat += "\n\n# write floor\n";
  for (const auto& s : r.sizes)
    if (!s.floor_s.empty())
      dat += fmt::format("{:.3f} {:.4f}\n", gb(s.input_bytes), gb(s.output_bytes) / median(s.floor_s));
  dat += "\n\n# by threads: threads, out GB/s, then one column per size\n";
  for (unsigned t : counts) {
    dat += fmt::format("{}", t);
    for (const Row& x : all)
      if (x.point->threads == t) dat += fmt::format(" {:.4f}", x.out_gbps);
    dat += "\n";
  }
  const fs::path dat_path = prefix.string() + ".dat", gp_path = prefix.string() + ".gp";
  std::ofstream(dat_path) << dat;
  std::string gp = fmt::format(
      "set terminal pngcairo size 900,560 noenhanced\n"
      "set grid\nset key left top\nset ylabel 'output GB/s (median wall time)'\nset yrange [0:*]\n"
      "set output '{0}-size.png'\nset title '{2}: throughput against checkpoint size'\n"
      "set xlabel 'input size (GB)'\n"
      "plot ",
      prefix.string(), dat_path.string(), r.command);
  for (size_t i = 0; i < counts.size(); ++i)
    gp += fmt::format("'{}' index {} using 1:2 with linespoints lw 2 title '{} thread(s)', ", dat_path.string(), i,
                      counts[i]);
  gp += fmt::format("'{0}' index {1} using 1:2 with linespoints lw 2 dt 2 title 'cp of the output', "
                    "'{0}' index {2} using 1:2 with linespoints lw 2 dt 3 title 'write floor'\n",
                    dat_path.string(), counts.size(), counts.size() + 1);
  gp += fmt::format("set output '{}-threads.png'\nset title '{}: throughput against threads'\n"
                    "set xlabel 'threads'\nset xtics 1\nplot ",
                    prefix.string(), r.command);
  for (size_t i = 0; i < r.sizes.size(); ++i)
    gp += fmt::format("{}'{}' index {} using 1:{} with linespoints lw 2 title 'input {}'", i ? ", " : "",
                      dat_path.string(), counts.size() + 2, i + 2,
                      Progress::bytes(static_cast<double>(r.sizes[i].input_bytes)));
  gp += "\n";
  std::ofstream(gp_path) << gp;
  Child c;
  try {
    c = spawn({"gnuplot", gp_path.string()});
  } catch (const Error&) {
    c.status = 127 << 8;
  }
  if (!WIFEXITED(c.status) || WEXITSTATUS(c.status) != 0)
    fail(ErrorKind::Io, "bench: gnuplot failed on {} (is it installed? apt-get install gnuplot-nox): {}",
         gp_path.string(), c.err);
}

}  // namespace ckpt
