// Every dtype the reference safetensors reader accepts is a valid input (SPEC §5, issue #10):
// F4, F6_E2M3, F6_E3M2, F8_E4M3FNUZ, F8_E5M2FNUZ and C64 next to the ones ckptconv computes on.
// A tensor's bytes are elements × bits / 8; a sub-byte tensor whose bits do not fill whole bytes
// is invalid (exit 3). ckptconv has no kernel for these dtypes, so it copies them unchanged where
// the rules only rename or pass them through, and stops at plan time — nothing written — where a
// rule would have to transform one.
//
// Inputs are built byte by byte from hand-written headers whose sizes are computed here by hand
// (never by the library), and outputs are read back with an independent reader (a JSON parse of
// the header), so a wrong size rule in the code under test cannot agree with itself.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "formats/error.h"
#include "formats/safetensors.h"
#include "tests/support.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using ckpt::DType;
using ckpt::test::RunResult;
using ckpt::test::TempDir;

namespace {

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

RunResult cli(const std::string& args) {
  RunResult r = ckpt::test::run_cli(args, 120);
  UNSCOPED_INFO("ckptconv " << args << "\n  exit " << r.exit_code << "\n  stdout: " << r.out
                            << "\n  stderr: " << r.err);
  return r;
}

bool one_error_line(const std::string& err) {
  return err.rfind("ckptconv:", 0) == 0 && std::count(err.begin(), err.end(), '\n') == 1 && err.back() == '\n';
}

// One tensor of a hand-made file: its dtype name, shape, and bytes (their count computed by hand).
struct Raw {
  std::string name, dtype;
  std::vector<uint64_t> shape;
  std::string bytes;
};

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xFF);
  return s;
}

// A safetensors file whose data_offsets are the bytes given, back to back.
std::string file_of(const std::vector<Raw>& tensors) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  std::string data;
  for (const auto& t : tensors) {
    h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  return ckpt::test::safetensors_bytes(h.dump(), data);
}

void write_dir(const fs::path& dir, const std::vector<Raw>& tensors, const std::string& config = "") {
  fs::create_directories(dir);
  ckpt::test::write_bytes(dir / "model.safetensors", file_of(tensors));
  if (!config.empty()) ckpt::test::write_bytes(dir / "config.json", config);
}

// The tensors of every .safetensors file in `dir`, read without the library: name -> tensor.
std::map<std::string, Raw> read_dir(const fs::path& dir) {
  std::map<std::string, Raw> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".safetensors") continue;
    const std::string f = ckpt::test::read_bytes(e.path());
    REQUIRE(f.size() >= 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(f[i]);
    const auto h = nlohmann::json::parse(f.substr(8, n));
    for (const auto& [name, v] : h.items()) {
      if (name == "__metadata__") continue;
      const uint64_t b = v["data_offsets"][0], end = v["data_offsets"][1];
      out[name] = {name, v["dtype"], v["shape"].get<std::vector<uint64_t>>(), f.substr(8 + n + b, end - b)};
    }
  }
  return out;
}

const std::string kM2Config =
    R"({"architectures":["MiniMaxM2ForCausalLM"],"model_type":"minimax_m2","num_hidden_layers":1,)"
    R"("num_local_experts":1,"intermediate_size":2})";

// One tensor of each newly accepted dtype, named so that minimax_m2's native rules rename two of
// them, plus a BF16 norm. Rows of the F4 and F6 tensors are not whole bytes, and two tensors are
// larger than the executor's smallest chunk (1 MiB), so copies are cut inside them.
std::vector<Raw> new_dtype_tensors() {
  return {
      // 4 elements × 64 bits = 32 bytes
      {"model.embed_tokens.weight", "C64", {2, 2}, random_bytes(32, 1)},
      // 6 × 8 bits = 6 bytes; renamed to model.layers.0.mlp.gate.weight in native
      {"model.layers.0.block_sparse_moe.gate.weight", "F8_E4M3FNUZ", {2, 3}, random_bytes(6, 2)},
      // 5 × 8 bits = 5 bytes; renamed to model.layers.0.mlp.gate.e_score_correction_bias
      {"model.layers.0.block_sparse_moe.e_score_correction_bias", "F8_E5M2FNUZ", {5}, random_bytes(5, 3)},
      // 2 × 1048577 = 2097154 elements × 4 bits = 1048577 bytes; a row is 524288.5 bytes
      {"model.layers.0.self_attn.q_proj.weight", "F4", {2, 1048577}, random_bytes(1048577, 4)},
      // 12 × 6 bits = 72 bits = 9 bytes; a row of 3 is 2.25 bytes
      {"model.layers.0.self_attn.k_proj.weight", "F6_E2M3", {4, 3}, random_bytes(9, 5)},
      // 4 × 699051 = 2796204 elements × 6 bits = 16777224 bits = 2097153 bytes
      {"model.layers.0.self_attn.v_proj.weight", "F6_E3M2", {4, 699051}, random_bytes(2097153, 6)},
      {"model.norm.weight", "BF16", {4}, random_bytes(8, 7)},
  };
}

// `out` holds exactly `expected` (name -> the input tensor it must equal byte for byte).
void check_same(const fs::path& out, const std::map<std::string, const Raw*>& expected) {
  const auto got = read_dir(out);
  CHECK(got.size() == expected.size());
  for (const auto& [name, want] : expected) {
    INFO("tensor " << name);
    const auto it = got.find(name);
    REQUIRE(it != got.end());
    CHECK(it->second.dtype == want->dtype);
    CHECK(it->second.shape == want->shape);
    CHECK(it->second.bytes.size() == want->bytes.size());
    CHECK(it->second.bytes == want->bytes);
  }
}

std::map<std::string, const Raw*> by_name(const std::vector<Raw>& ts) {
  std::map<std::string, const Raw*> m;
  for (const auto& t : ts) m[t.name] = &t;
  return m;
}

ckpt::Header parse_mem(const std::string& bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  return ckpt::parse_header(p, bytes.size(), bytes.size(), "mem.safetensors");
}

std::string parse_error(const std::string& bytes) {
  try {
    parse_mem(bytes);
  } catch (const ckpt::Error& e) {
    CHECK(e.kind() == ckpt::ErrorKind::InvalidInput);
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("dtypes: bit sizes and the whole-byte rule", "[dtypes]") {
  struct Row {
    std::string name;
    unsigned bits;
  };
  for (const Row& r : std::vector<Row>{{"F4", 4}, {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"F8_E4M3FNUZ", 8},
                                       {"F8_E5M2FNUZ", 8}, {"C64", 64}, {"BF16", 16}, {"F8_E4M3", 8}}) {
    INFO(r.name);
    const auto t = ckpt::parse_dtype(r.name);
    REQUIRE(t);
    CHECK(ckpt::dtype_name(*t) == r.name);
    CHECK(ckpt::dtype_bits(*t) == r.bits);
  }
  uint64_t b = 0;
  CHECK(ckpt::checked_elements_bytes(DType::F4, 2, b));
  CHECK(b == 1);
  CHECK_FALSE(ckpt::checked_elements_bytes(DType::F4, 3, b));       // 12 bits
  CHECK(ckpt::checked_elements_bytes(DType::F6_E2M3, 4, b));        // 24 bits
  CHECK(b == 3);
  CHECK_FALSE(ckpt::checked_elements_bytes(DType::F6_E3M2, 2, b));  // 12 bits
  CHECK_FALSE(ckpt::checked_elements_bytes(DType::F6_E3M2, 6, b));  // 36 bits
  CHECK(ckpt::checked_elements_bytes(DType::F6_E3M2, 12, b));       // 72 bits
  CHECK(b == 9);
  CHECK(ckpt::checked_elements_bytes(DType::C64, 3, b));
  CHECK(b == 24);
  CHECK_FALSE(ckpt::checked_elements_bytes(DType::C64, uint64_t{1} << 61, b));  // 2^64 bytes
  CHECK(ckpt::checked_elements_bytes(DType::C64, (uint64_t{1} << 61) - 1, b));
  CHECK(b == UINT64_MAX - 7);
  // F4 never overflows: 2^64 - 2 elements are 2^63 - 1 bytes.
  CHECK(ckpt::checked_elements_bytes(DType::F4, UINT64_MAX - 1, b));
  CHECK(b == (uint64_t{1} << 63) - 1);
  CHECK_FALSE(ckpt::checked_elements_bytes(DType::F4, UINT64_MAX, b));  // odd
  // Cut points inside a tensor round down to whole bytes.
  CHECK(ckpt::elements_bytes(DType::F6_E2M3, 5) == 3);  // 30 bits
  CHECK(ckpt::elements_bytes(DType::F4, 7) == 3);
  // And back: the elements that begin in the first n bytes.
  CHECK(ckpt::bytes_elements(DType::F4, 3) == 6);
  CHECK(ckpt::bytes_elements(DType::F6_E2M3, 3) == 4);
  CHECK(ckpt::bytes_elements(DType::F6_E3M2, 4) == 5);  // 32 bits: elements 0..5 begin in them
  CHECK(ckpt::bytes_elements(DType::C64, 17) == 2);
  CHECK(ckpt::whole_byte_elems(DType::F4) == 2);
  CHECK(ckpt::whole_byte_elems(DType::F6_E2M3) == 4);
  CHECK(ckpt::whole_byte_elems(DType::C64) == 1);
  // Sub-byte elements have no byte size: asking is an error, never 0.
  CHECK_THROWS_AS(ckpt::dtype_size(DType::F4), ckpt::Error);
  CHECK(ckpt::dtype_size(DType::C64) == 8);
  CHECK(ckpt::dtype_size(DType::F8_E4M3FNUZ) == 1);
  // FNUZ is neither e4m3fn nor e5m2: nothing decodes it as such.
  CHECK_FALSE(ckpt::is_fp8_weight(DType::F8_E4M3FNUZ));
  CHECK_FALSE(ckpt::is_fp8_weight(DType::F8_E5M2FNUZ));
  CHECK_FALSE(ckpt::is_float(DType::F8_E4M3FNUZ));
  CHECK(ckpt::is_copy_only(DType::F8_E5M2FNUZ));
  CHECK(ckpt::is_copy_only(DType::F4));
  CHECK_FALSE(ckpt::is_copy_only(DType::F8_E4M3));
}

TEST_CASE("dtypes: headers of the new dtypes parse with their byte sizes", "[dtypes][safetensors]") {
  struct Row {
    std::string dtype, shape;
    uint64_t bytes;  // by hand
  };
  const std::vector<Row> ok = {
      {"F4", "[4]", 2},           {"F4", "[2,3]", 3},          {"F4", "[0]", 0},
      {"F6_E2M3", "[4]", 3},      {"F6_E3M2", "[2,4]", 6},     {"F6_E3M2", "[4,0]", 0},
      {"F8_E4M3FNUZ", "[3]", 3},  {"F8_E5M2FNUZ", "[2,2]", 4}, {"C64", "[3]", 24},
      {"C64", "[]", 8},
  };
  for (const auto& r : ok) {
    INFO(r.dtype << " " << r.shape);
    const std::string h = R"({"w":{"dtype":")" + r.dtype + R"(","shape":)" + r.shape + R"(,"data_offsets":[0,)" +
                          std::to_string(r.bytes) + "]}}";
    const ckpt::Header hd = parse_mem(ckpt::test::safetensors_bytes(h, std::string(r.bytes, '\x11')));
    REQUIRE(hd.tensors.size() == 1);
    CHECK(ckpt::dtype_name(hd.tensors[0].dtype) == r.dtype);
    CHECK(hd.tensors[0].nbytes() == r.bytes);
  }
  // Whole bytes but the wrong count: named with the count it needs.
  CHECK_THAT(parse_error(ckpt::test::safetensors_bytes(R"({"w":{"dtype":"F4","shape":[2,3],"data_offsets":[0,4]}})",
                                                       std::string(4, '\0'))),
             Contains("F4 [2, 3] needs 3 bytes"));
  // F4 counts never overflow bytes: 2^63 elements are 2^62 bytes, which this file does not hold.
  CHECK_THAT(parse_error(ckpt::test::safetensors_bytes(
                 R"({"w":{"dtype":"F4","shape":[9223372036854775808],"data_offsets":[0,0]}})", "")),
             Contains("needs 4611686018427387904 bytes"));
  CHECK_THAT(parse_error(ckpt::test::safetensors_bytes(
                 R"({"w":{"dtype":"C64","shape":[2305843009213693952],"data_offsets":[0,0]}})", "")),
             Contains("overflows"));
}

TEST_CASE("dtypes: sub-byte tensors whose bits do not fill whole bytes are invalid", "[dtypes][safetensors]") {
  struct Row {
    std::string dtype, shape, offsets;
    std::string bits;  // elements × bits, by hand
  };
  const std::vector<Row> bad = {
      {"F4", "[3]", "[0,2]", "3 elements of 4 bits"},       {"F4", "[1]", "[0,1]", "1 elements of 4 bits"},
      {"F4", "[]", "[0,1]", "1 elements of 4 bits"},        {"F4", "[3,5]", "[0,8]", "15 elements of 4 bits"},
      {"F6_E2M3", "[2]", "[0,2]", "2 elements of 6 bits"},  {"F6_E3M2", "[5]", "[0,4]", "5 elements of 6 bits"},
      {"F6_E3M2", "[]", "[0,1]", "1 elements of 6 bits"},
  };
  for (const auto& r : bad) {
    INFO(r.dtype << " " << r.shape);
    const std::string h = R"({"w":{"dtype":")" + r.dtype + R"(","shape":)" + r.shape + R"(,"data_offsets":)" +
                          r.offsets + "}}";
    const uint64_t n = std::stoull(r.offsets.substr(r.offsets.find(',') + 1));
    const std::string err = parse_error(ckpt::test::safetensors_bytes(h, std::string(n, '\0')));
    CHECK_THAT(err, Contains("mem.safetensors: tensor 'w'"));
    CHECK_THAT(err, Contains(r.bits));
    CHECK_THAT(err, Contains("do not fill whole bytes"));
  }
}

TEST_CASE("dtypes: an F4 tensor of shape [3] exits 3 naming file and tensor", "[dtypes][cli]") {
  TempDir tmp;
  const fs::path in = tmp / "in", out = tmp / "out";
  write_dir(in, {{"model.norm.weight", "BF16", {2}, std::string(4, '\0')}, {"w.f4", "F4", {3}, std::string(2, '\0')}});
  for (const std::string cmd : {"convert --in " + q(in) + " --out " + q(out), "inspect " + q(in)}) {
    const RunResult r = cli(cmd);
    CHECK(r.exit_code == 3);
    CHECK(one_error_line(r.err));
    CHECK_THAT(r.err, Contains((in / "model.safetensors").string()));
    CHECK_THAT(r.err, Contains("tensor 'w.f4'"));
    CHECK_THAT(r.err, Contains("F4 [3]"));
  }
  CHECK(ckpt::test::listing(out).empty());
}

TEST_CASE("dtypes: new dtypes pass through dequant, native and hf byte for byte", "[dtypes][cli]") {
  TempDir tmp;
  const std::vector<Raw> ts = new_dtype_tensors();
  const fs::path in = tmp / "in";
  write_dir(in, ts, kM2Config);
  const auto same = by_name(ts);
  // native renames the MoE gate keys; the bytes stay.
  auto native = same;
  native.erase("model.layers.0.block_sparse_moe.gate.weight");
  native.erase("model.layers.0.block_sparse_moe.e_score_correction_bias");
  native["model.layers.0.mlp.gate.weight"] = &ts[1];
  native["model.layers.0.mlp.gate.e_score_correction_bias"] = &ts[2];
  // The smallest budget makes 1 MiB chunks, so the F4 and F6 copies are cut into several items.
  for (const std::string opts : {"--threads 1", "--threads 2 --memory-budget 4MiB",
                                 "--threads 2 --memory-budget 4MiB --io pread", "--threads 1 --io pread"}) {
    INFO(opts);
    const fs::path dq = tmp / "dq", nat = tmp / "nat", back = tmp / "back";
    fs::remove_all(dq);
    fs::remove_all(nat);
    fs::remove_all(back);
    REQUIRE(cli("convert --in " + q(in) + " --out " + q(dq) + " --to dequant " + opts).exit_code == 0);
    check_same(dq, same);
    REQUIRE(cli("convert --in " + q(in) + " --out " + q(nat) + " --to native --family minimax_m2 " + opts).exit_code ==
            0);
    {
      const auto got = read_dir(nat);
      // Renamed in place: the new names hold the old bytes.
      REQUIRE(got.count("model.layers.0.mlp.gate.weight"));
      CHECK(got.at("model.layers.0.mlp.gate.weight").dtype == "F8_E4M3FNUZ");
    }
    check_same(nat, native);
    REQUIRE(cli("convert --in " + q(nat) + " --out " + q(back) + " --to hf --family minimax_m2 " + opts).exit_code ==
            0);
    check_same(back, same);
    CHECK(cli("verify " + q(in) + " " + q(dq)).exit_code == 0);
    CHECK(cli("verify " + q(in) + " " + q(back)).exit_code == 0);
  }
  // deepseek_v3 too (no renames), found from its config.
  const fs::path ds = tmp / "ds", ds_out = tmp / "ds_out";
  std::vector<Raw> dts = ts;
  dts.erase(dts.begin() + 1, dts.begin() + 3);  // the MiniMax gate keys
  write_dir(ds, dts, R"({"architectures":["DeepseekV3ForCausalLM"],"model_type":"deepseek_v3","num_hidden_layers":1})");
  REQUIRE(cli("convert --in " + q(ds) + " --out " + q(ds_out) + " --to native").exit_code == 0);
  check_same(ds_out, by_name(dts));
}

TEST_CASE("dtypes: inspect lists the new dtypes with their byte sizes", "[dtypes][cli]") {
  TempDir tmp;
  const fs::path in = tmp / "in";
  write_dir(in, {{"a", "F4", {2, 3}, std::string(3, '\0')},
                 {"b", "F6_E2M3", {8}, std::string(6, '\0')},
                 {"c", "F8_E4M3FNUZ", {2}, std::string(2, '\0')},
                 {"c.weight_scale_inv", "F32", {}, std::string(4, '\0')},
                 {"d", "C64", {1}, std::string(8, '\0')}});
  const RunResult r = cli("inspect --json " + q(in));
  REQUIRE(r.exit_code == 0);
  const auto j = nlohmann::json::parse(r.out);
  std::map<std::string, std::pair<std::string, uint64_t>> got;
  for (const auto& t : j["tensors"]) got[t["name"]] = {t["dtype"], t["bytes"]};
  CHECK(got["a"] == std::pair<std::string, uint64_t>{"F4", 3});
  CHECK(got["b"] == std::pair<std::string, uint64_t>{"F6_E2M3", 6});
  CHECK(got["c"] == std::pair<std::string, uint64_t>{"F8_E4M3FNUZ", 2});
  CHECK(got["d"] == std::pair<std::string, uint64_t>{"C64", 8});
  CHECK(j["bytes"] == 3 + 6 + 2 + 4 + 8);
  CHECK(j["parameters"] == 6 + 8 + 2 + 1 + 1);
  CHECK(j["fp8_weights"] == 0);  // FNUZ is not the e4m3fn that ckptconv dequantizes
}

TEST_CASE("dtypes: verify compares the new dtypes byte for byte", "[dtypes][cli]") {
  TempDir tmp;
  // 0x7F and 0xFF are both NaN in F8_E4M3 (e4m3fn) but ±240 in F8_E4M3FNUZ: equal there, not here.
  const auto make = [&](const std::string& dir, std::string f4, std::string f6, std::string c64, char fnuz) {
    write_dir(tmp / dir, {{"f4", "F4", {8}, f4},
                          {"f6", "F6_E3M2", {8}, f6},
                          {"c64", "C64", {3}, c64},
                          {"fnuz", "F8_E4M3FNUZ", {1}, std::string(1, fnuz)},
                          {"fn", "F8_E4M3", {1}, std::string(1, fnuz)}});
    return tmp / dir;
  };
  const std::string f4(4, '\x21'), f6(6, '\x42'), c64(24, '\x63');
  const fs::path a = make("a", f4, f6, c64, '\x7f');
  CHECK(cli("verify " + q(a) + " " + q(make("same", f4, f6, c64, '\x7f'))).exit_code == 0);
  {
    std::string g = f4;
    g[2] ^= 0x10;  // byte 2 holds elements 4 and 5
    const RunResult r = cli("verify " + q(a) + " " + q(make("f4", g, f6, c64, '\x7f')));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.out + r.err, Contains("'f4': bytes differ (first at element 4)"));
  }
  {
    std::string g = f6;
    g[4] ^= 0x01;  // byte 4 is bits 32..39; element 5 (bits 30..35) holds its first bit
    const RunResult r = cli("verify " + q(a) + " " + q(make("f6", f4, g, c64, '\x7f')));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.out + r.err, Contains("'f6': bytes differ (first at element 5)"));
  }
  {
    std::string g = c64;
    g[17] ^= 0x01;  // element 2 is bytes 16..23
    const RunResult r = cli("verify " + q(a) + " " + q(make("c64", f4, f6, g, '\x7f')));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.out + r.err, Contains("'c64': bytes differ (first at element 2)"));
  }
  {
    const RunResult r = cli("verify " + q(a) + " " + q(make("fnuz", f4, f6, c64, '\xff')));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.out + r.err, Contains("'fnuz'"));
    CHECK_THAT(r.out + r.err, !Contains("'fn'"));  // e4m3fn: NaN == NaN
  }
}

TEST_CASE("dtypes: transforming a copy-only dtype stops at plan time", "[dtypes][cli]") {
  TempDir tmp;
  const std::string e = "model.layers.0.block_sparse_moe.experts.0.";
  const std::string nemotron =
      R"({"architectures":["NemotronHForCausalLM"],"model_type":"nemotron_h","num_hidden_layers":1})";
  struct Case {
    std::string what;
    std::vector<Raw> tensors;
    std::string config, args;
    std::vector<std::string> words;  // the one error line holds each
  };
  const std::vector<Case> cases = {
      {"F4 experts grouped",
       {{e + "w1.weight", "F4", {2, 2}, std::string(2, '\0')},
        {e + "w2.weight", "F4", {2, 2}, std::string(2, '\0')},
        {e + "w3.weight", "F4", {2, 2}, std::string(2, '\0')}},
       kM2Config, "--to native",
       {"tensor '" + e + "w1.weight' is F4", "gate_and_up_projs"}},
      {"F8_E4M3FNUZ weight with a scale, dequant",
       {{"x.weight", "F8_E4M3FNUZ", {2, 3}, std::string(6, '\0')}, {"x.weight_scale_inv", "F32", {}, std::string(4, '\0')}},
       "", "--to dequant",
       {"tensor 'x.weight' is F8_E4M3FNUZ", "x.weight_scale_inv"}},
      {"F8_E5M2FNUZ weight whose scale native would drop",
       {{"model.layers.0.self_attn.o_proj.weight", "F8_E5M2FNUZ", {2, 3}, std::string(6, '\0')},
        {"model.layers.0.self_attn.o_proj.weight_scale_inv", "F32", {}, std::string(4, '\0')}},
       kM2Config, "--to native",
       {"tensor 'model.layers.0.self_attn.o_proj.weight' is F8_E5M2FNUZ", "_scale_inv"}},
      {"F4 weight with a scale, mistral3",
       {{"model.layers.0.mlp.up_proj.weight", "F4", {2, 4}, std::string(4, '\0')},
        {"model.layers.0.mlp.up_proj.weight_scale_inv", "F32", {}, std::string(4, '\0')}},
       "", "--to native --family mistral3_causal",
       {"tensor 'model.layers.0.mlp.up_proj.weight' is F4"}},
      {"Nemotron A_log upcast to F32",
       {{"backbone.layers.0.mixer.A_log", "F8_E4M3FNUZ", {4}, std::string(4, '\0')}},
       nemotron, "--to native",
       {"tensor 'backbone.layers.0.mixer.A_log' is F8_E4M3FNUZ", "cast to F32"}},
      {"C64 grouped experts split on export",
       {{"model.layers.0.mlp.experts.gate_and_up_projs", "C64", {1, 2, 4}, std::string(64, '\0')},
        {"model.layers.0.mlp.experts.down_projs", "C64", {1, 2, 2}, std::string(32, '\0')}},
       kM2Config, "--to hf",
       {"'model.layers.0.mlp.experts.", "is C64"}},
      {"F6 weight exported as FP8",
       {{"model.layers.0.self_attn.q_proj.weight", "F6_E3M2", {4, 4}, std::string(12, '\0')}},
       kM2Config, "--to hf --quantize real",
       {"tensor 'model.layers.0.self_attn.q_proj.weight' is F6_E3M2", "quantized"}},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    const fs::path in = tmp / "in", out = tmp / "out";
    fs::remove_all(in);
    write_dir(in, c.tensors, c.config);
    const RunResult r = cli("convert --in " + q(in) + " --out " + q(out) + " " + c.args);
    CHECK(r.exit_code == 3);
    CHECK(one_error_line(r.err));
    CHECK_THAT(r.err, Contains((in / "model.safetensors").string()));
    for (const auto& w : c.words) CHECK_THAT(r.err, Contains(w));
    CHECK(ckpt::test::listing(out).empty());
    // --dry-run plans the same way
    CHECK(cli("convert --in " + q(in) + " --out " + q(out) + " --dry-run " + c.args).exit_code == 3);
  }
  // Without the transform the same tensors are copied: a FNUZ weight without a scale, a C64
  // tensor in a family that keeps it.
  const fs::path in = tmp / "plain", out = tmp / "plain_out";
  write_dir(in, {{"x.weight", "F8_E4M3FNUZ", {2, 3}, std::string(6, '\x05')}}, "");
  CHECK(cli("convert --in " + q(in) + " --out " + q(out) + " --to dequant").exit_code == 0);
  CHECK(read_dir(out).at("x.weight").bytes == std::string(6, '\x05'));
}
