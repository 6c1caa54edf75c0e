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
#include "pipeline/progress.h"
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
bool holds_only_temp_files(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (!e.is_regular_file() || !is_temp_name(e.path().filename().string())) return false;
  return true;
}

// The output directory must be new or empty, unless --overwrite; it never is the input. With
// --resume it may hold the manifest of an interrupted run, which is returned.
std::optional<ManifestRecord> prepare_out_dir(const ConvertOptions& opt, const Checkpoint& ck) {
  std::error_code ec;
  if (!fs::exists(opt.out, ec)) {
    if (!fs::create_directories(opt.out, ec) || ec)
      fail(ErrorKind::Io, "--out {}: cannot create: {}", opt.out.string(), ec.message());
    return std::nullopt;
  }
  if (!fs::is_directory(opt.out)) fail_usage("--out {}: exists and is not a directory", opt.out.string());
  if (fs::equivalent(opt.out, ck.dir(), ec))
    fail_usage("--out {}: is the input directory; write the conversion elsewhere", opt.out.string());
  auto previous = read_manifest(opt.out);
  if (opt.resume) {
    if (previous) return previous;
    if (opt.overwrite || holds_only_temp_files(opt.out)) return std::nullopt;
    fail_usage("--out {}: nothing to resume (no {}) and the directory is not empty", opt.out.string(), kManifestName);
  }
  if (opt.overwrite || fs::is_empty(opt.out)) return std::nullopt;
  if (previous)
    fail_usage("--out {}: holds an interrupted conversion; finish it with --resume, or start over with --overwrite",
               opt.out.string());
  fail_usage("--out {}: directory is not empty (use --overwrite to replace its checkpoint)", opt.out.string());
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

// One output directory and its plan: the whole conversion, or one expert-parallel rank of
// `--ep-size N` without `--ep-rank`.
struct Target {
  fs::path dir;
  std::string rel;  // dir relative to --out, as the manifest names it: "" or "rank-0000"
  Plan plan;
};

// All targets' tensors as one plan for a single pass of the executor; shard indices follow the
// writers, which are the targets' shards in order.
Plan merged(const std::vector<Target>& targets) {
  if (targets.size() == 1) return targets[0].plan;
  Plan all;
  uint32_t shard_base = 0;
  for (const auto& t : targets) {
    const auto tensor_base = static_cast<int64_t>(all.tensors.size());
    for (PlannedTensor p : t.plan.tensors) {
      p.shard += shard_base;
      if (p.scale_of >= 0) p.scale_of += tensor_base;
      all.tensors.push_back(std::move(p));
    }
    shard_base += static_cast<uint32_t>(t.plan.shards.size());
    all.output_bytes += t.plan.output_bytes;
  }
  return all;
}

// Stages the side files, config and index of a target, removes what `replace` (--overwrite)
// replaces, and returns what to publish after the shards.
std::pair<std::vector<StagedFile>, std::optional<StagedFile>> stage(const Checkpoint& ck, const Target& t,
                                                                     bool replace) {
  std::vector<StagedFile> staged;
  for (const auto& f : ck.side_files()) staged.emplace_back(t.dir / f.filename(), read_file(f));
  const auto config = output_config(ck, t.plan);
  if (config) staged.emplace_back(t.dir / "config.json", *config);
  std::optional<StagedFile> index;
  if (t.plan.shards.size() > 1) index.emplace(t.dir / kIndexName, index_json(t.plan.shards));
  if (replace) {
    // The previous checkpoint goes only now that ours is ready. Files of our shards' names are
    // left for the renames to replace: a resumed run may already have published some of them.
    std::unordered_set<std::string> ours;
    for (const auto& s : t.plan.shards) ours.insert(s.file_name);
    for (const auto& e : fs::directory_iterator(t.dir)) {
      const auto name = e.path().filename().string();
      const bool old = (is_our_output(e.path()) && !ours.contains(name)) || (!config && name == "config.json");
      std::error_code ec;
      if (e.is_regular_file() && old && !fs::remove(e.path(), ec) && ec)
        fail(ErrorKind::Io, "{}: cannot remove: {}", e.path().string(), ec.message());
    }
  }
  return {std::move(staged), std::move(index)};
}

void summarize(const Checkpoint& ck, const std::vector<Target>& targets, Clock::time_point t0, ConvertSummary& sum) {
  sum.input_tensors = ck.tensors().size();
  for (const auto& t : targets) {
    sum.output_tensors += t.plan.tensors.size();
    sum.dequantized += t.plan.dequantized;
    sum.dropped = t.plan.dropped.size();  // the same inputs are dropped for every rank
    sum.input_bytes = std::max(sum.input_bytes, t.plan.input_bytes);
    sum.output_bytes += t.plan.output_bytes;
    sum.shards += t.plan.shards.size();
  }
  sum.total_s = since(t0);
  sum.peak_rss_bytes = peak_rss_bytes();
  sum.isa = std::string(isa_name(kernels().isa));
}

// Runs the tensors of `plan` that `selected` names (empty: all).
ExecStats run_plan(const Plan& plan, const std::vector<std::unique_ptr<ShardSink>>& writers,
                   const ConvertOptions& opt, std::vector<bool> selected = {}) {
  uint64_t total = 0;
  for (size_t i = 0; i < plan.tensors.size(); ++i)
    if (selected.empty() || selected[i]) total += plan.tensors[i].nbytes;
  Progress progress("converting", total, opt.progress);
  ExecOptions eo;
  eo.threads = opt.threads;
  eo.memory_budget = opt.memory_budget;
  eo.io = opt.io;
  eo.progress = &progress.counter();
  eo.selected = std::move(selected);
  return execute(plan, writers, eo);
}

// A shard of the plan, numbered as the writers are: targets' shards in order.
struct ShardRef {
  const Target* target;
  const ShardLayout* layout;
  fs::path final_path() const { return target->dir / layout->file_name; }
};

std::vector<ShardRef> all_shards(const std::vector<Target>& targets) {
  std::vector<ShardRef> out;
  for (const auto& t : targets)
    for (const auto& s : t.plan.shards) out.push_back({&t, &s});
  return out;
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

// Writes the conversion into --out: checks, manifest, shards (skipping the complete ones of a
// resumed run), then the publishing renames.
void write_output(const ConvertOptions& opt, const Checkpoint& ck, const std::vector<Target>& targets,
                  ConvertSummary& sum) {
  CreatedDirs created;
  {
    std::error_code ec;
    if (!fs::exists(opt.out, ec)) created.dirs.push_back(opt.out);
  }
  const auto previous = prepare_out_dir(opt, ck);
  auto identity = conversion_identity(ck, opt.plan);
  if (previous)
    if (const auto diff = identity_difference(previous->identity, identity))
      fail_usage("--resume {}: {}; resume with the interrupted run's options and inputs, or start over with "
                 "--overwrite",
                 opt.out.string(), *diff);
  const bool replace = opt.overwrite || (previous && previous->replaces_existing);
  const auto shards = all_shards(targets);
  ManifestRecord record{std::move(identity), replace, {}};
  std::vector<Found> found(shards.size(), Found::No);
  if (previous) {
    found = verify_shards(*previous, shards, opt.threads, record.shards);
  } else {
    remove_temp_files(opt.out);
    for (const auto& t : targets) remove_temp_files(t.dir);
  }
  std::vector<const ShardLayout*> to_write;
  std::vector<fs::path> stale;
  for (size_t i = 0; i < shards.size(); ++i)
    if (found[i] == Found::No) {
      to_write.push_back(shards[i].layout);
      stale.push_back(temp_path_for(shards[i].final_path()));
    }
  check_free_space(opt.out, to_write, stale);

  // From here on the output directory holds a manifest; a failure removes it again, with every
  // temporary file, so that only a killed run leaves something to resume.
  ManifestFile manifest(opt.out, std::move(record));
  std::vector<std::unique_ptr<ShardSink>> writers(shards.size());
  for (const auto& t : targets) create_dir(t.dir, created);
  for (size_t i = 0; i < shards.size(); ++i)
    if (found[i] != Found::No) {
      writers[i] = std::make_unique<FinishedShard>(shards[i].final_path(), found[i] == Found::UnderTemp);
      ++sum.reused_shards;
    }
  // Creating a shard reserves its storage; on tmpfs that allocates every page, under the file's
  // inode lock: as long as writing the shard later. Files do not share that lock, so the shards
  // are created in parallel (the first error cancels the rest and is rethrown; each writer
  // created removes its temporary file).
  oneapi::tbb::task_arena arena(opt.threads ? static_cast<int>(opt.threads) : oneapi::tbb::task_arena::automatic);
  arena.execute([&] {
    oneapi::tbb::parallel_for(size_t{0}, shards.size(), [&](size_t i) {
      if (writers[i]) return;
      const auto& ref = shards[i];
      auto done = [&manifest, rel = ref.target->rel](const fs::path& p, uint64_t size, uint64_t checksum) {
        manifest.add({rel, p.filename().string(), size, checksum});
      };
      writers[i] = std::make_unique<ShardWriter>(ref.target->dir, *ref.layout, true, std::move(done));
    }, oneapi::tbb::simple_partitioner());
  });
  // A resumed run writes the tensors of the shards still to write: a selection of the plan.
  const Plan all = merged(targets);
  std::vector<bool> selected(all.tensors.size());
  for (size_t i = 0; i < all.tensors.size(); ++i) selected[i] = found[all.tensors[i].shard] == Found::No;

  const auto t1 = Clock::now();
  sum.exec = run_plan(all, writers, opt, std::move(selected));
  // Everything else is staged before the first shard is published, so that what can fail has
  // failed while nothing is under a final name; each index, published last, marks completion.
  std::vector<std::pair<std::vector<StagedFile>, std::optional<StagedFile>>> staged;
  for (const auto& t : targets) staged.push_back(stage(ck, t, replace));
  for (auto& w : writers) w->commit();
  for (auto& [files, index] : staged) {
    for (auto& f : files) f.commit();
    if (index) index->commit();
  }
  manifest.remove();
  created.keep = true;
  sum.execute_s = since(t1);
}

}  // namespace

ConvertSummary convert(const ConvertOptions& opt) {
  const auto t0 = Clock::now();
  if (opt.memory_budget < kMinMemoryBudget)
    fail_usage("--memory-budget must be at least {} bytes", kMinMemoryBudget);
  if (opt.resume && opt.null_sink) fail_usage("--resume needs --sink file: a null sink leaves nothing to resume");
  ConvertSummary sum;
  const Checkpoint ck = Checkpoint::open(opt.in);
  std::vector<Target> targets;
  if (opt.plan.ep_size > 1 && !opt.plan.ep_rank) {
    for (uint32_t r = 0; r < opt.plan.ep_size; ++r) {
      PlanOptions po = opt.plan;
      po.ep_rank = r;
      const std::string rel = fmt::format("rank-{:04d}", r);
      targets.push_back({opt.out / rel, rel, make_plan(ck, po)});
    }
  } else {
    targets.push_back({opt.out, "", make_plan(ck, opt.plan)});
  }
  sum.plan_s = since(t0);
  if (opt.dry_run) {
    summarize(ck, targets, t0, sum);
    return sum;
  }

  if (opt.null_sink) {
    std::vector<std::unique_ptr<ShardSink>> writers;
    for (const auto& t : targets)
      for (size_t i = 0; i < t.plan.shards.size(); ++i) writers.push_back(std::make_unique<NullSink>());
    const auto t1 = Clock::now();
    sum.exec = run_plan(merged(targets), writers, opt);
    sum.execute_s = since(t1);
  } else {
    write_output(opt, ck, targets, sum);
  }
  summarize(ck, targets, t0, sum);
  return sum;
}

}  // namespace ckpt
