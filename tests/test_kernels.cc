// The table path of the 16-bit dequantization kernels: a scale's 256 finished outputs, built the
// second time a thread meets that scale and looked up from then on (on AVX2 through a fitted
// model, or element by element when the model does not hold). Every output is checked against the
// scalar definition — fp8_to_float(code) * scale rounded by float_to_bf16 / float_to_f16 — on the
// first call (arithmetic path), the second (table built) and the third (table reused), for scales
// chosen to produce subnormal, overflowing and NaN outputs, ragged lengths, phases and blocks,
// more distinct scales than a thread's cache holds, and several threads at once.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "transforms/fp8.h"
#include "transforms/kernels.h"

using namespace ckpt;

namespace {

uint16_t reference(uint8_t code, float scale, Fp8 f, OutType o) {
  const float v = fp8_to_float(code, f) * scale;
  return o == OutType::BF16 ? float_to_bf16(v) : float_to_f16(v);
}

// NaN times NaN may return either operand (IEEE leaves it open, and compilers commute the
// multiply), so with a NaN scale an F16 NaN code may come out as either signed NaN.
bool matches(uint16_t got, uint8_t code, float scale, Fp8 f, OutType o) {
  if (o == OutType::F16 && std::isnan(scale) && std::isnan(fp8_to_float(code, f)))
    return (got & 0x7C00) == 0x7C00 && (got & 0x3FF) != 0;
  return got == reference(code, scale, f, o);
}

// Converts `src` under scales[(phase + j) / block] and checks every element and the element
// after the last one, which must stay untouched. Returns the number of mismatches.
size_t run_and_count_errors(const KernelTable& k, Fp8 f, OutType o, const std::vector<uint8_t>& src,
                            const std::vector<float>& scales, size_t block, size_t phase) {
  std::vector<uint16_t> got(src.size() + 1, 0xABCD);
  k.get(f, o)(src.data(), src.size(), scales.data(), block, phase, got.data());
  size_t bad = got[src.size()] != 0xABCD;
  for (size_t j = 0; j < src.size(); ++j) {
    const float s = scales[(phase + j) / block];
    if (!matches(got[j], src[j], s, f, o)) {
      if (bad < 3)
        UNSCOPED_INFO("isa " << isa_name(k.isa) << " code " << int(src[j]) << " scale " << s << " (bits "
                             << float_to_bits(s) << ") got " << got[j] << " want " << reference(src[j], s, f, o));
      ++bad;
    }
  }
  return bad;
}

std::vector<const KernelTable*> all_kernels() {
  std::vector<const KernelTable*> out;
  for (Isa isa : supported_isas()) out.push_back(kernels_for(isa));
  return out;
}

constexpr Fp8 kFormats[] = {Fp8::E4M3, Fp8::E5M2};
constexpr OutType kOut16[] = {OutType::BF16, OutType::F16};

// Scales whose products cover every case a table or the AVX2 model must reproduce: exact powers
// of two (MXFP8), DeepSeek-like block scales whose small products are F16 subnormals (1 to 4 and
// more classes of direct lookups), F16 overflow from 65504 / 448 up, bf16 overflow, products
// that are float32 subnormals, and zero, negative, infinite and NaN scales.
std::vector<float> edge_scales() {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> s = {1.0f, 0.5f, 3.14159f, 1e-3f, 0.0123f, 448.0f, 146.0f, 146.3f, 147.0f, 256.0f, 1e30f,
                          1e36f, 3e38f, std::numeric_limits<float>::max(), std::numeric_limits<float>::min(),
                          1e-40f, std::numeric_limits<float>::denorm_min(), e8m0_to_float(0), e8m0_to_float(127),
                          e8m0_to_float(255), -2.0f, -0.0123f, 0.0f, -0.0f, inf, -inf,
                          std::numeric_limits<float>::quiet_NaN()};
  for (int e = -40; e <= 40; e += 3) s.push_back(std::ldexp(1.0f, e));
  std::mt19937 rng(5);
  for (int i = 0; i < 40; ++i)
    s.push_back(std::ldexp(1.0f + static_cast<float>(rng() % 1000) / 1000.0f, -static_cast<int>(rng() % 12) - 6));
  return s;
}

}  // namespace

TEST_CASE("16-bit kernels: tables reproduce every code under every kind of scale", "[kernels][tables]") {
  std::vector<uint8_t> sorted(256), shuffled(256);
  for (int c = 0; c < 256; ++c) sorted[c] = shuffled[c] = static_cast<uint8_t>(c);
  std::shuffle(shuffled.begin(), shuffled.end(), std::mt19937(3));
  for (const KernelTable* k : all_kernels())
    for (Fp8 f : kFormats)
      for (OutType o : kOut16)
        for (float s : edge_scales()) {
          const std::vector<float> scales(1, s);
          // Call 1 may convert arithmetically, call 2 builds the table, 3 and 4 reuse it.
          for (int call = 0; call < 4; ++call) {
            INFO("isa " << isa_name(k->isa) << " fp8 " << int(f) << " out " << int(o) << " scale " << s << " call "
                        << call);
            REQUIRE(run_and_count_errors(*k, f, o, call % 2 ? shuffled : sorted, scales, 256, 0) == 0);
          }
        }
}

TEST_CASE("16-bit kernels: ragged rows, phases and blocks through tables", "[kernels][tables]") {
  std::mt19937 rng(17);
  // A small pool of scales, so that every one recurs and is served from a table after its first use.
  std::vector<float> pool;
  for (int i = 0; i < 6; ++i) pool.push_back(std::ldexp(1.0f + static_cast<float>(rng() % 100) / 100.0f, -9 - i));
  for (const KernelTable* k : all_kernels())
    for (Fp8 f : kFormats)
      for (OutType o : kOut16)
        for (size_t block : {size_t{1}, size_t{7}, size_t{32}, size_t{128}, size_t{4096}})
          for (size_t n : {size_t{1}, size_t{2}, size_t{15}, size_t{16}, size_t{17}, size_t{31}, size_t{33},
                           size_t{63}, size_t{64}, size_t{65}, size_t{100}, size_t{127}, size_t{128}, size_t{129},
                           size_t{255}, size_t{257}, size_t{300}, size_t{1000}}) {
            const size_t phase = rng() % block;
            std::vector<uint8_t> src(n);
            for (auto& b : src) b = static_cast<uint8_t>(rng());
            std::vector<float> scales((phase + n) / block + 1);
            for (auto& x : scales) x = pool[rng() % pool.size()];
            for (int call = 0; call < 3; ++call) {
              INFO("isa " << isa_name(k->isa) << " block " << block << " n " << n << " phase " << phase << " call "
                          << call);
              REQUIRE(run_and_count_errors(*k, f, o, src, scales, block, phase) == 0);
            }
          }
}

TEST_CASE("16-bit kernels: more distinct scales than a thread's cache holds", "[kernels][tables]") {
  // 3000 scales, one per element: every pass evicts tables built in the one before, and a table
  // returned for the wrong key (one that held the same way earlier) shows as wrong values. The
  // row shifts by one code each pass, so each scale meets a different code.
  std::mt19937 rng(23);
  std::vector<uint8_t> src(3000);
  for (auto& b : src) b = static_cast<uint8_t>(rng());
  std::vector<float> scales(src.size());
  for (size_t i = 0; i < scales.size(); ++i) scales[i] = std::ldexp(1.0f + static_cast<float>(i) / 4096.0f, -10);
  for (const KernelTable* k : all_kernels())
    for (Fp8 f : kFormats)
      for (OutType o : kOut16)
        for (int pass = 0; pass < 3; ++pass) {
          std::rotate(src.begin(), src.begin() + 1, src.end());
          INFO("isa " << isa_name(k->isa) << " pass " << pass);
          REQUIRE(run_and_count_errors(*k, f, o, src, scales, 1, 0) == 0);
          // A band's worth of rows under a few of those scales: these hit tables.
          const std::vector<float> few(scales.begin() + 100 * pass, scales.begin() + 100 * pass + 24);
          for (int row = 0; row < 3; ++row)
            REQUIRE(run_and_count_errors(*k, f, o, src, few, 128, 0) == 0);
        }
}

TEST_CASE("16-bit kernels: threads keep their own tables", "[kernels][tables]") {
  const auto kernels = all_kernels();
  std::vector<size_t> errors(4, 0);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < errors.size(); ++t)
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(100 + t));
      std::vector<uint8_t> src(4096);
      for (auto& b : src) b = static_cast<uint8_t>(rng());
      // Each thread's scales differ from the others' in the last bits only.
      std::vector<float> scales(32);
      for (size_t i = 0; i < scales.size(); ++i)
        scales[i] = std::ldexp(1.0f + static_cast<float>(i * 4 + t) / 256.0f, -11);
      for (int row = 0; row < 20; ++row)
        for (const KernelTable* k : kernels)
          for (OutType o : kOut16) {
            std::vector<uint16_t> got(src.size());
            k->get(Fp8::E4M3, o)(src.data(), src.size(), scales.data(), 128, 0, got.data());
            for (size_t j = 0; j < src.size(); ++j)
              errors[t] += got[j] != reference(src[j], scales[j / 128], Fp8::E4M3, o);
          }
    });
  for (auto& th : threads) th.join();
  for (size_t t = 0; t < errors.size(); ++t) {
    INFO("thread " << t);
    CHECK(errors[t] == 0);
  }
}

namespace {

// Runs the rows kernel: `rows` rows `ss` (source) and `ds` (destination) elements apart under one
// row of scales. Returns the elements that differ from the scalar definition, and the padding
// elements between destination rows that were touched.
template <typename T>
size_t rows_errors(const KernelTable& k, Fp8 f, OutType o, const std::vector<uint8_t>& src, size_t ss, size_t rows,
                   size_t n, const std::vector<float>& scales, size_t block, size_t phase, size_t ds) {
  const T pad = static_cast<T>(0xABCD);
  std::vector<T> got(rows * ds, pad);
  k.get_rows(f, o)(src.data(), ss, rows, n, scales.data(), block, phase, got.data(), ds);
  size_t bad = 0;
  for (size_t r = 0; r < rows; ++r)
    for (size_t j = 0; j < ds; ++j) {
      const T g = got[r * ds + j];
      if (j >= n) {
        bad += g != pad;
        continue;
      }
      const uint8_t code = src[r * ss + j];
      const float s = scales[(phase + j) / block];
      if constexpr (sizeof(T) == 2) {
        bad += !matches(g, code, s, f, o);
      } else {
        const float want = fp8_to_float(code, f) * s;
        bad += float_to_bits(g) != float_to_bits(want) && !(std::isnan(g) && std::isnan(want));
      }
    }
  return bad;
}

}  // namespace

// The rows kernels (the group node's tiles) against the scalar definition for every output type,
// on ragged widths, phases and blocks, block-size overrides among them. Rows long enough build
// their tables at once (eagerly), short ones on the second call; padding stays untouched.
TEST_CASE("rows kernels: rows sharing scales, every output type, ragged shapes", "[kernels][tables][rows]") {
  std::mt19937 rng(29);
  std::vector<float> pool;
  for (int i = 0; i < 5; ++i) pool.push_back(std::ldexp(1.0f + static_cast<float>(rng() % 100) / 100.0f, -8 - i));
  for (const KernelTable* k : all_kernels())
    for (Fp8 f : kFormats)
      for (OutType o : {OutType::BF16, OutType::F16, OutType::F32})
        for (size_t block : {size_t{32}, size_t{100}, size_t{128}})
          for (size_t rows : {size_t{1}, size_t{3}, size_t{32}})
            for (size_t n : {size_t{1}, size_t{17}, size_t{64}, size_t{100}, size_t{128}, size_t{129}, size_t{300}}) {
              const size_t phase = rng() % block, ss = n + rng() % 5, ds = n + 3;
              std::vector<uint8_t> src(rows * ss);
              for (auto& b : src) b = static_cast<uint8_t>(rng());
              std::vector<float> scales((phase + n) / block + 1);
              for (auto& x : scales) x = pool[rng() % pool.size()];
              for (int call = 0; call < 2; ++call) {
                INFO("isa " << isa_name(k->isa) << " out " << int(o) << " block " << block << " rows " << rows << " n "
                            << n << " phase " << phase << " call " << call);
                const size_t bad = o == OutType::F32
                                       ? rows_errors<float>(*k, f, o, src, ss, rows, n, scales, block, phase, ds)
                                       : rows_errors<uint16_t>(*k, f, o, src, ss, rows, n, scales, block, phase, ds);
                REQUIRE(bad == 0);
              }
            }
}
