// Tests of the safetensors writer: shard layout, shard names, ShardWriter's temporary-file
// protocol, write_file_atomic and the index JSON. Expected sizes and offsets are worked out by
// hand in the comments next to them.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "formats/error.h"
#include "formats/safetensors.h"
#include "formats/writer.h"
#include "tests/support.h"

using Catch::Matchers::Contains;
using ckpt::DType;
using ckpt::OutTensor;
using ckpt::test::read_bytes;
using ckpt::test::TempDir;
using ckpt::test::write_bytes;
namespace fs = std::filesystem;

namespace {

// The names of the entries of `dir`, hidden ones included, sorted.
std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

uint64_t read_le64(const std::string& s) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(s[i]);
  return n;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// layout_shard: header text with "__metadata__":{"format":"pt"}, space-padded so 8 + len is a
// multiple of 8; tensors back to back in the order given.

TEST_CASE("writer: layout_shard of two tensors", "[writer]") {
  const ckpt::ShardLayout l = ckpt::layout_shard(
      "model.safetensors", {{"a", DType::F32, {2, 3}}, {"bias", DType::BF16, {5}}});
  // a: 2*3*4 = 24 bytes at [0, 24); bias: 5*2 = 10 bytes at [24, 34).
  const std::string json =
      R"({"__metadata__":{"format":"pt"},)"
      R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("bias":{"dtype":"BF16","shape":[5],"data_offsets":[24,34]}})";
  // The JSON is 147 bytes; 8 + 147 = 155, so 5 spaces bring the header to 152 and the data
  // to 160.
  CHECK(json.size() == 147);
  CHECK(l.header == json + "     ");
  CHECK(l.header.size() == 152);
  CHECK(l.data_start == 160);
  CHECK(l.data_start % 8 == 0);
  CHECK(l.offsets == std::vector<uint64_t>{160, 184});
  CHECK(l.file_size == 194);
  CHECK(l.file_name == "model.safetensors");
  REQUIRE(l.tensors.size() == 2);
  CHECK(l.tensors[0].nbytes() == 24);
  CHECK(l.tensors[1].nbytes() == 10);
  CHECK_THAT(l.header, Contains(R"("__metadata__":{"format":"pt"})"));

  // The header is one the reader accepts, with the same offsets.
  const std::string bytes = ckpt::test::safetensors_bytes(l.header, std::string(34, '\0'));
  CHECK(bytes.size() == l.file_size);
  const ckpt::Header h = ckpt::parse_header(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            bytes.size(), bytes.size(), "layout");
  CHECK(h.data_start == 160);
  REQUIRE(h.tensors.size() == 2);
  CHECK(h.tensors[1].name == "bias");
  CHECK(h.tensors[1].begin == 24);
  CHECK(h.metadata.at("format") == "pt");
}

TEST_CASE("writer: layout_shard of a scalar and of no tensors", "[writer]") {
  SECTION("a 0-d scalar") {
    const ckpt::ShardLayout l = ckpt::layout_shard("s.safetensors", {{"s", DType::F64, {}}});
    // 84 bytes of JSON; 8 + 84 = 92, 4 spaces make 96.
    CHECK(l.header ==
          R"({"__metadata__":{"format":"pt"},"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]}})"
          "    ");
    CHECK(l.data_start == 96);
    CHECK(l.offsets == std::vector<uint64_t>{96});
    CHECK(l.file_size == 104);
  }
  SECTION("no tensors") {
    const ckpt::ShardLayout l = ckpt::layout_shard("e.safetensors", {});
    // 32 bytes of JSON; 8 + 32 = 40 is already a multiple of 8, so no padding.
    CHECK(l.header == R"({"__metadata__":{"format":"pt"}})");
    CHECK(l.data_start == 40);
    CHECK(l.offsets.empty());
    CHECK(l.file_size == 40);
  }
  SECTION("a name that needs escaping") {
    const ckpt::ShardLayout l = ckpt::layout_shard("q.safetensors", {{"a\"b", DType::U8, {1}}});
    CHECK_THAT(l.header, Contains(R"("a\"b":{"dtype":"U8")"));
  }
}

TEST_CASE("writer: layout_shard carries the caller's metadata after \"format\": \"pt\"", "[writer]") {
  // SPEC §5: the input's own entries are kept; its "format" is not, the bytes are always pt.
  const std::map<std::string, std::string> meta{
      {"format", "np"}, {"quote", "say \"hi\"\n"}, {"author", "J\xc3\xb6rg \\o/"}};
  const ckpt::ShardLayout l = ckpt::layout_shard("m.safetensors", {{"t", DType::U8, {2}}}, meta);
  // Entries in key order after "format", escaped as JSON; ö stays two raw UTF-8 bytes.
  const std::string json =
      R"({"__metadata__":{"format":"pt","author":"J)" "\xc3\xb6" R"(rg \\o/","quote":"say \"hi\"\n"},)"
      R"("t":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  // 17 + 13 ("format") + 22 ("author") + 23 ("quote") + 1 + 53 (t) = 129 bytes of JSON;
  // 8 + 129 = 137, so 7 spaces bring the data to 144.
  CHECK(json.size() == 129);
  CHECK(l.header == json + "       ");
  CHECK(l.data_start == 144);
  CHECK(l.offsets == std::vector<uint64_t>{144});
  CHECK(l.file_size == 146);

  const std::string bytes = ckpt::test::safetensors_bytes(l.header, "ab");
  const ckpt::Header h = ckpt::parse_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                            bytes.size(), "layout");
  CHECK(h.metadata == std::map<std::string, std::string>{
                          {"format", "pt"}, {"quote", "say \"hi\"\n"}, {"author", "J\xc3\xb6rg \\o/"}});

  // The metadata counts towards the header limit like the tensors do.
  try {
    ckpt::layout_shard("big.safetensors", {}, {{"blob", std::string(ckpt::kMaxHeaderSize, 'x')}});
    FAIL("a header over the limit was accepted");
  } catch (const ckpt::Error& e) {
    CHECK(e.kind() == ckpt::ErrorKind::InvalidInput);
    CHECK_THAT(e.what(), Contains("big.safetensors: header of") && Contains("exceeds the safetensors limit"));
  }
}

TEST_CASE("writer: layout_shard rejects duplicate names and overflowing sizes", "[writer]") {
  try {
    ckpt::layout_shard("m.safetensors", {{"x", DType::U8, {1}}, {"x", DType::U8, {2}}});
    FAIL("a duplicate name was accepted");
  } catch (const ckpt::Error& e) {
    CHECK(e.kind() == ckpt::ErrorKind::InvalidInput);
    CHECK_THAT(e.what(), Contains("output tensor 'x' appears twice in m.safetensors"));
  }
  try {
    ckpt::layout_shard("m.safetensors", {{"big", DType::F32, {uint64_t{1} << 62}}});
    FAIL("an overflowing size was accepted");
  } catch (const ckpt::Error& e) {
    CHECK(e.kind() == ckpt::ErrorKind::InvalidInput);
    CHECK_THAT(e.what(), Contains("output tensor 'big': byte size of shape [4611686018427387904] "
                                  "overflows"));
  }
}

TEST_CASE("writer: a tensor named __metadata__ is refused", "[writer]") {
  // It would produce a second "__metadata__" key that readers take for the metadata.
  try {
    ckpt::layout_shard("m.safetensors", {{"__metadata__", DType::U8, {1}}});
    FAIL("a tensor named __metadata__ was accepted");
  } catch (const ckpt::Error& e) {
    CHECK(e.kind() == ckpt::ErrorKind::InvalidInput);
    CHECK_THAT(e.what(), Contains("'__metadata__'"));
  }
}

// ---------------------------------------------------------------------------------------------
// Shard and temporary file names.

TEST_CASE("writer: shard_file_name and temp_path_for", "[writer]") {
  CHECK(ckpt::shard_file_name(0, 1) == "model.safetensors");
  CHECK(ckpt::shard_file_name(0, 2) == "model-00001-of-00002.safetensors");
  CHECK(ckpt::shard_file_name(1, 3) == "model-00002-of-00003.safetensors");
  CHECK(ckpt::shard_file_name(162, 163) == "model-00163-of-00163.safetensors");
  CHECK(ckpt::temp_path_for("/out/model.safetensors").string() ==
        "/out/.model.safetensors.ckptconv-partial");
}

// ---------------------------------------------------------------------------------------------
// ShardWriter: the shard lives under its temporary name until commit renames it into place.

TEST_CASE("writer: ShardWriter round trip", "[writer]") {
  TempDir dir;
  const ckpt::ShardLayout l = ckpt::layout_shard(
      "model-00001-of-00001.safetensors",
      {{"layers.0.weight", DType::F32, {2, 2}}, {"layers.0.bias", DType::U8, {3}}});
  const std::string w = "0123456789abcdef";  // 2*2*4 = 16 bytes
  const std::string b = "xyz";               // 3 bytes
  const fs::path final_path = dir / "model-00001-of-00001.safetensors";
  const fs::path temp_path = dir / ".model-00001-of-00001.safetensors.ckptconv-partial";
  REQUIRE(ckpt::temp_path_for(final_path).string() == temp_path.string());

  {
    ckpt::ShardWriter sw(dir.path(), l);
    CHECK(sw.final_path().string() == final_path.string());
    // Reverse order, and the first tensor in two pieces.
    sw.write(l.offsets[1], b.data(), b.size());
    sw.write(l.offsets[0] + 8, w.data() + 8, 8);
    sw.write(l.offsets[0], w.data(), 8);

    CHECK_FALSE(fs::exists(final_path));
    REQUIRE(fs::exists(temp_path));
    CHECK(fs::file_size(temp_path) == l.file_size);  // full size reserved up front
    sw.commit();
    CHECK(fs::exists(final_path));
    CHECK_FALSE(fs::exists(temp_path));
  }
  // The destructor of a committed writer removes nothing.
  CHECK(listing(dir.path()) == std::vector<std::string>{"model-00001-of-00001.safetensors"});

  const std::string raw = read_bytes(final_path);
  CHECK(raw.size() == l.file_size);
  CHECK(read_le64(raw) == l.header.size());
  CHECK(raw.substr(8, l.header.size()) == l.header);

  ckpt::SafetensorsFile f(final_path);
  CHECK(f.header().data_start == l.data_start);
  CHECK(f.header().metadata == std::map<std::string, std::string>{{"format", "pt"}});
  REQUIRE(f.tensors().size() == 2);
  const ckpt::TensorInfo* tw = f.find("layers.0.weight");
  const ckpt::TensorInfo* tb = f.find("layers.0.bias");
  REQUIRE(tw != nullptr);
  REQUIRE(tb != nullptr);
  CHECK(tw->dtype == DType::F32);
  CHECK(tw->shape == std::vector<uint64_t>{2, 2});
  CHECK(tb->dtype == DType::U8);
  CHECK(tb->shape == std::vector<uint64_t>{3});
  CHECK(f.file_offset(*tw) == l.offsets[0]);
  CHECK(f.file_offset(*tb) == l.offsets[1]);
  CHECK(std::string(reinterpret_cast<const char*>(f.data(*tw)), tw->nbytes()) == w);
  CHECK(std::string(reinterpret_cast<const char*>(f.data(*tb)), tb->nbytes()) == b);
}

TEST_CASE("writer: a ShardWriter destroyed without commit leaves nothing", "[writer]") {
  TempDir dir;
  const ckpt::ShardLayout l =
      ckpt::layout_shard("model.safetensors", {{"t", DType::I32, {4}}});
  {
    ckpt::ShardWriter sw(dir.path(), l);
    const std::string data(16, '\x7f');
    sw.write(l.offsets[0], data.data(), data.size());
    REQUIRE(fs::exists(dir / ".model.safetensors.ckptconv-partial"));
  }
  CHECK(listing(dir.path()).empty());
}

TEST_CASE("writer: a ShardWriter in a missing directory fails with an I/O error", "[writer]") {
  TempDir dir;
  const ckpt::ShardLayout l = ckpt::layout_shard("model.safetensors", {{"t", DType::U8, {1}}});
  try {
    ckpt::ShardWriter sw(dir / "missing", l);
    FAIL("the writer was created");
  } catch (const ckpt::Error& e) {
    CHECK(e.kind() == ckpt::ErrorKind::Io);
    CHECK_THAT(e.what(), Contains(".model.safetensors.ckptconv-partial: cannot create"));
  }
}

// ---------------------------------------------------------------------------------------------
// write_file_atomic: the whole content under the final name, no temporary left behind.

TEST_CASE("writer: write_file_atomic", "[writer]") {
  TempDir dir;
  const fs::path p = dir / "config.json";
  ckpt::write_file_atomic(p, "{\"model_type\": \"toy\"}\n");
  CHECK(read_bytes(p) == "{\"model_type\": \"toy\"}\n");
  CHECK(listing(dir.path()) == std::vector<std::string>{"config.json"});

  // Replacing a longer file with a shorter one leaves none of the old bytes.
  ckpt::write_file_atomic(p, "{}");
  CHECK(read_bytes(p) == "{}");
  CHECK(listing(dir.path()) == std::vector<std::string>{"config.json"});

  ckpt::write_file_atomic(dir / "empty.txt", "");
  CHECK(fs::exists(dir / "empty.txt"));
  CHECK(fs::file_size(dir / "empty.txt") == 0);

  write_bytes(dir / "old.txt", "old");
  ckpt::write_file_atomic(dir / "old.txt", "new content");
  CHECK(read_bytes(dir / "old.txt") == "new content");
}

// ---------------------------------------------------------------------------------------------
// index_json: total_size is the sum of tensor bytes; weight_map sends every tensor to its shard.

TEST_CASE("writer: index_json", "[writer]") {
  const std::string s1 = ckpt::shard_file_name(0, 2);
  const std::string s2 = ckpt::shard_file_name(1, 2);
  const std::vector<ckpt::ShardLayout> shards = {
      ckpt::layout_shard(s1, {{"b.weight", DType::BF16, {3, 4}}, {"a.bias", DType::F32, {3}}}),
      ckpt::layout_shard(s2, {{"c", DType::F8_E4M3, {5}}, {"d", DType::I64, {}}}),
  };
  const std::string text = ckpt::index_json(shards);
  CHECK(text.back() == '\n');

  const nlohmann::json j = nlohmann::json::parse(text);
  // 3*4*2 + 3*4 + 5*1 + 1*8 = 24 + 12 + 5 + 8 = 49.
  CHECK(j.at("metadata").at("total_size").get<uint64_t>() == 49);
  const nlohmann::json& wm = j.at("weight_map");
  REQUIRE(wm.is_object());
  CHECK(wm.size() == 4);
  CHECK(wm.at("b.weight") == "model-00001-of-00002.safetensors");
  CHECK(wm.at("a.bias") == "model-00001-of-00002.safetensors");
  CHECK(wm.at("c") == "model-00002-of-00002.safetensors");
  CHECK(wm.at("d") == "model-00002-of-00002.safetensors");
  // Sorted by tensor name.
  std::vector<std::string> keys;
  for (const auto& item : wm.items()) keys.push_back(item.key());
  CHECK(keys == std::vector<std::string>{"a.bias", "b.weight", "c", "d"});
  // The metadata comes first in the text, as in the hub's indexes.
  CHECK(text.find("\"metadata\"") < text.find("\"weight_map\""));
}

TEST_CASE("writer: index_json refuses a tensor in two shards", "[writer]") {
  const std::vector<ckpt::ShardLayout> shards = {
      ckpt::layout_shard("a.safetensors", {{"x", DType::U8, {2}}}),
      ckpt::layout_shard("b.safetensors", {{"x", DType::U8, {3}}}),
  };
  try {
    ckpt::index_json(shards);
    FAIL("a tensor in two shards was accepted");
  } catch (const ckpt::Error& e) {
    CHECK_THAT(e.what(), Contains("output tensor 'x' is in both a.safetensors and b.safetensors"));
  }
}

TEST_CASE("ShardWriter knows when its file lives in memory (no background reservation there)", "[writer]") {
  const ckpt::ShardLayout l = ckpt::layout_shard("m.safetensors", {{"t", DType::U8, {2}}});
  // /dev/shm is tmpfs on Linux; the kernel's own answer for the other directory decides the check.
  const auto kind = [](const fs::path& p) {
    std::string out(64, '\0');
    FILE* f = ::popen(("stat -f -c %T " + p.string()).c_str(), "r");
    REQUIRE(f != nullptr);
    out.resize(std::fread(out.data(), 1, out.size(), f));
    ::pclose(f);
    return out;
  };
  const fs::path shm = "/dev/shm/ckptconv-writer-test";
  fs::create_directories(shm);
  {
    ckpt::ShardWriter sw(shm, l);
    CHECK(sw.in_memory() == (kind(shm).rfind("tmpfs", 0) == 0));
  }
  fs::remove_all(shm);
  const fs::path here = fs::current_path();
  ckpt::ShardWriter sw(here, l);
  CHECK(sw.in_memory() == (kind(here).rfind("tmpfs", 0) == 0));
}
