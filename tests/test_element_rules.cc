// The element rules the CUDA kernels run (transforms/element.h: mul, div and the roundings) against
// the CPU path itself, on this machine without a GPU: every FP8 code of both formats times every
// class of scale — normal, subnormal, zero, ±inf, NaNs of either sign and any payload — through
// each ISA's dequantization kernel to BF16, F16 and F32, and every class of value through each
// ISA's FP8 export kernel, bit for bit. The GPU tests (tests/cuda/) check the kernels against
// these same rules, so CPU and GPU agree on every input, NaN bits included — but one case: a NaN
// code under a NaN scale is a NaN whose bits depend on the operand order the compiler picked for
// an ISA's multiply (scalar and the GPU keep the code's; AVX2/AVX-512 builds here keep the
// scale's), so there only NaN-ness is checked. BF16 outputs canonicalise NaN and never differ.
#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "transforms/element.h"
#include "transforms/kernels.h"

using namespace ckpt;

namespace {

std::vector<float> special_floats() {
  std::vector<uint32_t> bits = {0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00800000, 0x3F800000, 0xBF800000,
                                0x3A800000, 0x43E00000, 0x4B000000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000,
                                0x7FC00000, 0xFFC00000, 0x7FC12345, 0xFF812345, 0x7F800001, 0xFFFFFFFF, 0x3EAAAAAB,
                                0x2E000000, 0x0F000000, 0x5F000000};
  std::vector<float> v;
  for (uint32_t b : bits) v.push_back(elem::u2f(b));
  return v;
}

uint32_t out_bits(DType out, float v) {
  return out == DType::BF16 ? elem::float_to_bf16(v) : out == DType::F16 ? elem::float_to_f16(v) : elem::f2u(v);
}

}  // namespace

TEST_CASE("the device's multiply is the CPU kernels' for every code and scale class", "[numerics][cuda-rules]") {
  const std::vector<float> scales = special_floats();
  std::vector<uint8_t> codes(256);
  for (int c = 0; c < 256; ++c) codes[c] = static_cast<uint8_t>(c);
  for (Isa isa : supported_isas())
    for (Fp8 f : {Fp8::E4M3, Fp8::E5M2})
      for (DType out : {DType::BF16, DType::F16, DType::F32}) {
        const OutType ot = out == DType::BF16 ? OutType::BF16 : out == DType::F16 ? OutType::F16 : OutType::F32;
        const DequantRowFn fn = kernels_for(isa)->get(f, ot);
        if (!fn) continue;  // F16 only where the ISA has it
        INFO(isa_name(isa) << " " << (f == Fp8::E4M3 ? "e4m3" : "e5m2") << " -> " << dtype_name(out));
        uint64_t bad = 0;
        for (float s : scales) {
          std::vector<uint8_t> dst(256 * 4);
          // One scale block over all 256 codes; twice, so that a table-lookup path meets the scale again.
          for (int pass = 0; pass < 2; ++pass) fn(codes.data(), 256, &s, 256, 0, dst.data());
          for (int c = 0; c < 256; ++c) {
            const float w = f == Fp8::E4M3 ? elem::e4m3_to_float(static_cast<uint8_t>(c))
                                           : elem::e5m2_to_float(static_cast<uint8_t>(c));
            uint32_t got = 0;
            std::memcpy(&got, dst.data() + c * dtype_size(out), dtype_size(out));
            const uint32_t want = out_bits(out, elem::mul(w, s));
            if (elem::is_nan(w) && elem::is_nan(s))
              bad += out == DType::F32 ? !elem::is_nan(elem::u2f(got)) : (got & 0x7FFF) <= 0x7C00;
            else
              bad += got != want;
          }
        }
        CHECK(bad == 0);
      }
}

TEST_CASE("the device's divide is the CPU export kernels' for every value and scale class", "[numerics][cuda-rules]") {
  const std::vector<float> specials = special_floats();
  std::vector<float> x = specials;
  for (int c = 0; c < 256; ++c) x.push_back(elem::e4m3_to_float(static_cast<uint8_t>(c)) * 1.37f);
  for (Isa isa : supported_isas()) {
    INFO(isa_name(isa));
    uint64_t bad = 0;
    for (float s : specials) {
      std::vector<uint8_t> codes(x.size());
      kernels_for(isa)->quantize(x.data(), x.size(), s, codes.data());
      for (size_t i = 0; i < x.size(); ++i) bad += codes[i] != elem::float_to_e4m3_saturate(elem::div(x[i], s));
    }
    CHECK(bad == 0);
  }
}
