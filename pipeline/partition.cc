#include "pipeline/partition.h"

#include <algorithm>
#include <numeric>
#include <queue>

#include "formats/error.h"

namespace ckpt {

std::vector<uint32_t> partition_shards(const Plan& plan, uint32_t world) {
  if (world == 0) fail_usage("the world size must be at least 1");
  std::vector<size_t> order(plan.shards.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return plan.shards[a].file_size > plan.shards[b].file_size; });
  // (bytes so far, rank): the least loaded rank on top, the lowest one among equals.
  using Load = std::pair<uint64_t, uint32_t>;
  std::priority_queue<Load, std::vector<Load>, std::greater<>> ranks;
  for (uint32_t r = 0; r < world; ++r) ranks.push({0, r});
  std::vector<uint32_t> rank_of(plan.shards.size());
  for (size_t s : order) {
    auto [bytes, r] = ranks.top();
    ranks.pop();
    rank_of[s] = r;
    ranks.push({bytes + plan.shards[s].file_size, r});
  }
  return rank_of;
}

Balance partition_balance(const Plan& plan, const std::vector<uint32_t>& rank_of_shard, uint32_t world) {
  Balance b;
  b.bytes.assign(world, 0);
  for (size_t s = 0; s < rank_of_shard.size(); ++s) b.bytes[rank_of_shard[s]] += plan.shards[s].file_size;
  b.max = world ? *std::max_element(b.bytes.begin(), b.bytes.end()) : 0;
  const uint64_t total = std::accumulate(b.bytes.begin(), b.bytes.end(), uint64_t{0});
  b.mean = world ? static_cast<double>(total) / world : 0;
  b.ratio = b.mean > 0 ? static_cast<double>(b.max) / b.mean : 1;
  return b;
}

}  // namespace ckpt
