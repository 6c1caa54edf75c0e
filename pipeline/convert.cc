#include "pipeline/convert.h"

#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <chrono>
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

std::string read_file(const fs::path& f) {
  std::ifstream in(f, std::ios::binary);
  if (!in) fail(ErrorKind::Io, "{}: cannot read", f.string());
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
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
  for (const auto& f : ck.side_files()) staged.emplace_back(dir / f.filename(), read_file(f));
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

// Where a resumed run finds a shard complete.
enum class Found : uint8_t { No, UnderTemp, UnderFinal };

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

// Which of the plan's shards the interrupted run completed and are intact: the recorded size and
// checksum, under the temporary name or — if it died while publishing — the final one. Verified
// in parallel: it reads every recorded byte. `kept` gets the records that held.
std::vector<Found> verify_shards(const ManifestRecord& previous, const std::vector<ShardRef>& shards,
                                 unsigned threads, std::vector<ManifestShard>& kept) {
  std::map<std::pair<std::string, std::string>, size_t> by_name;
  for (size_t i = 0; i < shards.size(); ++i) by_name[{shards[i].target->rel, shards[i].layout->file_name}] = i;
  std::vector<std::pair<size_t, const ManifestShard*>> check;
  std::vector<bool> listed(shards.size(), false);
  for (const auto& rec : previous.shards) {
    const auto it = by_name.find({rec.dir, rec.file});
    if (it == by_name.end() || listed[it->second] || shards[it->second].layout->file_size != rec.size) continue;
    listed[it->second] = true;
    check.emplace_back(it->second, &rec);
  }
  std::vector<Found> found(shards.size(), Found::No);
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
  return found;
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

void create_dir(const fs::path& dir, CreatedDirs& created) {
  std::error_code ec;
  if (fs::is_directory(dir, ec)) return;
  if (!fs::create_directories(dir, ec) || ec) fail(ErrorKind::Io, "{}: cannot create: {}", dir.string(), ec.message());
  created.dirs.push_back(dir);
}

// The shard writers of a run: a FinishedShard for each shard a resumed run kept, a new
// ShardWriter (reporting to the manifest when complete) for the others. Creating a shard reserves
// its storage; on tmpfs that allocates every page, under the file's inode lock: as long as
// writing the shard later. Files do not share that lock, so the shards are created in parallel
// (the first error cancels the rest and is rethrown; each writer created removes its temporary file).
std::vector<std::unique_ptr<ShardSink>> open_shards(const std::vector<ShardRef>& shards,
                                                    const std::vector<Found>& found, ManifestFile& manifest,
                                                    unsigned threads) {
  std::vector<std::unique_ptr<ShardSink>> writers(shards.size());
  for (size_t i = 0; i < shards.size(); ++i)
    if (found[i] != Found::No)
      writers[i] = std::make_unique<FinishedShard>(shards[i].final_path(), found[i] == Found::UnderTemp);
  oneapi::tbb::task_arena arena(threads ? static_cast<int>(threads) : oneapi::tbb::task_arena::automatic);
  arena.execute([&] {
    oneapi::tbb::parallel_for(size_t{0}, shards.size(), [&](size_t i) {
      if (writers[i]) return;
      const auto& ref = shards[i];
      auto done = [&manifest, rel = ref.target->rel](const fs::path& p, uint64_t size, uint64_t checksum) {
        manifest.add({rel, p.filename().string(), size, checksum});
      };
      writers[i] = std::make_unique<ShardWriter>(ref.dir, *ref.layout, true, std::move(done));
    }, oneapi::tbb::simple_partitioner());
  });
  return writers;
}

}  // namespace

Conversion Conversion::plan(const fs::path& input, const PlanOptions& options) {
  Conversion c;
  c.options_ = options;
  c.ck_ = std::make_unique<Checkpoint>(Checkpoint::open(input));
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

// A checkpoint being written into an output directory: the shard files (new, or kept by a
// resumed run), the manifest that makes an interruption resumable, the directories created.
// Members are destroyed in reverse order: on failure the writers remove their temporary files,
// then the manifest goes, then the writer lock, then the directories the run created.
struct Output {
  fs::path dir;
  bool replace = false;  // the run replaces a checkpoint that was there (--overwrite)
  std::vector<ShardRef> shards;
  std::vector<Found> found;
  CreatedDirs created;
  std::optional<WriterLock> lock;
  std::optional<ManifestFile> manifest;
  std::vector<std::unique_ptr<ShardSink>> writers;
};

// Checks the output directory against the plan (resume: the same identity; otherwise empty or
// --overwrite), verifies the shards an interrupted run completed, checks free space, then
// writes the manifest and opens the shards still to write.
void prepare(Output& o, const Checkpoint& ck, const PlanOptions& options, const Plan& plan,
             const std::vector<Target>& targets, const WriteOptions& wo, unsigned threads) {
  std::error_code ec;
  if (!fs::exists(o.dir, ec)) {
    if (!fs::create_directories(o.dir, ec) || ec)
      fail(ErrorKind::Io, "--out {}: cannot create: {}", o.dir.string(), ec.message());
    o.created.dirs.push_back(o.dir);
  }
  if (!fs::is_directory(o.dir)) fail_usage("--out {}: exists and is not a directory", o.dir.string());
  o.lock.emplace(o.dir);  // before looking inside: another writer may be filling it
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
    o.found = verify_shards(*previous, o.shards, threads, record.shards);
  } else {
    remove_temp_files(o.dir);
    for (const auto& t : targets) remove_temp_files(o.dir / t.rel);
  }
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
  o.manifest.emplace(o.dir, std::move(record));
  for (const auto& t : targets) create_dir(o.dir / t.rel, o.created);
  o.writers = open_shards(o.shards, o.found, *o.manifest, threads);
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
  o.manifest->remove();
  o.created.keep = true;
}

}  // namespace

// prepare -> execute the shards still to write into the files -> publish.
WriteSummary Conversion::write(const fs::path& out, const WriteOptions& wo, const RunOptions& run) const {
  Output o{out};
  prepare(o, *ck_, options_, plan_, targets_, wo, run.threads);
  WriteSummary sum;
  sum.reused_shards = static_cast<size_t>(std::count(o.found.begin(), o.found.end(), Found::UnderTemp) +
                                          std::count(o.found.begin(), o.found.end(), Found::UnderFinal));
  // A resumed run writes the tensors of the shards still to write: a selection of the plan.
  std::vector<bool> selected(plan_.tensors.size());
  for (size_t i = 0; i < plan_.tensors.size(); ++i) selected[i] = o.found[plan_.tensors[i].shard] == Found::No;
  const auto t1 = Clock::now();
  ShardFileSink sink(plan_, o.writers);
  sum.exec = run_plan(plan_, sink, run, std::move(selected));
  publish(o, *ck_, plan_, targets_);
  sum.execute_s = since(t1);
  return sum;
}

ConvertSummary convert(const ConvertOptions& opt) {
  const auto t0 = Clock::now();
  if (opt.run.memory_budget < kMinMemoryBudget)
    fail_usage("--memory-budget must be at least {} bytes", kMinMemoryBudget);
  if (opt.write.resume && opt.null_sink) fail_usage("--resume needs --sink file: a null sink leaves nothing to resume");
  ConvertSummary sum;
  const Conversion c = Conversion::plan(opt.in, opt.plan);
  sum.plan_s = since(t0);
  if (opt.null_sink) {
    const auto t1 = Clock::now();
    NullTensorSink sink;
    sum.exec = c.execute(sink, opt.run);
    sum.execute_s = since(t1);
  } else if (!opt.dry_run) {
    const WriteSummary w = c.write(opt.out, opt.write, opt.run);
    sum.exec = w.exec;
    sum.execute_s = w.execute_s;
    sum.reused_shards = w.reused_shards;
  }
  const Plan& plan = c.plan();
  sum.input_tensors = c.checkpoint().tensors().size();
  sum.output_tensors = plan.tensors.size();
  sum.dequantized = plan.dequantized;
  sum.dropped = plan.dropped.size();
  sum.input_bytes = plan.input_bytes;
  sum.output_bytes = plan.output_bytes;
  sum.shards = plan.shards.size();
  sum.total_s = since(t0);
  sum.peak_rss_bytes = peak_rss_bytes();
  sum.isa = std::string(isa_name(kernels().isa));
  return sum;
}

}  // namespace ckpt
