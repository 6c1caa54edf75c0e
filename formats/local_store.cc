#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <sstream>

#include "formats/checkpoint_store.h"
#include "formats/error.h"
#include "formats/mapped_file.h"

namespace ckpt {

namespace fs = std::filesystem;

namespace {

class LocalStore final : public CheckpointStore {
 public:
  explicit LocalStore(fs::path dir) : dir_(std::move(dir)) {}

  const fs::path& root() const override { return dir_; }

  Kind kind(const std::string& name) const override {
    std::error_code ec;
    const auto st = fs::status(dir_ / name, ec);
    if (!fs::exists(st)) return Kind::Missing;
    return fs::is_regular_file(st) ? Kind::File : Kind::Other;
  }

  std::string read(const std::string& name) const override {
    const fs::path p = dir_ / name;
    std::ifstream in(p, std::ios::binary);
    if (!in) fail(ErrorKind::Io, "{}: cannot open", p.string());
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  std::unique_ptr<InputFile> open(const std::string& name) const override {
    return std::make_unique<MappedFile>(dir_ / name);
  }

  nlohmann::ordered_json identity(const std::string& name) const override {
    const fs::path p = dir_ / name;
    struct stat st{};
    if (::stat(p.c_str(), &st) != 0) fail_io_errno(errno, p.string() + ": cannot stat");
    return stat_identity(st);
  }

  std::optional<std::vector<std::string>> list() const override {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_))
      if (e.is_regular_file()) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  fs::path dir_;
};

}  // namespace

std::shared_ptr<const CheckpointStore> local_store(const fs::path& dir) { return std::make_shared<LocalStore>(dir); }

}  // namespace ckpt
