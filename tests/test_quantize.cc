// FP8 e4m3fn encoding and the export scales (SPEC §2), checked three ways:
//  1. against an independent brute-force encoder written here from the format's definition
//     (nearest of the 127 magnitudes, ties to the even code), on every BF16 bit pattern, every
//     rounding midpoint and its float neighbours, and a stride through all float32 patterns;
//  2. on hand-computed values (ties, subnormals, the 448/464/480 boundary, NaN, ±inf, scales);
//  3. against the conformance reference: tests/data/quantize/ holds copies of
//     ../shared/conformance/{m2_rule,m3,mistral_causal}/native_in and their expected hf_real
//     (block 128×128, MXFP8 1×32, per-tensor) and m3's hf_placeholder (torch's cast); every FP8
//     weight of those outputs is recomputed from its native BF16 source and compared byte for byte.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "formats/checkpoint.h"
#include "transforms/fp8.h"
#include "transforms/kernels.h"
#include "transforms/quantize.h"
#include "transforms/scheme.h"

using namespace ckpt;
namespace fs = std::filesystem;

namespace {

uint32_t bits(float f) { return float_to_bits(f); }
float from_bits(uint32_t b) { return bits_to_float(b); }

// e4m3fn magnitudes of codes 0..126 by definition (bias 7, subnormals m/8 * 2^-6).
const std::vector<double>& e4m3_magnitudes() {
  static const std::vector<double> table = [] {
    std::vector<double> t;
    for (int c = 0; c < 127; ++c) {
      const int e = c >> 3, m = c & 7;
      t.push_back(e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7));
    }
    return t;
  }();
  return table;
}

// Brute-force reference: nearest grid magnitude, ties to the even code; `torch` continues the
// grid with 480 as code 0x7F (NaN), `saturate` clamps to 448.
uint8_t reference_encode(float x, bool torch) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  if (std::isnan(x)) return sign | 0x7F;
  const double a = std::fabs(static_cast<double>(x));
  if (std::isinf(x)) return sign | (torch ? 0x7F : 0x7E);
  const auto& t = e4m3_magnitudes();
  // Candidates: largest code <= a and the next one (480 standing for 0x7F past 448).
  const auto it = std::upper_bound(t.begin(), t.end(), a);
  const int lo = static_cast<int>(it - t.begin()) - 1;  // >= 0 since t[0] = 0
  const double lo_v = t[lo];
  const double hi_v = lo + 1 < 127 ? t[lo + 1] : 480.0;
  int c;
  if (a - lo_v < hi_v - a) c = lo;
  else if (a - lo_v > hi_v - a) c = lo + 1;
  else c = (lo % 2 == 0) ? lo : lo + 1;
  if (a >= 480.0) c = 127;
  if (c == 127) c = torch ? 0x7F : 0x7E;
  return sign | static_cast<uint8_t>(c);
}

// Checks both encoders on x; asserts (and so counts in Catch's totals) only on a mismatch, so
// that the million-input sweeps stay fast.
void check_both_modes(float x) {
  const int sat = float_to_e4m3_saturate(x), sat_ref = reference_encode(x, false);
  const int tor = float_to_e4m3_torch(x), tor_ref = reference_encode(x, true);
  if (sat != sat_ref || tor != tor_ref) {
    INFO("x = " << x << " bits 0x" << std::hex << bits(x));
    CHECK(sat == sat_ref);
    CHECK(tor == tor_ref);
  }
}

}  // namespace

TEST_CASE("e4m3 encoders round-trip every code", "[quantize]") {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) == 0x7F) continue;  // NaN codes: checked below
    const float v = fp8_to_float(static_cast<uint8_t>(c), Fp8::E4M3);
    INFO("code " << c);
    REQUIRE(static_cast<int>(float_to_e4m3_saturate(v)) == c);
    REQUIRE(static_cast<int>(float_to_e4m3_torch(v)) == c);
  }
  CHECK(float_to_e4m3_saturate(-0.0f) == 0x80);
  CHECK(float_to_e4m3_torch(-0.0f) == 0x80);
  CHECK(float_to_e4m3_saturate(0.0f) == 0x00);
}

TEST_CASE("e4m3 encoders agree with a brute-force encoder", "[quantize]") {
  SECTION("every bf16 bit pattern") {
    for (uint32_t h = 0; h < 0x10000; ++h) check_both_modes(bf16_to_float(static_cast<uint16_t>(h)));
  }
  SECTION("every midpoint between adjacent codes, and its float neighbours") {
    const auto& t = e4m3_magnitudes();
    std::vector<double> mids;
    for (size_t i = 0; i + 1 < t.size(); ++i) mids.push_back((t[i] + t[i + 1]) / 2);
    mids.push_back(464.0);  // between 448 and the would-be 480
    for (double m : mids) {
      const float f = static_cast<float>(m);
      REQUIRE(static_cast<double>(f) == m);  // midpoints are exact floats
      for (int d = -3; d <= 3; ++d) {
        const float g = from_bits(bits(f) + d);
        check_both_modes(g);
        check_both_modes(-g);
      }
    }
  }
  SECTION("a stride through all float32 patterns") {
    for (uint64_t b = 0; b <= 0xFFFFFFFFull; b += 4099) check_both_modes(from_bits(static_cast<uint32_t>(b)));
  }
}

TEST_CASE("e4m3 encoders: hand-computed rounding", "[quantize]") {
  // Ties between adjacent normals go to the even mantissa.
  CHECK(float_to_e4m3_saturate(1.0625f) == 0x38);   // between 1.0 (0x38) and 1.125 (0x39)
  CHECK(float_to_e4m3_saturate(1.1875f) == 0x3A);   // between 1.125 (0x39) and 1.25 (0x3A)
  CHECK(float_to_e4m3_saturate(std::nextafter(1.0625f, 2.0f)) == 0x39);
  CHECK(float_to_e4m3_saturate(-1.1875f) == 0xBA);
  CHECK(float_to_e4m3_saturate(1.9375f) == 0x40);   // 1.875 | 2.0 tie -> 2.0, carries the exponent
  // Subnormals: step 2^-9; 2^-10 is the tie between 0 and the smallest subnormal.
  const float s = std::ldexp(1.0f, -9);
  CHECK(float_to_e4m3_saturate(std::ldexp(1.0f, -10)) == 0x00);
  CHECK(float_to_e4m3_saturate(std::nextafter(std::ldexp(1.0f, -10), 1.0f)) == 0x01);
  CHECK(float_to_e4m3_saturate(-std::ldexp(1.0f, -10)) == 0x80);
  CHECK(float_to_e4m3_saturate(1.5f * s) == 0x02);  // tie 1|2 -> 2
  CHECK(float_to_e4m3_saturate(2.5f * s) == 0x02);  // tie 2|3 -> 2
  CHECK(float_to_e4m3_saturate(7.5f * s) == 0x08);  // tie 7|8 -> 8, the smallest normal 2^-6
  CHECK(float_to_e4m3_saturate(std::ldexp(1.0f, -126)) == 0x00);  // float32 tiny
  CHECK(float_to_e4m3_saturate(from_bits(1)) == 0x00);          // float32 subnormal
  // The top: 448 is 0x7E; 464 ties between 448 and the would-be 480 and goes to 448 (even).
  CHECK(float_to_e4m3_saturate(448.0f) == 0x7E);
  CHECK(float_to_e4m3_saturate(464.0f) == 0x7E);
  CHECK(float_to_e4m3_saturate(std::nextafter(464.0f, 1e9f)) == 0x7E);
  CHECK(float_to_e4m3_saturate(1e30f) == 0x7E);
  CHECK(float_to_e4m3_saturate(-1e30f) == 0xFE);
  CHECK(float_to_e4m3_torch(448.0f) == 0x7E);
  CHECK(float_to_e4m3_torch(464.0f) == 0x7E);
  CHECK(float_to_e4m3_torch(-464.0f) == 0xFE);
  CHECK(float_to_e4m3_torch(std::nextafter(464.0f, 1e9f)) == 0x7F);  // rounds to "480": NaN
  CHECK(float_to_e4m3_torch(-std::nextafter(464.0f, 1e9f)) == 0xFF);
  CHECK(float_to_e4m3_torch(480.0f) == 0x7F);
  CHECK(float_to_e4m3_torch(-1e30f) == 0xFF);
  // Non-finite inputs.
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(float_to_e4m3_saturate(inf) == 0x7E);
  CHECK(float_to_e4m3_saturate(-inf) == 0xFE);
  CHECK(float_to_e4m3_saturate(nan) == 0x7F);
  CHECK(float_to_e4m3_saturate(-nan) == 0xFF);
  CHECK(float_to_e4m3_torch(inf) == 0x7F);
  CHECK(float_to_e4m3_torch(-inf) == 0xFF);
  CHECK(float_to_e4m3_torch(nan) == 0x7F);
  CHECK(float_to_e4m3_torch(-nan) == 0xFF);
  CHECK(float_to_e4m3_torch(from_bits(0x7F800001u)) == 0x7F);  // signalling NaN payload
}

TEST_CASE("export scales: hand-computed values", "[quantize]") {
  CHECK(fp8_block_scale(448.0f) == 1.0f);
  CHECK(fp8_block_scale(0.0f) == 1.0f);
  CHECK(fp8_block_scale(-0.0f) == 1.0f);
  CHECK(fp8_block_scale(1.75f) == std::ldexp(1.0f, -8));           // 7/4 / (7*64)
  CHECK(bits(fp8_block_scale(1.0f)) == bits(1.0f / 448.0f));       // rounded once in float32
  CHECK(bits(fp8_block_scale(1.0f)) == 0x3B124925u);               // 0x1.249249p-9 rounded

  CHECK(mx_scale_byte(0.0f) == 127);
  CHECK(mx_scale_byte(1.0f) == 119);                        // 0 - 8 + 127
  CHECK(mx_scale_byte(448.0f) == 127);                      // floor(log2 448) = 8
  CHECK(mx_scale_byte(511.99997f) == 127);
  CHECK(mx_scale_byte(512.0f) == 128);
  CHECK(mx_scale_byte(255.99998f) == 126);                  // just below a power of two
  CHECK(mx_scale_byte(std::nextafter(256.0f, 0.0f)) == 126);
  CHECK(mx_scale_byte(std::ldexp(1.0f, -119)) == 0);        // -119 - 8 = -127: the floor
  CHECK(mx_scale_byte(std::ldexp(1.0f, -120)) == 0);        // clamped
  CHECK(mx_scale_byte(from_bits(1)) == 0);                  // float32 subnormal, clamped
  CHECK(mx_scale_byte(std::numeric_limits<float>::max()) == 246);  // 127 - 8 + 127
  // Every finite power of two and its predecessor.
  for (int e = -149; e <= 127; ++e) {
    const float p = std::ldexp(1.0f, e);
    const int want = std::clamp(e - 8, -127, 127) + 127;
    INFO("2^" << e);
    CHECK(static_cast<int>(mx_scale_byte(p)) == want);
    if (e > -149)
      CHECK(static_cast<int>(mx_scale_byte(std::nextafter(p, 0.0f))) ==
            std::clamp(e - 9, -127, 127) + 127);
  }

  const float v[] = {0.5f, -3.0f, 2.0f, -0.0f};
  CHECK(abs_max(v, 4) == 3.0f);
  CHECK(abs_max(v, 0) == 0.0f);
  CHECK(abs_max(v, 2, 7.0f) == 7.0f);
  // Only finite elements count (SPEC §2): NaN, -NaN and ±inf are skipped, whatever their place.
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const float w[] = {1.0f, nan, 1e30f, -inf, -nan, -2e30f, inf};
  CHECK(abs_max(w, 7) == 2e30f);
  CHECK(abs_max(w + 1, 1) == 0.0f);
  const float bad[] = {nan, -inf, inf, -nan, from_bits(0x7F800001u), from_bits(0xFFFFFFFFu)};
  CHECK(abs_max(bad, 6) == 0.0f);
  CHECK(abs_max(bad, 6, 5.0f) == 5.0f);
  const float big[] = {std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(), inf};
  CHECK(abs_max(big, 3) == std::numeric_limits<float>::max());
  const float tiny[] = {from_bits(1), -from_bits(2), nan};  // float32 subnormals next to a NaN
  CHECK(bits(abs_max(tiny, 3)) == 2u);
}

TEST_CASE("quantize_span divides by the scale in float32", "[quantize]") {
  // amax 1.078125 (bf16 0x3F8A): scale = 1.078125 / 448 rounded. x = bf16 0x3ACF: x / scale
  // rounds to exactly 0.65625, the tie between 0.625 (0x32) and 0.6875 (0x33) -> 0x32, while
  // x * (1 / scale) lands one ulp above the tie -> 0x33. The division is the rule.
  const float amax = bf16_to_float(0x3F8A);
  const float scale = fp8_block_scale(amax);
  const float x = bf16_to_float(0x3ACF);
  REQUIRE(x / scale == 0.65625f);
  REQUIRE(x * (1.0f / scale) != 0.65625f);
  uint8_t code = 0;
  quantize_span(&x, 1, scale, &code);
  CHECK(code == 0x32);

  // MXFP8: dividing by 2^(e-127) is exact; values past 448 saturate (OCP MX clamps).
  const float xs[] = {511.0f, 448.0f, -300.0f, 1.0f, 0.0f};
  const uint8_t e = mx_scale_byte(511.0f);
  REQUIRE(e == 127);
  uint8_t codes[5];
  quantize_span(xs, 5, e8m0_to_float(e), codes);
  CHECK(codes[0] == 0x7E);
  CHECK(codes[1] == 0x7E);
  CHECK(codes[2] == float_to_e4m3_saturate(-300.0f));
  CHECK(codes[3] == 0x38);
  CHECK(codes[4] == 0x00);
  // Under a finite scale a NaN stays NaN with its sign, ±inf saturates, neighbours are untouched.
  const float ns[] = {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
                      std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), 1.0f};
  quantize_span(ns, 5, 1.0f, codes);
  CHECK(codes[0] == 0x7F);
  CHECK(codes[1] == 0xFF);
  CHECK(codes[2] == 0x7E);
  CHECK(codes[3] == 0xFE);
  CHECK(codes[4] == 0x38);

  const float ys[] = {1000.0f, -464.0f, 0.001953125f};
  uint8_t ph[3];
  cast_span_torch(ys, 3, ph);
  CHECK(ph[0] == 0x7F);
  CHECK(ph[1] == 0xFE);
  CHECK(ph[2] == 0x01);
}

namespace {

const fs::path kData = fs::path(CKPT_TEST_DATA) / "quantize";

std::vector<float> to_floats(const TensorRef& t) {
  const uint8_t* p = t.file->data(*t.info);
  const uint64_t n = t.info->numel();
  std::vector<float> out(n);
  for (uint64_t i = 0; i < n; ++i) {
    if (t.info->dtype == DType::BF16) {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      out[i] = bf16_to_float(h);
    } else {
      REQUIRE(t.info->dtype == DType::F32);
      std::memcpy(&out[i], p + 4 * i, 4);
    }
  }
  return out;
}

// The native source of an HF weight, as a row-major [rows, cols] float matrix: a routed expert
// is slot E of the grouped tensor, transposed (gate = slot[:, :inter]^T, up = slot[:, inter:]^T,
// down = slot^T); other keys go through the renames of SPEC §4 that these cases need.
std::optional<std::vector<float>> native_source(const Checkpoint& nat, const std::string& name) {
  static const std::regex expert(
      R"(^(.*layers\.\d+\.(?:transformer_layer\.)?)block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$)");
  std::smatch m;
  if (std::regex_match(name, m, expert)) {
    const std::string pfx = m[1].str() + "mlp.experts.";
    const uint64_t e = std::stoull(m[2].str());
    const bool down = m[3].str() == "w2";
    const TensorRef* g = nat.find(pfx + (down ? "down_projs" : "gate_and_up_projs"));
    if (!g) return std::nullopt;
    const std::vector<float> v = to_floats(*g);
    const uint64_t a = g->info->shape[1], b = g->info->shape[2];  // slot is [a, b]
    const uint64_t rows = down ? b : b / 2, cols = a;
    const uint64_t off = m[3].str() == "w3" ? b / 2 : 0;
    std::vector<float> out(rows * cols);
    for (uint64_t i = 0; i < rows; ++i)
      for (uint64_t j = 0; j < cols; ++j) out[i * cols + j] = v[e * a * b + j * b + off + i];
    return out;
  }
  std::vector<std::string> names{name};
  auto replaced = [&](const std::string& from, const std::string& to) {
    const auto at = name.find(from);
    if (at != std::string::npos) names.push_back(name.substr(0, at) + to + name.substr(at + from.size()));
  };
  replaced(".block_sparse_moe.shared_experts.", ".shared_experts.");
  replaced(".self_attn.index_", ".self_attn.indexer.index_");
  for (const auto& n : names)
    if (const TensorRef* t = nat.find(n)) return to_floats(*t);
  return std::nullopt;
}

enum class Mode { Real, Placeholder };

// Recomputes every FP8 weight (with its `_scale_inv`) of `expected` from `native` and compares
// codes and scales byte for byte. Returns the number of weights checked.
int check_case(const fs::path& native, const fs::path& expected, Mode mode) {
  const Checkpoint nat = Checkpoint::open(native);
  const Checkpoint exp = Checkpoint::open(expected);
  int checked = 0;
  for (const TensorRef& w : exp.tensors()) {
    if (w.info->dtype != DType::F8_E4M3) continue;
    const TensorRef* s = exp.find(w.name() + "_scale_inv");
    REQUIRE(s != nullptr);
    INFO("weight " << w.name());
    const auto x = native_source(nat, w.name());
    REQUIRE(x.has_value());
    REQUIRE(w.info->shape.size() == 2);
    const uint64_t rows = w.info->shape[0], cols = w.info->shape[1];
    REQUIRE(x->size() == rows * cols);
    const uint8_t* want = w.file->data(*w.info);
    const uint8_t* want_scale = s->file->data(*s->info);
    std::vector<uint8_t> got(rows * cols);

    if (mode == Mode::Placeholder) {
      cast_span_torch(x->data(), x->size(), got.data());
      if (s->info->dtype == DType::U8) {
        for (uint64_t i = 0; i < s->info->numel(); ++i) REQUIRE(want_scale[i] == 127);
      }
    } else {
      const bool mx = s->info->dtype == DType::U8 || s->info->dtype == DType::F8_E8M0;
      const bool per_tensor = !mx && s->info->numel() == 1;
      const uint64_t br = mx ? 1 : per_tensor ? rows : 128;
      const uint64_t bc = mx ? kMxBlock : per_tensor ? cols : 128;
      const uint64_t gc = (cols + bc - 1) / bc;
      REQUIRE(s->info->numel() == ((rows + br - 1) / br) * gc);
      if (!mx) REQUIRE(s->info->dtype == DType::F32);
      for (uint64_t r0 = 0; r0 < rows; r0 += br) {
        for (uint64_t c0 = 0; c0 < cols; c0 += bc) {
          const uint64_t r1 = std::min(rows, r0 + br), c1 = std::min(cols, c0 + bc);
          float amax = 0.0f;
          for (uint64_t r = r0; r < r1; ++r) amax = abs_max(&(*x)[r * cols + c0], c1 - c0, amax);
          const uint64_t g = (r0 / br) * gc + c0 / bc;
          float scale;
          if (mx) {
            const uint8_t byte = mx_scale_byte(amax);
            REQUIRE(static_cast<int>(byte) == static_cast<int>(want_scale[g]));
            scale = e8m0_to_float(byte);
          } else {
            scale = fp8_block_scale(amax);
            float ws;
            std::memcpy(&ws, want_scale + 4 * g, 4);
            REQUIRE(bits(scale) == bits(ws));
          }
          for (uint64_t r = r0; r < r1; ++r)
            quantize_span(&(*x)[r * cols + c0], c1 - c0, scale, &got[r * cols + c0]);
        }
      }
    }
    uint64_t bad = 0, first = 0;
    for (uint64_t i = 0; i < got.size(); ++i) {
      // NaN equals NaN whatever its sign (the conformance rule); everything else byte for byte.
      const bool same = got[i] == want[i] || ((got[i] & 0x7F) == 0x7F && (want[i] & 0x7F) == 0x7F);
      if (!same && bad++ == 0) first = i;
    }
    INFO("first mismatch at " << first << ": got " << int(got[first]) << " want " << int(want[first]));
    REQUIRE(bad == 0);
    ++checked;
  }
  return checked;
}

}  // namespace

TEST_CASE("real quantization reproduces the reference: block 128x128 (m2_rule)", "[quantize]") {
  CHECK(check_case(kData / "m2_rule/native_in", kData / "m2_rule/hf_real", Mode::Real) == 32);
}

TEST_CASE("real quantization reproduces the reference: per-tensor (mistral_causal)", "[quantize]") {
  CHECK(check_case(kData / "mistral_causal/native_in", kData / "mistral_causal/hf_real", Mode::Real) ==
        14);
}

TEST_CASE("real quantization reproduces the reference: MXFP8 (m3)", "[quantize]") {
  CHECK(check_case(kData / "m3/native_in", kData / "m3/hf_real", Mode::Real) == 64);
}

TEST_CASE("placeholder cast reproduces the reference (m3)", "[quantize]") {
  CHECK(check_case(kData / "m3/native_in", kData / "m3/hf_placeholder", Mode::Placeholder) == 64);
}

// The vector encoders and amax of every ISA this CPU has (transforms/kernels_*.cc) against the
// scalar rules above (themselves checked against the brute-force encoder): every BF16 bit pattern
// under scales that send values into the subnormal, normal, saturating and overflowing ranges, a
// stride through float32 patterns, and every length up to 70 for the tails.
TEST_CASE("FP8 export kernels of every ISA equal the scalar rules", "[quantize][kernels]") {
  std::vector<float> x;
  for (uint32_t b = 0; b < 0x10000; ++b) x.push_back(from_bits(b << 16));
  for (uint64_t b = 0; b < 0x100000000ull; b += 0x10001ull * 97) x.push_back(from_bits(static_cast<uint32_t>(b)));
  x.push_back(-std::numeric_limits<float>::max());  // the largest finite magnitude, among NaNs
  const float scales[] = {1.0f, 1.0f / 448.0f, 0.0044642857f, 1e-30f, 3e25f, std::ldexp(1.0f, -120), 7.0f};
  std::vector<uint8_t> want(x.size()), got(x.size());
  for (Isa isa : supported_isas()) {
    const KernelTable& k = *kernels_for(isa);
    INFO("isa " << isa_name(isa));
    for (float s : scales) {
      INFO("scale " << s);
      for (size_t j = 0; j < x.size(); ++j) want[j] = float_to_e4m3_saturate(x[j] / s);
      k.quantize(x.data(), x.size(), s, got.data());
      CHECK(got == want);
    }
    for (size_t n = 0; n <= 70; ++n)
      for (size_t at = 0; at + n <= x.size(); at += 4099) {
        std::vector<uint8_t> tail(n + 1, 0xAB);
        k.quantize(x.data() + at, n, 0.5f, tail.data());
        for (size_t j = 0; j < n; ++j) REQUIRE(tail[j] == float_to_e4m3_saturate(x[at + j] / 0.5f));
        REQUIRE(tail[n] == 0xAB);  // nothing written past n
        const float init = n % 3 == 0 ? 0.0f : 1.5f;
        REQUIRE(bits(k.abs_max(x.data() + at, n, init)) == bits(abs_max_scalar(x.data() + at, n, init)));
      }
    CHECK(bits(k.abs_max(x.data(), x.size(), 0.0f)) == bits(std::numeric_limits<float>::max()));
  }
}

// The BF16-input kernels (a native checkpoint's weights go to FP8 without a float32 copy) against
// the float32 rule on the widened values: every BF16 pattern, as rows of several widths and
// strides, under scales of every range; amax with an `init` and with non-finite values that
// must be skipped.
TEST_CASE("BF16 export kernels of every ISA equal the float32 rule on widened values", "[quantize][kernels]") {
  std::vector<uint16_t> h(0x10000);
  for (uint32_t b = 0; b < 0x10000; ++b) h[b] = static_cast<uint16_t>((b * 40503u) & 0xFFFF);  // every pattern, shuffled
  const float scales[] = {1.0f, 1.0f / 448.0f, 0.0044642857f, 1e-30f, 3e25f, std::ldexp(1.0f, -127), 7.0f};
  const auto widened = [&](size_t j) { return from_bits(static_cast<uint32_t>(h[j]) << 16); };
  for (Isa isa : supported_isas()) {
    const KernelTable& k = *kernels_for(isa);
    INFO("isa " << isa_name(isa));
    for (float s : scales) {
      INFO("scale " << s);
      std::vector<uint8_t> got(h.size()), want(h.size());
      for (size_t j = 0; j < h.size(); ++j) want[j] = float_to_e4m3_saturate(widened(j) / s);
      k.quantize_bf16(h.data(), 256, 256, 256, s, got.data(), 256);  // all of it as 256 rows
      CHECK(got == want);
    }
    // Rows narrower than their strides, every width to 70: nothing read or written between rows.
    for (size_t n = 0; n <= 70; ++n)
      for (size_t rows : {1, 3}) {
        const size_t stride = n + 5, cstride = n + 3, at = 977 * n % (h.size() - 3 * stride);
        std::vector<uint8_t> codes(rows * cstride, 0xAB);
        k.quantize_bf16(h.data() + at, rows, n, stride, 0.25f, codes.data(), cstride);
        std::vector<float> flat;
        for (size_t r = 0; r < rows; ++r)
          for (size_t j = 0; j < cstride; ++j) {
            const uint8_t want = j < n ? float_to_e4m3_saturate(widened(at + r * stride + j) / 0.25f) : 0xAB;
            REQUIRE(codes[r * cstride + j] == want);
            if (j < n) flat.push_back(widened(at + r * stride + j));
          }
        for (float init : {0.0f, 1.5f, -3.0f}) {
          const float want = abs_max_scalar(flat.data(), flat.size(), init);
          REQUIRE(bits(k.abs_max_bf16(h.data() + at, rows, n, stride, init)) == bits(want));
        }
      }
    // All patterns at once: the largest finite BF16 magnitude wins over ±inf and every NaN.
    CHECK(bits(k.abs_max_bf16(h.data(), 1, h.size(), 0, 0.0f)) == 0x7F7F0000u);
    const uint16_t bad[] = {0x7F80, 0xFF80, 0x7FC0, 0xFFFF, 0x7F81};
    CHECK(bits(k.abs_max_bf16(bad, 1, 5, 0, 0.0f)) == 0u);
    CHECK(bits(k.abs_max_bf16(bad, 1, 5, 0, -2.0f)) == bits(2.0f));
  }
}

// The MXFP8 BF16 row kernel of every ISA against the float32 rules on the widened values: every
// BF16 pattern in order (each group of 32 shares its exponent, so codes span the whole grid) and
// shuffled, then ragged rows of every length to 100 (no code or scale written past the row's).
TEST_CASE("MXFP8 export kernels of every ISA equal the rules on widened values", "[quantize][kernels]") {
  std::vector<uint16_t> in_order(0x10000), shuffled(0x10000);
  for (uint32_t b = 0; b < 0x10000; ++b) {
    in_order[b] = static_cast<uint16_t>(b);
    shuffled[b] = static_cast<uint16_t>((b * 40503u) & 0xFFFF);
  }
  // Expected codes and scales of x[0, n) by the rules, group by group, in float32.
  const auto expect = [](const uint16_t* x, size_t n, std::vector<uint8_t>& codes, std::vector<uint8_t>& scales) {
    for (size_t g = 0; g < n; g += 32) {
      std::vector<float> v;
      for (size_t j = g; j < std::min(n, g + 32); ++j) v.push_back(from_bits(static_cast<uint32_t>(x[j]) << 16));
      const uint8_t e = mx_scale_byte(abs_max_scalar(v.data(), v.size(), 0.0f));
      for (size_t j = 0; j < v.size(); ++j) codes[g + j] = float_to_e4m3_saturate(v[j] / e8m0_to_float(e));
      scales[g / 32] = e;
    }
  };
  for (Isa isa : supported_isas()) {
    const KernelTable& k = *kernels_for(isa);
    INFO("isa " << isa_name(isa));
    for (const auto* x : {&in_order, &shuffled}) {
      std::vector<uint8_t> codes(x->size()), scales(x->size() / 32), want_codes(x->size()), want_scales(x->size() / 32);
      expect(x->data(), x->size(), want_codes, want_scales);
      k.quantize_mx_bf16(x->data(), x->size(), codes.data(), scales.data());
      CHECK(codes == want_codes);
      CHECK(scales == want_scales);
    }
    for (size_t n = 1; n <= 100; ++n) {
      const size_t at = 1531 * n % (in_order.size() - n), groups = (n + 31) / 32;
      std::vector<uint8_t> codes(n + 1, 0xAB), scales(groups + 1, 0xAB), want_codes(n + 1, 0xAB), want_scales(groups + 1, 0xAB);
      expect(in_order.data() + at, n, want_codes, want_scales);
      k.quantize_mx_bf16(in_order.data() + at, n, codes.data(), scales.data());
      REQUIRE(codes == want_codes);
      REQUIRE(scales == want_scales);
    }
  }
}
