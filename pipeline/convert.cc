#include "pipeline/convert.h"

#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <chrono>
#include <thread>
#include <fstream>
#include <map>
#include <optional>
#include <unordered_set>

#include "formats/checkpoint.h"
#include "formats/error.h"
#include "pipeline/manifest.h"
#include "pipeline/writer_lock.h"
#include "transforms/kernels.h"

namespace ckpt {

namespace fs = std::filesystem;

uint64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<uint64_t>(u.ru_maxrss) * 1024;
}

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

bool is_our_output(const fs::path& p) {
  const auto name = p.filename().string();
  return name == kIndexName || (name.starts_with("model") && p.extension() == ".safetensors");
}

// Only temporary files of ours (or nothing): what a run killed before its manifest existed leaves.
// The writer lock is this run's own.
bool holds_only_temp_files(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (!e.is_regular_file() || !(is_temp_name(name) || name == kLockName)) return false;
  }
  return true;
}

// Empty but for this run's writer lock.
bool is_empty_dir(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename() != kLockName) return false;
  return true;
}

// The output directory must be new or empty, unless --overwrite; it never is the input. With
// --resume it may hold the manifest of an interrupted run, which is returned.
std::optional<ManifestRecord> prepare_out_dir(const fs::path& out, const WriteOptions& opt, const Checkpoint& ck) {
  std::error_code ec;
  if (fs::equivalent(out, ck.dir(), ec))
    fail_usage("--out {}: is the input directory; write the conversion elsewhere", out.string());
  auto previous = read_manifest(out);
  if (!previous && !opt.overwrite && !read_rank_manifests(out).empty())
    fail_usage("--out {}: holds the records of a conversion split across processes; resume its ranks with "
               "--rank/--world-size (or under the same launcher) and --resume, or publish it with `ckptconv publish`",
               out.string());
  if (opt.resume) {
    if (previous) return previous;
    if (opt.overwrite || holds_only_temp_files(out)) return std::nullopt;
    fail_usage("--out {}: nothing to resume (no {}) and the directory is not empty", out.string(), kManifestName);
  }
  if (opt.overwrite || is_empty_dir(out)) return std::nullopt;
  if (previous)
    fail_usage("--out {}: holds an interrupted conversion; finish it with --resume, or start over with --overwrite",
               out.string());
  fail_usage("--out {}: directory is not empty (use --overwrite to replace its checkpoint)", out.string());
}

// Before the first shard byte: the shards still to write must fit, each rounded up to whole
// filesystem blocks, less what their stale temporary files (truncated when reopened) hold.
// The small files (manifest, config, index, side files) are not counted.
void check_free_space(const fs::path& dir, const std::vector<const ShardLayout*>& to_write,
                      const std::vector<fs::path>& temps) {
  struct statvfs st{};
  if (statvfs(dir.c_str(), &st) != 0) return;  // unknown: the writer's fallocate still guards
  const uint64_t block = st.f_frsize ? st.f_frsize : 1;
  uint64_t need = 0, reclaimed = 0;
  for (const ShardLayout* s : to_write) need += (s->file_size + block - 1) / block * block;
  for (const auto& t : temps) {
    struct stat ts{};
    if (::lstat(t.c_str(), &ts) == 0 && S_ISREG(ts.st_mode)) reclaimed += static_cast<uint64_t>(ts.st_blocks) * 512;
  }
  need = need > reclaimed ? need - reclaimed : 0;
  const uint64_t avail = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  if (need > avail)
    fail(ErrorKind::Io, "{}: not enough free space: the output needs {} bytes, {} are available", dir.string(), need,
         avail);
}

// The quantization_config an FP8 export declares, as the hub releases of each scheme write it.
nlohmann::ordered_json export_quantization_config(ScaleScheme scheme) {
  nlohmann::ordered_json q = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"}};
  switch (scheme) {
    case ScaleScheme::Block: q["weight_block_size"] = {128, 128}; break;
    case ScaleScheme::Mx:
      q["weight_block_size"] = {1, kMxBlock};
      q["scale_fmt"] = "ue8m0";
      break;
    case ScaleScheme::PerTensor:
      q["weight_block_size"] = nullptr;
      q["modules_to_not_convert"] = {"model.vision_tower", "model.multi_modal_projector", "lm_head"};
      break;
  }
  return q;
}

// config.json for the output: after dequantization `quantization_config` goes and `torch_dtype`
// names the output dtype, at the top level and in a VLM's `text_config`; an FP8 export declares
// its scheme where the family's release keeps it (a VLM's text_config when it has one).
std::optional<std::string> output_config(const Checkpoint& ck, const Plan& plan) {
  if (!ck.config()) return std::nullopt;
  nlohmann::ordered_json cfg = *ck.config();
  const bool nested = cfg.contains("text_config") && cfg["text_config"].is_object();
  if (plan.dequantized > 0) {
    const std::string dtype(torch_dtype_name(plan.dtype));
    // The nested object first: ordered_json keeps members in a vector, so editing the outer
    // object moves the inner one.
    if (nested) {
      auto& text = cfg["text_config"];
      text.erase("quantization_config");
      if (text.contains("torch_dtype")) text["torch_dtype"] = dtype;
    }
    cfg.erase("quantization_config");
    cfg["torch_dtype"] = dtype;
  }
  if (plan.export_scheme) {
    const auto q = export_quantization_config(*plan.export_scheme);
    if (nested && plan.export_scheme != ScaleScheme::PerTensor) cfg["text_config"]["quantization_config"] = q;
    else cfg["quantization_config"] = q;
  }
  return cfg.dump(2) + "\n";
}

}  // namespace

namespace {

// All targets' plans as one: the tensors of every target in order, their shards numbered across
// targets. Built once, when the conversion is planned; execution, resume and publishing read it.
Plan merged(std::vector<Plan> plans) {
  if (plans.size() == 1) return std::move(plans[0]);
  Plan all;
  for (Plan& p : plans) {
    const auto tensor_base = static_cast<int64_t>(all.tensors.size());
    const auto shard_base = static_cast<uint32_t>(all.shards.size());
    for (PlannedTensor& t : p.tensors) {
      t.shard += shard_base;
      if (t.scale_of >= 0) t.scale_of += tensor_base;
      all.tensors.push_back(std::move(t));
    }
    for (ShardLayout& s : p.shards) all.shards.push_back(std::move(s));
    all.output_bytes += p.output_bytes;
    all.dequantized += p.dequantized;
    all.quantized += p.quantized;
    all.input_bytes = std::max(all.input_bytes, p.input_bytes);
  }
  // What does not depend on the rank: the same inputs are dropped and read by every rank.
  all.dtype = plans[0].dtype;
  all.dropped = std::move(plans[0].dropped);
  all.export_scheme = plans[0].export_scheme;
  all.metadata = std::move(plans[0].metadata);
  return all;
}

// The shards of one target, for its index.
std::vector<ShardLayout> target_shards(const Plan& plan, const Target& t) {
  return {plan.shards.begin() + t.first_shard, plan.shards.begin() + t.last_shard};
}

// Stages the side files, config and index of a target, removes what `replace` (--overwrite)
// replaces, and returns what to publish after the shards.
std::pair<std::vector<StagedFile>, std::optional<StagedFile>> stage(const Checkpoint& ck, const Plan& plan,
                                                                     const fs::path& dir, const Target& t,
                                                                     bool replace) {
  std::vector<StagedFile> staged;
  for (const auto& f : ck.side_files()) staged.emplace_back(dir / f, ck.read_side_file(f));
  const auto config = output_config(ck, plan);
  if (config) staged.emplace_back(dir / "config.json", *config);
  const std::vector<ShardLayout> shards = target_shards(plan, t);
  std::optional<StagedFile> index;
  if (shards.size() > 1) index.emplace(dir / kIndexName, index_json(shards));
  if (replace) {
    // The previous checkpoint goes only now that ours is ready. Files of our shards' names are
    // left for the renames to replace: a resumed run may already have published some of them.
    std::unordered_set<std::string> ours;
    for (const auto& s : shards) ours.insert(s.file_name);
    for (const auto& e : fs::directory_iterator(dir)) {
      const auto name = e.path().filename().string();
      const bool old = (is_our_output(e.path()) && !ours.contains(name)) || (!config && name == "config.json");
      std::error_code ec;
      if (e.is_regular_file() && old && !fs::remove(e.path(), ec) && ec)
        fail(ErrorKind::Io, "{}: cannot remove: {}", e.path().string(), ec.message());
    }
  }
  return {std::move(staged), std::move(index)};
}

// Starts the executor on `selected` (empty: all) of the plan, into `sink`.
ExecStats run_plan(const Plan& plan, TensorSink& sink, const RunOptions& run, std::vector<bool> selected = {}) {
  ExecOptions eo;
  eo.threads = run.threads;
  eo.memory_budget = run.memory_budget;
  eo.io = run.io;
  eo.on_progress = run.on_progress;
  eo.lanes = run.lanes;
  eo.selected = std::move(selected);
  const std::shared_ptr<DeviceStage> device = run.device ? run.device(plan) : nullptr;
  eo.device = device.get();
  return execute(plan, sink, eo);
}

// A shard of the plan and the directory it is written to.
struct ShardRef {
  const Target* target;
  const ShardLayout* layout;
  fs::path dir;
  fs::path final_path() const { return dir / layout->file_name; }
};

std::vector<ShardRef> all_shards(const Plan& plan, const std::vector<Target>& targets, const fs::path& out) {
  std::vector<ShardRef> refs;
  for (const auto& t : targets)
    for (uint32_t s = t.first_shard; s < t.last_shard; ++s) refs.push_back({&t, &plan.shards[s], out / t.rel});
  return refs;
}

// Where a resumed run finds a shard complete; or, in a split conversion, that the shard is
// another rank's to write.
enum class Found : uint8_t { No, UnderTemp, UnderFinal, OtherRank };

bool intact(const fs::path& p, const ManifestShard& rec) {
  struct stat st{};
  if (::lstat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != rec.size)
    return false;
  try {
    return shard_checksum(p) == rec.checksum;
  } catch (const Error&) {  // unreadable: written again
    return false;
  }
}

// Which of the shards still marked No in `found` an interrupted run completed and are intact:
// the recorded size and checksum, under the temporary name or — if it died while publishing —
// the final one. Verified in parallel: it reads every recorded byte. `kept` gets the records
// that held.
void verify_shards(const std::vector<ManifestShard>& recorded, const std::vector<ShardRef>& shards,
                   std::vector<Found>& found, unsigned threads, std::vector<ManifestShard>& kept) {
  std::map<std::pair<std::string, std::string>, size_t> by_name;
  for (size_t i = 0; i < shards.size(); ++i)
    if (found[i] == Found::No) by_name[{shards[i].target->rel, shards[i].layout->file_name}] = i;
  std::vector<std::pair<size_t, const ManifestShard*>> check;
  std::vector<bool> listed(shards.size(), false);
  for (const auto& rec : recorded) {
    const auto it = by_name.find({rec.dir, rec.file});
    if (it == by_name.end() || listed[it->second] || shards[it->second].layout->file_size != rec.size) continue;
    listed[it->second] = true;
    check.emplace_back(it->second, &rec);
  }
  oneapi::tbb::task_arena arena(threads ? static_cast<int>(threads) : oneapi::tbb::task_arena::automatic);
  arena.execute([&] {
    oneapi::tbb::parallel_for(size_t{0}, check.size(), [&](size_t i) {
      const auto& [shard, rec] = check[i];
      const fs::path final_path = shards[shard].final_path();
      found[shard] = intact(temp_path_for(final_path), *rec) ? Found::UnderTemp
                     : intact(final_path, *rec)               ? Found::UnderFinal
                                                              : Found::No;
    });
  });
  for (const auto& [shard, rec] : check)
    if (found[shard] != Found::No) kept.push_back(*rec);
}

// Temporary files a fresh run will not reuse: an earlier attempt's, perhaps of another plan.
void remove_temp_files(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && is_temp_name(e.path().filename().string()) && !fs::remove(e.path(), ec) && ec)
      fail(ErrorKind::Io, "{}: cannot remove: {}", e.path().string(), ec.message());
}

// Directories this run created, removed again (when empty) if it fails.
struct CreatedDirs {
  std::vector<fs::path> dirs;
  bool keep = false;
  ~CreatedDirs() {
    if (keep) return;
    std::error_code ec;
    for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) fs::remove(*it, ec);
  }
};

// Creates `dir` unless it exists; the ranks of a split conversion may race to create it.
void create_dir(const fs::path& dir, CreatedDirs& created) {
  std::error_code ec;
  if (fs::is_directory(dir, ec)) return;
  const bool made = fs::create_directories(dir, ec);
  if (ec && !fs::is_directory(dir)) fail(ErrorKind::Io, "{}: cannot create: {}", dir.string(), ec.message());
  if (made) created.dirs.push_back(dir);
}

// The shard writers of a run: a FinishedShard for each shard a resumed run kept, a new
// ShardWriter (reporting to the manifest when complete) for the others (another rank's shards get
// no writer). Creating a shard sizes it and writes its header; its storage is reserved later, on
// a background thread while items are written (BackgroundReservation). The shards are created in
// parallel (the first error cancels the rest and is rethrown; each writer created removes its
// temporary file).
std::vector<std::unique_ptr<ShardSink>> open_shards(const std::vector<ShardRef>& shards,
                                                    const std::vector<Found>& found, ManifestFile& manifest,
                                                    unsigned threads) {
  std::vector<std::unique_ptr<ShardSink>> writers(shards.size());
  for (size_t i = 0; i < shards.size(); ++i)
    if (found[i] == Found::UnderTemp || found[i] == Found::UnderFinal)
      writers[i] = std::make_unique<FinishedShard>(shards[i].final_path(), found[i] == Found::UnderTemp);
  oneapi::tbb::task_arena arena(threads ? static_cast<int>(threads) : oneapi::tbb::task_arena::automatic);
  arena.execute([&] {
    oneapi::tbb::parallel_for(size_t{0}, shards.size(), [&](size_t i) {
      if (found[i] != Found::No) return;
      const auto& ref = shards[i];
      auto done = [&manifest, rel = ref.target->rel](const fs::path& p, uint64_t size, uint64_t checksum) {
        manifest.add({rel, p.filename().string(), size, checksum});
      };
      writers[i] = std::make_unique<ShardWriter>(ref.dir, *ref.layout, false, std::move(done));
    }, oneapi::tbb::simple_partitioner());
  });
  return writers;
}

}  // namespace

Conversion Conversion::plan(const fs::path& input, const PlanOptions& options, const RemoteOptions& remote) {
  Conversion c;
  c.options_ = options;
  c.ck_ = std::make_unique<Checkpoint>(Checkpoint::open_input(input.string(), remote));
  c.input_ = c.ck_->store().fetch_stats() ? input : fs::absolute(input);
  std::vector<Plan> plans;
  if (options.ep_size > 1 && !options.ep_rank) {
    for (uint32_t r = 0; r < options.ep_size; ++r) {
      PlanOptions po = options;
      po.ep_rank = r;
      plans.push_back(make_plan(*c.ck_, po));
    }
  } else {
    plans.push_back(make_plan(*c.ck_, options));
  }
  uint32_t first = 0;
  for (size_t r = 0; r < plans.size(); ++r) {
    const auto n = static_cast<uint32_t>(plans[r].shards.size());
    c.targets_.push_back({plans.size() > 1 ? fmt::format("rank-{:04d}", r) : "", first, first + n});
    first += n;
  }
  c.plan_ = merged(std::move(plans));
  return c;
}

ExecStats Conversion::execute(TensorSink& sink, const RunOptions& run, std::vector<bool> selected) const {
  return run_plan(plan_, sink, run, std::move(selected));
}

namespace {

// Allocates the new shards' blocks on a thread of its own while the executor writes them. Reserved
// before the first write, they held up the whole run. The free-space check has refused a run that
// cannot fit; what fills the disk meanwhile fails a write or this. Pieces of 64 MiB, in write
// order, so that writers never wait long behind one fallocate (it holds the file's lock). Shards
// in memory (tmpfs) are not reserved: there fallocate allocates the pages themselves, as much
// work as writing them, and writers spun on its lock (2-thread FP8 export 1.44 -> 1.14 s without,
// RESULTS.md). `finish` rethrows the first error.
class BackgroundReservation {
 public:
  explicit BackgroundReservation(const std::vector<std::unique_ptr<ShardSink>>& writers) {
    for (const auto& w : writers)
      if (const auto* sw = dynamic_cast<const ShardWriter*>(w.get()); sw && !sw->in_memory()) shards_.push_back(sw);
    if (!shards_.empty()) thread_ = std::thread([this] { run(); });
  }
  ~BackgroundReservation() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  void finish() {
    if (thread_.joinable()) thread_.join();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static constexpr uint64_t kPiece = 64ull << 20;
  void run() {
    try {
      for (const ShardWriter* w : shards_)
        for (uint64_t at = 0; at < w->size() && !stop_; at += kPiece) w->reserve(at, std::min(kPiece, w->size() - at));
    } catch (...) {
      error_ = std::current_exception();
    }
  }
  std::vector<const ShardWriter*> shards_;
  std::atomic<bool> stop_{false};
  std::exception_ptr error_;
  std::thread thread_;
};

// A checkpoint being written into an output directory: the shard files (new, or kept by a
// resumed run), the manifest that makes an interruption resumable, the directories created.
// Members are destroyed in reverse order: on failure the writers remove their temporary files,
// then the manifest goes, then the writer locks, then the directories the run created.
struct Output {
  fs::path dir;
  bool replace = false;  // the run replaces a checkpoint that was there (--overwrite)
  std::vector<ShardRef> shards;
  std::vector<Found> found;
  CreatedDirs created;
  std::optional<WriterLock> lock, rank_lock;
  std::optional<ManifestFile> manifest;
  std::vector<fs::path> rank_records;  // a split conversion's, removed once it is published
  std::vector<std::unique_ptr<ShardSink>> writers;
};

// Creates the output directory if needed, then takes its writer lock — before looking inside:
// another writer may be filling it.
void open_out_dir(Output& o, const std::optional<Part>& part) {
  std::error_code ec;
  if (fs::exists(o.dir, ec) && !fs::is_directory(o.dir, ec))
    fail_usage("--out {}: exists and is not a directory", o.dir.string());
  create_dir(o.dir, o.created);
  if (!part) {
    o.lock.emplace(o.dir);
    return;
  }
  o.lock.emplace(o.dir, kLockName, WriterLock::Mode::Shared);
  o.rank_lock.emplace(o.dir, rank_lock_name(part->rank));
  o.created.keep = true;  // the other ranks share the directories
}

// Checks free space for the shards still to write, writes the manifest, creates the targets'
// directories and opens the shards.
void open_output(Output& o, const std::vector<Target>& targets, fs::path manifest_path, ManifestRecord record,
                 unsigned threads) {
  std::vector<const ShardLayout*> to_write;
  std::vector<fs::path> stale;
  for (size_t i = 0; i < o.shards.size(); ++i)
    if (o.found[i] == Found::No) {
      to_write.push_back(o.shards[i].layout);
      stale.push_back(temp_path_for(o.shards[i].final_path()));
    }
  check_free_space(o.dir, to_write, stale);
  // From here on the output directory holds a manifest; a failure removes it again, with every
  // temporary file, so that only a killed run leaves something to resume.
  o.manifest.emplace(std::move(manifest_path), std::move(record));
  for (const auto& t : targets) create_dir(o.dir / t.rel, o.created);
  o.writers = open_shards(o.shards, o.found, *o.manifest, threads);
}

// Checks the output directory against the plan (resume: the same identity; otherwise empty or
// --overwrite), verifies the shards an interrupted run completed, checks free space, then
// writes the manifest and opens the shards still to write.
void prepare(Output& o, const Checkpoint& ck, const PlanOptions& options, const Plan& plan,
             const std::vector<Target>& targets, const WriteOptions& wo, unsigned threads) {
  open_out_dir(o, std::nullopt);
  const auto previous = prepare_out_dir(o.dir, wo, ck);
  auto identity = conversion_identity(ck, options);
  if (previous)
    if (const auto diff = identity_difference(previous->identity, identity))
      fail_usage("--resume {}: {}; resume with the interrupted run's options and inputs, or start over with "
                 "--overwrite",
                 o.dir.string(), *diff);
  o.replace = wo.overwrite || (previous && previous->replaces_existing);
  o.shards = all_shards(plan, targets, o.dir);
  ManifestRecord record{std::move(identity), o.replace, {}};
  o.found.assign(o.shards.size(), Found::No);
  if (previous) {
    verify_shards(previous->shards, o.shards, o.found, threads, record.shards);
  } else {
    remove_temp_files(o.dir);
    for (const auto& t : targets) remove_temp_files(o.dir / t.rel);
  }
  open_output(o, targets, o.dir / kManifestName, std::move(record), threads);
}

// What a rank may find in the output directory besides a checkpoint it replaces: the other
// ranks' locks, records and temporary files, and the targets' directories.
bool is_split_run_file(const fs::directory_entry& e, const std::vector<Target>& targets) {
  const auto name = e.path().filename().string();
  if (e.is_directory())
    return std::any_of(targets.begin(), targets.end(), [&](const Target& t) { return t.rel == name; });
  return is_lock_name(name) || is_rank_manifest_name(name) || is_temp_name(name);
}

// A rank's checks of the output directory, before it writes: no single-process run's manifest,
// no record of its own unless resuming or starting over, nothing else unless --overwrite, and
// the records of its sibling ranks (the same world size) for the same conversion. Returns the
// shards the records in the directory say are complete (for a resumed rank) and whether a
// checkpoint there is being replaced.
std::vector<ManifestShard> check_split_dir(const fs::path& dir, const Part& part, const nlohmann::ordered_json& identity,
                                           const std::vector<Target>& targets, const WriteOptions& wo, bool& replace) {
  if (!wo.overwrite && read_manifest(dir))
    fail_usage("--out {}: holds an interrupted single-process conversion; finish it with --resume (without "
               "--rank), or start over with --overwrite",
               dir.string());
  if (!wo.overwrite && !wo.resume)
    for (const auto& e : fs::directory_iterator(dir))
      if (!is_split_run_file(e, targets))
        fail_usage("--out {}: directory is not empty (use --overwrite to replace its checkpoint)", dir.string());
  std::vector<ManifestShard> complete;
  replace = wo.overwrite;
  const std::string own = rank_manifest_name(part);
  for (const auto& [path, rec] : read_rank_manifests(dir)) {
    const auto diff = identity_difference(
        rec.identity, identity, rec.part ? fmt::format("rank {} of {}'s run", rec.part->rank, rec.part->world) : "");
    const std::string name = path.filename().string();
    if (name == own && !wo.resume && !wo.overwrite)
      fail_usage("--out {}: holds rank {}'s interrupted conversion ({}); finish it with --resume, or start over "
                 "with --overwrite",
                 dir.string(), part.rank, name);
    if (diff && (wo.resume || (!wo.overwrite && rec.part && rec.part->world == part.world)))
      fail_input("--out {}: {} (rank {} of {}) records another conversion: {}; every rank needs the same input "
                 "and options",
                 dir.string(), name, rec.part ? rec.part->rank : 0, rec.part ? rec.part->world : 1, *diff);
    if (!wo.resume) continue;
    replace = replace || rec.replaces_existing;
    complete.insert(complete.end(), rec.shards.begin(), rec.shards.end());
  }
  return complete;
}

// A rank's share of the output: its shards (the others marked OtherRank), checked against the
// directory, the complete ones of an interrupted run verified, its record written.
void prepare_part(Output& o, const Conversion& c, const fs::path& input, const Part& part, const WriteOptions& wo,
                  unsigned threads) {
  open_out_dir(o, part);
  auto identity = conversion_identity(c.checkpoint(), c.options());
  const auto recorded = check_split_dir(o.dir, part, identity, c.targets(), wo, o.replace);
  o.shards = all_shards(c.plan(), c.targets(), o.dir);
  const std::vector<uint32_t> rank_of = partition_shards(c.plan(), part.world);
  o.found.assign(o.shards.size(), Found::No);
  for (size_t i = 0; i < o.shards.size(); ++i)
    if (rank_of[i] != part.rank) o.found[i] = Found::OtherRank;
  ManifestRecord record{std::move(identity), o.replace, {}};
  record.part = part;
  record.input = input.string();
  verify_shards(recorded, o.shards, o.found, threads, record.shards);
  open_output(o, c.targets(), o.dir / rank_manifest_name(part), std::move(record), threads);
}

// Makes the written checkpoint visible: every target's side files, config and index are staged
// before the first shard is renamed into place, so that what can fail has failed while nothing
// is under a final name; each index, published last, marks its directory complete.
void publish(Output& o, const Checkpoint& ck, const Plan& plan, const std::vector<Target>& targets) {
  std::vector<std::pair<std::vector<StagedFile>, std::optional<StagedFile>>> staged;
  for (const auto& t : targets) staged.push_back(stage(ck, plan, o.dir / t.rel, t, o.replace));
  for (auto& w : o.writers) w->commit();
  for (auto& [files, index] : staged) {
    for (auto& f : files) f.commit();
    if (index) index->commit();
  }
  if (o.manifest) o.manifest->remove();
  for (const auto& r : o.rank_records)
    if (::unlink(r.c_str()) != 0 && errno != ENOENT) fail_io_errno(errno, r.string() + ": cannot remove");
  fsync_dir(o.dir);
  o.created.keep = true;
}

size_t count_found(const Output& o, std::initializer_list<Found> kinds) {
  size_t n = 0;
  for (Found f : o.found) n += std::find(kinds.begin(), kinds.end(), f) != kinds.end();
  return n;
}

}  // namespace

// prepare -> execute the shards still to write into the files -> publish (or, for a rank of a
// split conversion, keep its shards under their temporary names and mark its record complete).
WriteSummary Conversion::write(const fs::path& out, const WriteOptions& wo, const RunOptions& run) const {
  Output o{out};
  if (wo.part) prepare_part(o, *this, input_, *wo.part, wo, run.threads);
  else prepare(o, *ck_, options_, plan_, targets_, wo, run.threads);
  WriteSummary sum;
  sum.reused_shards = count_found(o, {Found::UnderTemp, Found::UnderFinal});
  // The tensors of the shards still to write: a selection of the plan.
  std::vector<bool> selected(plan_.tensors.size());
  for (size_t i = 0; i < plan_.tensors.size(); ++i) selected[i] = o.found[plan_.tensors[i].shard] == Found::No;
  const auto t1 = Clock::now();
  ShardFileSink sink(plan_, o.writers);
  BackgroundReservation reservation(o.writers);
  sum.exec = run_plan(plan_, sink, run, std::move(selected));
  reservation.finish();
  if (wo.part) {
    for (auto& w : o.writers)
      if (w) w->keep();
    o.manifest->finish();
  } else {
    publish(o, *ck_, plan_, targets_);
  }
  sum.execute_s = since(t1);
  return sum;
}

namespace {

// The rank records of a split conversion of `world` ranks in o.dir, checked: every rank's record
// present and complete, each for `identity`. Returns every complete shard they list; o.rank_records
// gets every rank record in the directory (publishing removes them) and o.replace whether any
// run replaces a checkpoint there. Usage error naming the first rank still to finish;
// InvalidInput for a record of another conversion.
std::vector<ManifestShard> complete_records(Output& o, uint32_t world, const nlohmann::ordered_json& identity) {
  std::vector<std::optional<ManifestRecord>> by_rank(world);
  for (auto& [path, rec] : read_rank_manifests(o.dir)) {
    o.rank_records.push_back(path);
    o.replace = o.replace || rec.replaces_existing;
    if (rec.part && rec.part->world == world) by_rank[rec.part->rank] = std::move(rec);
  }
  std::vector<ManifestShard> shards;
  for (uint32_t r = 0; r < world; ++r) {
    const auto& rec = by_rank[r];
    if (!rec || !rec->complete)
      fail_usage("{}: rank {} of {} has not {}; run it (with --resume if it was interrupted), then publish again",
                 o.dir.string(), r, world, rec ? "completed" : "started");
    if (const auto diff = identity_difference(rec->identity, identity, fmt::format("rank {}'s run", r)))
      fail_input("{}: rank {} of {} converted another input or options: {}", o.dir.string(), r, world, *diff);
    shards.insert(shards.end(), rec->shards.begin(), rec->shards.end());
  }
  return shards;
}

// Whether a live process holds rank `rank`'s lock.
bool rank_running(const fs::path& dir, uint32_t rank) {
  try {
    WriterLock probe(dir, rank_lock_name(rank));
  } catch (const Error&) {
    return true;
  }
  return false;
}

// Waits until every rank of `world` has a complete record, failing as soon as one has died.
void wait_for_ranks(const fs::path& dir, uint32_t world) {
  for (;;) {
    bool all = true;
    for (uint32_t r = 0; r < world && all; ++r) {
      const Part part{r, world};
      std::optional<ManifestRecord> rec;
      try {
        rec = read_manifest_file(dir / rank_manifest_name(part));
      } catch (const Error&) {
      }
      all = rec && rec->complete;
      if (rec && !rec->complete && !rank_running(dir, r))  // incomplete, and nobody is writing it
        fail(ErrorKind::Internal, "{}: rank {} of {} stopped before completing; rerun it with --resume, then publish",
             dir.string(), r, world);
    }
    if (all) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// The publisher's exclusive lock; with `wait`, retried while ranks still hold it shared.
void lock_for_publish(Output& o, bool wait) {
  for (;;) {
    try {
      o.lock.emplace(o.dir);
      return;
    } catch (const Error& e) {
      if (!wait || e.kind() != ErrorKind::Usage) throw;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace

void Conversion::publish_parts(const fs::path& out, uint32_t world, const PublishOptions& po) const {
  if (po.wait) wait_for_ranks(out, world);
  Output o{out};
  lock_for_publish(o, po.wait);
  const auto identity = conversion_identity(*ck_, options_);
  const auto recorded = complete_records(o, world, identity);
  o.shards = all_shards(plan_, targets_, out);
  o.found.assign(o.shards.size(), Found::No);
  // Sizes only: each rank's writers hashed and synced their shards as they wrote them; reading
  // every byte again here would double the conversion's I/O.
  std::map<std::pair<std::string, std::string>, uint64_t> size_of;
  for (const auto& s : recorded) size_of[{s.dir, s.file}] = s.size;
  for (size_t i = 0; i < o.shards.size(); ++i) {
    const ShardRef& ref = o.shards[i];
    const auto it = size_of.find({ref.target->rel, ref.layout->file_name});
    if (it == size_of.end() || it->second != ref.layout->file_size)
      fail_input("{}: no rank recorded shard {} complete", out.string(), (fs::path(ref.target->rel) / ref.layout->file_name).string());
    std::error_code ec;
    const fs::path temp = temp_path_for(ref.final_path());
    o.found[i] = fs::file_size(temp, ec) == it->second ? Found::UnderTemp
                 : fs::file_size(ref.final_path(), ec) == it->second ? Found::UnderFinal
                                                                     : Found::No;
    if (o.found[i] == Found::No)
      fail_input("{}: shard {} was recorded complete but is missing or of another size", out.string(), temp.string());
  }
  for (size_t i = 0; i < o.shards.size(); ++i)
    o.writers.push_back(std::make_unique<FinishedShard>(o.shards[i].final_path(), o.found[i] == Found::UnderTemp));
  publish(o, *ck_, plan_, targets_);
}

namespace {

// The record whose conversion `publish` finishes: one of a world whose every rank is complete
// (rank 0's), else the newest complete one (whose world then names what is missing). A job
// resumed with another world size leaves the old records beside the new ones.
std::optional<ManifestRecord> record_to_publish(const fs::path& out) {
  std::vector<std::pair<fs::file_time_type, ManifestRecord>> done;
  std::map<uint32_t, uint32_t> complete_ranks;  // world -> complete ranks of it
  for (auto& [path, rec] : read_rank_manifests(out)) {
    if (!rec.part || !rec.complete) continue;
    std::error_code ec;
    ++complete_ranks[rec.part->world];
    done.emplace_back(fs::last_write_time(path, ec), std::move(rec));
  }
  for (auto& [t, rec] : done)
    if (rec.part->rank == 0 && complete_ranks[rec.part->world] == rec.part->world) return rec;
  const auto newest = std::max_element(done.begin(), done.end(),
                                       [](const auto& a, const auto& b) { return a.first < b.first; });
  if (newest == done.end()) return std::nullopt;
  return newest->second;
}

}  // namespace

uint32_t publish_split(const fs::path& out, const PublishOptions& po) {
  const auto rec = record_to_publish(out);
  if (!rec) fail_usage("{}: no rank of a split conversion has completed there; nothing to publish", out.string());
  const Conversion c = Conversion::plan(rec->input, plan_options_of(rec->identity["parameters"]), po.remote);
  c.publish_parts(out, rec->part->world, po);
  return rec->part->world;
}

ConvertSummary convert(const ConvertOptions& opt) {
  const auto t0 = Clock::now();
  if (opt.run.memory_budget < kMinMemoryBudget)
    fail_usage("--memory-budget must be at least {} bytes", kMinMemoryBudget);
  if (opt.write.resume && opt.null_sink) fail_usage("--resume needs --sink file: a null sink leaves nothing to resume");
  ConvertSummary sum;
  const Conversion c = Conversion::plan(opt.in, opt.plan, opt.remote);
  sum.plan_s = since(t0);
  if (opt.null_sink) {
    const auto t1 = Clock::now();
    // The device stage is chosen here, once, because it decides where the tensors are dropped.
    RunOptions run = opt.run;
    const std::shared_ptr<DeviceStage> stage = run.device ? run.device(c.plan()) : nullptr;
    run.device = [stage](const Plan&) { return stage; };
    NullTensorSink sink(stage != nullptr);
    sum.exec = c.execute(sink, run);
    sum.execute_s = since(t1);
  } else if (!opt.dry_run) {
    if (opt.on_planned) opt.on_planned(c);
    const WriteSummary w = c.write(opt.out, opt.write, opt.run);
    sum.exec = w.exec;
    sum.execute_s = w.execute_s;
    sum.reused_shards = w.reused_shards;
    if (const auto& part = opt.write.part) {
      const bool publishes = opt.on_part_written ? opt.on_part_written() : opt.publish.wait && part->rank == 0;
      if (publishes) c.publish_parts(opt.out, part->world, opt.publish);
      sum.published = publishes;
    }
  }
  if (const auto& part = opt.write.part) {
    const auto rank_of = partition_shards(c.plan(), part->world);
    const Balance b = partition_balance(c.plan(), rank_of, part->world);
    sum.part = part;
    sum.part_shards = static_cast<size_t>(std::count(rank_of.begin(), rank_of.end(), part->rank));
    sum.part_bytes = b.bytes[part->rank];
    sum.balance = b.ratio;
  }
  const Plan& plan = c.plan();
  sum.input_tensors = c.checkpoint().tensors().size();
  sum.output_tensors = plan.tensors.size();
  sum.dequantized = plan.dequantized;
  sum.dropped = plan.dropped.size();
  sum.input_bytes = plan.input_bytes;
  sum.output_bytes = plan.output_bytes;
  sum.shards = plan.shards.size();
  sum.fetched = c.checkpoint().store().fetch_stats();
  sum.total_s = since(t0);
  sum.peak_rss_bytes = peak_rss_bytes();
  sum.isa = std::string(isa_name(kernels().isa));
  return sum;
}

}  // namespace ckpt
