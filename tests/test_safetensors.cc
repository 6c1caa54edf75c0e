// Tests of the safetensors reader (`parse_header`, `SafetensorsFile`) and of `Checkpoint::open`.
// Every input is a hand-written byte string; every rejection is checked for its kind
// (InvalidInput) and for the words of its one-line message (file, tensor, rule).
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "formats/checkpoint.h"
#include "formats/dtype.h"
#include "formats/error.h"
#include "formats/safetensors.h"
#include "tests/support.h"

using Catch::Matchers::Contains;
using ckpt::Error;
using ckpt::ErrorKind;
using ckpt::test::safetensors_bytes;
using ckpt::test::TempDir;
using ckpt::test::write_bytes;
namespace fs = std::filesystem;

namespace {

constexpr const char* kMemName = "mem.safetensors";

// The 8-byte little-endian encoding of `n`.
std::string le64(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out;
}

ckpt::Header parse_mem(const std::string& bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  return ckpt::parse_header(p, bytes.size(), bytes.size(), kMemName);
}

// Runs `f`, which must throw a ckpt::Error of `kind`; returns its message.
std::string error_message(const std::function<void()>& f,
                          ErrorKind kind = ErrorKind::InvalidInput) {
  try {
    f();
  } catch (const Error& e) {
    CHECK(static_cast<int>(e.kind()) == static_cast<int>(kind));
    const std::string msg = e.what();
    CHECK(msg.find('\n') == std::string::npos);  // one line
    return msg;
  }
  FAIL("expected a ckpt::Error, nothing was thrown");
  return {};
}

void check_words(const std::string& msg, const std::vector<std::string>& words) {
  INFO("message: " << msg);
  for (const auto& w : words) CHECK_THAT(msg, Contains(w));
}

// `bytes` must be rejected both in memory (parse_header) and from disk (SafetensorsFile), with
// InvalidInput and a message naming the file and holding every one of `words`.
void expect_rejected(const std::string& bytes, const std::vector<std::string>& words) {
  const std::string mem = error_message([&] { parse_mem(bytes); });
  CHECK_THAT(mem, Contains(kMemName));
  check_words(mem, words);

  TempDir dir;
  const fs::path p = dir / "bad.safetensors";
  write_bytes(p, bytes);
  const std::string disk = error_message([&] { ckpt::SafetensorsFile f(p); });
  CHECK_THAT(disk, Contains(p.string()));
  check_words(disk, words);
}

// A header with one tensor entry `w` whose body is `entry`, followed by `data_size` data bytes.
std::string one_tensor(const std::string& entry, size_t data_size) {
  return safetensors_bytes(R"({"w":)" + entry + "}", std::string(data_size, '\x01'));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Framing: the 8-byte length prefix and where the header lies in the file.

TEST_CASE("safetensors: a file shorter than 8 bytes is rejected", "[safetensors]") {
  expect_rejected(std::string("\x02\0\0\0\0", 5), {"too short", "(5 bytes)"});
}

TEST_CASE("safetensors: an empty file is rejected", "[safetensors]") {
  expect_rejected(std::string(), {"too short", "(0 bytes)"});
}

TEST_CASE("safetensors: a header length running past end of file is rejected", "[safetensors]") {
  // Claims 50 header bytes; the file has 8 + 2.
  expect_rejected(le64(50) + "{}", {"header length 50", "past the end of the file", "(10 bytes)"});
}

TEST_CASE("safetensors: a header length above 100,000,000 is rejected", "[safetensors]") {
  // Only the 8 length bytes: the limit must be checked before anything is read or allocated.
  expect_rejected(le64(100'000'001), {"header length 100000001", "exceeds the limit of 100000000"});
  expect_rejected(le64(~uint64_t{0}), {"header length 18446744073709551615", "exceeds the limit"});
}

TEST_CASE("safetensors: a parse_header buffer shorter than the header is rejected",
          "[safetensors]") {
  // file_size says the header is there, but only its first bytes are available.
  const std::string bytes = safetensors_bytes("{}", "");
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const std::string msg =
      error_message([&] { ckpt::parse_header(p, 9, bytes.size(), "partial.safetensors"); });
  check_words(msg, {"partial.safetensors", "not fully readable"});
}

// ---------------------------------------------------------------------------------------------
// The header text: a UTF-8 JSON object.

TEST_CASE("safetensors: a header not starting with '{' is rejected", "[safetensors]") {
  expect_rejected(safetensors_bytes(" {}", ""), {"does not start with a JSON object"});
  expect_rejected(safetensors_bytes("\"w\"", ""), {"does not start with a JSON object"});
  expect_rejected(safetensors_bytes("", ""), {"does not start with a JSON object"});
}

TEST_CASE("safetensors: invalid UTF-8 inside a JSON string is rejected", "[safetensors]") {
  const std::string header =
      "{\"w\xff\xfe\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
  expect_rejected(safetensors_bytes(header, "x"), {"not valid UTF-8"});
}

TEST_CASE("safetensors: invalid JSON is rejected", "[safetensors]") {
  expect_rejected(safetensors_bytes(R"({"w":})", ""), {"not valid JSON"});
  expect_rejected(safetensors_bytes(R"({"w":{"dtype":"U8")", ""), {"not valid JSON"});
  // Anything after the object other than the space padding.
  expect_rejected(safetensors_bytes(R"({} x)", ""), {"not valid JSON"});
}

TEST_CASE("safetensors: a header that is a JSON array is rejected", "[safetensors]") {
  expect_rejected(safetensors_bytes(R"([{"dtype":"U8"}])", ""), {"JSON object"});
}

// ---------------------------------------------------------------------------------------------
// __metadata__: an object of string -> string.

TEST_CASE("safetensors: __metadata__ that is not an object is rejected", "[safetensors]") {
  expect_rejected(safetensors_bytes(R"({"__metadata__":["pt"]})", ""),
                  {"__metadata__ must be an object", "got an array"});
  expect_rejected(safetensors_bytes(R"({"__metadata__":"pt"})", ""),
                  {"__metadata__ must be an object", "got a string"});
}

TEST_CASE("safetensors: __metadata__ with a non-string value is rejected", "[safetensors]") {
  expect_rejected(safetensors_bytes(R"({"__metadata__":{"format":"pt","step":7}})", ""),
                  {"__metadata__ value of 'step' must be a string", "got a number"});
  expect_rejected(safetensors_bytes(R"({"__metadata__":{"nested":{}}})", ""),
                  {"__metadata__ value of 'nested'", "got an object"});
}

TEST_CASE("safetensors: __metadata__ with a duplicate key is rejected", "[safetensors]") {
  expect_rejected(safetensors_bytes(R"({"__metadata__":{"k":"a","k":"b"}})", ""),
                  {"__metadata__ has duplicate key 'k'"});
}

// ---------------------------------------------------------------------------------------------
// Tensor entries: objects with exactly dtype, shape and data_offsets.

TEST_CASE("safetensors: a tensor entry that is not an object is rejected", "[safetensors]") {
  expect_rejected(safetensors_bytes(R"({"w":[1,2]})", ""),
                  {"tensor 'w'", "entry must be an object", "got an array"});
  expect_rejected(safetensors_bytes(R"({"w":null})", ""),
                  {"tensor 'w'", "entry must be an object", "got null"});
}

TEST_CASE("safetensors: a tensor entry missing a field is rejected", "[safetensors]") {
  SECTION("dtype") {
    expect_rejected(one_tensor(R"({"shape":[1],"data_offsets":[0,1]})", 1),
                    {"tensor 'w'", "missing field 'dtype'"});
  }
  SECTION("shape") {
    expect_rejected(one_tensor(R"({"dtype":"U8","data_offsets":[0,1]})", 1),
                    {"tensor 'w'", "missing field 'shape'"});
  }
  SECTION("data_offsets") {
    expect_rejected(one_tensor(R"({"dtype":"U8","shape":[1]})", 1),
                    {"tensor 'w'", "missing field 'data_offsets'"});
  }
}

TEST_CASE("safetensors: an unknown or repeated field is rejected", "[safetensors]") {
  expect_rejected(one_tensor(R"({"dtype":"U8","shape":[1],"data_offsets":[0,1],"offset":0})", 1),
                  {"tensor 'w'", "unexpected or repeated field 'offset'"});
  expect_rejected(one_tensor(R"({"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]})", 1),
                  {"tensor 'w'", "unexpected or repeated field 'dtype'"});
}

TEST_CASE("safetensors: an unknown dtype is rejected", "[safetensors]") {
  expect_rejected(one_tensor(R"({"dtype":"F7","shape":[1],"data_offsets":[0,1]})", 1),
                  {"tensor 'w'", "unknown dtype 'F7'"});
  // Names are case-sensitive.
  expect_rejected(one_tensor(R"({"dtype":"bf16","shape":[1],"data_offsets":[0,2]})", 2),
                  {"tensor 'w'", "unknown dtype 'bf16'"});
}

TEST_CASE("safetensors: a dtype that is not a string is rejected", "[safetensors]") {
  expect_rejected(one_tensor(R"({"dtype":4,"shape":[1],"data_offsets":[0,4]})", 4),
                  {"tensor 'w'", "dtype must be a string"});
}

// ---------------------------------------------------------------------------------------------
// shape: an array of non-negative integers.

TEST_CASE("safetensors: a negative dimension is rejected", "[safetensors]") {
  expect_rejected(one_tensor(R"({"dtype":"U8","shape":[2,-1],"data_offsets":[0,2]})", 2),
                  {"tensor 'w'", "shape has a negative value -1"});
}

TEST_CASE("safetensors: a non-integer dimension is rejected", "[safetensors]") {
  expect_rejected(one_tensor(R"({"dtype":"U8","shape":[1.5],"data_offsets":[0,1]})", 1),
                  {"tensor 'w'", "shape must hold non-negative integers", "1.5"});
  expect_rejected(one_tensor(R"({"dtype":"U8","shape":["2"],"data_offsets":[0,2]})", 2),
                  {"tensor 'w'", "shape must hold non-negative integers"});
}

TEST_CASE("safetensors: a shape that is not an array is rejected", "[safetensors]") {
  expect_rejected(one_tensor(R"({"dtype":"U8","shape":4,"data_offsets":[0,4]})", 4),
                  {"tensor 'w'", "shape must be an array", "got a number"});
}

// ---------------------------------------------------------------------------------------------
// data_offsets: two integers [begin, end] with begin <= end.

TEST_CASE("safetensors: data_offsets without exactly 2 values is rejected", "[safetensors]") {
  expect_rejected(one_tensor(R"({"dtype":"U8","shape":[1],"data_offsets":[1]})", 1),
                  {"tensor 'w'", "data_offsets must hold 2 integers, got 1"});
  expect_rejected(one_tensor(R"({"dtype":"U8","shape":[1],"data_offsets":[0,1,2]})", 1),
                  {"tensor 'w'", "data_offsets must hold 2 integers, got 3"});
  expect_rejected(one_tensor(R"({"dtype":"U8","shape":[1],"data_offsets":[0,-1]})", 1),
                  {"tensor 'w'", "data_offsets has a negative value -1"});
  expect_rejected(one_tensor(R"({"dtype":"U8","shape":[1],"data_offsets":"0,1"})", 1),
                  {"tensor 'w'", "data_offsets must be an array", "got a string"});
}

TEST_CASE("safetensors: data_offsets with end before begin is rejected", "[safetensors]") {
  expect_rejected(one_tensor(R"({"dtype":"U8","shape":[0],"data_offsets":[4,2]})", 4),
                  {"tensor 'w'", "data_offsets [4, 2] end before begin"});
}

// ---------------------------------------------------------------------------------------------
// Byte size: numel * element size, computed without overflow, must equal end - begin.

TEST_CASE("safetensors: a shape whose byte size overflows is rejected", "[safetensors]") {
  expect_rejected(
      one_tensor(R"({"dtype":"U8","shape":[4294967296,4294967296,16],"data_offsets":[0,0]})", 0),
      {"tensor 'w'", "byte size of shape [4294967296, 4294967296, 16] overflows"});
  // numel fits in 64 bits (2^62), numel * 8 bytes does not.
  expect_rejected(
      one_tensor(R"({"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]})", 0),
      {"tensor 'w'", "overflows"});
}

TEST_CASE("safetensors: a byte size different from end - begin is rejected", "[safetensors]") {
  expect_rejected(one_tensor(R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,20]})", 20),
                  {"tensor 'w'", "F32 [2, 3] needs 24 bytes but data_offsets [0, 20] hold 20"});
  expect_rejected(one_tensor(R"({"dtype":"BF16","shape":[3],"data_offsets":[0,8]})", 8),
                  {"tensor 'w'", "BF16 [3] needs 6 bytes", "hold 8"});
}

// ---------------------------------------------------------------------------------------------
// Layout: the tensors tile the data buffer from 0 to end of file, no gap, no overlap.

TEST_CASE("safetensors: a first tensor not at offset 0 is rejected", "[safetensors]") {
  expect_rejected(one_tensor(R"({"dtype":"U8","shape":[4],"data_offsets":[2,6]})", 6),
                  {"tensor 'w'", "data_offsets begin 2 leaves a gap (expected 0)"});
}

TEST_CASE("safetensors: two overlapping tensors are rejected", "[safetensors]") {
  const std::string h =
      R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
      R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})";
  expect_rejected(safetensors_bytes(h, std::string(6, 'x')),
                  {"tensor 'b'", "data_offsets begin 2 overlaps the previous tensor (expected 4)"});
}

TEST_CASE("safetensors: a gap between two tensors is rejected", "[safetensors]") {
  const std::string h =
      R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]},)"
      R"("a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
  expect_rejected(safetensors_bytes(h, std::string(8, 'x')),
                  {"tensor 'b'", "data_offsets begin 6 leaves a gap (expected 4)"});
}

TEST_CASE("safetensors: trailing bytes after the last tensor are rejected", "[safetensors]") {
  expect_rejected(one_tensor(R"({"dtype":"U8","shape":[4],"data_offsets":[0,4]})", 7),
                  {"data buffer holds 7 bytes but tensors cover 4 (3 trailing bytes)"});
  // No tensors at all, but data bytes.
  expect_rejected(safetensors_bytes("{}", "abc"),
                  {"data buffer holds 3 bytes but tensors cover 0 (3 trailing bytes)"});
}

TEST_CASE("safetensors: data_offsets past the end of the file are rejected", "[safetensors]") {
  const std::string bytes = one_tensor(R"({"dtype":"U8","shape":[8],"data_offsets":[0,8]})", 5);
  // The header text is 53 bytes, so the tensor would start at file offset 8 + 53.
  REQUIRE(bytes.size() == 8 + 53 + 5);
  expect_rejected(bytes, {"tensor 'w'", "data_offsets end 8 past the data buffer (5 bytes)",
                          "at file offset 61"});
}

TEST_CASE("safetensors: a duplicate tensor name is rejected", "[safetensors]") {
  const std::string h =
      R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
      R"("w":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})";
  expect_rejected(safetensors_bytes(h, "abcd"), {"duplicate tensor name 'w'"});
}

// ---------------------------------------------------------------------------------------------
// Valid files.

TEST_CASE("safetensors: a valid file with two tensors and metadata", "[safetensors]") {
  // Listed out of data order; padded with spaces to 160 bytes so the data starts at 168.
  std::string h =
      R"({"__metadata__":{"format":"pt","note":"hi"},)"
      R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},)"
      R"("a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}})";
  REQUIRE(h.size() < 160);
  h.append(160 - h.size(), ' ');
  const std::string data = "AAAAaaaaBBbb";
  const std::string bytes = safetensors_bytes(h, data);

  auto check = [](const ckpt::Header& hd) {
    CHECK(hd.data_start == 168);
    REQUIRE(hd.tensors.size() == 2);
    const auto& a = hd.tensors[0];
    const auto& b = hd.tensors[1];
    CHECK(a.name == "a");
    CHECK(a.dtype == ckpt::DType::F32);
    CHECK(a.shape == std::vector<uint64_t>{1, 2});
    CHECK(a.begin == 0);
    CHECK(a.end == 8);
    CHECK(a.numel() == 2);
    CHECK(a.nbytes() == 8);
    CHECK(b.name == "b");
    CHECK(b.dtype == ckpt::DType::BF16);
    CHECK(b.shape == std::vector<uint64_t>{2});
    CHECK(b.begin == 8);
    CHECK(b.end == 12);
    CHECK(b.numel() == 2);
    CHECK(hd.metadata == std::map<std::string, std::string>{{"format", "pt"}, {"note", "hi"}});
  };

  SECTION("parse_header in memory") { check(parse_mem(bytes)); }

  SECTION("SafetensorsFile on disk") {
    TempDir dir;
    const fs::path p = dir / "ok.safetensors";
    write_bytes(p, bytes);
    ckpt::SafetensorsFile f(p);
    check(f.header());
    CHECK(f.path().string() == p.string());
    CHECK(f.tensors().size() == 2);
    const ckpt::TensorInfo* a = f.find("a");
    const ckpt::TensorInfo* b = f.find("b");
    REQUIRE(a != nullptr);
    REQUIRE(b != nullptr);
    CHECK(f.find("c") == nullptr);
    CHECK(f.find("__metadata__") == nullptr);
    CHECK(a->name == "a");
    CHECK(f.file_offset(*a) == 168);
    CHECK(f.file_offset(*b) == 176);
    CHECK(std::string(reinterpret_cast<const char*>(f.data(*a)), 8) == "AAAAaaaa");
    CHECK(std::string(reinterpret_cast<const char*>(f.data(*b)), 4) == "BBbb");
  }
}

TEST_CASE("safetensors: a header of only '{}' is an empty, valid file", "[safetensors]") {
  const ckpt::Header hd = parse_mem(safetensors_bytes("{}", ""));
  CHECK(hd.data_start == 10);
  CHECK(hd.tensors.empty());
  CHECK(hd.metadata.empty());
}

TEST_CASE("safetensors: a header padded with trailing spaces is accepted", "[safetensors]") {
  const std::string h = R"({"w":{"dtype":"I16","shape":[3],"data_offsets":[0,6]}})"
                        "          ";  // 10 spaces
  const ckpt::Header hd = parse_mem(safetensors_bytes(h, "123456"));
  CHECK(hd.data_start == 8 + 54 + 10);
  REQUIRE(hd.tensors.size() == 1);
  CHECK(hd.tensors[0].name == "w");
  CHECK(hd.tensors[0].dtype == ckpt::DType::I16);
  CHECK(hd.tensors[0].end == 6);
}

TEST_CASE("safetensors: a zero-size tensor (shape [0]) is accepted", "[safetensors]") {
  // One empty tensor on its own, and one lying between two others at the same offset.
  SECTION("alone") {
    const ckpt::Header hd =
        parse_mem(one_tensor(R"({"dtype":"F32","shape":[0],"data_offsets":[0,0]})", 0));
    REQUIRE(hd.tensors.size() == 1);
    CHECK(hd.tensors[0].shape == std::vector<uint64_t>{0});
    CHECK(hd.tensors[0].numel() == 0);
    CHECK(hd.tensors[0].nbytes() == 0);
  }
  SECTION("between two tensors") {
    const std::string h =
        R"({"c":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
        R"("e":{"dtype":"F32","shape":[7,0],"data_offsets":[4,4]},)"
        R"("a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
    const ckpt::Header hd = parse_mem(safetensors_bytes(h, "abcdef"));
    REQUIRE(hd.tensors.size() == 3);
    CHECK(hd.tensors[0].name == "a");
    CHECK(hd.tensors[1].name == "e");
    CHECK(hd.tensors[1].begin == 4);
    CHECK(hd.tensors[1].end == 4);
    CHECK(hd.tensors[2].name == "c");
  }
}

TEST_CASE("safetensors: a 0-d scalar (shape []) is accepted", "[safetensors]") {
  const ckpt::Header hd =
      parse_mem(one_tensor(R"({"dtype":"F64","shape":[],"data_offsets":[0,8]})", 8));
  REQUIRE(hd.tensors.size() == 1);
  CHECK(hd.tensors[0].shape.empty());
  CHECK(hd.tensors[0].numel() == 1);
  CHECK(hd.tensors[0].nbytes() == 8);
  CHECK(ckpt::shape_str(hd.tensors[0].shape) == "[]");
  // A scalar still needs its element's bytes.
  expect_rejected(one_tensor(R"({"dtype":"F64","shape":[],"data_offsets":[0,4]})", 4),
                  {"tensor 'w'", "F64 [] needs 8 bytes"});
}

TEST_CASE("safetensors: every dtype name parses with its element size", "[safetensors]") {
  // Every dtype of the reference reader (SPEC §5): name, bits, and the bytes of 8 elements.
  struct Row {
    std::string name;
    unsigned bits;
    size_t bytes8;
  };
  const std::vector<Row> table = {
      {"BOOL", 8, 8},          {"U8", 8, 8},          {"I8", 8, 8},           {"U16", 16, 16},
      {"I16", 16, 16},         {"U32", 32, 32},       {"I32", 32, 32},        {"U64", 64, 64},
      {"I64", 64, 64},         {"F16", 16, 16},       {"BF16", 16, 16},       {"F32", 32, 32},
      {"F64", 64, 64},         {"F8_E4M3", 8, 8},     {"F8_E5M2", 8, 8},      {"F8_E8M0", 8, 8},
      {"F4", 4, 4},            {"F6_E2M3", 6, 6},     {"F6_E3M2", 6, 6},      {"F8_E4M3FNUZ", 8, 8},
      {"F8_E5M2FNUZ", 8, 8},   {"C64", 64, 64},
  };
  for (const auto& [name, bits, bytes8] : table) {
    INFO("dtype " << name);
    const std::string n = std::to_string(bytes8);
    const ckpt::Header hd = parse_mem(one_tensor(
        R"({"dtype":")" + name + R"(","shape":[2,4],"data_offsets":[0,)" + n + "]}", bytes8));
    REQUIRE(hd.tensors.size() == 1);
    CHECK(ckpt::dtype_name(hd.tensors[0].dtype) == name);
    CHECK(ckpt::dtype_bits(hd.tensors[0].dtype) == bits);
    if (bits % 8 == 0) CHECK(ckpt::dtype_size(hd.tensors[0].dtype) == bits / 8);
    CHECK(hd.tensors[0].nbytes() == bytes8);
    REQUIRE(ckpt::parse_dtype(name).has_value());
    CHECK(*ckpt::parse_dtype(name) == hd.tensors[0].dtype);
  }
  CHECK_FALSE(ckpt::parse_dtype("F8_E4M3FN").has_value());
  CHECK_FALSE(ckpt::parse_dtype("F4_E2M1").has_value());
  CHECK_FALSE(ckpt::parse_dtype("C128").has_value());
  CHECK_FALSE(ckpt::parse_dtype("").has_value());
}

TEST_CASE("safetensors: sub-byte elements that do not fill whole bytes are rejected", "[safetensors]") {
  // The reference reader's rule: elements × bits must be a multiple of 8.
  expect_rejected(one_tensor(R"({"dtype":"F4","shape":[3],"data_offsets":[0,2]})", 2),
                  {"tensor 'w'", "F4 [3] is 3 elements of 4 bits", "do not fill whole bytes"});
  expect_rejected(one_tensor(R"({"dtype":"F6_E2M3","shape":[2,3],"data_offsets":[0,5]})", 5),
                  {"tensor 'w'", "F6_E2M3 [2, 3] is 6 elements of 6 bits"});
  // Whole bytes, wrong count: 6 F4 elements are 3 bytes.
  expect_rejected(one_tensor(R"({"dtype":"F4","shape":[6],"data_offsets":[0,6]})", 6),
                  {"tensor 'w'", "F4 [6] needs 3 bytes"});
}

TEST_CASE("safetensors: shape_str and checked arithmetic", "[safetensors]") {
  CHECK(ckpt::shape_str({128, 7168}) == "[128, 7168]");
  CHECK(ckpt::shape_str({5}) == "[5]");
  uint64_t out = 0;
  CHECK(ckpt::checked_numel({3, 4, 5}, out));
  CHECK(out == 60);
  CHECK_FALSE(ckpt::checked_numel({uint64_t{1} << 32, uint64_t{1} << 32}, out));
  CHECK(ckpt::checked_mul(uint64_t{1} << 31, 4, out));
  CHECK(out == uint64_t{1} << 33);
  CHECK_FALSE(ckpt::checked_mul(~uint64_t{0}, 2, out));
}

// ---------------------------------------------------------------------------------------------
// Checkpoint::open: single files, sharded directories, the index and config.json.

namespace {

// A valid safetensors file holding U8 tensors of the given names and sizes, back to back.
std::string u8_shard(const std::vector<std::pair<std::string, size_t>>& tensors) {
  std::string h = "{";
  std::string data;
  for (const auto& [name, size] : tensors) {
    if (h.size() > 1) h += ',';
    h += "\"" + name + R"(":{"dtype":"U8","shape":[)" + std::to_string(size) +
         R"(],"data_offsets":[)" + std::to_string(data.size()) + "," +
         std::to_string(data.size() + size) + "]}";
    data.append(size, name[0]);
  }
  return safetensors_bytes(h + "}", data);
}

constexpr const char* kShard1 = "model-00001-of-00002.safetensors";
constexpr const char* kShard2 = "model-00002-of-00002.safetensors";

// Two shards: a (4 bytes) and b (2 bytes) in the first, c (3 bytes) in the second.
void write_two_shards(const TempDir& dir) {
  write_bytes(dir / kShard1, u8_shard({{"a", 4}, {"b", 2}}));
  write_bytes(dir / kShard2, u8_shard({{"c", 3}}));
}

void write_index(const TempDir& dir, const std::string& weight_map) {
  write_bytes(dir / ckpt::kIndexName,
              R"({"metadata":{"total_size":9},"weight_map":)" + weight_map + "}");
}

}  // namespace

TEST_CASE("checkpoint: a directory with two shards and an index", "[checkpoint]") {
  TempDir dir;
  write_two_shards(dir);
  write_index(dir, std::string(R"({"a":")") + kShard1 + R"(","b":")" + kShard1 + R"(","c":")" +
                       kShard2 + R"("})");
  write_bytes(dir / "config.json", R"({"model_type":"toy","hidden_size":8})");

  const ckpt::Checkpoint c = ckpt::Checkpoint::open(dir.path());
  CHECK(c.dir().string() == dir.path().string());
  REQUIRE(c.files().size() == 2);
  CHECK(c.files()[0]->path().filename().string() == kShard1);
  CHECK(c.files()[1]->path().filename().string() == kShard2);
  REQUIRE(c.tensors().size() == 3);
  CHECK(c.tensors()[0].name() == "a");
  CHECK(c.tensors()[1].name() == "b");
  CHECK(c.tensors()[2].name() == "c");
  CHECK(c.total_tensor_bytes() == 9);

  const ckpt::TensorRef* r = c.find("c");
  REQUIRE(r != nullptr);
  CHECK(r->file->path().filename().string() == kShard2);
  CHECK(r->info->nbytes() == 3);
  const ckpt::TensorRef* b = c.find("b");
  REQUIRE(b != nullptr);
  CHECK(b->file->path().filename().string() == kShard1);
  CHECK(b->info->begin == 4);
  CHECK(c.find("d") == nullptr);

  REQUIRE(c.config().has_value());
  CHECK((*c.config())["model_type"] == "toy");
  CHECK(c.config()->begin().key() == "model_type");  // order kept
}

TEST_CASE("checkpoint: a directory of shards without an index", "[checkpoint]") {
  TempDir dir;
  write_two_shards(dir);
  write_bytes(dir / ".hidden.safetensors", "not even a header");  // hidden files are skipped
  const ckpt::Checkpoint c = ckpt::Checkpoint::open(dir.path());
  CHECK(c.files().size() == 2);
  CHECK(c.tensors().size() == 3);
  CHECK(c.find("a") != nullptr);
  CHECK_FALSE(c.config().has_value());
}

TEST_CASE("checkpoint: an index naming a shard that does not exist", "[checkpoint]") {
  TempDir dir;
  write_bytes(dir / kShard1, u8_shard({{"a", 4}}));
  write_index(dir, std::string(R"({"a":")") + kShard1 + R"(","c":")" + kShard2 + R"("})");
  const std::string msg = error_message([&] { ckpt::Checkpoint::open(dir.path()); });
  check_words(msg, {(dir / ckpt::kIndexName).string(), std::string("lists shard '") + kShard2 + "'",
                    "does not exist"});
}

TEST_CASE("checkpoint: an index mapping a tensor to a shard that lacks it", "[checkpoint]") {
  TempDir dir;
  write_two_shards(dir);
  // b lives in the first shard, the index says the second.
  write_index(dir, std::string(R"({"a":")") + kShard1 + R"(","b":")" + kShard2 + R"(","c":")" +
                       kShard2 + R"("})");
  const std::string msg = error_message([&] { ckpt::Checkpoint::open(dir.path()); });
  check_words(msg, {ckpt::kIndexName, std::string("puts 'b' in ") + kShard2,
                    "whose header has no such tensor"});
}

TEST_CASE("checkpoint: a shard tensor missing from the weight_map", "[checkpoint]") {
  TempDir dir;
  write_two_shards(dir);
  write_index(dir, std::string(R"({"a":")") + kShard1 + R"(","c":")" + kShard2 + R"("})");
  const std::string msg = error_message([&] { ckpt::Checkpoint::open(dir.path()); });
  check_words(msg, {ckpt::kIndexName, std::string("tensor 'b' of ") + kShard1,
                    "missing from the weight_map"});
}

TEST_CASE("checkpoint: the same tensor in two shards of a directory without an index",
          "[checkpoint]") {
  TempDir dir;
  write_bytes(dir / kShard1, u8_shard({{"a", 4}, {"x", 2}}));
  write_bytes(dir / kShard2, u8_shard({{"x", 2}}));
  const std::string msg = error_message([&] { ckpt::Checkpoint::open(dir.path()); });
  check_words(msg, {(dir / kShard2).string(), "tensor 'x' also appears in",
                    (dir / kShard1).string()});
}

TEST_CASE("checkpoint: an index entry whose path has a directory part", "[checkpoint]") {
  TempDir dir;
  fs::create_directory(dir / "sub");
  write_bytes(dir / "sub" / kShard1, u8_shard({{"a", 4}}));
  write_index(dir, std::string(R"({"a":"sub/)") + kShard1 + R"("})");
  const std::string msg = error_message([&] { ckpt::Checkpoint::open(dir.path()); });
  check_words(msg, {ckpt::kIndexName, "entry 'a'", std::string("names 'sub/") + kShard1 + "'",
                    "not a file beside the index"});

  write_index(dir, R"({"a":".."})");
  check_words(error_message([&] { ckpt::Checkpoint::open(dir.path()); }),
              {"entry 'a' names '..'", "not a file beside the index"});
}

TEST_CASE("checkpoint: a malformed index", "[checkpoint]") {
  TempDir dir;
  write_two_shards(dir);
  SECTION("not JSON") {
    write_bytes(dir / ckpt::kIndexName, R"({"weight_map":)");
    check_words(error_message([&] { ckpt::Checkpoint::open(dir.path()); }),
                {ckpt::kIndexName, "not valid JSON"});
  }
  SECTION("no weight_map") {
    write_bytes(dir / ckpt::kIndexName, R"({"metadata":{}})");
    check_words(error_message([&] { ckpt::Checkpoint::open(dir.path()); }),
                {ckpt::kIndexName, "missing \"weight_map\" object"});
  }
  SECTION("a tensor listed twice") {
    write_index(dir, std::string(R"({"a":")") + kShard1 + R"(","a":")" + kShard1 + R"("})");
    check_words(error_message([&] { ckpt::Checkpoint::open(dir.path()); }),
                {ckpt::kIndexName, "weight_map lists tensor 'a' twice"});
  }
  SECTION("an empty weight_map") {
    write_index(dir, "{}");
    check_words(error_message([&] { ckpt::Checkpoint::open(dir.path()); }),
                {ckpt::kIndexName, "weight_map lists no tensors"});
  }
  SECTION("a non-string entry") {
    write_index(dir, R"({"a":1})");
    check_words(error_message([&] { ckpt::Checkpoint::open(dir.path()); }),
                {ckpt::kIndexName, "weight_map entry 'a' is not a string"});
  }
}

TEST_CASE("checkpoint: a directory with no .safetensors file", "[checkpoint]") {
  TempDir dir;
  write_bytes(dir / "model.bin", "pickle");
  const std::string msg = error_message([&] { ckpt::Checkpoint::open(dir.path()); });
  check_words(msg, {dir.path().string(), "no .safetensors files found"});
}

TEST_CASE("checkpoint: a malformed config.json", "[checkpoint]") {
  TempDir dir;
  write_bytes(dir / "model.safetensors", u8_shard({{"a", 4}}));
  SECTION("not JSON") {
    write_bytes(dir / "config.json", R"({"model_type": )");
    check_words(error_message([&] { ckpt::Checkpoint::open(dir.path()); }),
                {(dir / "config.json").string(), "not valid JSON"});
  }
  SECTION("not an object") {
    write_bytes(dir / "config.json", R"(["model_type"])");
    check_words(error_message([&] { ckpt::Checkpoint::open(dir.path()); }),
                {(dir / "config.json").string(), "not a JSON object"});
  }
}

TEST_CASE("checkpoint: a single-file path", "[checkpoint]") {
  TempDir dir;
  const fs::path p = dir / "weights.safetensors";
  write_bytes(p, u8_shard({{"a", 4}, {"b", 2}}));
  write_bytes(dir / "config.json", R"({"model_type":"toy"})");
  write_bytes(dir / "tokenizer.json", "{}");

  const ckpt::Checkpoint c = ckpt::Checkpoint::open(p);
  CHECK(c.dir().string() == dir.path().string());
  REQUIRE(c.files().size() == 1);
  CHECK(c.files()[0]->path().string() == p.string());
  REQUIRE(c.tensors().size() == 2);
  CHECK(c.tensors()[0].name() == "a");
  CHECK(c.tensors()[1].name() == "b");
  CHECK(c.total_tensor_bytes() == 6);
  REQUIRE(c.config().has_value());
  CHECK((*c.config())["model_type"] == "toy");
  CHECK(c.side_files().empty());  // a lone file's neighbours are not copied
}

TEST_CASE("checkpoint: errors in a shard and missing paths", "[checkpoint]") {
  TempDir dir;
  SECTION("a bad shard in a directory names the shard") {
    write_bytes(dir / "model.safetensors",
                one_tensor(R"({"dtype":"F7","shape":[1],"data_offsets":[0,1]})", 1));
    check_words(error_message([&] { ckpt::Checkpoint::open(dir.path()); }),
                {(dir / "model.safetensors").string(), "tensor 'w'", "unknown dtype 'F7'"});
  }
  SECTION("a path that does not exist is an I/O error") {
    const std::string msg =
        error_message([&] { ckpt::Checkpoint::open(dir / "nope"); }, ErrorKind::Io);
    check_words(msg, {(dir / "nope").string(), "no such file or directory"});
  }
}
