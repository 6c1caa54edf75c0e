#include "formats/safetensors.h"

#include <simdjson.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include "formats/error.h"

namespace ckpt {

bool checked_mul(uint64_t a, uint64_t b, uint64_t& out) {
  return !__builtin_mul_overflow(a, b, &out);
}

bool checked_numel(const std::vector<uint64_t>& shape, uint64_t& out) {
  uint64_t n = 1;
  for (uint64_t d : shape)
    if (!checked_mul(n, d, n)) return false;
  out = n;
  return true;
}

uint64_t TensorInfo::numel() const {
  uint64_t n = 0;
  checked_numel(shape, n);
  return n;
}

std::string shape_str(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

namespace {

const char* json_type_name(simdjson::dom::element_type t) {
  using T = simdjson::dom::element_type;
  switch (t) {
    case T::ARRAY: return "an array";
    case T::OBJECT: return "an object";
    case T::INT64: case T::UINT64: case T::DOUBLE: return "a number";
    case T::STRING: return "a string";
    case T::BOOL: return "a boolean";
    case T::NULL_VALUE: return "null";
  }
  return "a value";
}

// Reads a JSON array of non-negative integers; `what` names it in errors.
std::vector<uint64_t> uint_array(simdjson::dom::element v, std::string_view file,
                                 std::string_view tensor, std::string_view what) {
  simdjson::dom::array arr;
  if (v.get_array().get(arr))
    fail_input("{}: tensor '{}': {} must be an array, got {}", file, tensor, what,
               json_type_name(v.type()));
  std::vector<uint64_t> out;
  for (simdjson::dom::element x : arr) {
    uint64_t u = 0;
    if (x.get_uint64().get(u)) {
      int64_t i = 0;
      if (!x.get_int64().get(i))
        fail_input("{}: tensor '{}': {} has a negative value {}", file, tensor, what, i);
      fail_input("{}: tensor '{}': {} must hold non-negative integers, got {}", file, tensor, what,
                 simdjson::to_string(x));
    }
    out.push_back(u);
  }
  return out;
}

// The header's JSON text, after the checks that need no parsing: the 8-byte little-endian length
// within the limit, the file and the readable bytes, a '{' first, and valid UTF-8.
std::string_view header_json(const uint8_t* bytes, uint64_t available, uint64_t file_size, std::string_view file) {
  if (file_size < 8 || available < 8)
    fail_input("{}: file too short for a safetensors header ({} bytes)", file, file_size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n > kMaxHeaderSize)
    fail_input("{}: header length {} exceeds the limit of {} bytes", file, n, kMaxHeaderSize);
  if (n > file_size - 8)
    fail_input("{}: header length {} runs past the end of the file ({} bytes)", file, n,
               file_size);
  if (n > available - 8) fail_input("{}: header not fully readable", file);
  const char* text = reinterpret_cast<const char*>(bytes + 8);
  if (n < 2 || text[0] != '{')
    fail_input("{}: header does not start with a JSON object '{{'", file);
  if (!simdjson::validate_utf8(text, n)) fail_input("{}: header is not valid UTF-8", file);
  return {text, n};
}

// `__metadata__`: an object of strings, each key once.
void read_metadata(simdjson::dom::element value, std::string_view file, Header& h) {
  simdjson::dom::object meta;
  if (value.get_object().get(meta))
    fail_input("{}: __metadata__ must be an object of strings, got {}", file,
               json_type_name(value.type()));
  for (auto [mk, mv] : meta) {
    std::string_view s;
    if (mv.get_string().get(s))
      fail_input("{}: __metadata__ value of '{}' must be a string, got {}", file, mk,
                 json_type_name(mv.type()));
    if (!h.metadata.emplace(std::string(mk), std::string(s)).second)
      fail_input("{}: __metadata__ has duplicate key '{}'", file, mk);
  }
}

// A tensor entry's three fields, each exactly once and nothing else; data_offsets a pair in order.
TensorInfo read_tensor_fields(std::string_view key, simdjson::dom::element value, std::string_view file) {
  simdjson::dom::object obj;
  if (value.get_object().get(obj))
    fail_input("{}: tensor '{}': entry must be an object, got {}", file, key,
               json_type_name(value.type()));
  TensorInfo t;
  t.name = std::string(key);
  bool has_dtype = false, has_shape = false, has_offsets = false;
  std::vector<uint64_t> offsets;
  for (auto [fk, fv] : obj) {
    if (fk == "dtype" && !has_dtype) {
      std::string_view d;
      if (fv.get_string().get(d))
        fail_input("{}: tensor '{}': dtype must be a string", file, key);
      auto dt = parse_dtype(d);
      if (!dt) fail_input("{}: tensor '{}': unknown dtype '{}'", file, key, d);
      t.dtype = *dt;
      has_dtype = true;
    } else if (fk == "shape" && !has_shape) {
      t.shape = uint_array(fv, file, key, "shape");
      has_shape = true;
    } else if (fk == "data_offsets" && !has_offsets) {
      offsets = uint_array(fv, file, key, "data_offsets");
      has_offsets = true;
    } else {
      fail_input("{}: tensor '{}': unexpected or repeated field '{}'", file, key, fk);
    }
  }
  if (!has_dtype || !has_shape || !has_offsets)
    fail_input("{}: tensor '{}': missing field '{}'", file, key,
               !has_dtype ? "dtype" : !has_shape ? "shape" : "data_offsets");
  if (offsets.size() != 2)
    fail_input("{}: tensor '{}': data_offsets must hold 2 integers, got {}", file, key,
               offsets.size());
  t.begin = offsets[0];
  t.end = offsets[1];
  return t;
}

// The byte range must be in order, exactly the bytes dtype and shape need (checked arithmetic),
// and inside the data buffer.
void check_tensor_bytes(const TensorInfo& t, std::string_view file, uint64_t data_start, uint64_t data_size) {
  const std::string_view key = t.name;
  if (t.end < t.begin)
    fail_input("{}: tensor '{}': data_offsets [{}, {}] end before begin", file, key, t.begin,
               t.end);
  uint64_t numel = 0, nbytes = 0;
  const bool numel_fits = checked_numel(t.shape, numel);
  if (numel_fits && !fills_whole_bytes(t.dtype, numel))  // the reference reader's rule
    fail_input("{}: tensor '{}': {} {} is {} elements of {} bits, which do not fill whole bytes", file,
               key, dtype_name(t.dtype), shape_str(t.shape), numel, dtype_bits(t.dtype));
  if (!numel_fits || !checked_elements_bytes(t.dtype, numel, nbytes))
    fail_input("{}: tensor '{}': byte size of shape {} overflows", file, key,
               shape_str(t.shape));
  if (nbytes != t.end - t.begin)
    fail_input("{}: tensor '{}': {} {} needs {} bytes but data_offsets [{}, {}] hold {}", file,
               key, dtype_name(t.dtype), shape_str(t.shape), nbytes, t.begin, t.end,
               t.end - t.begin);
  if (t.end > data_size) {
    uint64_t at = 0;
    const bool wraps = __builtin_add_overflow(data_start, t.begin, &at);
    fail_input("{}: tensor '{}': data_offsets end {} past the data buffer ({} bytes) at file "
               "offset {}",
               file, key, t.end, data_size, wraps ? std::string("beyond 2^64") : std::to_string(at));
  }
}

// Sorted by offset, the tensors must tile the data buffer: no gap, no overlap, no trailing bytes.
void sort_and_check_tiling(Header& h, std::string_view file, uint64_t data_size) {
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expect = 0;
  for (const auto& t : h.tensors) {
    if (t.begin != expect)
      fail_input("{}: tensor '{}': data_offsets begin {} {} (expected {})", file, t.name, t.begin,
                 t.begin < expect ? "overlaps the previous tensor" : "leaves a gap", expect);
    expect = t.end;
  }
  if (expect != data_size)
    fail_input("{}: data buffer holds {} bytes but tensors cover {} ({} trailing bytes)", file,
               data_size, expect, data_size > expect ? data_size - expect : 0);
}

}  // namespace

Header parse_header(const uint8_t* bytes, uint64_t available, uint64_t file_size,
                    std::string_view file) {
  const std::string_view text = header_json(bytes, available, file_size, file);

  // Valid JSON that starts with '{' is an object, so parsing is the last check of the shape.
  simdjson::dom::parser parser;
  simdjson::dom::object root;
  if (auto err = parser.parse(text.data(), text.size()).get_object().get(root))
    fail_input("{}: header is not valid JSON: {}", file, simdjson::error_message(err));

  Header h;
  h.data_start = 8 + text.size();
  const uint64_t data_size = file_size - h.data_start;
  std::unordered_set<std::string_view> seen;
  for (auto [key, value] : root) {
    if (!seen.insert(key).second)
      fail_input("{}: duplicate {} '{}'", file, key == "__metadata__" ? "key" : "tensor name", key);
    if (key == "__metadata__") {
      read_metadata(value, file, h);
      continue;
    }
    TensorInfo t = read_tensor_fields(key, value, file);
    check_tensor_bytes(t, file, h.data_start, data_size);
    h.tensors.push_back(std::move(t));
  }
  sort_and_check_tiling(h, file, data_size);
  return h;
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path)
    : SafetensorsFile(std::make_unique<MappedFile>(path)) {}

SafetensorsFile::SafetensorsFile(std::unique_ptr<InputFile> source) : source_(std::move(source)) {
  const InputFile& f = *source_;
  const std::string name = f.path().string();
  std::vector<uint8_t> copy;  // the header's bytes, where the file is not in memory
  const uint8_t* bytes = f.data();
  uint64_t available = f.size();
  if (!bytes) {
    uint8_t prefix[8] = {};
    if (f.size() >= 8) f.read(0, 8, prefix);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | prefix[i];
    // parse_header names what is wrong with a length that does not fit; read only one that does.
    available = f.size() >= 8 && n <= kMaxHeaderSize && n <= f.size() - 8 ? 8 + n : std::min<uint64_t>(f.size(), 8);
    copy.resize(available);
    std::copy_n(prefix, std::min<uint64_t>(available, 8), copy.data());  // nothing for an empty file
    if (available > 8) f.read(8, available - 8, copy.data() + 8);
    bytes = copy.data();
  }
  header_ = parse_header(bytes, available, f.size(), name);
  header_hash_ = XXH3_64bits(bytes, header_.data_start);
  index_.reserve(header_.tensors.size());
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

}  // namespace ckpt
