// FP8 export (`--to hf --quantize real`) of weights holding NaN, -NaN, +inf, -inf, a block with
// no finite element, an all-zero block and subnormals next to a NaN, for each scale scheme
// (SPEC §2, non-finite values): amax over the finite elements only (none finite -> scale 1 /
// exponent 127), NaN -> 0x7F with its sign bit, ±inf -> ±448. Every expected code and scale below
// is worked out by hand from that rule and written as a literal; then the export is dequantized
// back and every finite element must come back within e4m3's rounding (exactly, where the scale is
// a power of two and the value on the e4m3 grid).
#include <catch2/catch.hpp>

#include <cstdlib>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "formats/checkpoint.h"
#include "support.h"
#include "transforms/fp8.h"
#include "transforms/kernels.h"

using namespace ckpt;
namespace fs = std::filesystem;

namespace {

constexpr uint16_t kNan = 0x7FC0, kNegNan = 0xFFC0, kInf = 0x7F80, kNegInf = 0xFF80;

// A BF16 matrix of `rows` x `cols`, zero except the listed (row, col) -> bits.
std::vector<uint16_t> bf16_matrix(uint64_t rows, uint64_t cols, const std::map<std::pair<int, int>, uint16_t>& set) {
  std::vector<uint16_t> m(rows * cols, 0);
  for (const auto& [rc, v] : set) m[rc.first * cols + rc.second] = v;
  return m;
}

// The same positions as expected e4m3 codes, zero (code 0x00) elsewhere.
std::vector<uint8_t> codes(uint64_t rows, uint64_t cols, const std::map<std::pair<int, int>, uint8_t>& set) {
  std::vector<uint8_t> m(rows * cols, 0);
  for (const auto& [rc, v] : set) m[rc.first * cols + rc.second] = v;
  return m;
}

std::vector<uint8_t> bytes_of(const Checkpoint& ck, const std::string& name) {
  const TensorRef* t = ck.find(name);
  REQUIRE(t != nullptr);
  const uint8_t* p = t->file->data(*t->info);
  return {p, p + t->info->nbytes()};
}

std::vector<uint8_t> f32_bytes(const std::vector<uint32_t>& bits) {
  std::vector<uint8_t> out(bits.size() * 4);
  std::memcpy(out.data(), bits.data(), out.size());
  return out;
}

float bf16_value(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Every instruction set this CPU has: each runs its own amax and encoder kernels.
std::vector<std::string> isas() {
  std::vector<std::string> v;
  for (Isa i : supported_isas()) v.emplace_back(isa_name(i));
  return v;
}

// Exports a one-weight native checkpoint of `family` with the kernels of `isa` and returns the
// HF output directory.
fs::path export_real(const test::TempDir& tmp, const std::string& isa, const std::string& family,
                     const std::string& config, const std::vector<test::TensorSpec>& tensors) {
  test::write_checkpoint(tmp / "native", {tensors}, config);
  const fs::path out = tmp / "hf";
  ::setenv("CKPT_ISA", isa.c_str(), 1);  // run_cli's shell passes it on to the binary
  const auto r = test::run_cli("convert --in " + (tmp / "native").string() + " --out " + out.string() +
                               " --family " + family + " --to hf --quantize real");
  ::unsetenv("CKPT_ISA");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  return out;
}

// Every finite element of `orig` comes back from the export's dequantization within e4m3's
// rounding — half an ulp of 3 mantissa bits (2^-4 relative), or half the subnormal step 2^-10 of
// these tests' scale-1 blocks — and exactly when `exact`; every NaN stays NaN.
void check_round_trip(const fs::path& hf, const std::string& weight, const std::vector<uint16_t>& orig, bool exact) {
  const fs::path back = hf.parent_path() / "back";
  const auto r = test::run_cli("convert --in " + hf.string() + " --out " + back.string() + " --to dequant --dtype f32");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const auto got = bytes_of(Checkpoint::open(back), weight);
  REQUIRE(got.size() == orig.size() * 4);
  for (size_t i = 0; i < orig.size(); ++i) {
    float g;
    std::memcpy(&g, got.data() + 4 * i, 4);
    const float x = bf16_value(orig[i]);
    INFO("element " << i << ": " << x << " came back as " << g);
    if (std::isnan(x)) CHECK(std::isnan(g));
    else if (std::isinf(x)) CHECK(std::isfinite(g));  // saturated to ±448 × scale
    else if (exact) CHECK(g == x);
    else CHECK(std::fabs(g - x) <= std::max(std::fabs(x) / 16, std::ldexp(1.0f, -10)));
  }
}

}  // namespace

TEST_CASE("FP8 export of non-finite values: block 128x128", "[quantize][nonfinite]") {
  // [130, 130]: four blocks. (0,0) holds 1, 2, 0.5 among NaN, -NaN, ±inf: amax 2, scale
  // 2/448 = 0x3B924925, and 1/s = 224 (0x76), 2/s = 448 (0x7E), 0.5/s = 112 (0x6E).
  // (0,1) holds 448 (scale exactly 1) and subnormals next to a NaN: 2^-9 -> 0x01, -2^-8 -> 0x82,
  // 2^-10 (a tie) -> 0x00, 3*2^-10 (a tie) -> 0x02. (1,0) is all zero: scale 1. (1,1) holds only
  // NaN, -NaN, +inf, -inf: no finite element, scale 1, codes 0x7F 0xFF 0x7E 0xFE.
  const auto w = bf16_matrix(130, 130,
                             {{{0, 0}, 0x3F80}, {{0, 1}, kNan}, {{0, 2}, 0x4000}, {{1, 0}, kNegInf},
                              {{1, 1}, 0x3F00}, {{1, 2}, kNegNan}, {{2, 0}, kInf},
                              {{0, 128}, kNan}, {{1, 128}, 0x43E0}, {{1, 129}, 0x3B00}, {{2, 128}, 0xBB80},
                              {{2, 129}, 0x3A80}, {{3, 128}, 0x3B40}, {{3, 129}, kNegNan},
                              {{128, 128}, kNan}, {{128, 129}, kNegNan}, {{129, 128}, kInf}, {{129, 129}, kNegInf}});
  const auto want = codes(130, 130,
                          {{{0, 0}, 0x76}, {{0, 1}, 0x7F}, {{0, 2}, 0x7E}, {{1, 0}, 0xFE}, {{1, 1}, 0x6E},
                           {{1, 2}, 0xFF}, {{2, 0}, 0x7E},
                           {{0, 128}, 0x7F}, {{1, 128}, 0x7E}, {{1, 129}, 0x01}, {{2, 128}, 0x82},
                           {{2, 129}, 0x00}, {{3, 128}, 0x02}, {{3, 129}, 0xFF},
                           {{128, 128}, 0x7F}, {{128, 129}, 0xFF}, {{129, 128}, 0x7E}, {{129, 129}, 0xFE}});
  const std::string isa = GENERATE(from_range(isas()));
  INFO("isa " << isa);
  test::TempDir tmp;
  const std::string name = "model.layers.0.self_attn.q_proj.weight";
  const fs::path hf = export_real(tmp, isa, "minimax_m2", R"({"model_type": "minimax_m2"})",
                                  {{name, DType::BF16, {130, 130}, test::le_bytes(w)}});
  const Checkpoint ck = Checkpoint::open(hf);
  CHECK(bytes_of(ck, name) == want);
  CHECK(bytes_of(ck, name + "_scale_inv") == f32_bytes({0x3B924925u, 0x3F800000u, 0x3F800000u, 0x3F800000u}));
  check_round_trip(hf, name, w, false);
}

TEST_CASE("FP8 export of non-finite values: per-tensor", "[quantize][nonfinite]") {
  // q_proj: amax over the finite elements is 4 (not NaN, not inf): scale 4/448 = 0x3C124925;
  // 1/s = 112 (0x6E), 0.25/s = 28 (0x5E), -4/s = -448 (0xFE), -0 keeps its sign (0x80).
  // k_proj holds no finite element: scale 1.0, NaN 0x7F, +inf 0x7E, -NaN 0xFF, -inf 0xFE.
  const auto q = bf16_matrix(2, 4, {{{0, 0}, 0x3F80}, {{0, 1}, kNan}, {{0, 2}, kNegInf}, {{0, 3}, 0x3E80},
                                    {{1, 0}, kNegNan}, {{1, 1}, kInf}, {{1, 2}, 0xC080}, {{1, 3}, 0x8000}});
  const std::vector<uint16_t> k{kNan, kInf, kNegNan, kNegInf};
  const std::string isa = GENERATE(from_range(isas()));
  INFO("isa " << isa);
  test::TempDir tmp;
  const std::string qn = "model.layers.0.self_attn.q_proj.weight", kn = "model.layers.0.self_attn.k_proj.weight";
  const fs::path hf = export_real(tmp, isa, "mistral3_causal", R"({"model_type": "mistral3"})",
                                  {{qn, DType::BF16, {2, 4}, test::le_bytes(q)},
                                   {kn, DType::BF16, {1, 4}, test::le_bytes(k)}});
  const Checkpoint ck = Checkpoint::open(hf);
  CHECK(bytes_of(ck, qn) == std::vector<uint8_t>{0x6E, 0x7F, 0xFE, 0x5E, 0xFF, 0x7E, 0xFE, 0x80});
  CHECK(bytes_of(ck, qn + "_scale_inv") == f32_bytes({0x3C124925u}));
  CHECK(bytes_of(ck, kn) == std::vector<uint8_t>{0x7F, 0x7E, 0xFF, 0xFE});
  CHECK(bytes_of(ck, kn + "_scale_inv") == f32_bytes({0x3F800000u}));
  check_round_trip(hf, qn, q, false);
}

TEST_CASE("FP8 export of non-finite values: MXFP8 1x32", "[quantize][nonfinite]") {
  // [2, 40]: two 32-groups per row, the second ragged (8 wide).
  // Row 0, group 0: amax 1 -> exponent floor(log2 1) - 8 = -8, byte 119, scale 2^-8; 1.0 -> 256
  // (0x78), NaN 0x7F, -inf 0xFE. Row 0, group 1: only NaN/-NaN/±inf: byte 127, codes as they are.
  // Row 1, group 0: all zero: byte 127. Row 1, group 1: amax 3 -> exponent 1 - 8 = -7, byte 120,
  // scale 2^-7; 3 -> 384 (0x7C), -NaN 0xFF, 2^-16 -> 2^-9 (0x01, a subnormal next to the NaN).
  std::map<std::pair<int, int>, uint16_t> in{{{0, 0}, kNan}, {{0, 1}, 0x3F80}, {{0, 2}, kNegInf},
                                              {{1, 32}, 0x4040}, {{1, 33}, kNegNan}, {{1, 34}, 0x3780}};
  std::map<std::pair<int, int>, uint8_t> out{{{0, 0}, 0x7F}, {{0, 1}, 0x78}, {{0, 2}, 0xFE},
                                             {{1, 32}, 0x7C}, {{1, 33}, 0xFF}, {{1, 34}, 0x01}};
  const uint16_t bad[4] = {kNan, kNegNan, kInf, kNegInf};
  const uint8_t bad_codes[4] = {0x7F, 0xFF, 0x7E, 0xFE};
  for (int c = 32; c < 40; ++c) {
    in[{0, c}] = bad[c % 4];
    out[{0, c}] = bad_codes[c % 4];
  }
  const auto w = bf16_matrix(2, 40, in);
  const std::string isa = GENERATE(from_range(isas()));
  INFO("isa " << isa);
  test::TempDir tmp;
  const std::string name = "model.layers.0.self_attn.q_proj.weight";
  const fs::path hf = export_real(tmp, isa, "minimax_m3", R"({"model_type": "minimax_m3", "num_mtp_modules": 0})",
                                  {{name, DType::BF16, {2, 40}, test::le_bytes(w)}});
  const Checkpoint ck = Checkpoint::open(hf);
  CHECK(bytes_of(ck, name) == codes(2, 40, out));
  CHECK(bytes_of(ck, name + "_scale_inv") == std::vector<uint8_t>{119, 127, 127, 120});
  check_round_trip(hf, name, w, true);  // power-of-two scales, values on the e4m3 grid
}
