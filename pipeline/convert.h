// One conversion, staged: `Conversion::plan` opens and validates the input and computes the plan
// from headers alone (one plan for every output directory: the whole conversion, or each
// expert-parallel rank of `--ep-size N` without `--ep-rank`); `execute` streams all of it, or a
// selection of its tensors, through the executor into any TensorSink; `write` is execute into
// shard files followed by publishing — check the output directory and free space, write the
// tensors into temporary shards, commit them, then config.json (quantization_config removed and
// torch_dtype set when weights were dequantized), the side files and finally the index. A failure
// at any point leaves no file under a final name that was not there before, and none of the run's
// temporary files. `convert` composes them the way the command line does.
//
// A run that is killed instead leaves its resume manifest (pipeline/manifest.h) and its complete
// shards under their temporary names; `resume` verifies those shards, writes only the others (a
// selection of the same plan) and publishes the whole. Without `resume`, an output directory
// holding a manifest is refused unless `overwrite` starts over.
//
// A conversion split across processes (WriteOptions::part; pipeline/partition.h) runs `write` in
// every rank: each writes the shards the partition gives it, under their temporary names, and
// its completion record, and publishes nothing. `publish_parts` — in one process, once every
// rank's record says complete — checks the records against the plan and publishes the whole, as
// a single run would have. Each rank resumes like a single run, from the records in the directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "formats/checkpoint.h"
#include "pipeline/executor.h"
#include "pipeline/partition.h"
#include "pipeline/plan.h"
#include "pipeline/sink.h"

namespace ckpt {

// How a run executes: threads, memory, input I/O, progress.
struct RunOptions {
  unsigned threads = 0;
  uint64_t memory_budget = 1ull << 30;
  IoMode io = IoMode::Mmap;
  std::function<void(uint64_t done, uint64_t total)> on_progress;  // output bytes
  unsigned lanes = 0;  // ExecOptions::lanes
  // Where the transform runs: called with the plan before each execution, it returns the device
  // stage to use (pipeline/device_stage.h), or null for the CPU. Unset: the CPU.
  std::function<std::shared_ptr<DeviceStage>(const Plan&)> device;
};

struct WriteOptions {
  bool overwrite = false;
  bool resume = false;  // finish the interrupted conversion in the output directory (see above)
  std::optional<Part> part;  // write only this rank's share, and publish nothing (see above)
};

struct WriteSummary {
  ExecStats exec;
  double execute_s = 0;
  size_t reused_shards = 0;  // complete shards a resumed run verified and kept
};

struct PublishOptions {
  RemoteOptions remote;  // for a split conversion of a remote input
  // Wait for ranks still running instead of refusing; a rank whose record is incomplete while no
  // process holds its lock has died, which ends the wait with an error.
  bool wait = false;
};

// One output directory of a conversion: its path under the output ("" or "rank-0000") and its
// shards in the plan.
struct Target {
  std::string rel;
  uint32_t first_shard = 0, last_shard = 0;
};

class Conversion {
 public:
  // `input`: a local path or a URL (Checkpoint::open_input), whose objects `remote` reaches.
  static Conversion plan(const std::filesystem::path& input, const PlanOptions& options,
                         const RemoteOptions& remote = {});

  const Checkpoint& checkpoint() const { return *ck_; }
  const Plan& plan() const { return plan_; }
  const std::vector<Target>& targets() const { return targets_; }
  const PlanOptions& options() const { return options_; }

  // Delivers the plan's tensors that `selected` marks (empty: all) into `sink`.
  ExecStats execute(TensorSink& sink, const RunOptions& run, std::vector<bool> selected = {}) const;
  // Writes and publishes the conversion in `out` (see above).
  WriteSummary write(const std::filesystem::path& out, const WriteOptions& options, const RunOptions& run) const;
  // Publishes the split conversion in `out` once all `world` ranks are complete (see above).
  void publish_parts(const std::filesystem::path& out, uint32_t world, const PublishOptions& options) const;

 private:
  std::filesystem::path input_;     // absolute (or the URL): recorded for `publish_split`
  std::unique_ptr<Checkpoint> ck_;  // the plan points into its headers
  PlanOptions options_;
  Plan plan_;
  std::vector<Target> targets_;
};

// `ckptconv publish DIR`: plans the split conversion whose rank records are in `out` again, from
// the input and options they record, and publishes it (Conversion::publish_parts). Returns the
// number of ranks.
uint32_t publish_split(const std::filesystem::path& out, const PublishOptions& options);

struct ConvertOptions {
  std::filesystem::path in, out;
  PlanOptions plan;
  RemoteOptions remote;  // a remote --in: concurrency, retries, credentials
  RunOptions run;
  WriteOptions write;
  bool dry_run = false;    // stop after planning: nothing is created or written
  bool null_sink = false;  // convert fully but discard the output (benchmarks at any size)
  // A split conversion (write.part): `on_planned` may refuse a plan the other ranks do not share;
  // once the part is written, `on_part_written` says whether this process publishes the whole
  // (under MPI: after a barrier, rank 0). Without it, `publish.wait` does: rank 0 waits for the
  // others' records and publishes.
  std::function<void(const Conversion&)> on_planned;
  std::function<bool()> on_part_written;
  PublishOptions publish;
};

struct ConvertSummary {
  uint64_t input_tensors = 0, output_tensors = 0, dequantized = 0, dropped = 0;
  uint64_t input_bytes = 0, output_bytes = 0;
  size_t shards = 0;
  size_t reused_shards = 0;  // complete shards a resumed run verified and kept
  std::optional<Part> part;  // a split conversion's rank: what it wrote, and the partition's balance
  size_t part_shards = 0;
  uint64_t part_bytes = 0;
  double balance = 1;        // max / mean bytes per rank
  std::optional<CheckpointStore::FetchStats> fetched;  // a remote input's requests and bytes
  bool published = true;     // false for a rank that left publishing to another process
  double plan_s = 0, execute_s = 0, total_s = 0;
  uint64_t peak_rss_bytes = 0;
  ExecStats exec;
  std::string isa;
};

inline constexpr uint64_t kMinMemoryBudget = 4ull << 20;

// Plans, then writes `out` (or only plans: dry_run; or executes into nothing: null_sink).
ConvertSummary convert(const ConvertOptions& options);

// The process's peak resident set so far (getrusage), in bytes.
uint64_t peak_rss_bytes();

}  // namespace ckpt
