// The hostile-input corpus (issue #5): hand-made bad checkpoints, one table row each, that the CLI
// must refuse with exit 3 and one line on stderr naming the offending file (and the tensor, where
// there is one) — without crashing, hanging, or leaving anything under --out, neither under a
// final name nor as a hidden temporary. Rows cover every safetensors header rule, index.json and
// config.json lying about the shards, missing or malformed FP8 scales, missing experts, shapes no
// scheme fits, and shards truncated after their header was written (the plan-time view of a file
// cut short between planning and reading). Inputs are byte strings, or valid synthetic
// checkpoints of real families corrupted in one place; every run goes through the real binary
// under a time limit.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "formats/checkpoint.h"
#include "tests/support.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using ckpt::DType;
using ckpt::test::RunResult;
using ckpt::test::safetensors_bytes;
using ckpt::test::TempDir;
using ckpt::test::TensorSpec;
using ckpt::test::write_bytes;
using OJson = nlohmann::ordered_json;

namespace {

// Long enough for any of these tiny inputs on a loaded machine; a hang fails instead of blocking.
constexpr unsigned kTimeoutS = 60;

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

RunResult cli(const std::string& args) {
  RunResult r = ckpt::test::run_cli(args, kTimeoutS);
  UNSCOPED_INFO("ckptconv " << args << "\n  exit " << r.exit_code << "\n  stderr: " << r.err);
  return r;
}

std::string le64(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Header-level rows: a directory of two shards, the first valid, the second (kBad) holding a
// MiniMax-M2 expert weight and its block scale under a corrupted header.

constexpr const char* kGood = "model-00001-of-00002.safetensors";
constexpr const char* kBad = "model-00002-of-00002.safetensors";
const std::string kW = "model.layers.0.block_sparse_moe.experts.1.w1.weight";
const std::string kS = kW + "_scale_inv";

// One header entry: "name":{"dtype":…,"shape":…,"data_offsets":…} with the JSON texts given.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":" + dtype + ",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}";
}
// The valid pair: the weight F8_E4M3 [2, 4] at [0, 8], its F32 scalar scale at [8, 12].
const std::string kWEntry = entry(kW, "\"F8_E4M3\"", "[2,4]", "[0,8]");
const std::string kSEntry = entry(kS, "\"F32\"", "[]", "[8,12]");
const std::string kData(12, '\x38');

std::string object(const std::string& a, const std::string& b = "") {
  return "{" + a + (b.empty() ? "" : "," + b) + "}";
}

using Build = std::function<void(const fs::path& in)>;

// Writes the two-shard directory with `bytes` as the bad shard.
Build bad_shard(const std::string& bytes) {
  return [bytes](const fs::path& in) {
    fs::create_directories(in);
    ckpt::test::write_safetensors(in / kGood,
                                  {{"model.embed_tokens.weight", DType::BF16, {2, 4}, std::string(16, '\x3f')}});
    write_bytes(in / kBad, bytes);
  };
}
Build bad_header(const std::string& header, const std::string& data = kData) {
  return bad_shard(safetensors_bytes(header, data));
}

// ---------------------------------------------------------------------------------------------
// Rows built from valid synthetic checkpoints

using Shards = std::vector<std::vector<TensorSpec>>;

// The tensors of `src` shard by shard (data copied), and its config.
Shards read_shards(const fs::path& src, OJson& cfg) {
  const ckpt::Checkpoint c = ckpt::Checkpoint::open(src);
  Shards shards;
  for (const auto& f : c.files()) {
    shards.emplace_back();
    for (const auto& t : f->tensors()) {
      const auto* p = reinterpret_cast<const char*>(f->data(t));
      shards.back().push_back({t.name, t.dtype, t.shape, std::string(p, p + t.nbytes())});
    }
  }
  cfg = c.config() ? *c.config() : OJson();
  return shards;
}

TensorSpec& find(Shards& shards, const std::string& name) {
  for (auto& s : shards)
    for (auto& t : s)
      if (t.name == name) return t;
  throw std::runtime_error("no tensor " + name + " in the source");
}

// `src` rewritten into `in` (same shards, an index, config.json) after `edit`.
Build rewrite(const fs::path& src, const std::function<void(Shards&, OJson&)>& edit) {
  return [src, edit](const fs::path& in) {
    OJson cfg;
    Shards shards = read_shards(src, cfg);
    edit(shards, cfg);
    ckpt::test::write_checkpoint(in, shards, cfg.is_null() ? std::string() : cfg.dump(2));
  };
}

// `src` without the tensors whose name starts with `prefix` (a weight and its scale, an expert).
Build without(const fs::path& src, const std::string& prefix) {
  return rewrite(src, [prefix](Shards& shards, OJson&) {
    for (auto& s : shards) std::erase_if(s, [&](const TensorSpec& t) { return t.name.starts_with(prefix); });
  });
}

Build edit_config(const fs::path& src, const std::function<void(OJson&)>& edit) {
  return rewrite(src, [edit](Shards&, OJson& cfg) { edit(cfg); });
}

// A byte-exact copy of `src` with the file `name` replaced by `text` (or edited by `edit`).
Build copy_with(const fs::path& src, const std::string& name, const std::function<std::string(std::string)>& edit) {
  return [=](const fs::path& in) {
    fs::copy(src, in, fs::copy_options::recursive);
    write_bytes(in / name, edit(ckpt::test::read_bytes(in / name)));
  };
}

Build edit_index(const fs::path& src, const std::function<void(OJson&)>& edit) {
  return copy_with(src, ckpt::kIndexName, [edit](std::string text) {
    OJson j = OJson::parse(text);
    edit(j);
    return j.dump(2);
  });
}

// A copy of `src` whose shard `name` is cut to `keep(size)` bytes.
Build truncate_shard(const fs::path& src, const std::string& name, const std::function<uint64_t(uint64_t)>& keep) {
  return [=](const fs::path& in) {
    fs::copy(src, in, fs::copy_options::recursive);
    fs::resize_file(in / name, keep(fs::file_size(in / name)));
  };
}

std::string shard_of(const fs::path& src, const std::string& tensor) {
  const ckpt::Checkpoint c = ckpt::Checkpoint::open(src);
  const ckpt::TensorRef* r = c.find(tensor);
  if (!r) throw std::runtime_error("no tensor " + tensor + " in " + src.string());
  return r->file->path().filename().string();
}

// The first tensor of `src` (shards in order, data order within) that `pred` selects.
std::string first_tensor(const fs::path& src, const std::function<bool(const ckpt::TensorInfo&)>& pred) {
  const ckpt::Checkpoint c = ckpt::Checkpoint::open(src);
  for (const auto& t : c.tensors())
    if (pred(*t.info)) return t.name();
  throw std::runtime_error("no such tensor in " + src.string());
}

uint64_t header_end(const fs::path& shard) {
  const std::string b = ckpt::test::read_bytes(shard);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(b[i]);
  return 8 + n;
}

std::string bf16_ones(size_t n) { return ckpt::test::le_bytes(std::vector<uint16_t>(n, 0x3F80)); }
std::string f32s(size_t n, float v) { return ckpt::test::le_bytes(std::vector<float>(n, v)); }

// A Ministral-3 checkpoint with one E4M3 weight and a per-tensor scale, plus `extra`.
Build mistral(const std::vector<TensorSpec>& extra) {
  return [extra](const fs::path& in) {
    const OJson cfg = {{"architectures", {"Ministral3ForCausalLM"}}, {"model_type", "ministral3"},
                       {"hidden_size", 8}, {"num_hidden_layers", 1}};
    std::vector<TensorSpec> ts = {
        {"model.layers.0.mlp.up_proj.weight", DType::F8_E4M3, {2, 8}, std::string(16, '\x38')},
        {"model.layers.0.mlp.up_proj.weight_scale_inv", DType::F32, {}, f32s(1, 0.5f)},
        {"model.norm.weight", DType::BF16, {8}, bf16_ones(8)}};
    ts.insert(ts.end(), extra.begin(), extra.end());
    ckpt::test::write_checkpoint(in, {ts}, cfg.dump(2));
  };
}

// One FP8 weight `w` of `shape` with `scale` as its "_scale_inv", in the second of two shards.
Build fp8_with_scale(const std::string& w, DType wtype, const std::vector<uint64_t>& shape,
                     const std::vector<TensorSpec>& scale) {
  return [=](const fs::path& in) {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    std::vector<TensorSpec> second = {{w, wtype, shape, std::string(n, '\x38')}};
    second.insert(second.end(), scale.begin(), scale.end());
    ckpt::test::write_checkpoint(in, {{{"model.norm.weight", DType::BF16, {4}, bf16_ones(4)}}, second});
  };
}

// ---------------------------------------------------------------------------------------------
// The table

struct Case {
  std::string name;
  Build build;             // writes the bad checkpoint into an empty directory
  std::string args;        // convert's arguments besides --in and --out
  bool inspect;            // inspect reads the broken part too and must fail the same way
  std::vector<std::string> words;  // the one-line message holds each
  std::string input = "";  // --in, relative to the built directory ("" for the directory)
};

struct Sources {
  TempDir dir;
  fs::path m2 = dir / "m2", ds = dir / "ds", nemo = dir / "nemo", m3 = dir / "m3", m2_native = dir / "m2_native";
  Sources() {
    const auto synth = [](const std::string& family, const fs::path& out, const std::string& sizes) {
      const RunResult r = ckpt::test::run_cli("synth --family " + family + " --out " + q(out) + " " + sizes, kTimeoutS);
      if (r.exit_code != 0) throw std::runtime_error("synth " + family + ": " + r.err);
    };
    synth("minimax_m2", m2, "--layers 1 --experts 2 --hidden 256 --inter 128");
    synth("deepseek_v3", ds, "--layers 2 --experts 2 --hidden 256 --inter 128");
    synth("nemotron_v3", nemo, "--layers 2 --experts 2 --hidden 256 --inter 128");
    synth("minimax_m3", m3, "--layers 2 --experts 2 --hidden 256 --inter 128");
    const RunResult r = ckpt::test::run_cli(
        "convert --in " + q(m2) + " --out " + q(m2_native) + " --family minimax_m2 --to native", kTimeoutS);
    if (r.exit_code != 0) throw std::runtime_error("native m2: " + r.err);
  }
};

std::vector<Case> header_cases() {
  const std::string W = kW, S = kS;
  const std::string pair = kWEntry + "," + kSEntry, good = "{" + pair + "}";
  const auto w_with = [&](const std::string& dtype, const std::string& shape, const std::string& offsets) {
    return object(entry(W, dtype, shape, offsets), kSEntry);
  };
  const auto s_with = [&](const std::string& offsets) { return object(kWEntry, entry(S, "\"F32\"", "[]", offsets)); };
  const std::string no_dtype = "\"" + W + "\":{\"shape\":[2,4],\"data_offsets\":[0,8]}";
  const std::string no_shape = "\"" + W + "\":{\"dtype\":\"F8_E4M3\",\"data_offsets\":[0,8]}";
  const std::string no_offsets = "\"" + W + "\":{\"dtype\":\"F8_E4M3\",\"shape\":[2,4]}";
  const std::string extra_field =
      "\"" + W + "\":{\"dtype\":\"F8_E4M3\",\"shape\":[2,4],\"data_offsets\":[0,8],\"quant\":1}";
  const std::string dtype_twice =
      "\"" + W + "\":{\"dtype\":\"F8_E4M3\",\"dtype\":\"F8_E4M3\",\"shape\":[2,4],\"data_offsets\":[0,8]}";
  const std::string meta = "\"__metadata__\":";
  std::string deep = "{\"" + W + "\":";
  for (int i = 0; i < 5000; ++i) deep += "[";
  for (int i = 0; i < 5000; ++i) deep += "]";
  deep += "}";
  const std::string escaped_w = "\\u006d" + W.substr(1);  // the same name, its 'm' escaped

  return {
      // Length prefix
      {"empty file", bad_shard(""), "", true, {kBad}},
      {"7 bytes, no room for the length", bad_shard(std::string("\x05\0\0\0\0\0\0", 7)), "", true, {kBad}},
      {"header length 0", bad_shard(le64(0)), "", true, {kBad}},
      {"header length 1", bad_shard(le64(1) + "{"), "", true, {kBad}},
      {"header length one past the end of the file", bad_shard(le64(good.size() + 1) + good), "", true, {kBad}},
      {"header length 100,000,000 in a short file", bad_shard(le64(100'000'000) + good + kData), "", true,
       {kBad, "100000000"}},
      {"header length over 100 MB", bad_shard(le64(100'000'001) + good + kData), "", true, {kBad, "100000001"}},
      {"header length 2^64 - 1", bad_shard(le64(UINT64_MAX) + good + kData), "", true, {kBad, "18446744073709551615"}},
      // Encoding
      {"invalid UTF-8 byte in a tensor name",
       bad_header(object(entry("model.layers.0.\xff.weight", "\"F32\"", "[1]", "[0,4]")), std::string(4, '\0')), "",
       true, {kBad}},
      {"overlong UTF-8 in a metadata value", bad_header(object(meta + "{\"format\":\"\xc0\xaf\"}", pair)), "", true,
       {kBad}},
      {"UTF-8-encoded surrogate in a name",
       bad_header(object(entry("w\xed\xa0\x80", "\"F32\"", "[1]", "[0,4]")), std::string(4, '\0')), "", true, {kBad}},
      {"UTF-8 sequence cut at the end of the header", bad_header("{\"a\":\"\xe2\x82"), "", true, {kBad}},
      {"byte-order mark before the object", bad_header("\xef\xbb\xbf" + good), "", true, {kBad}},
      // JSON syntax and top-level type
      {"JSON cut in the middle", bad_header("{\"" + W + "\":{\"dtype\":\"F8_E4M3\","), "", true, {kBad}},
      {"garbage after the object", bad_header(good + "x"), "", true, {kBad}},
      {"unescaped NUL in a name",
       bad_header(object(entry(std::string("a\0b", 3), "\"F32\"", "[1]", "[0,4]")), std::string(4, '\0')), "", true,
       {kBad}},
      {"single-quoted keys", bad_header("{'" + W + "':1}"), "", true, {kBad}},
      {"nesting 5000 deep", bad_header(deep), "", true, {kBad}},
      {"a dimension beyond 64 bits", bad_header(w_with("\"F8_E4M3\"", "[18446744073709551616]", "[0,8]")), "", true,
       {kBad}},
      {"top level is an array", bad_header("[" + good + "]"), "", true, {kBad}},
      {"top level is a number", bad_header("42"), "", true, {kBad}},
      {"top level is a string", bad_header("\"{}\""), "", true, {kBad}},
      {"top level is true", bad_header("true"), "", true, {kBad}},
      // __metadata__
      {"__metadata__ is a string", bad_header(object(meta + "\"pt\"", pair)), "", true, {kBad, "__metadata__"}},
      {"__metadata__ is an array", bad_header(object(meta + "[\"pt\"]", pair)), "", true, {kBad, "__metadata__"}},
      {"__metadata__ value is a number", bad_header(object(meta + "{\"format\":1}", pair)), "", true,
       {kBad, "__metadata__", "format"}},
      {"__metadata__ value is null", bad_header(object(meta + "{\"format\":null}", pair)), "", true,
       {kBad, "__metadata__", "format"}},
      {"__metadata__ value is an object", bad_header(object(meta + "{\"format\":{\"a\":\"b\"}}", pair)), "", true,
       {kBad, "__metadata__", "format"}},
      {"__metadata__ key twice", bad_header(object(meta + "{\"format\":\"pt\",\"format\":\"np\"}", pair)), "", true,
       {kBad, "format"}},
      {"__metadata__ twice", bad_header(object(meta + "{}," + meta + "{}", pair)), "", true, {kBad, "__metadata__"}},
      // Tensor entries and dtypes
      {"tensor entry is an array", bad_header(object("\"" + W + "\":[\"F8_E4M3\",[2,4],[0,8]]", kSEntry)), "", true,
       {kBad, W}},
      {"unknown dtype F9", bad_header(w_with("\"F9\"", "[2,4]", "[0,8]")), "", true, {kBad, W, "F9"}},
      {"lowercase dtype", bad_header(w_with("\"f8_e4m3\"", "[2,4]", "[0,8]")), "", true, {kBad, W, "f8_e4m3"}},
      {"empty dtype", bad_header(w_with("\"\"", "[2,4]", "[0,8]")), "", true, {kBad, W}},
      {"dtype is a number", bad_header(w_with("8", "[2,4]", "[0,8]")), "", true, {kBad, W, "dtype"}},
      {"dtype missing", bad_header(object(no_dtype, kSEntry)), "", true, {kBad, W, "dtype"}},
      {"unexpected field", bad_header(object(extra_field, kSEntry)), "", true, {kBad, W, "quant"}},
      {"dtype given twice", bad_header(object(dtype_twice, kSEntry)), "", true, {kBad, W, "dtype"}},
      // Shapes
      {"dimension -1", bad_header(w_with("\"F8_E4M3\"", "[-1,4]", "[0,8]")), "", true, {kBad, W, "-1"}},
      {"dimension 1.5", bad_header(w_with("\"F8_E4M3\"", "[1.5,4]", "[0,8]")), "", true, {kBad, W, "1.5"}},
      {"dimension \"3\"", bad_header(w_with("\"F8_E4M3\"", "[\"3\",4]", "[0,8]")), "", true, {kBad, W, "shape"}},
      {"dimension true", bad_header(w_with("\"F8_E4M3\"", "[true,4]", "[0,8]")), "", true, {kBad, W, "shape"}},
      {"dimension null", bad_header(w_with("\"F8_E4M3\"", "[null,4]", "[0,8]")), "", true, {kBad, W, "shape"}},
      {"nested shape", bad_header(w_with("\"F8_E4M3\"", "[[2,4]]", "[0,8]")), "", true, {kBad, W, "shape"}},
      {"shape is a number", bad_header(w_with("\"F8_E4M3\"", "8", "[0,8]")), "", true, {kBad, W, "shape"}},
      {"shape missing", bad_header(object(no_shape, kSEntry)), "", true, {kBad, W, "shape"}},
      {"element count overflows", bad_header(w_with("\"F8_E4M3\"", "[4294967296,4294967296,2]", "[0,8]")), "", true,
       {kBad, W, "overflow"}},
      {"byte size overflows at the element size",
       bad_header(w_with("\"F32\"", "[4611686018427387904]", "[0,8]")), "", true, {kBad, W, "overflow"}},
      {"shape needs more bytes than the offsets hold", bad_header(w_with("\"F8_E4M3\"", "[2,8]", "[0,8]")), "", true,
       {kBad, W, "[2, 8]"}},
      // Sub-byte dtypes (SPEC §5): elements × bits must fill whole bytes, as the reference reader rules.
      {"F4 elements that do not fill whole bytes", bad_header(w_with("\"F4\"", "[3,5]", "[0,8]")), "", true,
       {kBad, W, "F4 [3, 5]", "whole bytes"}},
      {"F6_E3M2 elements that do not fill whole bytes", bad_header(w_with("\"F6_E3M2\"", "[2,5]", "[0,8]")), "",
       true, {kBad, W, "F6_E3M2 [2, 5]", "whole bytes"}},
      {"F4 [2, 9] needs 9 bytes, not 8", bad_header(w_with("\"F4\"", "[2,9]", "[0,8]")), "", true,
       {kBad, W, "needs 9 bytes"}},
      {"C64 byte size overflows", bad_header(w_with("\"C64\"", "[2305843009213693952]", "[0,8]")), "", true,
       {kBad, W, "overflow"}},
      // Data offsets
      {"offsets [5, 3]", bad_header(w_with("\"F8_E4M3\"", "[2,4]", "[5,3]")), "", true, {kBad, W}},
      {"offsets overlap", bad_header(s_with("[4,8]"), std::string(8, '\0')), "", true, {kBad, S}},
      {"gap between tensors", bad_header(s_with("[12,16]"), std::string(16, '\0')), "", true, {kBad, S}},
      {"first tensor not at offset 0",
       bad_header(object(entry(W, "\"F8_E4M3\"", "[2,4]", "[4,12]"), entry(S, "\"F32\"", "[]", "[12,16]")),
                  std::string(16, '\0')),
       "", true, {kBad, W}},
      {"offsets past the end of the data (file cut short)", bad_header(good, std::string(10, '\0')), "", true,
       {kBad, S}},
      {"offsets at 2^64 - 1", bad_header(w_with("\"F8_E4M3\"", "[0]", "[18446744073709551615,18446744073709551615]")),
       "", true, {kBad, W}},
      {"offsets 8.0", bad_header(w_with("\"F8_E4M3\"", "[2,4]", "[0,8.0]")), "", true, {kBad, W, "data_offsets"}},
      {"offsets as strings", bad_header(w_with("\"F8_E4M3\"", "[2,4]", "[\"0\",\"8\"]")), "", true,
       {kBad, W, "data_offsets"}},
      {"negative offset", bad_header(w_with("\"F8_E4M3\"", "[0]", "[-8,-8]")), "", true, {kBad, W, "-8"}},
      {"three offsets", bad_header(w_with("\"F8_E4M3\"", "[2,4]", "[0,8,12]")), "", true, {kBad, W, "data_offsets"}},
      {"one offset", bad_header(w_with("\"F8_E4M3\"", "[2,4]", "[8]")), "", true, {kBad, W, "data_offsets"}},
      {"offsets not an array", bad_header(w_with("\"F8_E4M3\"", "[2,4]", "\"0-8\"")), "", true,
       {kBad, W, "data_offsets"}},
      {"offsets missing", bad_header(object(no_offsets, kSEntry)), "", true, {kBad, W, "data_offsets"}},
      {"trailing bytes after the last tensor", bad_header(good, kData + "tail"), "", true, {kBad, "4 trailing"}},
      // Names
      {"duplicate tensor name", bad_header(object(kWEntry, entry(W, "\"F32\"", "[]", "[8,12]"))), "", true, {kBad, W}},
      {"duplicate name spelled with an escape",
       bad_header(object(kWEntry, entry(escaped_w, "\"F32\"", "[]", "[8,12]"))), "", true, {kBad, W}},
      // A lone file as --in
      {"single file: header length past the end",
       [](const fs::path& in) {
         fs::create_directories(in);
         write_bytes(in / "lone.safetensors", le64(4096) + "{}");
       },
       "", true, {"lone.safetensors"}, "lone.safetensors"},
      {"single file: 3 bytes",
       [](const fs::path& in) {
         fs::create_directories(in);
         write_bytes(in / "lone.safetensors", "abc");
       },
       "", true, {"lone.safetensors"}, "lone.safetensors"},
  };
}

std::vector<Case> synth_cases(const Sources& src) {
  const fs::path& m2 = src.m2;
  const std::string idx = ckpt::kIndexName;
  const std::string q_proj = "model.layers.0.self_attn.q_proj.weight";
  const std::string e1w3 = "model.layers.0.block_sparse_moe.experts.1.w3.weight";
  const std::string e0w1 = "model.layers.0.block_sparse_moe.experts.0.w1.weight";
  const std::string e2w1 = "model.layers.0.block_sparse_moe.experts.2.w1.weight";  // not in the source
  const std::string q_shard = shard_of(m2, q_proj), e_shard = shard_of(m2, e1w3);
  const std::string other = q_shard == kGood ? kBad : kGood;  // a shard without q_proj
  const auto is_fp8 = [](const ckpt::TensorInfo& t) { return t.dtype == DType::F8_E4M3; };
  const std::string first_fp8 = first_tensor(m2, is_fp8);
  const std::string first_layer =
      first_tensor(m2, [](const ckpt::TensorInfo& t) { return t.name.starts_with("model.layers.0."); });
  const std::string grouped = "model.layers.0.mlp.experts.gate_and_up_projs";
  const std::string native_shard = "model.safetensors";
  const auto last_of = [](const fs::path& dir, const std::string& shard) {
    const ckpt::Checkpoint c = ckpt::Checkpoint::open(dir);
    for (const auto& f : c.files())
      if (f->path().filename() == shard) return f->tensors().back().name;
    throw std::runtime_error("no shard " + shard);
  };
  const std::string last_in_e_shard = last_of(m2, e_shard);
  const auto deep_config = [](std::string text) {
    text.erase(text.find_last_of('}'));
    return text + ",\"nested\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  };
  const auto both_shards = [e1w3](Shards& s, OJson&) {
    const TensorSpec t = find(s, e1w3);
    for (auto& shard : s)
      if (std::none_of(shard.begin(), shard.end(), [=](const TensorSpec& x) { return x.name == e1w3; }))
        shard.push_back(t);
  };
  const std::string ds_down = "model.layers.1.mlp.experts.1.down_proj.weight";
  const std::string nemo_up = "backbone.layers.1.mixer.experts.0.up_proj.weight";
  const std::string mx_w = "model.layers.1.self_attn.o_proj.weight";
  const std::string mx_s = mx_w + "_scale_inv";

  return {
      // Shards truncated after their header was written: the header promises more than the file holds.
      {"shard cut by one byte", truncate_shard(m2, e_shard, [](uint64_t n) { return n - 1; }), "", true,
       {e_shard, last_in_e_shard}},
      {"shard cut after its header",
       [=](const fs::path& in) {
         truncate_shard(m2, e_shard, [=](uint64_t) { return header_end(m2 / e_shard); })(in);
       },
       "", true, {e_shard}},
      {"shard cut to 4 bytes", truncate_shard(m2, e_shard, [](uint64_t) { return 4; }), "", true, {e_shard}},
      {"shard cut to 0 bytes", truncate_shard(m2, e_shard, [](uint64_t) { return 0; }), "", true, {e_shard}},

      // index.json lying about the shards
      {"index names a shard that does not exist",
       edit_index(m2, [=](OJson& j) { j["weight_map"][q_proj] = "model-00003-of-00003.safetensors"; }), "", true,
       {idx, "model-00003-of-00003.safetensors"}},
      {"index maps a tensor to the wrong shard", edit_index(m2, [=](OJson& j) { j["weight_map"][q_proj] = other; }),
       "", true, {idx, q_proj, other}},
      {"index omits a tensor", edit_index(m2, [=](OJson& j) { j["weight_map"].erase(q_proj); }), "", true,
       {idx, q_proj, q_shard}},
      {"index lists a tensor no shard has", edit_index(m2, [=](OJson& j) { j["weight_map"][e2w1] = kGood; }), "", true,
       {idx, e2w1}},
      {"index is not JSON", copy_with(m2, idx, [](std::string t) { return t.substr(0, t.size() / 2); }), "", true,
       {idx}},
      {"index is a JSON array", copy_with(m2, idx, [](std::string) { return std::string("[]"); }), "", true, {idx}},
      {"weight_map is an array", edit_index(m2, [](OJson& j) { j["weight_map"] = OJson::array({"a", "b"}); }), "",
       true, {idx, "weight_map"}},
      {"weight_map missing", edit_index(m2, [](OJson& j) { j.erase("weight_map"); }), "", true, {idx, "weight_map"}},
      {"weight_map empty", edit_index(m2, [](OJson& j) { j["weight_map"] = OJson::object(); }), "", true,
       {idx, "weight_map"}},
      {"weight_map entry is a number", edit_index(m2, [=](OJson& j) { j["weight_map"][q_proj] = 1; }), "", true,
       {idx, q_proj}},
      {"weight_map entry climbs out of the directory",
       edit_index(m2, [=](OJson& j) { j["weight_map"][q_proj] = "../" + q_shard; }), "", true, {idx, q_proj}},
      {"weight_map entry is empty", edit_index(m2, [=](OJson& j) { j["weight_map"][q_proj] = ""; }), "", true,
       {idx, q_proj}},
      {"weight_map lists a tensor twice",
       copy_with(m2, idx,
                 [=](std::string t) {
                   const std::string key = "\"" + q_proj + "\"";
                   const size_t at = t.find(key);
                   return t.insert(at, key + ": \"" + q_shard + "\",\n    ");
                 }),
       "", true, {idx, q_proj}},
      {"index names a directory as a shard",
       [=](const fs::path& in) {
         edit_index(m2, [=](OJson& j) { j["weight_map"][q_proj] = "subdir.safetensors"; })(in);
         fs::create_directories(in / "subdir.safetensors");
       },
       "", true, {idx, "subdir.safetensors"}},
      {"index names a FIFO as a shard",
       [=](const fs::path& in) {
         edit_index(m2, [=](OJson& j) { j["weight_map"][q_proj] = "fifo.safetensors"; })(in);
         REQUIRE(::mkfifo((in / "fifo.safetensors").c_str(), 0644) == 0);
       },
       "", true, {idx, "fifo.safetensors"}},
      {"a tensor in both shards, the index naming one", rewrite(m2, both_shards), "", true, {e1w3, kGood, kBad}},
      {"a tensor in both shards, no index",
       [=](const fs::path& in) {
         rewrite(m2, both_shards)(in);
         fs::remove(in / idx);
       },
       "", true, {e1w3, kGood, kBad}},

      // config.json
      {"config.json is not JSON", copy_with(m2, "config.json", [](std::string t) { return t.substr(0, t.size() - 3); }),
       "", true, {"config.json"}},
      {"config.json is an array", copy_with(m2, "config.json", [](std::string) { return std::string("[1, 2]"); }), "",
       true, {"config.json"}},
      {"config.json nested 100000 deep", copy_with(m2, "config.json", deep_config), "", true, {"config.json"}},
      {"model_type is a number", edit_config(m2, [](OJson& c) { c["model_type"] = 2; }), "--to native", false,
       {"config.json", "model_type"}},
      {"num_hidden_layers smaller than the layers present",
       edit_config(m2, [](OJson& c) { c["num_hidden_layers"] = 0; }), "--family minimax_m2 --to native", false,
       {shard_of(m2, first_layer), first_layer, "num_hidden_layers"}},
      {"num_hidden_layers a string (Nemotron)", edit_config(src.nemo, [](OJson& c) { c["num_hidden_layers"] = "2"; }),
       "--family nemotron_v3 --to native", false, {"config.json", "num_hidden_layers"}},
      {"num_nextn_predict_layers a string",
       edit_config(src.ds, [](OJson& c) { c["num_nextn_predict_layers"] = "1"; }), "--family deepseek_v3 --to native",
       false, {"config.json", "num_nextn_predict_layers"}},
      {"num_mtp_modules a string", edit_config(src.m3, [](OJson& c) { c["num_mtp_modules"] = "1"; }),
       "--family minimax_m3 --to native", false, {"config.json", "num_mtp_modules"}},
      {"num_local_experts below the expert ids", edit_config(m2, [](OJson& c) { c["num_local_experts"] = 1; }),
       "--family minimax_m2 --to native", false, {"config.json", "num_local_experts", "experts.1."}},
      {"n_routed_experts below the expert ids", edit_config(src.ds, [](OJson& c) { c["n_routed_experts"] = 1; }),
       "--family deepseek_v3 --to native", false, {"config.json", "n_routed_experts", "experts.1."}},
      {"num_local_experts 2^40", edit_config(m2, [](OJson& c) { c["num_local_experts"] = uint64_t{1} << 40; }),
       "--family minimax_m2 --to native", false, {"config.json", "num_local_experts", "1099511627776"}},
      {"num_local_experts a string", edit_config(m2, [](OJson& c) { c["num_local_experts"] = "2"; }),
       "--family minimax_m2 --to native", false, {"config.json", "num_local_experts"}},
      {"num_local_experts negative", edit_config(m2, [](OJson& c) { c["num_local_experts"] = -2; }),
       "--family minimax_m2 --to native", false, {"config.json", "num_local_experts"}},
      {"num_local_experts absent", edit_config(m2, [](OJson& c) { c.erase("num_local_experts"); }),
       "--family minimax_m2 --to native", false, {"config.json", "num_local_experts"}},
      {"intermediate_size contradicts the expert shapes",
       edit_config(m2, [](OJson& c) { c["intermediate_size"] = 64; }), "--family minimax_m2 --to native", false,
       {"config.json", "intermediate_size", "experts.0.w"}},
      {"moe_intermediate_size contradicts the expert shapes (Nemotron)",
       edit_config(src.nemo, [](OJson& c) { c["moe_intermediate_size"] = 96; }), "--family nemotron_v3 --to native",
       false, {"config.json", "moe_intermediate_size", "experts.0."}},
      {"moe_intermediate_size contradicts the expert shapes (DeepSeek)",
       edit_config(src.ds, [](OJson& c) { c["moe_intermediate_size"] = 64; }), "--family deepseek_v3 --to native",
       false, {"config.json", "moe_intermediate_size", "experts.0."}},
      {"weight_block_size [64, 64] against 128-blocks",
       edit_config(m2, [](OJson& c) { c["quantization_config"]["weight_block_size"] = {64, 64}; }), "", false,
       {shard_of(m2, first_fp8), first_fp8, first_fp8 + "_scale_inv"}},
      {"weight_block_size [0, 128]",
       edit_config(m2, [](OJson& c) { c["quantization_config"]["weight_block_size"] = {0, 128}; }), "", true,
       {"config.json", "weight_block_size"}},
      {"weight_block_size a string",
       edit_config(m2, [](OJson& c) { c["quantization_config"]["weight_block_size"] = "128x128"; }), "", true,
       {"config.json", "weight_block_size"}},
      {"weight_block_size of one number",
       edit_config(m2, [](OJson& c) { c["quantization_config"]["weight_block_size"] = {128}; }), "", true,
       {"config.json", "weight_block_size"}},
      {"weight_block_size not integers",
       edit_config(m2, [](OJson& c) { c["quantization_config"]["weight_block_size"] = {128, 127.5}; }), "", true,
       {"config.json", "weight_block_size"}},
      {"hf export: config counts more experts than the grouped tensor",
       edit_config(src.m2_native, [](OJson& c) { c["num_local_experts"] = 3; }), "--family minimax_m2 --to hf", false,
       {native_shard, "config.json", grouped}},
      {"hf export: intermediate_size contradicts the grouped tensor",
       edit_config(src.m2_native, [](OJson& c) { c["intermediate_size"] = 64; }), "--family minimax_m2 --to hf", false,
       {native_shard, "config.json", grouped}},
      {"hf export: grouped tensor not 3-d",
       rewrite(src.m2_native,
               [=](Shards& s, OJson&) {
                 TensorSpec& t = find(s, grouped);
                 t.shape = {t.shape[0] * t.shape[1], t.shape[2]};
               }),
       "--family minimax_m2 --to hf", false, {native_shard, grouped}},

      // Scales
      {"FP8 weight without scale_inv", without(m2, q_proj + "_scale_inv"), "", false,
       {q_shard, q_proj, q_proj + "_scale_inv"}},
      {"FP8 expert weight without scale_inv (native)", without(m2, e1w3 + "_scale_inv"),
       "--family minimax_m2 --to native", false, {e_shard, e1w3}},
      {"scale [3, 3] for a 128-block [240, 256] weight",
       rewrite(m2,
               [=](Shards& s, OJson&) {
                 TensorSpec& t = find(s, q_proj + "_scale_inv");
                 t = {t.name, DType::F32, {3, 3}, f32s(9, 1)};
               }),
       "", false, {q_shard, q_proj, "[3, 3]"}},
      {"scale grid transposed",
       rewrite(m2, [=](Shards& s, OJson&) { find(s, e0w1 + "_scale_inv").shape = {2, 1}; }),
       "--family minimax_m2 --to native", false, {shard_of(m2, e0w1), e0w1, "[2, 1]"}},
      {"scale of dtype I32",
       rewrite(m2, [=](Shards& s, OJson&) { find(s, q_proj + "_scale_inv").dtype = DType::I32; }), "", false,
       {q_shard, q_proj, q_proj + "_scale_inv", "I32"}},
      {"scale of dtype F8_E4M3",
       rewrite(m2, [=](Shards& s, OJson&) {
         TensorSpec& t = find(s, q_proj + "_scale_inv");
         t = {t.name, DType::F8_E4M3, t.shape, std::string(4, '\x38')};
       }),
       "", false, {q_shard, q_proj + "_scale_inv"}},
      // Copy-only dtypes (SPEC §5) where a rule must transform them: FNUZ is not e4m3fn.
      {"FP8 weight stored as F8_E4M3FNUZ, with its scale",
       rewrite(m2, [=](Shards& s, OJson&) { find(s, q_proj).dtype = DType::F8_E4M3FNUZ; }), "", false,
       {q_shard, q_proj, "F8_E4M3FNUZ", q_proj + "_scale_inv"}},
      {"expert weight stored as F4, to be grouped",
       rewrite(m2,
               [=](Shards& s, OJson&) {
                 TensorSpec& t = find(s, e1w3);
                 t = {t.name, DType::F4, t.shape, t.bytes.substr(0, t.bytes.size() / 2)};
                 for (auto& shard : s)
                   std::erase_if(shard, [&](const TensorSpec& x) { return x.name == e1w3 + "_scale_inv"; });
               }),
       "--family minimax_m2 --to native", false, {e_shard, e1w3, "is F4", "gate_and_up_projs"}},
      {"scale 3-d",
       rewrite(m2, [=](Shards& s, OJson&) { find(s, q_proj + "_scale_inv").shape = {1, 2, 2}; }), "", false,
       {q_shard, q_proj, "[1, 2, 2]"}},
      {"block scale for a 3-d weight",
       fp8_with_scale("model.layers.0.mlp.up_proj.weight", DType::F8_E4M3, {2, 2, 64},
                      {{"model.layers.0.mlp.up_proj.weight_scale_inv", DType::F32, {1, 2}, f32s(2, 1)}}),
       "", false, {kBad, "model.layers.0.mlp.up_proj.weight", "[2, 2, 64]"}},
      {"U8 scale with the wrong grid",
       fp8_with_scale(mx_w, DType::F8_E4M3, {3, 70}, {{mx_s, DType::U8, {3, 2}, std::string(6, '\x7f')}}), "", false,
       {kBad, mx_w, mx_s, "[3, 2]"}},
      {"U8 scale for a 1-d weight",
       fp8_with_scale(mx_w, DType::F8_E4M3, {64}, {{mx_s, DType::U8, {2}, std::string(2, '\x7f')}}), "", false,
       {kBad, mx_w, mx_s}},
      {"E5M2 weight in Mistral3",
       mistral({{"model.layers.0.mlp.down_proj.weight", DType::F8_E5M2, {2, 8}, std::string(16, '\x38')},
                {"model.layers.0.mlp.down_proj.weight_scale_inv", DType::F32, {}, f32s(1, 0.5f)}}),
       "--family mistral3_causal --to native", false,
       {"model.safetensors", "model.layers.0.mlp.down_proj.weight", "E5M2"}},
      {"block scale in Mistral3",
       mistral({{"model.layers.0.mlp.down_proj.weight", DType::F8_E4M3, {256, 8}, std::string(2048, '\x38')},
                {"model.layers.0.mlp.down_proj.weight_scale_inv", DType::F32, {2, 1}, f32s(2, 0.5f)}}),
       "--family mistral3_causal --to native", false, {"model.safetensors", "model.layers.0.mlp.down_proj.weight"}},

      {"hf export: grouped experts with an empty dimension",
       rewrite(src.m2_native,
               [=](Shards& s, OJson& cfg) {
                 cfg["num_local_experts"] = 1000;
                 for (const std::string& n : {grouped, std::string("model.layers.0.mlp.experts.down_projs")}) {
                   TensorSpec& t = find(s, n);
                   t.shape = {1000, 0, t.shape[2]};
                   t.bytes.clear();
                 }
               }),
       "--family minimax_m2 --to hf", false, {native_shard, grouped, "[1000, 0, 256]"}},

      // Names that would break the one-line message
      {"a tensor name with a newline",
       fp8_with_scale("model.layers.0.mlp.up\nproj.weight", DType::F8_E4M3, {2, 4}, {}), "", false,
       {kBad, "model.layers.0.mlp.up\\nproj.weight"}},
      {"a tensor name with an escape character",
       fp8_with_scale("model.layers.0.mlp.up\x1b[2Jproj.weight", DType::F8_E4M3, {2, 4}, {}), "", false,
       {kBad, "model.layers.0.mlp.up\\x1b[2Jproj.weight"}},

      // Experts missing from a layer
      {"one expert projection missing", without(m2, e1w3),
       "--family minimax_m2 --to native", false, {"config.json", "experts.1.up_proj"}},
      {"a whole expert missing", without(m2, "model.layers.0.block_sparse_moe.experts.1."),
       "--family minimax_m2 --to native", false, {"config.json", "experts.1.gate_proj"}},
      {"a Nemotron expert's up_proj missing", without(src.nemo, nemo_up),
       "--family nemotron_v3 --to native", false, {"config.json", "experts.0.up_proj"}},
      {"a DeepSeek expert's down_proj missing", without(src.ds, ds_down),
       "--family deepseek_v3 --to native", false, {"config.json", "experts.1.down_proj"}},
  };
}

using ckpt::test::listing;

// Nothing the run could have written is left in `out`: no shard, index or config.json under a
// final name, and no hidden temporary either — only what `expected` lists was there before.
void check_out(const fs::path& out, const std::vector<std::string>& expected) {
  const std::vector<std::string> names = listing(out);
  INFO("left in --out: " << Catch::Detail::stringify(names));
  CHECK(names == expected);
}

void check_refusal(const RunResult& r, const std::vector<std::string>& words) {
  CHECK(r.exit_code != 124);  // not stopped by the time limit
  CHECK(r.exit_code < 128);   // not killed by a signal
  CHECK(r.exit_code == 3);
  CHECK(r.out.empty());
  CHECK(r.err.rfind("ckptconv: ", 0) == 0);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  CHECK((!r.err.empty() && r.err.back() == '\n'));
  for (const auto& w : words) CHECK_THAT(r.err, Contains(w));
}

}  // namespace

TEST_CASE("hostile: every bad input exits 3 with one line naming the file, and writes nothing", "[hostile]") {
  const Sources src;
  std::vector<Case> cases = header_cases();
  for (auto& c : synth_cases(src)) cases.push_back(std::move(c));

  // Controls: the sources the rows corrupt convert as they are, in every direction the rows use.
  for (const auto& [in, args] : std::vector<std::pair<fs::path, std::string>>{
           {src.m2, ""},
           {src.m2, "--family minimax_m2 --to native"},
           {src.ds, "--family deepseek_v3 --to native"},
           {src.nemo, "--family nemotron_v3 --to native"},
           {src.m3, "--family minimax_m3 --to native"},
           {src.m2_native, "--family minimax_m2 --to hf"}}) {
    TempDir tmp;
    CHECK(cli("convert --in " + q(in) + " " + args + " --out " + q(tmp / "out")).exit_code == 0);
  }

  std::set<std::string> names;
  for (const auto& c : cases) names.insert(c.name);
  CHECK(names.size() == cases.size());
  CHECK(cases.size() >= 60);

  for (const auto& c : cases) {
    INFO("case: " << c.name);
    TempDir tmp;
    const fs::path in = tmp / "in", out = tmp / "out", old = tmp / "old";
    c.build(in);
    const fs::path input = c.input.empty() ? in : in / c.input;
    const std::string convert = "convert --in " + q(input) + " " + c.args + " --out ";

    check_refusal(cli(convert + q(out)), c.words);
    check_out(out, {});

    check_refusal(cli(convert + q(out) + " --dry-run"), c.words);
    check_out(out, {});

    // An existing checkpoint under --out --overwrite stays exactly as it was.
    fs::create_directories(old);
    write_bytes(old / "model.safetensors", "old weights");
    write_bytes(old / "config.json", "{}");
    check_refusal(cli(convert + q(old) + " --overwrite"), c.words);
    check_out(old, {"config.json", "model.safetensors"});
    CHECK(ckpt::test::read_bytes(old / "model.safetensors") == "old weights");

    if (c.inspect) check_refusal(cli("inspect " + q(input)), c.words);
  }
}
