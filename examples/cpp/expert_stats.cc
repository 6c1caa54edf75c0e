// expert_stats — a data-preparation job on libckptconv: converts a HuggingFace checkpoint (e.g. a
// MiniMax-M2 FP8 one) to NeMo's native layout in BF16 inside this process, with no output files,
// and prints per-tensor statistics of the converted values (count, mean, std, min, max, NaNs) and
// the process's peak resident set.
//
//   expert_stats INPUT [--sink stream|memory] [--experts] [--threads N] [--memory-budget 1GiB]
//                      [--dump FILE.safetensors] [--quiet] [--progress] [--no-stats]
//
// --sink stream (the default) is a custom TensorSink that folds each delivered byte range into
//   running statistics and keeps nothing: peak memory is the library's, within its memory budget.
// --sink memory is a MemorySink: each tensor is assembled whole in a buffer this program
//   allocates, and the statistics are computed when it is ready: peak memory is the budget plus
//   the tensors being assembled at the same time (printed as assembling_peak_mib).
// --experts converts only the grouped expert tensors (a Selection) instead of every tensor.
// --dump writes every received tensor, as received, into one safetensors file, so that
//   `ckptconv verify DUMP OUT` can compare it with `ckptconv convert --to native` output.
// --no-stats receives the tensors and computes nothing (what the conversion alone costs).
//
// Build against an installed ckptconv: examples/cpp/CMakeLists.txt (find_package), or
//   g++ -std=c++17 -O2 expert_stats.cc $(pkg-config --cflags --libs ckptconv)
#include <ckptconv/ckptconv.h>

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace {

using ckptconv::TensorDesc;

// ---------------------------------------------------------------------------------------------
// Statistics of floating-point values

struct Moments {
  uint64_t count = 0, nan = 0;  // count: all elements; the other fields leave NaNs out
  double sum = 0, sumsq = 0;
  double min = std::numeric_limits<double>::infinity(), max = -std::numeric_limits<double>::infinity();

  void merge(const Moments& o) {
    count += o.count, nan += o.nan, sum += o.sum, sumsq += o.sumsq;
    min = std::min(min, o.min), max = std::max(max, o.max);
  }
  void add(float v) {
    ++count;
    if (std::isnan(v)) {
      ++nan;
      return;
    }
    sum += v, sumsq += double(v) * v, min = std::min(min, double(v)), max = std::max(max, double(v));
  }
  double mean() const { return count > nan ? sum / double(count - nan) : 0; }
  double stddev() const {
    if (count <= nan) return 0;
    const double m = mean();
    return std::sqrt(std::max(0.0, sumsq / double(count - nan) - m * m));
  }
};

float load_bf16(const unsigned char* p) {
  uint16_t b;
  std::memcpy(&b, p, 2);
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float load_f16(const unsigned char* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  const uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  float f;
  if (exp == 0) {
    f = std::ldexp(float(man), -24);  // zero or subnormal
  } else if (exp == 31) {
    f = man ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    const uint32_t u = ((exp + 112) << 23) | (man << 13);
    std::memcpy(&f, &u, 4);
  }
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u |= sign;
  std::memcpy(&f, &u, 4);
  return f;
}

float load_f32(const unsigned char* p) {
  float f;
  std::memcpy(&f, p, 4);
  return f;
}

using Load = float (*)(const unsigned char*);

// The element size and loader of a dtype the statistics understand; {0, nullptr} otherwise.
std::pair<unsigned, Load> element_of(const std::string& dtype) {
  if (dtype == "BF16") return {2, load_bf16};
  if (dtype == "F16") return {2, load_f16};
  if (dtype == "F32") return {4, load_f32};
  return {0, nullptr};
}

// The statistics of `n` whole elements, one at a time (F16 and F32 tensors are small here).
Moments moments_scalar(Load load, unsigned size, const unsigned char* p, uint64_t n) {
  Moments m;
  for (uint64_t i = 0; i < n; ++i) m.add(load(p + i * size));
  return m;
}

// BF16, nearly all of the bytes: four elements at a time with GCC's and Clang's vector
// extensions (a min/max that skips NaNs defeats their auto-vectorizers). Sums are taken in float
// per block of 4096 elements (in double where they overflow), then in double; min and max on
// integer keys ordered like the values (sign and magnitude to two's complement), so no float
// comparison is needed.
typedef uint16_t u16x4 __attribute__((vector_size(8)));
typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef int32_t i32x4 __attribute__((vector_size(16)));
typedef float f32x4 __attribute__((vector_size(16)));

double float_of_key(int32_t key) {
  const uint32_t u = key < 0 ? (uint32_t(-int64_t(key)) | 0x80000000u) : uint32_t(key);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

Moments moments_bf16(const unsigned char* p, uint64_t n) {
  constexpr uint64_t B = 4096;
  Moments m;
  for (uint64_t i = 0; i < n; i += B) {
    const uint64_t end = std::min(B, n - i), k = end / 4 * 4;
    const unsigned char* b = p + 2 * i;
    f32x4 s = {}, q = {};
    i32x4 nan = {}, lo = {}, hi = {};
    lo += std::numeric_limits<int32_t>::max(), hi += std::numeric_limits<int32_t>::min();
    for (uint64_t j = 0; j < k; j += 4) {
      u16x4 h;
      std::memcpy(&h, b + 2 * j, 8);
      const u32x4 u = __builtin_convertvector(h, u32x4) << 16;  // the float32 bits
      const i32x4 mag = (i32x4)(u & 0x7fffffffu);
      const i32x4 isnan = mag > 0x7f800000;                     // -1 where NaN
      const f32x4 z = (f32x4)(u & ~(u32x4)isnan);               // NaN -> 0
      s += z, q += z * z, nan -= isnan;
      const i32x4 key = (i32x4)u < 0 ? -mag : mag;
      lo = (isnan | (lo < key)) ? lo : key;
      hi = (isnan | (hi > key)) ? hi : key;
    }
    Moments b4;
    for (int l = 0; l < 4; ++l) {
      b4.sum += s[l], b4.sumsq += q[l], b4.nan += uint64_t(nan[l]);
      if (lo[l] <= hi[l])  // the lane saw a value that is not NaN
        b4.min = std::min(b4.min, float_of_key(lo[l])), b4.max = std::max(b4.max, float_of_key(hi[l]));
    }
    b4.count = k;
    for (uint64_t j = k; j < end; ++j) b4.add(load_bf16(b + 2 * j));
    // Values past ~1e19 overflow the float sums of squares: such a block is summed in double.
    if (!std::isfinite(b4.sum) || !std::isfinite(b4.sumsq)) b4 = moments_scalar(load_bf16, 2, b, end);
    m.merge(b4);
  }
  return m;
}

Moments moments_of(const std::string& dtype, const unsigned char* p, uint64_t n) {
  if (dtype == "BF16") return moments_bf16(p, n);
  const auto [size, load] = element_of(dtype);
  return load ? moments_scalar(load, size, p, n) : Moments{};
}

// ---------------------------------------------------------------------------------------------
// --dump: the received tensors as one safetensors file, written in place with pwrite

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += char(c);
    else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else out += char(c);
  }
  return out + "\"";
}

class Dump {
 public:
  Dump(const std::string& path, const std::vector<TensorDesc>& tensors, const std::vector<size_t>& selected)
      : offsets_(tensors.size(), 0) {
    std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
    uint64_t end = 0;
    for (size_t i : selected) {
      const TensorDesc& t = tensors[i];
      offsets_[i] = end;
      header += "," + json_string(t.name) + ":{\"dtype\":\"" + t.dtype + "\",\"shape\":[";
      for (size_t d = 0; d < t.shape.size(); ++d) header += (d ? "," : "") + std::to_string(t.shape[d]);
      header += "],\"data_offsets\":[" + std::to_string(end) + "," + std::to_string(end + t.nbytes) + "]}";
      end += t.nbytes;
    }
    header += "}";
    header.append((8 - header.size() % 8) % 8, ' ');
    const uint64_t hlen = header.size();
    base_ = 8 + hlen;
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("open");
    unsigned char len[8];
    for (int b = 0; b < 8; ++b) len[b] = static_cast<unsigned char>(hlen >> (8 * b));
    put(len, 8, 0);
    put(header.data(), hlen, 8);
    if (::ftruncate(fd_, static_cast<off_t>(base_ + end)) != 0) fail("ftruncate");
  }
  ~Dump() {
    if (fd_ >= 0) ::close(fd_);
  }
  // Thread-safe: pwrite at disjoint offsets.
  void write(const TensorDesc& t, uint64_t offset, const void* data, uint64_t len) {
    put(data, len, base_ + offsets_[t.index] + offset);
  }
  void close() {
    if (::close(fd_) != 0) fail("close");
    fd_ = -1;
  }

 private:
  void put(const void* data, uint64_t len, uint64_t at) {
    const char* p = static_cast<const char*>(data);
    while (len > 0) {
      const ssize_t n = ::pwrite(fd_, p, len, static_cast<off_t>(at));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("pwrite");
      p += n, len -= uint64_t(n), at += uint64_t(n);
    }
  }
  [[noreturn]] static void fail(const char* what) {
    throw std::runtime_error(std::string("--dump: ") + what + ": " + std::strerror(errno));
  }
  std::vector<uint64_t> offsets_;  // by tensor index, from the first data byte
  uint64_t base_ = 0;
  int fd_ = -1;
};

// ---------------------------------------------------------------------------------------------
// --sink stream: statistics folded in range by range, nothing kept

class StatsSink final : public ckptconv::TensorSink {
 public:
  StatsSink(size_t tensors, Dump* dump, bool stats) : state_(tensors), dump_(dump), stats_(stats) {}

  // Called concurrently from the library's worker threads, for the same or different tensors.
  // A range may start or end inside an element (tensors copied unchanged are delivered in any
  // byte ranges): the whole elements are counted here, without a lock; the pieces of split
  // elements are kept per tensor until every byte of the element has arrived.
  void write(const TensorDesc& t, uint64_t offset, const void* data, uint64_t len) override {
    if (dump_) dump_->write(t, offset, data, len);
    const auto [size, load] = element_of(t.dtype);
    if (!load || !stats_ || len == 0) return;
    const auto* p = static_cast<const unsigned char*>(data);
    const uint64_t first = (offset + size - 1) / size, last = (offset + len) / size;  // whole: [first, last)
    Moments m;
    if (first < last) m = moments_of(t.dtype, p + (first * size - offset), last - first);
    State& s = state_[t.index];
    std::lock_guard lock(s.mu);
    s.moments.merge(m);
    if (first > last) {  // the range lies inside one element
      piece(s, t, offset, p, len);
      return;
    }
    if (offset % size) piece(s, t, offset, p, first * size - offset);
    if ((offset + len) % size) piece(s, t, last * size, p + (last * size - offset), offset + len - last * size);
  }

  void complete(const TensorDesc& t) override {
    State& s = state_[t.index];
    std::lock_guard lock(s.mu);
    s.done = true;
  }

  // After execute: tensor index -> statistics of every completed tensor.
  std::map<size_t, Moments> results() const {
    std::map<size_t, Moments> out;
    for (size_t i = 0; i < state_.size(); ++i)
      if (state_[i].done) out[i] = state_[i].moments;
    return out;
  }

 private:
  struct Piece {
    unsigned char bytes[4];
    unsigned have = 0;
  };
  struct State {
    std::mutex mu;
    Moments moments;
    std::map<uint64_t, Piece> pieces;  // by element index: elements split across ranges
    bool done = false;
  };

  static void piece(State& s, const TensorDesc& t, uint64_t offset, const unsigned char* p, uint64_t len) {
    const auto [size, load] = element_of(t.dtype);
    const uint64_t e = offset / size;
    Piece& pc = s.pieces[e];
    std::memcpy(pc.bytes + (offset - e * size), p, len);
    pc.have += unsigned(len);
    if (pc.have == size) {
      s.moments.add(load(pc.bytes));
      s.pieces.erase(e);
    }
  }

  std::vector<State> state_;  // by tensor index
  Dump* dump_;
  bool stats_;
};

// ---------------------------------------------------------------------------------------------

std::string shape_of(const TensorDesc& t) {
  std::string s = "[";
  for (size_t d = 0; d < t.shape.size(); ++d) s += (d ? ", " : "") + std::to_string(t.shape[d]);
  return s + "]";
}

bool grouped_expert(const TensorDesc& t) {
  auto ends_with = [&](const char* suffix) {
    const size_t n = std::strlen(suffix);
    return t.name.size() >= n && t.name.compare(t.name.size() - n, n, suffix) == 0;
  };
  return ends_with(".experts.gate_and_up_projs") || ends_with(".experts.down_projs");
}

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;  // Linux: KiB
}

int usage() {
  std::fprintf(stderr,
               "usage: expert_stats INPUT [--sink stream|memory] [--experts] [--threads N]\n"
               "                    [--memory-budget SIZE] [--dump FILE.safetensors] [--quiet] [--progress]\n"
               "                    [--no-stats]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string input, sink_kind = "stream", dump_path;
  bool experts_only = false, quiet = false, progress = false, no_stats = false;
  ckptconv::Options options;
  options.to = ckptconv::Direction::Native;
  options.dtype = ckptconv::OutDType::BF16;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw ckptconv::Error(ckptconv::ErrorKind::Usage, a + " needs a value");
        return argv[++i];
      };
      if (a == "--sink") sink_kind = value();
      else if (a == "--experts") experts_only = true;
      else if (a == "--threads") options.threads = unsigned(std::stoul(value()));
      else if (a == "--memory-budget") options.memory_budget = ckptconv::parse_size(value(), "--memory-budget");
      else if (a == "--dump") dump_path = value();
      else if (a == "--quiet") quiet = true;
      else if (a == "--no-stats") no_stats = quiet = true;
      else if (a == "--progress") progress = true;
      else if (a == "-h" || a == "--help") return usage(), 0;
      else if (!a.empty() && a[0] != '-' && input.empty()) input = a;
      else return usage();
    }
    if (input.empty() || (sink_kind != "stream" && sink_kind != "memory")) return usage();
    if (progress)  // called from a worker thread, a few times a second
      options.on_progress = [](const ckptconv::Progress& p) {
        std::fprintf(stderr, "\r%5.1f%% of %.2f GB", 100.0 * double(p.done_bytes) / double(std::max<uint64_t>(1, p.total_bytes)),
                     double(p.total_bytes) / 1e9);
      };

    // Plan: headers and config.json only. The plan names every output tensor.
    const auto conv = ckptconv::Conversion::plan(input, options);
    const std::vector<TensorDesc>& tensors = conv.tensors();
    ckptconv::Selection selection;
    for (const TensorDesc& t : tensors)
      if (!experts_only || grouped_expert(t)) selection.tensors.push_back(t.index);
    if (selection.tensors.empty()) {
      std::fprintf(stderr, "expert_stats: no tensor selected\n");
      return 1;
    }

    std::unique_ptr<Dump> dump;
    if (!dump_path.empty()) dump = std::make_unique<Dump>(dump_path, tensors, selection.tensors);

    std::map<size_t, Moments> stats;
    uint64_t held = 0, held_peak = 0;  // --sink memory: bytes of the tensors allocated and not yet freed
    ckptconv::RunStats run;
    const auto t0 = std::chrono::steady_clock::now();
    if (sink_kind == "stream") {
      StatsSink sink(tensors.size(), dump.get(), !no_stats);
      run = conv.execute(sink, selection);
      stats = sink.results();
    } else {
      std::mutex mu;  // the callbacks run on several worker threads at once
      ckptconv::MemorySink sink(
          [&](const TensorDesc& t) -> void* {
            if (t.nbytes == 0) return nullptr;
            void* data = std::malloc(t.nbytes);
            if (!data) throw std::bad_alloc();  // stops the run; execute rethrows it
            std::lock_guard lock(mu);
            held += t.nbytes, held_peak = std::max(held_peak, held);
            return data;
          },
          [&](const TensorDesc& t, void* data) {
            std::unique_ptr<void, decltype(&std::free)> owned(data, &std::free);
            const auto [size, load] = element_of(t.dtype);
            Moments m;
            if (load && t.nbytes && !no_stats) m = moments_of(t.dtype, static_cast<const unsigned char*>(data), t.nbytes / size);
            if (dump && t.nbytes) dump->write(t, 0, data, t.nbytes);
            owned.reset();
            std::lock_guard lock(mu);
            stats[t.index] = m;
            held -= t.nbytes;
          });
      run = conv.execute(sink, selection);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dump) dump->close();
    if (progress) std::fprintf(stderr, "\n");

    Moments total;
    uint64_t bytes = 0;
    for (const auto& [index, m] : stats) {
      const TensorDesc& t = tensors[index];
      total.merge(m);
      bytes += t.nbytes;
      if (quiet) continue;
      if (element_of(t.dtype).second)
        std::printf("%s %s %s count=%llu mean=%.6g std=%.6g min=%.6g max=%.6g nan=%llu\n", t.name.c_str(),
                    t.dtype.c_str(), shape_of(t).c_str(), (unsigned long long)m.count, m.mean(), m.stddev(), m.min,
                    m.max, (unsigned long long)m.nan);
      else
        std::printf("%s %s %s (no statistics for this dtype)\n", t.name.c_str(), t.dtype.c_str(), shape_of(t).c_str());
    }
    std::printf("total: tensors=%zu of %zu bytes=%llu elements=%llu nan=%llu mean=%.6g std=%.6g\n", stats.size(),
                selection.tensors.size(), (unsigned long long)bytes, (unsigned long long)total.count,
                (unsigned long long)total.nan, total.mean(), total.stddev());
    std::printf("sink=%s threads=%u isa=%s seconds=%.2f GB/s=%.2f memory_budget_mib=%.0f peak_rss_mib=%.1f",
                sink_kind.c_str(), run.threads, run.isa.c_str(), seconds, double(bytes) / 1e9 / seconds,
                double(options.memory_budget) / (1 << 20), peak_rss_mib());
    if (sink_kind == "memory") std::printf(" assembling_peak_mib=%.1f", double(held_peak) / (1 << 20));
    std::printf("\n");
    if (stats.size() != selection.tensors.size()) {
      std::fprintf(stderr, "expert_stats: %zu of %zu selected tensors completed\n", stats.size(),
                   selection.tensors.size());
      return 1;
    }
    return 0;
  } catch (const ckptconv::Error& e) {  // Usage, InvalidInput, Io, Other: one line each
    std::fprintf(stderr, "expert_stats: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "expert_stats: %s\n", e.what());
    return 1;
  }
}
