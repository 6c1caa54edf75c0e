#include "formats/remote_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <thread>

#include "formats/error.h"

namespace ckpt {

namespace {

using Clock = std::chrono::steady_clock;

// Error bodies are kept for their S3 error code; `get` is for indexes and configs, never shards.
constexpr size_t kMaxErrorBody = 64 << 10;
constexpr uint64_t kMaxGetBytes = uint64_t{256} << 20;
constexpr double kMaxBackoffS = 30;

bool starts_with_ci(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() &&
         std::equal(prefix.begin(), prefix.end(), s.begin(),
                    [](char a, char b) { return std::tolower(a) == std::tolower(b); });
}

// RFC 3986 percent-encoding of everything but unreserved characters (and '/' when `keep_slash`):
// what SigV4's canonical URI expects and what HTTP paths need.
std::string percent_encode(std::string_view s, bool keep_slash) {
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/')) out += c;
    else out += fmt::format("%{:02X}", u);
  }
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// percent_encode's inverse: every %XX becomes its byte. nullopt when a '%' is not followed by two
// hex digits, which no URL holds.
std::optional<std::string> percent_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    const int hi = i + 2 < s.size() ? hex_value(s[i + 1]) : -1;
    const int lo = hi < 0 ? -1 : hex_value(s[i + 2]);
    if (lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// The text of an XML element with its entities resolved. S3 escapes keys (a key may hold '&' or
// '<', and control characters as numeric references); anything unknown is kept as written.
std::string xml_unescape(std::string_view s) {
  static const std::pair<std::string_view, char> named[] = {
      {"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"quot", '"'}, {"apos", '\''}};
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const size_t semi = s[i] == '&' ? s.find(';', i) : std::string_view::npos;
    if (semi == std::string_view::npos || semi - i > 10) {
      out += s[i];
      continue;
    }
    const std::string_view ent = s.substr(i + 1, semi - i - 1);
    bool done = false;
    for (const auto& [name, c] : named)
      if (ent == name) out += c, done = true;
    if (!done && ent.size() > 1 && ent[0] == '#') {
      const bool hex = ent[1] == 'x' || ent[1] == 'X';
      const std::string digits(ent.substr(hex ? 2 : 1));
      char* end = nullptr;
      const unsigned long cp = std::strtoul(digits.c_str(), &end, hex ? 16 : 10);
      if (!digits.empty() && *end == 0 && cp <= 0x10FFFF) append_utf8(out, static_cast<uint32_t>(cp)), done = true;
    }
    if (done) i = semi;
    else out += s[i];
  }
  return out;
}

// The texts of every `<tag>…</tag>` in `xml`, in order. S3's list and error documents are flat
// enough that no element we read nests inside one of the same name.
std::vector<std::string> xml_texts(std::string_view xml, std::string_view tag) {
  const std::string open = fmt::format("<{}>", tag), close = fmt::format("</{}>", tag);
  std::vector<std::string> out;
  for (size_t at = xml.find(open); at != std::string_view::npos; at = xml.find(open, at)) {
    const size_t begin = at + open.size(), end = xml.find(close, begin);
    if (end == std::string_view::npos) break;
    out.push_back(xml_unescape(xml.substr(begin, end - begin)));
    at = end + close.size();
  }
  return out;
}

std::string xml_text(std::string_view xml, std::string_view tag) {
  auto texts = xml_texts(xml, tag);
  return texts.empty() ? std::string() : std::move(texts.front());
}

// A header value with surrounding blanks and the line end removed.
std::string_view trimmed(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && std::string_view(" \t\r\n").find(v.back()) != std::string_view::npos) v.remove_suffix(1);
  return v;
}

}  // namespace

std::optional<RemoteUrl> parse_remote_url(std::string_view text) {
  RemoteUrl u;
  std::string_view rest;
  if (starts_with_ci(text, "s3://")) u.scheme = RemoteUrl::Scheme::S3, rest = text.substr(5);
  else if (starts_with_ci(text, "http://")) rest = text.substr(7);
  else if (starts_with_ci(text, "https://")) rest = text.substr(8);
  else return std::nullopt;
  const std::string_view authority = rest.substr(0, rest.find('/'));
  // Said without the URL itself: it would print the password.
  if (authority.find('@') != std::string_view::npos)
    fail_usage("remote URLs may not carry credentials (user:password@host); use HF_TOKEN or the AWS_* variables");
  if (authority.empty()) fail_usage("{}: no {} in the URL", text, u.is_s3() ? "bucket" : "host");
  if (text.find_first_of("?#") != std::string_view::npos)
    fail_usage("{}: a checkpoint URL may not have a query or fragment", text);
  u.url = std::string(text);
  if (u.is_s3()) {
    u.bucket = std::string(authority);
    u.key = std::string(rest.substr(std::min(rest.size(), authority.size() + 1)));
    u.url = fmt::format("s3://{}/{}", u.bucket, u.key);
  }
  return u;
}

RemoteUrl remote_join(const RemoteUrl& folder, std::string_view name) {
  RemoteUrl u = folder;
  if (u.is_s3()) {
    if (!u.key.empty() && u.key.back() != '/') u.key += '/';
    u.key += name;
    u.url = fmt::format("s3://{}/{}", u.bucket, u.key);
  } else {
    if (u.url.back() != '/') u.url += '/';
    u.url += percent_encode(name, true);
  }
  return u;
}

std::pair<RemoteUrl, std::string> remote_split(const RemoteUrl& object) {
  RemoteUrl folder = object;
  std::string name;
  if (object.is_s3()) {
    // Keys are not encoded: the name is the key's last part as it is.
    const size_t cut = object.key.rfind('/') + 1;  // 0 without a '/'
    name = object.key.substr(cut);
    folder.key.resize(cut);
    folder.url = fmt::format("s3://{}/{}", folder.bucket, folder.key);
  } else {
    const size_t path = object.url.find('/', object.url.find("://") + 3);
    if (path == std::string::npos) fail_usage("{}: names no file", object.url);
    const size_t cut = object.url.rfind('/') + 1;
    const auto decoded = percent_decode(std::string_view(object.url).substr(cut));
    if (!decoded) fail_usage("{}: a '%' in the file name is not followed by two hex digits", object.url);
    // Either would make the name something else than one file of this folder once encoded again.
    if (decoded->find_first_of(std::string_view("/\0", 2)) != std::string::npos)
      fail_usage("{}: the file name holds an encoded '/' or NUL", object.url);
    name = *decoded;
    folder.url.resize(cut);
  }
  if (name.empty()) fail_usage("{}: names no file", object.url);
  return {std::move(folder), std::move(name)};
}

namespace {

// The URL of the bucket itself (listing), without a trailing '/'.
std::string s3_bucket_url(const RemoteUrl& u, std::string_view endpoint, std::string_view region) {
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.remove_suffix(1);
  if (!endpoint.empty()) return fmt::format("{}/{}", endpoint, percent_encode(u.bucket, false));
  return fmt::format("https://{}.s3.{}.amazonaws.com", u.bucket, region);
}

}  // namespace

std::string s3_http_url(const RemoteUrl& object, std::string_view endpoint, std::string_view region) {
  return fmt::format("{}/{}", s3_bucket_url(object, endpoint, region), percent_encode(object.key, true));
}

RemoteOptions remote_options_from_env(const std::function<const char*(const char*)>& getenv) {
  RemoteOptions o;
  const auto set = [&](std::string& field, std::initializer_list<const char*> names) {
    for (const char* name : names) {
      const char* v = getenv(name);
      if (v && *v) {
        field = v;
        return;
      }
    }
  };
  set(o.aws_access_key_id, {"AWS_ACCESS_KEY_ID"});
  set(o.aws_secret_access_key, {"AWS_SECRET_ACCESS_KEY"});
  set(o.aws_session_token, {"AWS_SESSION_TOKEN"});
  set(o.aws_region, {"AWS_REGION", "AWS_DEFAULT_REGION"});
  set(o.aws_endpoint_url, {"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"});
  set(o.bearer_token, {"HF_TOKEN"});
  return o;
}

// ---------------------------------------------------------------------------------------------
// The engine: requests, batches (one caller's call) and the thread that drives curl.

namespace {

// One caller's call: it waits until `pending` is zero; the first fatal error ends the batch.
struct Batch {
  std::condition_variable done;
  size_t pending = 0;
  std::optional<Error> error;
};

struct Request {
  enum class Kind { Head, Body, Part } kind = Kind::Part;
  Batch* batch = nullptr;
  const RemoteUrl* object = nullptr;
  std::string url;                       // what is requested
  const ObjectInfo* expected = nullptr;  // Part: what the object must still be
  uint64_t offset = 0, len = 0, done = 0;  // Part: the range and how much of it is in place
  uint8_t* dst = nullptr;                // Part
  std::atomic<uint64_t>* fetched = nullptr;  // the client's byte count
  std::string body;                      // Body: the object; otherwise an error document
  unsigned tries = 0;
  Clock::time_point due{};

  // The try in flight.
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  long status = 0;
  bool sink_chosen = false, success = false;
  uint64_t done_at_start = 0;
  curl_off_t content_length = -1;
  std::string etag, last_modified, content_range;
  std::optional<Error> fatal;  // found while receiving: ends the batch, no retry

  // "URL bytes A-B" (inclusive, as HTTP writes ranges) for parts, the URL otherwise.
  std::string where() const {
    if (kind != Kind::Part) return object->text();
    return fmt::format("{} bytes {}-{}", object->text(), offset, offset + len - 1);
  }
};

}  // namespace

struct RemoteClient::Impl {
  RemoteOptions opt;
  CURLM* multi = nullptr;
  std::thread worker;
  std::atomic<uint64_t> requests{0}, bytes{0}, retried{0};

  std::mutex m;  // guards `incoming`, `stop` and every Batch
  std::vector<Request*> incoming;
  bool stop = false;

  // The worker's own: not shared.
  std::deque<Request*> ready;
  std::vector<Request*> delayed, inflight;
  std::vector<CURL*> idle;
  std::minstd_rand jitter{std::random_device{}()};

  void run(std::vector<Request>& reqs);
  void loop();
  void start(Request& r);
  void finish(Request& r, CURLcode code);
  void retry_or_fail(Request& r, std::string cause);
  void complete(Request& r, std::optional<Error> error);
  void release(Request& r);
  size_t cancel(Batch* b);
  std::string request_url(const RemoteUrl& u) const {
    return u.is_s3() ? s3_http_url(u, opt.aws_endpoint_url, opt.aws_region) : u.url;
  }
};

namespace {

size_t on_header(char* p, size_t size, size_t n, void* user) {
  auto& r = *static_cast<Request*>(user);
  const std::string_view line(p, size * n);
  // A new status line starts a new response (a redirect's, or the one after `100 Continue`).
  if (starts_with_ci(line, "HTTP/")) r.etag.clear(), r.last_modified.clear(), r.content_range.clear();
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos) return line.size();
  const std::string_view name = line.substr(0, colon), value = trimmed(line.substr(colon + 1));
  if (starts_with_ci(name, "etag") && name.size() == 4) r.etag = value;
  else if (starts_with_ci(name, "last-modified") && name.size() == 13) r.last_modified = value;
  else if (starts_with_ci(name, "content-range") && name.size() == 13) r.content_range = value;
  return line.size();
}

Error changed(const Request& r, std::string_view what, std::string_view was, std::string_view now) {
  return Error(ErrorKind::InvalidInput,
               fmt::format("{} changed during the run ({} {}, now {})", r.object->text(), what, was, now));
}

// A 2xx answer to a part must be the very object first seen and the very bytes asked for.
std::optional<Error> check_part(const Request& r) {
  const ObjectInfo& x = *r.expected;
  if (!x.etag.empty() && !r.etag.empty() && x.etag != r.etag) return changed(r, "ETag", x.etag, r.etag);
  if (!x.last_modified.empty() && !r.last_modified.empty() && x.last_modified != r.last_modified)
    return changed(r, "Last-Modified", x.last_modified, r.last_modified);
  const uint64_t from = r.offset + r.done;
  if (r.status == 200) {
    if (from == 0 && r.len == x.size) return std::nullopt;  // the whole object was asked for
    return Error(ErrorKind::Io, fmt::format("{}: the server ignores Range requests (HTTP 200, not 206)", r.where()));
  }
  unsigned long long first = 0, last = 0, total = 0;
  if (r.status != 206)
    return Error(ErrorKind::Io, fmt::format("{}: unexpected HTTP {} to a range request", r.where(), r.status));
  const int got = std::sscanf(r.content_range.c_str(), "bytes %llu-%llu/%llu", &first, &last, &total);
  if (got < 2)
    return Error(ErrorKind::Io, fmt::format("{}: unreadable Content-Range '{}'", r.where(), r.content_range));
  if (first != from)
    return Error(ErrorKind::Io, fmt::format("{}: the server sent bytes from {}, not from {}", r.where(), first, from));
  if (got == 3 && total != x.size) return changed(r, "size", std::to_string(x.size), std::to_string(total));
  return std::nullopt;
}

// Called when the response's body (or its end) arrives: the status decides whether the body is
// data or an error document, and a part's headers are checked before its first byte lands.
void choose_sink(Request& r) {
  r.sink_chosen = true;
  curl_easy_getinfo(r.easy, CURLINFO_RESPONSE_CODE, &r.status);
  r.success = r.status >= 200 && r.status < 300;
  if (r.success && r.kind == Request::Kind::Part) r.fatal = check_part(r);
}

size_t on_body(char* p, size_t size, size_t n, void* user) {
  auto& r = *static_cast<Request*>(user);
  const size_t bytes = size * n;
  if (!r.sink_chosen) choose_sink(r);
  if (r.fatal) return 0;  // curl ends the transfer with CURLE_WRITE_ERROR
  if (!r.success) {
    r.body.append(p, std::min(bytes, kMaxErrorBody - std::min(kMaxErrorBody, r.body.size())));
    return bytes;
  }
  if (r.kind == Request::Kind::Part) {
    if (bytes > r.len - r.done) {
      r.fatal = Error(ErrorKind::Io, fmt::format("{}: the server sent more bytes than asked", r.where()));
      return 0;
    }
    std::memcpy(r.dst + r.done, p, bytes);
    r.done += bytes;
  } else {
    if (bytes > kMaxGetBytes - r.body.size()) {
      r.fatal = Error(ErrorKind::InvalidInput, fmt::format("{}: larger than {} MiB, too large for an index or a config",
                                                           r.where(), kMaxGetBytes >> 20));
      return 0;
    }
    r.body.append(p, bytes);
  }
  r.fetched->fetch_add(bytes, std::memory_order_relaxed);
  return bytes;
}

}  // namespace

RemoteClient::RemoteClient(RemoteOptions options) : impl_(std::make_unique<Impl>()) {
  if (options.concurrency == 0) fail_usage("--remote-concurrency must be at least 1");
  if (!(options.timeout_s > 0) || !(options.backoff_s >= 0) || options.part_bytes == 0)
    fail_usage("remote timeout and part size must be positive, the backoff not negative");
  static std::once_flag global;
  std::call_once(global, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  impl_->opt = std::move(options);
  impl_->multi = curl_multi_init();
  if (!impl_->multi) fail(ErrorKind::Internal, "libcurl: cannot create a multi handle");
  const long n = impl_->opt.concurrency;
  curl_multi_setopt(impl_->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, n);
  curl_multi_setopt(impl_->multi, CURLMOPT_MAXCONNECTS, n);
  impl_->worker = std::thread([this] { impl_->loop(); });
}

RemoteClient::~RemoteClient() {
  {
    std::lock_guard lock(impl_->m);
    impl_->stop = true;
  }
  curl_multi_wakeup(impl_->multi);
  impl_->worker.join();
  for (CURL* e : impl_->idle) curl_easy_cleanup(e);
  curl_multi_cleanup(impl_->multi);
}

RemoteClient::Stats RemoteClient::stats() const {
  return {impl_->requests.load(), impl_->bytes.load(), impl_->retried.load()};
}

// Queues every request of one call and waits until each has completed or been cancelled, so
// that no transfer still writes into the caller's buffers when this returns or throws.
void RemoteClient::Impl::run(std::vector<Request>& reqs) {
  if (reqs.empty()) return;
  Batch batch;
  std::unique_lock lock(m);
  batch.pending = reqs.size();
  for (auto& r : reqs) {
    r.batch = &batch;
    incoming.push_back(&r);
  }
  curl_multi_wakeup(multi);
  batch.done.wait(lock, [&] { return batch.pending == 0; });
  if (batch.error) throw *batch.error;
}

void RemoteClient::Impl::loop() {
  for (;;) {
    {
      std::lock_guard lock(m);
      if (stop) return;
      ready.insert(ready.end(), incoming.begin(), incoming.end());
      incoming.clear();
    }
    const auto now = Clock::now();
    auto due = std::stable_partition(delayed.begin(), delayed.end(), [&](Request* r) { return r->due > now; });
    ready.insert(ready.end(), due, delayed.end());
    delayed.erase(due, delayed.end());
    while (inflight.size() < opt.concurrency && !ready.empty()) {
      Request* r = ready.front();
      ready.pop_front();
      start(*r);
    }
    int running = 0;
    curl_multi_perform(multi, &running);
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      Request* r = nullptr;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char**>(&r));
      const CURLcode code = msg->data.result;  // `msg` dies with the handle's removal
      if (!r->sink_chosen) choose_sink(*r);      // a response without a body
      curl_easy_getinfo(r->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &r->content_length);
      release(*r);
      finish(*r, code);
    }
    int wait_ms = 1000;
    if (!ready.empty() && inflight.size() < opt.concurrency) wait_ms = 0;
    for (const Request* r : delayed) {
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(r->due - Clock::now()).count();
      wait_ms = static_cast<int>(std::clamp<int64_t>(ms + 1, 0, wait_ms));
    }
    curl_multi_poll(multi, nullptr, 0, wait_ms, nullptr);
  }
}

// Detaches the try in flight from curl; its easy handle (and the connection it holds in the
// multi handle's cache) waits for the next request.
void RemoteClient::Impl::release(Request& r) {
  curl_multi_remove_handle(multi, r.easy);
  idle.push_back(r.easy);
  r.easy = nullptr;
  curl_slist_free_all(r.headers);
  r.headers = nullptr;
  inflight.erase(std::find(inflight.begin(), inflight.end(), &r));
}

void RemoteClient::Impl::start(Request& r) {
  CURL* e = nullptr;
  if (idle.empty()) {
    e = curl_easy_init();
    if (!e) return complete(r, Error(ErrorKind::Internal, fmt::format("{}: libcurl cannot make a handle", r.where())));
  } else {
    e = idle.back();
    idle.pop_back();
    curl_easy_reset(e);
  }
  r.easy = e;
  r.status = 0;
  r.sink_chosen = r.success = false;
  r.fatal.reset();
  r.done_at_start = r.done;
  r.body.clear();  // a Body's retry fetches it whole again; otherwise it held an error document
  curl_easy_setopt(e, CURLOPT_URL, r.url.c_str());
  curl_easy_setopt(e, CURLOPT_PRIVATE, &r);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);  // the Hub answers file URLs with a CDN redirect
  curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, &r);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &r);
  // A stall is a fault to retry: nothing received for `timeout_s` ends the try (curl counts in
  // whole seconds), as does a connection not made in that time.
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(opt.timeout_s * 1000));
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, std::max(1L, std::lround(opt.timeout_s)));
  if (r.kind == Request::Kind::Head) curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  std::string range;
  if (r.kind == Request::Kind::Part) {
    // A retry asks only for what is still missing.
    range = fmt::format("{}-{}", r.offset + r.done, r.offset + r.len - 1);
    curl_easy_setopt(e, CURLOPT_RANGE, range.c_str());  // copied by curl
    // A weak validator may not be used with If-Match; the response's own ETag is checked anyway.
    if (!r.expected->etag.empty() && !r.expected->etag.starts_with("W/"))
      r.headers = curl_slist_append(r.headers, fmt::format("If-Match: {}", r.expected->etag).c_str());
  }
  if (r.object->is_s3()) {
    r.headers = curl_slist_append(r.headers, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
    if (!opt.aws_access_key_id.empty()) {
      // Signed by curl (SigV4): the secret never travels, and never appears in a message.
      const std::string sigv4 = fmt::format("aws:amz:{}:s3", opt.aws_region);
      curl_easy_setopt(e, CURLOPT_AWS_SIGV4, sigv4.c_str());
      curl_easy_setopt(e, CURLOPT_USERNAME, opt.aws_access_key_id.c_str());
      curl_easy_setopt(e, CURLOPT_PASSWORD, opt.aws_secret_access_key.c_str());
      if (!opt.aws_session_token.empty())
        r.headers =
            curl_slist_append(r.headers, fmt::format("x-amz-security-token: {}", opt.aws_session_token).c_str());
    }
  } else if (!opt.bearer_token.empty()) {
    // curl sends a custom Authorization only to the host first asked, never along a redirect.
    r.headers = curl_slist_append(r.headers, fmt::format("Authorization: Bearer {}", opt.bearer_token).c_str());
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, r.headers);
  if (r.tries > 0) retried.fetch_add(1, std::memory_order_relaxed);
  ++r.tries;
  requests.fetch_add(1, std::memory_order_relaxed);
  inflight.push_back(&r);
  curl_multi_add_handle(multi, e);
}

namespace {

std::string curl_cause(CURLcode code) {
  if (code == CURLE_PARTIAL_FILE) return "short body (connection closed early)";
  if (code == CURLE_OPERATION_TIMEDOUT) return "timed out (nothing received)";
  return curl_easy_strerror(code);
}

// The error for a final non-2xx answer; nullopt for a 404 where "no such object" is an answer
// (stat, get, list), which the caller reads from `status`.
std::optional<Error> status_error(const Request& r) {
  const std::string code = xml_text(r.body, "Code");  // S3's error code; plain HTTP has none
  const std::string detail = code.empty() ? std::string() : " " + code;
  const bool part = r.kind == Request::Kind::Part;
  switch (r.status) {
    case 401:
    case 403:
      return Error(ErrorKind::Io, fmt::format("{}: access denied (HTTP {}{}); check {}", r.where(), r.status, detail,
                                              r.object->is_s3() ? "the AWS credentials" : "HF_TOKEN"));
    case 404:
      if (code == "NoSuchBucket")
        return Error(ErrorKind::InvalidInput, fmt::format("s3://{}: no such bucket", r.object->bucket));
      if (!part) return std::nullopt;
      return Error(ErrorKind::InvalidInput, fmt::format("{} changed during the run (it is gone)", r.object->text()));
    case 412:  // only parts send If-Match
      if (part) return changed(r, "ETag", r.expected->etag, r.etag.empty() ? "different" : r.etag);
      break;
    case 416:
      if (part)
        return Error(ErrorKind::InvalidInput, fmt::format("{} changed during the run (it is shorter now)", r.where()));
      break;
  }
  return Error(ErrorKind::Io, fmt::format("{}: HTTP {}{}", r.where(), r.status, detail));
}

}  // namespace

void RemoteClient::Impl::finish(Request& r, CURLcode code) {
  if (r.fatal) return complete(r, std::move(r.fatal));
  if (code != CURLE_OK) return retry_or_fail(r, curl_cause(code));
  if (r.success) {
    if (r.kind == Request::Kind::Part && r.done < r.len)
      return retry_or_fail(r, fmt::format("short body ({} of {} bytes)", r.done - r.done_at_start,
                                          r.len - r.done_at_start));
    return complete(r, std::nullopt);
  }
  const long s = r.status;
  if (s >= 500 || s == 429 || s == 408) {
    const std::string code_text = xml_text(r.body, "Code");
    return retry_or_fail(r, code_text.empty() ? fmt::format("HTTP {}", s) : fmt::format("HTTP {} {}", s, code_text));
  }
  complete(r, status_error(r));
}

void RemoteClient::Impl::retry_or_fail(Request& r, std::string cause) {
  if (r.tries > opt.retries)
    return complete(r, Error(ErrorKind::Io, fmt::format("{}: {} after {} tries", r.where(), cause, r.tries)));
  // Exponential, with jitter so that parts failed together do not come back together.
  const double base = std::min(kMaxBackoffS, opt.backoff_s * std::ldexp(1.0, static_cast<int>(r.tries) - 1));
  const double delay = base * std::uniform_real_distribution<double>(0.5, 1.0)(jitter);
  r.due = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(delay));
  delayed.push_back(&r);
}

void RemoteClient::Impl::complete(Request& r, std::optional<Error> error) {
  Batch& b = *r.batch;
  std::lock_guard lock(m);
  size_t ended = 1;
  if (error && !b.error) {
    b.error = std::move(error);
    ended += cancel(&b);
  }
  b.pending -= ended;
  if (b.pending == 0) b.done.notify_all();  // the caller may free `r` from here on
}

// Ends every other request of a failed batch: queued ones are dropped, transfers in flight are
// detached, so the caller can throw knowing nothing writes into its buffers any more.
size_t RemoteClient::Impl::cancel(Batch* b) {
  std::vector<Request*> mine;
  for (Request* r : inflight)
    if (r->batch == b) mine.push_back(r);
  for (Request* r : mine) release(*r);
  const auto of_b = [&](Request* r) { return r->batch == b; };
  const size_t queued =
      std::count_if(ready.begin(), ready.end(), of_b) + std::count_if(delayed.begin(), delayed.end(), of_b);
  ready.erase(std::remove_if(ready.begin(), ready.end(), of_b), ready.end());
  delayed.erase(std::remove_if(delayed.begin(), delayed.end(), of_b), delayed.end());
  return mine.size() + queued;
}

// ---------------------------------------------------------------------------------------------
// The calls.

std::optional<ObjectInfo> RemoteClient::stat(const RemoteUrl& object) {
  std::vector<Request> reqs(1);
  Request& r = reqs[0];
  r.kind = Request::Kind::Head;
  r.object = &object;
  r.url = impl_->request_url(object);
  r.fetched = &impl_->bytes;
  impl_->run(reqs);
  if (r.status == 404) return std::nullopt;
  if (r.content_length < 0) fail(ErrorKind::Io, "{}: the server sent no Content-Length", object.text());
  return ObjectInfo{static_cast<uint64_t>(r.content_length), r.etag, r.last_modified};
}

namespace {

Request body_request(const RemoteUrl& object, std::string url, std::atomic<uint64_t>* fetched) {
  Request r;
  r.kind = Request::Kind::Body;
  r.object = &object;
  r.url = std::move(url);
  r.fetched = fetched;
  return r;
}

}  // namespace

std::optional<std::string> RemoteClient::get(const RemoteUrl& object) {
  std::vector<Request> reqs{body_request(object, impl_->request_url(object), &impl_->bytes)};
  impl_->run(reqs);
  if (reqs[0].status == 404) return std::nullopt;
  return std::move(reqs[0].body);
}

void RemoteClient::read(const RemoteUrl& object, const ObjectInfo& expected, std::vector<Range> ranges) {
  const std::string url = impl_->request_url(object);
  const uint64_t part = impl_->opt.part_bytes;
  std::vector<Request> reqs;
  for (const Range& g : ranges) {
    if (g.len == 0) continue;
    if (g.len > expected.size || g.offset > expected.size - g.len)
      fail_input("{}: bytes {}+{} lie past its end ({} bytes)", object.text(), g.offset, g.len, expected.size);
    for (uint64_t at = 0; at < g.len; at += std::min(part, g.len - at)) {
      Request& r = reqs.emplace_back();
      r.kind = Request::Kind::Part;
      r.object = &object;
      r.url = url;
      r.expected = &expected;
      r.offset = g.offset + at;
      r.len = std::min(part, g.len - at);
      r.dst = g.dst + at;
      r.fetched = &impl_->bytes;
    }
  }
  impl_->run(reqs);
}

std::vector<std::string> RemoteClient::list(const RemoteUrl& prefix, unsigned page_keys) {
  if (!prefix.is_s3())
    fail_usage("{}: an HTTP server cannot be listed; name the folder of model.safetensors.index.json or one "
               ".safetensors file",
               prefix.text());
  page_keys = std::clamp(page_keys, 1u, 1000u);
  const std::string bucket = s3_bucket_url(prefix, impl_->opt.aws_endpoint_url, impl_->opt.aws_region);
  std::vector<std::string> names;
  std::string token;
  for (;;) {
    // Parameters in sorted order and fully encoded: SigV4 signs the query as sent.
    const std::string query =
        fmt::format("{}list-type=2&max-keys={}&prefix={}",
                    token.empty() ? "" : fmt::format("continuation-token={}&", percent_encode(token, false)), page_keys,
                    percent_encode(prefix.key, false));
    std::vector<Request> reqs{body_request(prefix, fmt::format("{}?{}", bucket, query), &impl_->bytes)};
    impl_->run(reqs);
    const std::string& xml = reqs[0].body;
    if (reqs[0].status == 404) fail_input("s3://{}: no such bucket", prefix.bucket);
    if (xml.find("<ListBucketResult") == std::string::npos)
      fail(ErrorKind::Io, "{}: the answer to a listing is not an S3 ListBucketResult", prefix.text());
    for (std::string& key : xml_texts(xml, "Key"))
      if (key.starts_with(prefix.key)) names.push_back(key.substr(prefix.key.size()));
    if (xml_text(xml, "IsTruncated") != "true") return names;
    std::string next = xml_text(xml, "NextContinuationToken");
    if (next.empty() || next == token)
      fail(ErrorKind::Io, "{}: a truncated listing without a new continuation token", prefix.text());
    token = std::move(next);
  }
}

}  // namespace ckpt
