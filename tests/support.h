// Helpers shared by the tests: scratch directories, byte-level safetensors construction, and
// running the CLI binary.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace ckpt::test {

// A fresh empty directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// A safetensors file's bytes from a raw header text and a data buffer: 8-byte little-endian
// length, the header as given (no padding added), then `data`.
std::string safetensors_bytes(const std::string& header, const std::string& data);
void write_bytes(const std::filesystem::path& path, const std::string& bytes);
std::string read_bytes(const std::filesystem::path& path);

struct RunResult {
  int exit_code;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs the ckptconv binary with `args` (shell-quoted by the caller where needed). With a
// `timeout_s`, coreutils' timeout stops a run that hangs (exit 124, or 137 if it ignores SIGTERM).
RunResult run_cli(const std::string& args, unsigned timeout_s = 0);

}  // namespace ckpt::test

#include "formats/dtype.h"

namespace ckpt::test {

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<uint64_t> shape;
  std::string bytes;  // exactly the tensor's size
};

// Writes `tensors` as one safetensors file at `path` (through the library's writer).
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorSpec>& tensors);

// The names in `dir`, sorted (empty when it does not exist).
std::vector<std::string> listing(const std::filesystem::path& dir);

// A checkpoint directory: one file per entry of `shards` (model-0000i-of-0000N.safetensors, or
// model.safetensors for one), an index when there are several, and `config_json` as config.json
// unless empty.
void write_checkpoint(const std::filesystem::path& dir, const std::vector<std::vector<TensorSpec>>& shards,
                      const std::string& config_json = "");

// Little-endian bytes of a value array, for building TensorSpec::bytes.
template <typename T>
std::string le_bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

}  // namespace ckpt::test
