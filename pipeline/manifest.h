// The record that lets `convert --resume` finish an interrupted conversion. It lives in the output
// directory as `.ckptconv-manifest.json`, is written (temporary file, fsync, rename) before the
// first shard byte, rewritten the same way each time a shard is complete, and removed once the
// conversion is published. It holds what determines the output bytes — the plan's parameters and
// the identity of every input file (name, size, mtime and an XXH3-64 of its safetensors header;
// config.json hashed whole) — and, per complete shard, its directory, name, size and checksum
// (formats/writer.h's shard_checksum). Tensor data is not hashed: that would mean reading hundreds
// of GB again. A resume refuses any difference in parameters or inputs and trusts a recorded shard
// only while its file still has the recorded size and checksum.
//
//   {"ckptconv_manifest": 1, "checksum": "...", "parameters": {"--to": "native", ...},
//    "inputs": [{"file": "model-00001-of-00002.safetensors", "size": N, "mtime_ns": T,
//                "header_xxh3": "16 hex digits"}, ..., {"file": "config.json", ..., "xxh3": "..."}],
//    "replaces_existing": false,
//    "shards": [{"dir": "" or "rank-0000", "file": "model-00001-of-00009.safetensors", "size": N,
//                "checksum": "16 hex digits"}, ...]}
//
// A conversion split across processes (pipeline/partition.h) keeps one such record per rank,
// `.ckptconv-rank-RRRRR-of-NNNNN.json`, with three more members: "part": {"rank", "world_size"},
// "input" (the input's absolute path: `ckptconv publish` plans the conversion again from it) and
// "complete" — true once every shard of the rank is written and synced under its temporary name.
// Unlike the single run's manifest, a complete record stays until the whole output is published:
// it is the rank's completion record.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "formats/checkpoint.h"
#include "pipeline/partition.h"
#include "pipeline/plan.h"

namespace ckpt {

inline constexpr const char* kManifestName = ".ckptconv-manifest.json";

struct ManifestShard {
  std::string dir;   // relative to the output directory: "" or "rank-0000"
  std::string file;  // the shard's final name
  uint64_t size = 0, checksum = 0;
};

struct ManifestRecord {
  nlohmann::ordered_json identity;  // {"parameters": ..., "inputs": ...}: conversion_identity()
  bool replaces_existing = false;   // the run was started with --overwrite
  std::vector<ManifestShard> shards;
  // A rank's record only (see above).
  std::optional<Part> part;
  std::string input;
  bool complete = false;
};

// The record file of one rank, and whether a file name is one.
std::string rank_manifest_name(const Part& part);
bool is_rank_manifest_name(const std::string& file_name);

// The parameters and input identity of converting `ck` with `options`.
nlohmann::ordered_json conversion_identity(const Checkpoint& ck, const PlanOptions& options);

// The options a conversion identity's "parameters" record (InvalidInput if they cannot be read).
PlanOptions plan_options_of(const nlohmann::ordered_json& parameters);

// The first difference between a recorded identity and the current one, as a phrase naming the
// option or input file ("--max-shard-size was 1000000 in WHOSE, now 2000000"), or nothing when
// they match. `whose` names the recorded one: the interrupted run, a sibling rank.
std::optional<std::string> identity_difference(const nlohmann::ordered_json& then, const nlohmann::ordered_json& now,
                                               std::string_view whose = "the interrupted run");

// The manifest in `out_dir`, or nothing when there is none. A file that is not a manifest of this
// version is an InvalidInput error.
std::optional<ManifestRecord> read_manifest(const std::filesystem::path& out_dir);
// The record in `path` (InvalidInput error as above; Io error if unreadable).
ManifestRecord read_manifest_file(const std::filesystem::path& path);
// Every rank's record in `out_dir`, of any world size, by file name.
std::vector<std::pair<std::filesystem::path, ManifestRecord>> read_rank_manifests(const std::filesystem::path& out_dir);

// The manifest of a running conversion, at `path`: written when constructed, rewritten atomically
// by every `add` (thread-safe: shards complete on the executor's threads), deleted by `remove`
// once the output is published — or by the destructor, when a failure unwinds the run (a failed
// run leaves nothing to resume; only a killed one does). A rank's record is instead kept by
// `finish`, which marks it complete.
class ManifestFile {
 public:
  ManifestFile(std::filesystem::path path, ManifestRecord record);
  ~ManifestFile();
  ManifestFile(const ManifestFile&) = delete;
  ManifestFile& operator=(const ManifestFile&) = delete;

  void add(ManifestShard shard);
  void remove();  // Io error if the file cannot be deleted
  void finish();  // "complete": true, and the file stays

 private:
  void save();
  std::filesystem::path path_;
  std::mutex mu_;
  ManifestRecord record_;
  bool removed_ = false;
};

}  // namespace ckpt
