#include "tests/support.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

namespace ckpt::test {

namespace fs = std::filesystem;

TempDir::TempDir() {
  std::random_device rd;
  for (int attempt = 0; attempt < 100; ++attempt) {
    path_ = fs::temp_directory_path() / ("ckpt-test-" + std::to_string(::getpid()) + "-" +
                                         std::to_string(rd()));
    if (fs::create_directory(path_)) return;
  }
  throw std::runtime_error("cannot create a temporary directory");
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + header + data;
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + path.string());
}

std::string read_bytes(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

RunResult run_cli(const std::string& args, unsigned timeout_s) {
  static int counter = 0;
  const fs::path base = fs::temp_directory_path() /
                        ("ckpt-cli-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  const std::string out_file = base.string() + ".out", err_file = base.string() + ".err";
  const std::string limit = timeout_s ? "timeout -k 5 " + std::to_string(timeout_s) + " " : "";
  const std::string cmd = limit + std::string(CKPT_BINARY) + " " + args + " >" + out_file + " 2>" + err_file +
                          " </dev/null";
  const int status = std::system(cmd.c_str());
  RunResult r{WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), read_bytes(out_file),
              read_bytes(err_file)};
  fs::remove(out_file);
  fs::remove(err_file);
  return r;
}

}  // namespace ckpt::test

#include <nlohmann/json.hpp>

#include "formats/checkpoint.h"
#include "formats/writer.h"

namespace ckpt::test {

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorSpec>& tensors) {
  std::vector<OutTensor> outs;
  for (const auto& t : tensors) outs.push_back({t.name, t.dtype, t.shape});
  const ShardLayout layout = layout_shard(path.filename().string(), outs);
  ShardWriter w(path.parent_path(), layout);
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].bytes.size() != outs[i].nbytes())
      throw std::runtime_error("TensorSpec '" + tensors[i].name + "' has the wrong number of bytes");
    w.write(layout.offsets[i], tensors[i].bytes.data(), tensors[i].bytes.size());
  }
  w.commit();
}

}  // namespace ckpt::test

namespace ckpt::test {

std::vector<std::string> listing(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  if (!std::filesystem::exists(dir)) return names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

void write_checkpoint(const std::filesystem::path& dir, const std::vector<std::vector<TensorSpec>>& shards,
                      const std::string& config_json) {
  std::filesystem::create_directories(dir);
  nlohmann::json wm = nlohmann::json::object();
  uint64_t total = 0;
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string name = shard_file_name(s, shards.size());
    write_safetensors(dir / name, shards[s]);
    for (const auto& t : shards[s]) {
      wm[t.name] = name;
      total += t.bytes.size();
    }
  }
  if (shards.size() > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", wm}};
    write_bytes(dir / kIndexName, index.dump(2));
  }
  if (!config_json.empty()) write_bytes(dir / "config.json", config_json);
}

}  // namespace ckpt::test
