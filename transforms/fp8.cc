#include "transforms/fp8.h"

#include <cmath>
#include <limits>

namespace ckpt {

float fp8_to_float(uint8_t code, Fp8 format) {
  const bool neg = code & 0x80;
  const uint32_t mag = code & 0x7F;
  float v;
  if (format == Fp8::E4M3) {
    const uint32_t e = mag >> 3, m = mag & 7;
    if (mag == 0x7F) v = std::numeric_limits<float>::quiet_NaN();  // the sign is kept below
    else
      v = e == 0 ? std::ldexp(static_cast<float>(m), -9)
                 : std::ldexp(1.0f + static_cast<float>(m) / 8.0f, static_cast<int>(e) - 7);
  } else {
    const uint32_t e = mag >> 2, m = mag & 3;
    if (e == 31) {
      v = m != 0 ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
    } else {
      v = e == 0 ? std::ldexp(static_cast<float>(m), -16)
                 : std::ldexp(1.0f + static_cast<float>(m) / 4.0f, static_cast<int>(e) - 15);
    }
  }
  return neg ? -v : v;
}

float e8m0_to_float(uint8_t e) {
  // 2^-127 is a float32 subnormal; every other exponent is a plain bit pattern (255 -> +inf).
  return e == 0 ? bits_to_float(0x00400000u) : bits_to_float(static_cast<uint32_t>(e) << 23);
}

uint16_t float_to_f16(float f) {
  const uint32_t b = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((b >> 16) & 0x8000u);
  const uint32_t abs = b & 0x7FFFFFFFu;
  if (abs > 0x7F800000u)  // NaN: quiet it, keep the payload's top bits, as F16C does
    return static_cast<uint16_t>(sign | 0x7E00u | ((abs >> 13) & 0x3FFu));
  if (abs >= 0x477FF000u) return sign | 0x7C00u;  // rounds to or past 65520: infinity
  const int32_t exp = static_cast<int32_t>(abs >> 23) - 127;
  if (exp >= -14) {  // normal half
    const uint32_t r = abs + 0xFFFu + ((abs >> 13) & 1u) - (112u << 23);
    return sign | static_cast<uint16_t>(r >> 13);
  }
  if (exp < -25) return sign;  // below half the smallest subnormal
  // Subnormal half: shift the full significand and round to nearest even.
  const uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u;
  const int shift = -exp - 14 + 13;  // 14..24
  const uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  const uint32_t rounded = q + ((rem > half || (rem == half && (q & 1))) ? 1 : 0);
  return sign | static_cast<uint16_t>(rounded);
}

float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1F, m = h & 0x3FF;
  if (e == 0x1F) return bits_to_float(sign | 0x7F800000u | (m << 13));
  if (e == 0) {
    const float v = std::ldexp(static_cast<float>(m), -24);
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((e + 112) << 23) | (m << 13));
}

}  // namespace ckpt
