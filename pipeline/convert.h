// One conversion, end to end: open and validate the input, plan from headers, check the output
// directory and free space, stream the tensors through the executor into temporary shards,
// commit them, then write config.json (quantization_config removed and torch_dtype set when
// weights were dequantized), the side files and finally the index. A failure at any point leaves
// no file under a final name that was not there before, and none of the run's temporary files.
//
// A run that is killed instead leaves its resume manifest (pipeline/manifest.h) and its complete
// shards under their temporary names; `resume` verifies those shards, writes only the others and
// publishes the whole. Without `resume`, an output directory holding a manifest is refused
// unless `overwrite` starts over.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "pipeline/executor.h"
#include "pipeline/plan.h"

namespace ckpt {

struct ConvertOptions {
  std::filesystem::path in, out;
  std::string family = "auto";
  PlanOptions plan;
  unsigned threads = 0;
  uint64_t memory_budget = 1ull << 30;
  IoMode io = IoMode::Mmap;
  bool overwrite = false;
  bool resume = false;    // finish the interrupted conversion in `out` (see above)
  bool progress = false;  // draw a progress line on stderr
  bool dry_run = false;   // stop after planning: nothing is created or written
  bool null_sink = false; // convert fully but discard the output (benchmarks at any size)
};

struct ConvertSummary {
  uint64_t input_tensors = 0, output_tensors = 0, dequantized = 0, dropped = 0;
  uint64_t input_bytes = 0, output_bytes = 0;
  size_t shards = 0;
  size_t reused_shards = 0;  // complete shards a resumed run verified and kept
  double plan_s = 0, execute_s = 0, total_s = 0;
  uint64_t peak_rss_bytes = 0;
  ExecStats exec;
  std::string isa;
};

inline constexpr uint64_t kMinMemoryBudget = 4ull << 20;

ConvertSummary convert(const ConvertOptions& options);

// The process's peak resident set so far (getrusage), in bytes.
uint64_t peak_rss_bytes();

}  // namespace ckpt
