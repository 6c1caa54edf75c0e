#include "pipeline/verify.h"

#include <fmt/format.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>

#include "transforms/fp8.h"

namespace ckpt {

namespace {

double element(DType t, const uint8_t* p, uint64_t i) {
  switch (t) {
    case DType::F64: { double d; std::memcpy(&d, p + 8 * i, 8); return d; }
    case DType::F32: { float f; std::memcpy(&f, p + 4 * i, 4); return f; }
    case DType::F16: { uint16_t h; std::memcpy(&h, p + 2 * i, 2); return f16_to_float(h); }
    case DType::BF16: { uint16_t h; std::memcpy(&h, p + 2 * i, 2); return bf16_to_float(h); }
    case DType::F8_E4M3: return fp8_to_float(p[i], Fp8::E4M3);
    case DType::F8_E5M2: return fp8_to_float(p[i], Fp8::E5M2);
    default: return 0;
  }
}

struct Outcome {
  std::string problem;
  double max_diff = 0;
};

// Compares two tensors of equal dtype and shape.
Outcome compare(const TensorRef& x, const TensorRef& y, const VerifyOptions& opt) {
  Outcome o;
  const DType t = x.info->dtype;
  const uint8_t* a = x.file->data(*x.info);
  const uint8_t* b = y.file->data(*y.info);
  const uint64_t nbytes = x.info->nbytes();
  const bool exact = !opt.atol || !is_float(t);
  if (std::memcmp(a, b, nbytes) == 0) return o;
  if (!is_float(t)) {  // byte-exact; the element holding the first differing byte's first bit
    uint64_t byte = 0;
    while (a[byte] == b[byte]) ++byte;
    o.problem = fmt::format("'{}': bytes differ (first at element {})", x.name(), bytes_elements(t, byte));
    return o;
  }
  const uint64_t n = x.info->numel();
  uint64_t bad = 0, first_bad = 0;
  double first_a = 0, first_b = 0;
  const uint64_t es = dtype_size(t);
  for (uint64_t i = 0; i < n; ++i) {
    if (std::memcmp(a + i * es, b + i * es, es) == 0) continue;
    const double va = element(t, a, i), vb = element(t, b, i);
    if (std::isnan(va) && std::isnan(vb)) continue;
    bool same = false;
    if (!exact && !std::isnan(va) && !std::isnan(vb)) {
      const double d = (std::isinf(va) || std::isinf(vb)) ? (va == vb ? 0 : INFINITY) : std::fabs(va - vb);
      o.max_diff = std::max(o.max_diff, d);
      same = d <= *opt.atol;
    }
    if (!same && bad++ == 0) first_bad = i, first_a = va, first_b = vb;
  }
  if (bad)
    o.problem = fmt::format("'{}': {} of {} elements differ (first at element {}: {} vs {})", x.name(),
                            bad, n, first_bad, first_a, first_b);
  return o;
}

}  // namespace

VerifyReport verify(const Checkpoint& a, const Checkpoint& b, const VerifyOptions& opt) {
  VerifyReport r;
  std::vector<std::pair<const TensorRef*, const TensorRef*>> pairs;
  for (const auto& t : a.tensors()) {
    const TensorRef* u = b.find(t.name());
    if (!u) {
      r.problems.push_back(fmt::format("'{}': only in {}", t.name(), a.dir().string()));
    } else if (u->info->dtype != t.info->dtype || u->info->shape != t.info->shape) {
      r.problems.push_back(fmt::format("'{}': {} {} vs {} {}", t.name(), dtype_name(t.info->dtype),
                                       shape_str(t.info->shape), dtype_name(u->info->dtype),
                                       shape_str(u->info->shape)));
    } else {
      pairs.emplace_back(&t, u);
    }
  }
  for (const auto& t : b.tensors())
    if (!a.find(t.name())) r.problems.push_back(fmt::format("'{}': only in {}", t.name(), b.dir().string()));

  std::mutex mu;
  oneapi::tbb::task_arena arena(opt.threads ? static_cast<int>(opt.threads) : oneapi::tbb::task_arena::automatic);
  arena.execute([&] {
    oneapi::tbb::parallel_for(size_t{0}, pairs.size(), [&](size_t i) {
      const Outcome o = compare(*pairs[i].first, *pairs[i].second, opt);
      std::lock_guard lock(mu);
      ++r.compared;
      r.bytes += pairs[i].first->info->nbytes();
      r.max_abs_diff = std::max(r.max_abs_diff, o.max_diff);
      if (o.problem.empty()) ++r.matched;
      else r.problems.push_back(o.problem);
    });
  });
  std::sort(r.problems.begin(), r.problems.end());
  return r;
}

}  // namespace ckpt
