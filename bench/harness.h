// `ckptconv bench`: how fast a conversion runs on this machine, next to the floor its bytes allow.
//
// For each checkpoint size (synthesized MiniMax-M2-style FP8, or one checkpoint given), every
// round runs the conversion once per thread count, each as a child process of the ckptconv
// binary (`convert --json`), so its wall time is what a user waits for (start-up and planning
// included) and its peak RSS (from wait4) is its own. In the same round, interleaved so that
// both see the same machine state, come the floors: a `cp` of the conversion's own output to the
// same filesystem, a `dd`-style write of zeros of the output's size, and a large memcpy in this
// process. Every timed writer (conversion, cp, write floor) starts right after a file of the
// same size was removed, so it writes into pages just freed, as the next conversion would: a VM
// that reports free pages to its hypervisor (virtio-balloon) hands back pages left free a while,
// and touching them again costs more than the copy. Figures are medians over rounds; the stage times (read, dequantize/transpose, write,
// waiting) are thread-seconds from the executor. The result renders as a terminal table, a
// markdown report, JSON, and gnuplot PNGs.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace ckpt {

struct BenchOptions {
  std::filesystem::path exe;   // the ckptconv binary the conversions run as
  std::filesystem::path in;    // a checkpoint to convert; empty: synthesize one per size
  std::filesystem::path work;  // scratch directory: inputs, outputs and copies (removed after)
  std::string family = "minimax_m2";
  std::vector<uint64_t> sizes = {2'000'000'000};  // synthesized input sizes
  std::vector<unsigned> threads = {0};             // 0: all cores
  std::vector<std::string> convert_args;           // passed on to every `convert`
  unsigned runs = 5;
  bool floor = true;  // time the write, cp and memcpy floors too
  std::function<void(const std::string&)> log;  // one line per run, as it happens
};

// One conversion run.
struct BenchRun {
  double wall_s = 0, plan_s = 0, execute_s = 0;
  double read_s = 0, transform_s = 0, write_s = 0;  // thread-seconds
  uint64_t peak_rss = 0;
};

// Every run of one (size, thread count) pair.
struct BenchPoint {
  uint64_t input_bytes = 0, output_bytes = 0;
  uint64_t shards = 0;   // output files the conversion wrote
  unsigned threads = 0;  // as the conversion reported it (0 resolved to the core count)
  std::vector<BenchRun> runs;
};

struct BenchSize {
  uint64_t input_bytes = 0, output_bytes = 0;
  std::vector<BenchPoint> points;  // one per thread count
  uint64_t floor_bytes = 0;        // the output's files, in bytes: what cp copies and the floor writes
  std::vector<double> cp_s;        // `cp` of the output, one per round
  std::vector<double> floor_s;     // writing floor_bytes of zeros (and fsync), one per round
};

struct BenchResult {
  std::vector<BenchSize> sizes;
  std::vector<double> memcpy_gbps;  // one per round, the best of a few copies
  std::string machine;              // CPU model and core count
  std::string filesystem;           // type of the work directory's filesystem
  std::string command;              // the convert options, for the report
  unsigned runs = 0;
};

// Runs the benchmark. Throws ckpt::Error when a conversion or copy fails.
BenchResult run_bench(const BenchOptions& options);

double median(std::vector<double> values);

// How the floors were taken, and the memcpy figure: two lines for the reports.
std::string bench_floors_note(const BenchResult& r);

std::string bench_table(const BenchResult& r);
std::string bench_markdown(const BenchResult& r, const std::string& invocation);
nlohmann::ordered_json bench_json(const BenchResult& r);

// Writes `<prefix>-threads.png` (output GB/s against thread count) and `<prefix>-size.png`
// (output GB/s against input size: each thread count, cp and the write floor) with gnuplot; the
// data and script go beside them as `<prefix>.dat` and `<prefix>.gp`. Throws an Io error if
// gnuplot is missing.
void bench_plot(const BenchResult& r, const std::filesystem::path& prefix);

}  // namespace ckpt
