// libFuzzer target: a small checkpoint made from the input goes through Checkpoint::open and
// make_plan in all three directions. Each must either plan or throw ckpt's Error (not Internal);
// any other exception, a crash, a sanitizer report, a timeout, or a plan that breaks the
// invariants the executor relies on (checked below) is a finding.
//
// Input: three option bytes, then NUL-separated sections — config.json's text (empty: no
// config.json), then 1 to 4 shard headers (JSON text). Each shard is written as its 8-byte length,
// the header, and as many zero bytes as the largest data_offsets end the header names (a sparse
// file), so the fuzzer only has to get the header right; with several shards an index naming
// every tensor of every header is written too. Seeds: tests/fuzz/corpus/fuzz_plan (make_seeds.sh).
#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/checkpoint.h"
#include "formats/error.h"
#include "pipeline/plan.h"
#include "transforms/cast.h"
#include "transforms/family.h"

namespace fs = std::filesystem;
using namespace ckpt;

namespace {

// Shards larger than this are written without data: a planner input, not a disk filler.
constexpr uint64_t kMaxSparseBytes = uint64_t{1} << 40;
constexpr size_t kMaxShards = 4;

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz_plan: %s\n", what.c_str());
  std::abort();
}

class Scratch {
 public:
  Scratch() {
    const char* tmp = std::getenv("TMPDIR");
    dir_ = fs::path(tmp && *tmp ? tmp : "/tmp") / ("ckpt-fuzz-plan-" + std::to_string(getpid()));
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  const fs::path& fresh() {
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    return dir_;
  }

 private:
  fs::path dir_;
};

void write_file(const fs::path& p, std::string_view bytes, uint64_t extra_zeros) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) finding("cannot create " + p.string());
  if (::write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()) ||
      ::ftruncate(fd, static_cast<off_t>(bytes.size() + extra_zeros)) != 0)
    finding("cannot write " + p.string());
  ::close(fd);
}

// The tensor names of a header and the data size its offsets need (0 when it is not a JSON
// object, which the reader then rejects).
void scan_header(std::string_view text, std::vector<std::string>& names, uint64_t& data_size) {
  data_size = 0;
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) return;
  for (const auto& [key, value] : j.items()) {
    if (key == "__metadata__") continue;
    names.push_back(key);
    if (!value.is_object() || !value.contains("data_offsets")) continue;
    const auto& off = value["data_offsets"];
    if (off.is_array() && off.size() == 2 && off[1].is_number_unsigned())
      data_size = std::max(data_size, off[1].get<uint64_t>());
  }
  if (data_size > kMaxSparseBytes) data_size = 0;
}

void write_checkpoint(const fs::path& dir, const std::vector<std::string_view>& sections) {
  if (!sections[0].empty()) write_file(dir / "config.json", sections[0], 0);
  const size_t shards = sections.size() - 1;
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t s = 0; s < shards; ++s) {
    const std::string_view header = sections[s + 1];
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(uint64_t{header.size()} >> (8 * i));
    bytes.append(header);
    std::vector<std::string> names;
    uint64_t data_size = 0;
    scan_header(header, names, data_size);
    const std::string file = shard_file_name(s, shards);
    write_file(dir / file, bytes, data_size);
    for (const auto& n : names) weight_map[n] = file;
  }
  if (shards > 1) {
    std::ofstream(dir / kIndexName) << nlohmann::json{{"weight_map", weight_map}}.dump();
  }
}

uint64_t mul_or_die(uint64_t a, uint64_t b, const std::string& what) {
  uint64_t r = 0;
  if (!checked_mul(a, b, r)) finding(what + ": overflow");
  return r;
}

// What the executor assumes of a plan: every piece reads inside its input (and its scale grid),
// writes inside its output, the pieces of a tensor cover it exactly once, every element
// conversion exists, and every tensor lies inside its shard.
void check_plan(const Plan& plan) {
  if (plan.tensors.empty()) finding("an empty plan");
  uint64_t output_bytes = 0;
  for (const PlannedTensor& t : plan.tensors) {
    const std::string& name = t.out.name;
    uint64_t numel = 0;
    if (!checked_numel(t.out.shape, numel)) finding(name + ": output shape overflows");
    if (t.nbytes != t.out.nbytes()) finding(name + ": nbytes disagrees with the shape");
    if (mul_or_die(t.rows, t.row_len, name) != numel) finding(name + ": rows x row_len != numel");
    output_bytes += t.nbytes;
    if (t.shard >= plan.shards.size()) finding(name + ": shard out of range");
    const ShardLayout& shard = plan.shards[t.shard];
    if (t.offset < shard.data_start || t.offset + t.nbytes > shard.file_size)
      finding(name + ": outside its shard");
    if (t.scale_of >= 0) {
      if (static_cast<size_t>(t.scale_of) >= plan.tensors.size() || !t.pieces.empty())
        finding(name + ": a scale tensor with pieces or a bad partner");
      continue;
    }
    // Quantized outputs are computed in F32 and then encoded.
    const DType target = t.quantize != QuantizeMode::None ? DType::F32 : t.out.dtype;
    uint64_t area = 0;
    for (const Piece& p : t.pieces) {
      if (!p.input.info) finding(name + ": a piece without input");
      const TensorInfo& in = *p.input.info;
      if (p.scale.info) {
        if (!is_fp8_weight(in.dtype)) finding(name + ": a scale on a non-FP8 input");
        if (target != DType::BF16 && target != DType::F16 && target != DType::F32)
          finding(name + ": dequantized into " + std::string(dtype_name(target)));
      } else if (is_copy_only(in.dtype) && (!t.is_copy() || t.quantize != QuantizeMode::None)) {
        finding(name + ": a " + std::string(dtype_name(in.dtype)) + " input is transformed, not copied");
      } else if (!castable(in.dtype, target)) {
        finding(name + ": no cast from " + std::string(dtype_name(in.dtype)) + " to " +
                std::string(dtype_name(target)));
      }
      if (p.rows == 0 || p.cols == 0) continue;
      if (p.in_cols == 0 || in.numel() % p.in_cols) finding(name + ": in_cols does not divide the input");
      if (p.in_col0 + p.cols > p.in_cols || p.in_row0 + p.rows > in.numel() / p.in_cols)
        finding(name + ": piece reads outside " + in.name);
      if (p.out_row0 + p.out_rows() > t.rows || p.out_col0 + p.out_cols() > t.row_len)
        finding(name + ": piece writes outside the tensor");
      if (p.scale.info) {
        const DequantScheme& d = p.scheme;
        if (d.block_rows == 0 || d.block_cols == 0) finding(name + ": empty scale block");
        const uint64_t last = ((p.in_row0 + p.rows - 1) / d.block_rows) * d.grid_cols +
                              (p.in_col0 + p.cols - 1) / d.block_cols;
        if (last >= p.scale.info->numel()) finding(name + ": piece reads outside its scale grid");
      }
      area += mul_or_die(p.rows, p.cols, name);
    }
    // Inside the tensor, pairwise disjoint and as large as it in total: an exact cover. (The
    // pairwise test is quadratic; plans of fuzzer-sized inputs stay far below the cut-off.)
    const auto nonempty = [](const Piece& p) { return p.rows != 0 && p.cols != 0; };
    const auto& ps = t.pieces;
    if (ps.size() <= 1024)
      for (size_t i = 0; i < ps.size(); ++i)
        for (size_t j = i + 1; j < ps.size(); ++j) {
          const Piece &a = ps[i], &b = ps[j];
          if (nonempty(a) && nonempty(b) && a.out_row0 < b.out_row0 + b.out_rows() &&
              b.out_row0 < a.out_row0 + a.out_rows() && a.out_col0 < b.out_col0 + b.out_cols() &&
              b.out_col0 < a.out_col0 + a.out_cols())
            finding(name + ": pieces overlap");
        }
    if (area != numel) finding(name + ": pieces do not cover the tensor");
  }
  if (output_bytes != plan.output_bytes) finding("output_bytes disagrees with the tensors");
}

void plan_one(const Checkpoint& ck, const PlanOptions& opt) {
  try {
    check_plan(make_plan(ck, opt));
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::Internal) finding(std::string("internal error: ") + e.what());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  static Scratch scratch;
  const uint8_t a = data[0], b = data[1], c = data[2];
  std::vector<std::string_view> sections;
  const std::string_view rest(reinterpret_cast<const char*>(data + 3), size - 3);
  for (size_t pos = 0;;) {
    const size_t nul = rest.find('\0', pos);
    sections.push_back(rest.substr(pos, nul == std::string_view::npos ? std::string_view::npos : nul - pos));
    if (nul == std::string_view::npos) break;
    pos = nul + 1;
  }
  if (sections.size() < 2 || sections.size() > kMaxShards + 1) return -1;  // not a checkpoint: not kept

  const fs::path& dir = scratch.fresh();
  write_checkpoint(dir, sections);
  std::optional<Checkpoint> ck;
  try {
    ck.emplace(Checkpoint::open(dir));
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::Internal) finding(std::string("internal error: ") + e.what());
    return 0;
  }

  // The options as the CLI would pass them (cli/main.cc validates the same ranges).
  const auto& fams = families();
  const size_t fi = (a >> 2) & 7;
  PlanOptions base;
  base.dtype = static_cast<OutType>((a & 3) % 3);
  base.family = fi < fams.size() ? std::string(fams[fi].name) : "auto";
  base.max_shard_size = c == 0 ? 5'000'000'000 : uint64_t{1} << (c % 40);

  PlanOptions dequant = base;
  dequant.direction = Direction::Dequant;
  plan_one(*ck, dequant);

  PlanOptions native = base;
  native.direction = Direction::Native;
  native.mtp = static_cast<MtpMode>(((a >> 5) & 3) % 3);
  native.ep_size = 1 + ((b >> 2) & 7);
  if (b & 0x20) native.ep_rank = static_cast<uint32_t>((b >> 6) % native.ep_size);
  plan_one(*ck, native);

  PlanOptions hf = base;
  hf.direction = Direction::Hf;
  hf.quantize = static_cast<QuantizeMode>((b & 3) % 3);
  plan_one(*ck, hf);
  return 0;
}
