// FP8 decoding, float rounding and the dequantization kernels, checked against values derived
// independently of the implementation (the format definitions written out with ldexp, and
// hand-computed bit patterns), over all 256 codes of each FP8 format, on every ISA this CPU has.
#include <catch2/catch.hpp>
#include <cpuid.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "transforms/fp8.h"
#include "transforms/kernels.h"

using namespace ckpt;

namespace {

uint32_t bits(float f) { return float_to_bits(f); }

// The e4m3fn definition: bias 7, subnormals m/8 * 2^-6, S.1111.111 is NaN, no infinities.
double e4m3_by_definition(uint8_t c) {
  const int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -mag : mag;
}

// The e5m2 definition: bias 15, subnormals m/4 * 2^-14, exponent 31 is inf or NaN.
double e5m2_by_definition(uint8_t c) {
  const int s = c >> 7, e = (c >> 2) & 31, m = c & 3;
  double mag;
  if (e == 31) mag = m ? std::numeric_limits<double>::quiet_NaN() : INFINITY;
  else mag = e == 0 ? std::ldexp(m / 4.0, -14) : std::ldexp(1.0 + m / 4.0, e - 15);
  return s ? -mag : mag;
}

void check_all_codes(Fp8 format, double (*definition)(uint8_t)) {
  for (int c = 0; c < 256; ++c) {
    const double want = definition(static_cast<uint8_t>(c));
    const float got = fp8_to_float(static_cast<uint8_t>(c), format);
    INFO("code " << c);
    if (std::isnan(want)) {
      REQUIRE(std::isnan(got));
    } else {
      REQUIRE(static_cast<double>(got) == want);
      REQUIRE(std::signbit(got) == std::signbit(want));
    }
  }
}

}  // namespace

TEST_CASE("e4m3fn decodes all 256 codes exactly", "[numerics]") {
  check_all_codes(Fp8::E4M3, e4m3_by_definition);
  // Hand-computed anchors.
  CHECK(bits(fp8_to_float(0x00, Fp8::E4M3)) == 0x00000000u);
  CHECK(bits(fp8_to_float(0x80, Fp8::E4M3)) == 0x80000000u);  // -0 stays -0
  CHECK(fp8_to_float(0x01, Fp8::E4M3) == 0.001953125f);       // 2^-9, smallest subnormal
  CHECK(fp8_to_float(0x07, Fp8::E4M3) == 0.013671875f);       // 7 * 2^-9
  CHECK(fp8_to_float(0x08, Fp8::E4M3) == 0.015625f);          // 2^-6, smallest normal
  CHECK(fp8_to_float(0x38, Fp8::E4M3) == 1.0f);
  CHECK(fp8_to_float(0x7E, Fp8::E4M3) == 448.0f);
  CHECK(fp8_to_float(0xFE, Fp8::E4M3) == -448.0f);
  CHECK(std::isnan(fp8_to_float(0x7F, Fp8::E4M3)));
  CHECK(std::isnan(fp8_to_float(0xFF, Fp8::E4M3)));
  CHECK(fp8_to_float(0x78, Fp8::E4M3) == 256.0f);  // e=15 m=0 is a number, not infinity
}

TEST_CASE("e5m2 decodes all 256 codes exactly", "[numerics]") {
  check_all_codes(Fp8::E5M2, e5m2_by_definition);
  CHECK(fp8_to_float(0x01, Fp8::E5M2) == std::ldexp(1.0f, -16));
  CHECK(fp8_to_float(0x3C, Fp8::E5M2) == 1.0f);
  CHECK(fp8_to_float(0x7B, Fp8::E5M2) == 57344.0f);
  CHECK(fp8_to_float(0x7C, Fp8::E5M2) == INFINITY);
  CHECK(fp8_to_float(0xFC, Fp8::E5M2) == -INFINITY);
  CHECK(std::isnan(fp8_to_float(0x7D, Fp8::E5M2)));
}

TEST_CASE("e8m0 exponents are 2^(e-127) with 255 as +inf", "[numerics]") {
  CHECK(e8m0_to_float(127) == 1.0f);
  CHECK(e8m0_to_float(128) == 2.0f);
  CHECK(e8m0_to_float(120) == 0.0078125f);
  CHECK(e8m0_to_float(254) == std::ldexp(1.0f, 127));
  CHECK(bits(e8m0_to_float(0)) == 0x00400000u);  // 2^-127, a float32 subnormal
  CHECK(e8m0_to_float(1) == std::ldexp(1.0f, -126));
  CHECK(e8m0_to_float(255) == INFINITY);
  for (int e = 1; e < 255; ++e) REQUIRE(e8m0_to_float(static_cast<uint8_t>(e)) == std::ldexp(1.0f, e - 127));
}

TEST_CASE("float32 to bfloat16 rounds to nearest even, NaN to 0x7FC0", "[numerics]") {
  const auto bf = [](uint32_t b) { return float_to_bf16(bits_to_float(b)); };
  CHECK(bf(0x3F800000) == 0x3F80);  // 1.0
  CHECK(bf(0x3F808000) == 0x3F80);  // tie, even stays
  CHECK(bf(0x3F818000) == 0x3F82);  // tie, odd rounds up
  CHECK(bf(0x3F808001) == 0x3F81);  // just above the tie
  CHECK(bf(0x3F807FFF) == 0x3F80);  // just below the tie
  CHECK(bf(0xBF818000) == 0xBF82);  // sign does not change the rule
  CHECK(bf(0x7F7FFFFF) == 0x7F80);  // largest float rounds to infinity
  CHECK(bf(0x7F800000) == 0x7F80);
  CHECK(bf(0xFF800000) == 0xFF80);
  CHECK(bf(0x7FC00001) == 0x7FC0);
  CHECK(bf(0xFFC00000) == 0x7FC0);
  CHECK(bf(0x7F800001) == 0x7FC0);  // signalling NaN must not become infinity
  CHECK(bf(0x00008000) == 0x0000);  // subnormal tie, even
  CHECK(bf(0x00018000) == 0x0002);
  CHECK(bf(0x80000000) == 0x8000);
  // Every bfloat16 value survives a round trip through float32.
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_float(static_cast<uint16_t>(h));
    if (!std::isnan(f)) REQUIRE(float_to_bf16(f) == h);
  }
}

TEST_CASE("float32 to float16 is IEEE round to nearest even", "[numerics]") {
  CHECK(float_to_f16(1.0f) == 0x3C00);
  CHECK(float_to_f16(-2.0f) == 0xC000);
  CHECK(float_to_f16(65504.0f) == 0x7BFF);
  CHECK(float_to_f16(65519.99f) == 0x7BFF);
  CHECK(float_to_f16(65520.0f) == 0x7C00);  // the tie above the largest half rounds to infinity
  CHECK(float_to_f16(std::ldexp(1.0f, -14)) == 0x0400);
  CHECK(float_to_f16(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(float_to_f16(std::ldexp(1.0f, -25)) == 0x0000);         // tie to even (zero)
  CHECK(float_to_f16(std::ldexp(1.5f, -25)) == 0x0001);
  CHECK(float_to_f16(std::ldexp(3.0f, -25)) == 0x0002);         // 1.5 ulp: tie, to even
  CHECK(float_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);  // tie at 1 + half an ulp
  CHECK(float_to_f16(1.0f + std::ldexp(3.0f, -11)) == 0x3C02);
  CHECK(float_to_f16(-0.0f) == 0x8000);
  CHECK(float_to_f16(INFINITY) == 0x7C00);
  const uint16_t nan = float_to_f16(std::numeric_limits<float>::quiet_NaN());
  CHECK((nan & 0x7C00) == 0x7C00);
  CHECK((nan & 0x3FF) != 0);
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_float(static_cast<uint16_t>(h));
    if (!std::isnan(f)) REQUIRE(float_to_f16(f) == h);
  }
}

#if defined(__F16C__) || defined(__GNUC__)
__attribute__((target("f16c"))) static uint16_t hw_f16(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
TEST_CASE("scalar float16 rounding agrees with the F16C instruction", "[numerics]") {
  // CPUID directly: clang 14's __builtin_cpu_supports does not know "f16c".
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_F16C)) return;
  std::mt19937 rng(7);
  for (int i = 0; i < 2'000'000; ++i) {
    const uint32_t b = rng();
    const float f = bits_to_float(b);
    INFO("bits " << b);
    REQUIRE(float_to_f16(f) == hw_f16(f));
  }
}
#endif

namespace {

// The kernel contract written out element by element with the scalar reference.
template <typename T>
std::vector<T> expected_row(const std::vector<uint8_t>& src, const std::vector<float>& scales, size_t block,
                            size_t phase, Fp8 f, OutType o) {
  std::vector<T> out(src.size());
  for (size_t j = 0; j < src.size(); ++j) {
    const float v = fp8_to_float(src[j], f) * scales[(phase + j) / block];
    if constexpr (sizeof(T) == 4) out[j] = v;
    else out[j] = o == OutType::BF16 ? float_to_bf16(v) : float_to_f16(v);
  }
  return out;
}

template <typename T>
bool same_bits(const T& a, const T& b) {
  if constexpr (sizeof(T) == 4) {
    if (std::isnan(a) && std::isnan(b)) return true;
    return bits(a) == bits(b);
  } else {
    return a == b;
  }
}

template <typename T>
void check_kernel(const KernelTable& k, Fp8 f, OutType o) {
  const float scales_to_try[] = {1.0f, 0.5f, std::ldexp(1.0f, -10), 3.14159f, 1e-3f, 448.0f, 1e30f,
                                 e8m0_to_float(0), e8m0_to_float(255), -2.0f, 0.0f};
  std::vector<uint8_t> codes(256);
  for (int c = 0; c < 256; ++c) codes[c] = static_cast<uint8_t>(c);
  for (float s : scales_to_try) {
    const std::vector<float> scales(1, s);
    const auto want = expected_row<T>(codes, scales, 256, 0, f, o);
    std::vector<T> got(256);
    k.get(f, o)(codes.data(), 256, scales.data(), 256, 0, got.data());
    for (int c = 0; c < 256; ++c) {
      INFO("isa " << isa_name(k.isa) << " code " << c << " scale " << s);
      REQUIRE(same_bits(got[c], want[c]));
    }
  }
  // Blocks, phases and tails: every length up to 70, blocks of 1, 7, 32 and 128.
  std::mt19937 rng(11);
  for (size_t block : {size_t{1}, size_t{7}, size_t{32}, size_t{128}}) {
    for (size_t n = 0; n <= 70; ++n) {
      const size_t phase = block > 1 ? rng() % block : 0;
      std::vector<uint8_t> src(n);
      for (auto& b : src) b = static_cast<uint8_t>(rng());
      std::vector<float> scales((phase + n) / block + 2);
      for (auto& x : scales) x = std::ldexp(1.0f + (rng() % 100) / 100.0f, static_cast<int>(rng() % 20) - 10);
      const auto want = expected_row<T>(src, scales, block, phase, f, o);
      std::vector<T> got(n + 1, T{});
      const T sentinel = got[n];
      k.get(f, o)(src.data(), n, scales.data(), block, phase, got.data());
      for (size_t j = 0; j < n; ++j) {
        INFO("isa " << isa_name(k.isa) << " block " << block << " n " << n << " j " << j);
        REQUIRE(same_bits(got[j], want[j]));
      }
      REQUIRE(same_bits(got[n], sentinel));  // nothing written past the end
    }
  }
}

}  // namespace

TEST_CASE("every kernel ISA matches the scalar reference bit for bit", "[numerics][kernels]") {
  const auto isas = supported_isas();
  REQUIRE(!isas.empty());
  for (Isa isa : isas) {
    const KernelTable* k = kernels_for(isa);
    REQUIRE(k != nullptr);
    REQUIRE(k->isa == isa);
    for (Fp8 f : {Fp8::E4M3, Fp8::E5M2}) {
      check_kernel<uint16_t>(*k, f, OutType::BF16);
      check_kernel<uint16_t>(*k, f, OutType::F16);
      check_kernel<float>(*k, f, OutType::F32);
    }
  }
}

TEST_CASE("dequantization values computed by hand", "[numerics][kernels]") {
  const KernelTable& k = kernels();
  // 1.0 * 0.5 = 0.5 -> bf16 0x3F00; 448 * 2^-10 = 0.4375 -> 0x3EE0; -448 * 2^-7 (e8m0 120) = -3.5 -> 0xC060
  const uint8_t src[3] = {0x38, 0x7E, 0xFE};
  const float scales[3] = {0.5f, std::ldexp(1.0f, -10), e8m0_to_float(120)};
  uint16_t out[3];
  k.get(Fp8::E4M3, OutType::BF16)(src, 3, scales, 1, 0, out);
  CHECK(out[0] == 0x3F00);
  CHECK(out[1] == 0x3EE0);
  CHECK(out[2] == 0xC060);
  // 0x39 is 1.125; times 1/3 in float32 is 0.375000011920929 -> bf16 rounds to 0.375 = 0x3EC0.
  const uint8_t one_and_eighth = 0x39;
  const float third = 1.0f / 3.0f;
  k.get(Fp8::E4M3, OutType::BF16)(&one_and_eighth, 1, &third, 1, 0, out);
  CHECK(out[0] == 0x3EC0);
  // f16: 448 * 256 = 114688 overflows half -> +inf 0x7C00; NaN codes stay NaN.
  const float big = 256.0f;
  k.get(Fp8::E4M3, OutType::F16)(src + 1, 1, &big, 1, 0, out);
  CHECK(out[0] == 0x7C00);
  const uint8_t nan = 0x7F;
  k.get(Fp8::E4M3, OutType::BF16)(&nan, 1, scales, 1, 0, out);
  CHECK(out[0] == 0x7FC0);
  // An infinite scale (e8m0 255) times zero is NaN, as in torch.
  const uint8_t zero = 0x00;
  const float inf = e8m0_to_float(255);
  k.get(Fp8::E4M3, OutType::BF16)(&zero, 1, &inf, 1, 0, out);
  CHECK(out[0] == 0x7FC0);
}
