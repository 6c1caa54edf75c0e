#include "pipeline/manifest.h"

#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <fstream>

#include "formats/error.h"
#include "formats/writer.h"

namespace ckpt {

namespace fs = std::filesystem;

namespace {

constexpr int kVersion = 1;

std::string hex(uint64_t v) { return fmt::format("{:016x}", v); }

std::string_view direction_name(Direction d) {
  switch (d) {
    case Direction::Dequant: return "dequant";
    case Direction::Native: return "native";
    case Direction::Hf: return "hf";
  }
  return "?";
}

std::string_view out_type_name(OutType t) {
  switch (t) {
    case OutType::BF16: return "bf16";
    case OutType::F16: return "f16";
    case OutType::F32: return "f32";
  }
  return "?";
}

std::string_view mtp_name(MtpMode m) {
  switch (m) {
    case MtpMode::Auto: return "auto";
    case MtpMode::On: return "on";
    case MtpMode::Off: return "off";
  }
  return "?";
}

std::string_view quantize_name(QuantizeMode q) {
  switch (q) {
    case QuantizeMode::None: return "none";
    case QuantizeMode::Placeholder: return "placeholder";
    case QuantizeMode::Real: return "real";
  }
  return "?";
}

std::string read_whole(const fs::path& f) {
  std::ifstream in(f, std::ios::binary);
  if (!in) fail(ErrorKind::Io, "{}: cannot read", f.string());
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A JSON value as an option value reads on the command line: strings unquoted, null as "unset".
std::string shown(const nlohmann::ordered_json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "unset";
  return v.dump();
}

// Names the manifest and why it cannot be used, in one line.
template <typename... Args>
[[noreturn]] void bad_manifest(const fs::path& path, fmt::format_string<Args...> f, Args&&... args) {
  fail_input("{}: not a resume manifest of this ckptconv ({}); start over with --overwrite", path.string(),
             fmt::format(f, std::forward<Args>(args)...));
}

uint64_t parse_hex(const fs::path& path, const nlohmann::json& v) {
  uint64_t out = 0;
  const std::string s = v.is_string() ? v.get<std::string>() : std::string();
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out, 16);
  if (s.size() != 16 || ec != std::errc() || end != s.data() + s.size())
    bad_manifest(path, "'{}' is not 16 hex digits", v.dump());
  return out;
}

}  // namespace

nlohmann::ordered_json conversion_identity(const Checkpoint& ck, const PlanOptions& o) {
  nlohmann::ordered_json params = {
      {"--to", direction_name(o.direction)},
      {"--dtype", out_type_name(o.dtype)},
      {"--family", o.family},
      {"--mtp", mtp_name(o.mtp)},
      {"--ep-size", o.ep_size},
      {"--ep-rank", o.ep_rank ? nlohmann::ordered_json(*o.ep_rank) : nlohmann::ordered_json(nullptr)},
      {"--quantize", quantize_name(o.quantize)},
      {"--max-shard-size", o.max_shard_size},
  };
  nlohmann::ordered_json inputs = nlohmann::ordered_json::array();
  for (const auto& f : ck.files()) {
    nlohmann::ordered_json in = {{"file", f->path().filename().string()}};
    const auto version = f->source().identity();
    for (const auto& [key, value] : version.items()) in[key] = value;
    in["header_xxh3"] = hex(f->header_hash());
    inputs.push_back(std::move(in));
  }
  // The plan also depends on config.json (family, layer count, expert sizes).
  if (ck.config()) {
    nlohmann::ordered_json in = {{"file", "config.json"}};
    for (const auto& [key, value] : ck.config_identity().items()) in[key] = value;
    inputs.push_back(std::move(in));
  }
  return {{"parameters", std::move(params)}, {"inputs", std::move(inputs)}};
}

PlanOptions plan_options_of(const nlohmann::ordered_json& p) {
  PlanOptions o;
  try {
    const auto pick = [&](const char* key, auto name_of, auto& field, auto... values) {
      const std::string v = p.at(key).get<std::string>();
      for (auto value : {values...})
        if (name_of(value) == v) {
          field = value;
          return;
        }
      fail_input("rank record: {} '{}' is not one this ckptconv knows", key, v);
    };
    pick("--to", direction_name, o.direction, Direction::Dequant, Direction::Native, Direction::Hf);
    pick("--dtype", out_type_name, o.dtype, OutType::BF16, OutType::F16, OutType::F32);
    pick("--mtp", mtp_name, o.mtp, MtpMode::Auto, MtpMode::On, MtpMode::Off);
    pick("--quantize", quantize_name, o.quantize, QuantizeMode::None, QuantizeMode::Placeholder, QuantizeMode::Real);
    o.family = p.at("--family").get<std::string>();
    o.ep_size = p.at("--ep-size").get<uint32_t>();
    if (!p.at("--ep-rank").is_null()) o.ep_rank = p["--ep-rank"].get<uint32_t>();
    o.max_shard_size = p.at("--max-shard-size").get<uint64_t>();
  } catch (const nlohmann::json::exception& e) {
    fail_input("rank record: unreadable parameters: {}", e.what());
  }
  return o;
}

std::optional<std::string> identity_difference(const nlohmann::ordered_json& then, const nlohmann::ordered_json& now,
                                               std::string_view whose) {
  const auto& tp = then["parameters"];
  for (const auto& [key, value] : now["parameters"].items()) {
    const auto old = tp.contains(key) ? tp[key] : nlohmann::ordered_json(nullptr);
    if (old != value) return fmt::format("{} was {} in {}, now {}", key, shown(old), whose, shown(value));
  }
  const auto& ti = then["inputs"];
  const auto& ni = now["inputs"];
  for (size_t i = 0; i < std::max(ti.size(), ni.size()); ++i) {
    if (i >= ti.size()) return fmt::format("input file {} is new", ni[i]["file"].get<std::string>());
    if (i >= ni.size()) return fmt::format("input file {} is gone", ti[i]["file"].get<std::string>());
    const auto& a = ti[i];
    const auto& b = ni[i];
    const std::string name = b["file"].get<std::string>();
    if (a["file"] != b["file"])
      return fmt::format("input file {} is now {}", a["file"].get<std::string>(), name);
    for (const char* key : {"size", "mtime_ns", "etag", "header_xxh3", "xxh3"})
      if (a.contains(key) != b.contains(key) || (b.contains(key) && a[key] != b[key]))
        return fmt::format("input file {} changed since {} ({} {} then, {} now)", name, whose, key,
                           a.contains(key) ? shown(a[key]) : "none", b.contains(key) ? shown(b[key]) : "none");
  }
  return std::nullopt;
}

std::string rank_manifest_name(const Part& part) {
  return fmt::format(".ckptconv-rank-{:05d}-of-{:05d}.json", part.rank, part.world);
}

bool is_rank_manifest_name(const std::string& name) {
  return name.starts_with(".ckptconv-rank-") && name.ends_with(".json") && name.find("-of-") != std::string::npos;
}

std::optional<ManifestRecord> read_manifest(const fs::path& out_dir) {
  const fs::path path = out_dir / kManifestName;
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) return std::nullopt;
  return read_manifest_file(path);
}

std::vector<std::pair<fs::path, ManifestRecord>> read_rank_manifests(const fs::path& out_dir) {
  std::vector<std::pair<fs::path, ManifestRecord>> records;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(out_dir, ec))
    if (is_rank_manifest_name(e.path().filename().string())) records.emplace_back(e.path(), read_manifest_file(e.path()));
  std::sort(records.begin(), records.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return records;
}

ManifestRecord read_manifest_file(const fs::path& path) {
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(read_whole(path));
  } catch (const nlohmann::json::exception& e) {
    bad_manifest(path, "{}", e.what());
  }
  if (!j.is_object() || !j.contains("ckptconv_manifest") || j["ckptconv_manifest"] != kVersion)
    bad_manifest(path, "no \"ckptconv_manifest\": {}", kVersion);
  ManifestRecord r;
  try {
    if (j.at("checksum") != kShardChecksumName) bad_manifest(path, "shard checksums are not {}", kShardChecksumName);
    if (!j.at("parameters").is_object() || !j.at("inputs").is_array()) bad_manifest(path, "malformed identity");
    r.identity = {{"parameters", j["parameters"]}, {"inputs", j["inputs"]}};
    for (const auto& in : r.identity["inputs"])
      if (!in.is_object() || !in.contains("file") || !in["file"].is_string()) bad_manifest(path, "malformed input");
    r.replaces_existing = j.at("replaces_existing").get<bool>();
    for (const auto& s : j.at("shards"))
      r.shards.push_back({s.at("dir").get<std::string>(), s.at("file").get<std::string>(),
                          s.at("size").get<uint64_t>(), parse_hex(path, s.at("checksum"))});
    if (j.contains("part")) {
      r.part = Part{j["part"].at("rank").get<uint32_t>(), j["part"].at("world_size").get<uint32_t>()};
      if (r.part->world == 0 || r.part->rank >= r.part->world) bad_manifest(path, "rank {} of {}", r.part->rank, r.part->world);
      r.input = j.at("input").get<std::string>();
      r.complete = j.at("complete").get<bool>();
    }
  } catch (const nlohmann::json::exception& e) {
    bad_manifest(path, "{}", e.what());
  }
  return r;
}

ManifestFile::ManifestFile(fs::path path, ManifestRecord record) : path_(std::move(path)), record_(std::move(record)) {
  save();
}

void ManifestFile::add(ManifestShard shard) {
  std::lock_guard lock(mu_);
  record_.shards.push_back(std::move(shard));
  save();
}

void ManifestFile::save() {
  nlohmann::ordered_json shards = nlohmann::ordered_json::array();
  for (const auto& s : record_.shards)
    shards.push_back({{"dir", s.dir}, {"file", s.file}, {"size", s.size}, {"checksum", hex(s.checksum)}});
  nlohmann::ordered_json j = {{"ckptconv_manifest", kVersion},
                              {"checksum", kShardChecksumName},
                              {"parameters", record_.identity["parameters"]},
                              {"inputs", record_.identity["inputs"]},
                              {"replaces_existing", record_.replaces_existing},
                              {"shards", std::move(shards)}};
  if (record_.part) {
    j["part"] = {{"rank", record_.part->rank}, {"world_size", record_.part->world}};
    j["input"] = record_.input;
    j["complete"] = record_.complete;
  }
  write_file_atomic(path_, j.dump(1) + "\n");
}

ManifestFile::~ManifestFile() {
  if (!removed_) ::unlink(path_.c_str());
}

void ManifestFile::finish() {
  std::lock_guard lock(mu_);
  record_.complete = true;
  save();
  fsync_dir(path_.parent_path());
  removed_ = true;  // kept: the rank's completion record
}

void ManifestFile::remove() {
  if (::unlink(path_.c_str()) != 0 && errno != ENOENT) fail_io_errno(errno, path_.string() + ": cannot remove");
  removed_ = true;
  fsync_dir(path_.parent_path());
}

}  // namespace ckpt
