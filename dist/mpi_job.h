// The MPI side of a split conversion (built when CMake finds MPI): a process's place in
// MPI_COMM_WORLD and the few collectives `convert` needs — agreeing on the plan, the barrier
// before rank 0 publishes, sharing the outcome, and ending the whole job when a rank fails.
#pragma once

#include <cstdint>

#include "pipeline/partition.h"

namespace ckpt {

class MpiJob {
 public:
  MpiJob();   // MPI_Init
  ~MpiJob();  // MPI_Finalize
  MpiJob(const MpiJob&) = delete;
  MpiJob& operator=(const MpiJob&) = delete;

  Part part() const { return part_; }
  // The lowest rank whose `value` differs from rank 0's, or -1 when all agree. Collective.
  int first_differing(uint64_t value) const;
  void barrier() const;
  // Rank 0's `value`, on every rank. Collective.
  int broadcast(int value) const;
  // Ends every process of the job with `code`.
  [[noreturn]] void abort(int code) const;

 private:
  Part part_;
};

}  // namespace ckpt
