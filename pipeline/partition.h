// A conversion split across processes (MPI ranks, torchrun workers, Slurm array tasks): every
// process plans the same conversion from the headers, and the plan's output shards are dealt to
// ranks by bytes so that each writes about the same amount. The partition depends only on the
// plan and the world size, so every rank computes it alone and all of them agree.
#pragma once

#include <cstdint>
#include <vector>

#include "pipeline/plan.h"

namespace ckpt {

// One process's share: rank `rank` of `world`.
struct Part {
  uint32_t rank = 0, world = 1;
};

// The rank of each of the plan's shards: largest shards first, each to the rank with the fewest
// bytes so far (the lowest rank on a tie). With more ranks than shards some ranks get none.
std::vector<uint32_t> partition_shards(const Plan& plan, uint32_t world);

// Bytes per rank of a partition, and how even it is: max / mean (1.0 is perfect).
struct Balance {
  std::vector<uint64_t> bytes;
  uint64_t max = 0;
  double mean = 0, ratio = 1;
};
Balance partition_balance(const Plan& plan, const std::vector<uint32_t>& rank_of_shard, uint32_t world);

}  // namespace ckpt
