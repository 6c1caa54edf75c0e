// Checkpoints read where they live: objects in S3-compatible storage (`s3://bucket/key`) and files
// behind plain HTTP(S) servers (`https://host/path`), fetched with ranged GETs — the remote
// sibling of MappedFile. Nothing is copied to local storage: each read lands directly in the
// caller's buffers, so memory stays what the caller budgets.
//
// One RemoteClient serves every thread of a conversion. A single background thread drives one
// libcurl multi handle: callers queue requests and wait; the thread keeps at most
// `RemoteOptions::concurrency` of them in flight, shared by all callers, over reused connections.
// A large range is cut into parts so that even one read proceeds in parallel.
//
// Faults: a part that fails transiently (5xx, 429, 408, timeouts and stalls, reset or refused
// connections, bodies shorter than asked) is retried after an exponential, jittered backoff, up to
// `retries` times; a retry asks only for the bytes still missing, so no byte arrives twice. After
// that the read is an Io error naming the object and byte range. An object that changed since it
// was first seen (ETag, Last-Modified or size differ; a 412 on `If-Match`) is InvalidInput, as a
// local file that changes under a conversion is; so is a missing object or bucket. Denied access
// (401/403) is Io. Messages name the URL, never a credential.
//
// The library never reads the environment: the command line builds RemoteOptions with
// `remote_options_from_env`.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "formats/checkpoint_store.h"

namespace ckpt {

// A parsed `s3://bucket/key` or `http(s)://host/path` location. For S3 `key` may be empty (the
// bucket's root) or end with '/' (a folder); for HTTP `url` is the URL as given, already
// percent-encoded as URLs are.
struct RemoteUrl {
  enum class Scheme { S3, Http };
  Scheme scheme = Scheme::Http;
  std::string bucket;  // S3 only
  std::string key;     // S3 only, not percent-encoded
  std::string url;     // HTTP: the request URL; S3: "s3://bucket/key", for messages

  bool is_s3() const { return scheme == Scheme::S3; }
  // How messages name the object: the `s3://` form for S3, the URL for HTTP.
  const std::string& text() const { return url; }
};

// nullopt for anything that is not an s3://, http:// or https:// URL (a local path). A remote URL
// that cannot be used — no bucket or host, a query or fragment, credentials inside it — is a
// Usage error.
std::optional<RemoteUrl> parse_remote_url(std::string_view text);

// `name` (a file name from an index, unencoded) inside the folder `folder`: a '/' is added unless
// the folder already ends with one; for HTTP the name is percent-encoded.
RemoteUrl remote_join(const RemoteUrl& folder, std::string_view name);

// remote_join's inverse: the folder holding `object` and its name, unencoded. For HTTP the name is
// cut from the URL and percent-decoded, so that joining encodes it exactly once again (a URL
// encoded otherwise than remote_join would, e.g. with a literal '+', comes back as its equivalent
// `%2B`). A Usage error when the URL names no file, or its name is no valid escape or holds an
// encoded '/' or NUL.
std::pair<RemoteUrl, std::string> remote_split(const RemoteUrl& object);

// The HTTP URL of an S3 object. With an endpoint (AWS_ENDPOINT_URL, e.g. `http://127.0.0.1:4568`)
// path-style: `endpoint/bucket/key`; without, AWS's virtual-hosted style
// `https://bucket.s3.REGION.amazonaws.com/key`. The key is percent-encoded, '/' kept.
std::string s3_http_url(const RemoteUrl& object, std::string_view endpoint, std::string_view region);

struct RemoteOptions {
  unsigned concurrency = 16;  // requests in flight, all callers together (at least 1)
  unsigned retries = 6;       // further tries of one part after its first
  double timeout_s = 60;      // connecting, or receiving nothing, for this long fails a try
  std::string aws_access_key_id, aws_secret_access_key, aws_session_token, aws_region = "us-east-1",
      aws_endpoint_url, bearer_token;
  double backoff_s = 0.1;                 // the first retry's delay; doubled each further try
  uint64_t part_bytes = uint64_t{4} << 20;  // ranges larger than this are fetched in parts
};

// RemoteOptions from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION (or
// AWS_DEFAULT_REGION), AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) and HF_TOKEN, read through
// `getenv` (so tests can pass their own); unset variables keep the defaults.
RemoteOptions remote_options_from_env(const std::function<const char*(const char*)>& getenv);

// What the server says about an object when it is first seen; reads compare against it.
struct ObjectInfo {
  uint64_t size = 0;
  std::string etag;           // as sent, quotes included; empty when the server sends none
  std::string last_modified;  // the HTTP date as sent; empty when the server sends none
};

class RemoteClient {
 public:
  // One range of a read: [offset, offset+len) of the object into dst[0, len).
  struct Range {
    uint64_t offset = 0, len = 0;
    uint8_t* dst = nullptr;
  };
  using Stats = CheckpointStore::FetchStats;

  explicit RemoteClient(RemoteOptions options);
  // Stops the background thread. No call may be running.
  ~RemoteClient();
  RemoteClient(const RemoteClient&) = delete;
  RemoteClient& operator=(const RemoteClient&) = delete;

  // Size, ETag and Last-Modified (a HEAD request); nullopt when there is no such object — for S3
  // that includes a missing bucket, which a HEAD cannot tell apart. 401/403 is an Io error.
  std::optional<ObjectInfo> stat(const RemoteUrl& object);

  // The whole object (small ones: indexes, configs); nullopt when it does not exist. A missing S3
  // bucket is InvalidInput.
  std::optional<std::string> get(const RemoteUrl& object);

  // Fills every range from the object, which must still be the one `expected` describes; returns
  // when every byte is in place. Ranges past `expected.size` are InvalidInput. All ranges are in
  // flight together, bounded by the shared concurrency; on an error no request of this read is
  // still writing when the exception leaves.
  void read(const RemoteUrl& object, const ObjectInfo& expected, std::vector<Range> ranges);

  // S3 only: every key under `prefix` (ListObjectsV2, `page_keys` a page, following continuation
  // tokens), relative to it, in the store's order. Plain HTTP has no listing: a Usage error — an
  // HTTP checkpoint is found through its index or named as one file.
  std::vector<std::string> list(const RemoteUrl& prefix, unsigned page_keys = 1000);

  Stats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckpt
