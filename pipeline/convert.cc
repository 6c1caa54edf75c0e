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

ConvertSummary convert(const ConvertOptions& opt) {
  const auto t0 = Clock::now();
  if (opt.memory_budget < kMinMemoryBudget)
    fail_usage("--memory-budget must be at least {} bytes", kMinMemoryBudget);
  ConvertSummary sum;
  const Checkpoint ck = Checkpoint::open(opt.in);
  const Plan plan = make_plan(ck, opt.plan);
  sum.plan_s = since(t0);

  prepare_out_dir(opt, ck);
  check_free_space(opt.out, plan);

  std::vector<std::unique_ptr<ShardWriter>> writers;
  for (const auto& s : plan.shards) writers.push_back(std::make_unique<ShardWriter>(opt.out, s));

  const auto t1 = Clock::now();
  {
    Progress progress("converting", plan.output_bytes, opt.progress);
    ExecOptions eo;
    eo.threads = opt.threads;
    eo.memory_budget = opt.memory_budget;
    eo.progress = &progress.counter();
    sum.exec = execute(plan, writers, eo);
  }
  // Everything else is staged before the first shard is published, so that what can fail has
  // failed while nothing is under a final name; the index, published last, marks completion.
  std::vector<StagedFile> staged;
  for (const auto& f : ck.side_files()) staged.emplace_back(opt.out / f.filename(), read_file(f));
  const auto config = output_config(ck, plan);
  if (config) staged.emplace_back(opt.out / "config.json", *config);
  std::optional<StagedFile> index;
  if (plan.shards.size() > 1) index.emplace(opt.out / kIndexName, index_json(plan.shards));

  if (opt.overwrite)  // the previous checkpoint goes only now that ours is ready
    for (const auto& e : fs::directory_iterator(opt.out))
      if (e.is_regular_file() && (is_our_output(e.path()) || (!config && e.path().filename() == "config.json")))
        fs::remove(e.path());
  for (auto& w : writers) w->commit();
  for (auto& f : staged) f.commit();
  if (index) index->commit();
  sum.execute_s = since(t1);

  sum.input_tensors = ck.tensors().size();
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
