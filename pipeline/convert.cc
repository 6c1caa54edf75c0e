#include "pipeline/convert.h"

#include <sys/resource.h>
#include <sys/statvfs.h>

#include <chrono>
#include <fstream>
#include <optional>

#include "formats/checkpoint.h"
#include "formats/error.h"
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

// The output directory must be new or empty, unless --overwrite; it never is the input.
void prepare_out_dir(const ConvertOptions& opt, const Checkpoint& ck) {
  std::error_code ec;
  if (fs::exists(opt.out, ec)) {
    if (!fs::is_directory(opt.out)) fail_usage("--out {}: exists and is not a directory", opt.out.string());
    if (fs::equivalent(opt.out, ck.dir(), ec))
      fail_usage("--out {}: is the input directory; write the conversion elsewhere", opt.out.string());
    if (!opt.overwrite && !fs::is_empty(opt.out))
      fail_usage("--out {}: directory is not empty (use --overwrite to replace its checkpoint)",
                 opt.out.string());
  } else if (!fs::create_directories(opt.out, ec) || ec) {
    fail(ErrorKind::Io, "--out {}: cannot create: {}", opt.out.string(), ec.message());
  }
}

void check_free_space(const fs::path& dir, const Plan& plan) {
  struct statvfs st{};
  if (statvfs(dir.c_str(), &st) != 0) return;  // unknown: the writer's fallocate still guards
  uint64_t need = 0;
  for (const auto& s : plan.shards) need += s.file_size;
  const uint64_t avail = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  if (need > avail)
    fail(ErrorKind::Io, "{}: not enough free space: the output needs {} bytes, {} are available",
         dir.string(), need, avail);
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

// Stages the side files, config and index of a target, removes what --overwrite replaces, and
// returns what to publish after the shards.
std::pair<std::vector<StagedFile>, std::optional<StagedFile>> stage(const Checkpoint& ck, const Target& t,
                                                                     bool overwrite) {
  std::vector<StagedFile> staged;
  for (const auto& f : ck.side_files()) staged.emplace_back(t.dir / f.filename(), read_file(f));
  const auto config = output_config(ck, t.plan);
  if (config) staged.emplace_back(t.dir / "config.json", *config);
  std::optional<StagedFile> index;
  if (t.plan.shards.size() > 1) index.emplace(t.dir / kIndexName, index_json(t.plan.shards));
  if (overwrite)  // the previous checkpoint goes only now that ours is ready
    for (const auto& e : fs::directory_iterator(t.dir))
      if (e.is_regular_file() && (is_our_output(e.path()) || (!config && e.path().filename() == "config.json")))
        fs::remove(e.path());
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

}  // namespace

ConvertSummary convert(const ConvertOptions& opt) {
  const auto t0 = Clock::now();
  if (opt.memory_budget < kMinMemoryBudget)
    fail_usage("--memory-budget must be at least {} bytes", kMinMemoryBudget);
  ConvertSummary sum;
  const Checkpoint ck = Checkpoint::open(opt.in);
  std::vector<Target> targets;
  if (opt.plan.ep_size > 1 && !opt.plan.ep_rank) {
    for (uint32_t r = 0; r < opt.plan.ep_size; ++r) {
      PlanOptions po = opt.plan;
      po.ep_rank = r;
      targets.push_back({opt.out / fmt::format("rank-{:04d}", r), make_plan(ck, po)});
    }
  } else {
    targets.push_back({opt.out, make_plan(ck, opt.plan)});
  }
  sum.plan_s = since(t0);
  if (opt.dry_run) {
    summarize(ck, targets, t0, sum);
    return sum;
  }

  std::vector<std::unique_ptr<ShardSink>> writers;
  if (opt.null_sink) {
    for (const auto& t : targets)
      for (size_t i = 0; i < t.plan.shards.size(); ++i) writers.push_back(std::make_unique<NullSink>());
  } else {
    prepare_out_dir(opt, ck);
    for (const auto& t : targets) {
      std::error_code ec;
      fs::create_directories(t.dir, ec);
      if (ec) fail(ErrorKind::Io, "{}: cannot create: {}", t.dir.string(), ec.message());
      check_free_space(t.dir, t.plan);
      for (const auto& s : t.plan.shards) writers.push_back(std::make_unique<ShardWriter>(t.dir, s));
    }
  }
  const Plan all = merged(targets);

  const auto t1 = Clock::now();
  {
    Progress progress("converting", all.output_bytes, opt.progress);
    ExecOptions eo;
    eo.threads = opt.threads;
    eo.memory_budget = opt.memory_budget;
    eo.io = opt.io;
    eo.progress = &progress.counter();
    sum.exec = execute(all, writers, eo);
  }
  // Everything else is staged before the first shard is published, so that what can fail has
  // failed while nothing is under a final name; each index, published last, marks completion.
  std::vector<std::pair<std::vector<StagedFile>, std::optional<StagedFile>>> staged;
  if (!opt.null_sink)
    for (const auto& t : targets) staged.push_back(stage(ck, t, opt.overwrite));
  for (auto& w : writers) w->commit();
  for (auto& [files, index] : staged) {
    for (auto& f : files) f.commit();
    if (index) index->commit();
  }
  sum.execute_s = since(t1);

  summarize(ck, targets, t0, sum);
  return sum;
}

}  // namespace ckpt
