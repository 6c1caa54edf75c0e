#include "formats/remote_store.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "formats/error.h"

namespace ckpt {

namespace fs = std::filesystem;

namespace {

nlohmann::ordered_json object_identity(const ObjectInfo& info) {
  nlohmann::ordered_json id = {{"size", info.size}};
  if (!info.etag.empty()) id["etag"] = info.etag;
  else id["last_modified"] = info.last_modified;
  return id;
}

class RemoteFile final : public InputFile {
 public:
  RemoteFile(std::shared_ptr<RemoteClient> client, RemoteUrl url, ObjectInfo info)
      : client_(std::move(client)), url_(std::move(url)), path_(url_.text()), info_(std::move(info)) {}

  const fs::path& path() const override { return path_; }
  uint64_t size() const override { return info_.size; }
  void read(uint64_t offset, uint64_t len, uint8_t* dst) const override { read_many({{offset, len, dst}}); }

  void read_many(const std::vector<Range>& ranges) const override {
    std::vector<RemoteClient::Range> r;
    r.reserve(ranges.size());
    for (const Range& x : ranges) r.push_back({x.offset, x.len, x.dst});
    client_->read(url_, info_, std::move(r));
  }

  // Every read already checks the object; the end of a run asks the server once more.
  void check_intact(bool deep) const override {
    if (!deep) return;
    const auto now = client_->stat(url_);
    if (!now) fail_input("{}: removed during the run", url_.text());
    if (now->size != info_.size || now->etag != info_.etag || now->last_modified != info_.last_modified)
      fail_input("{}: changed during the run (ETag {} then, {} now)", url_.text(), info_.etag, now->etag);
  }

  nlohmann::ordered_json identity() const override { return object_identity(info_); }

 private:
  std::shared_ptr<RemoteClient> client_;
  RemoteUrl url_;
  fs::path path_;
  ObjectInfo info_;
};

class RemoteStore final : public CheckpointStore {
 public:
  RemoteStore(std::shared_ptr<RemoteClient> client, RemoteUrl folder)
      : client_(std::move(client)), folder_(std::move(folder)), root_(folder_.text()) {}

  const fs::path& root() const override { return root_; }

  Kind kind(const std::string& name) const override { return info(name) ? Kind::File : Kind::Missing; }

  std::string read(const std::string& name) const override {
    const RemoteUrl url = remote_join(folder_, name);
    auto text = client_->get(url);
    if (!text) fail_input("{}: no such object", url.text());
    return std::move(*text);
  }

  std::unique_ptr<InputFile> open(const std::string& name) const override {
    const auto i = info(name);
    if (!i) fail_input("{}: no such object", remote_join(folder_, name).text());
    return std::make_unique<RemoteFile>(client_, remote_join(folder_, name), *i);
  }

  nlohmann::ordered_json identity(const std::string& name) const override {
    const auto i = info(name);
    if (!i) fail_input("{}: no such object", remote_join(folder_, name).text());
    return object_identity(*i);
  }

  std::optional<FetchStats> fetch_stats() const override { return client_->stats(); }

  // S3 folders list their direct children; HTTP cannot list.
  std::optional<std::vector<std::string>> list() const override {
    if (!folder_.is_s3()) return std::nullopt;
    std::vector<std::string> names;
    for (auto& key : client_->list(folder_))
      if (!key.empty() && key.find('/') == std::string::npos) names.push_back(std::move(key));
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  // Each object is asked about once: its size and ETag then are what every read must find.
  std::optional<ObjectInfo> info(const std::string& name) const {
    std::lock_guard lock(mu_);
    auto it = seen_.find(name);
    if (it == seen_.end()) it = seen_.emplace(name, client_->stat(remote_join(folder_, name))).first;
    return it->second;
  }

  std::shared_ptr<RemoteClient> client_;
  RemoteUrl folder_;
  fs::path root_;
  mutable std::mutex mu_;
  mutable std::map<std::string, std::optional<ObjectInfo>> seen_;
};

}  // namespace

RemoteCheckpoint open_remote(const RemoteUrl& url, const RemoteOptions& options) {
  RemoteCheckpoint r;
  r.client = std::make_shared<RemoteClient>(options);
  RemoteUrl folder = url;
  // The name is the decoded file name, as an index would give it: the store encodes it once.
  if (url.text().ends_with(".safetensors")) std::tie(folder, r.single_file) = remote_split(url);
  r.store = std::make_shared<RemoteStore>(r.client, std::move(folder));
  return r;
}

}  // namespace ckpt
