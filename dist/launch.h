// How this process was started, for `convert`: alone; as one of N processes told their rank on
// the command line or by the environment (torchrun's RANK/WORLD_SIZE, a Slurm job array); or by
// an MPI launcher (mpirun, srun through PMI/PMIx), whose ranks then come from MPI itself. Read by
// the command line only: the library never looks at the environment.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "pipeline/partition.h"

namespace ckpt {

struct Launch {
  enum class Kind : uint8_t { Single, Ranks, Mpi };
  Kind kind = Kind::Single;
  Part part;           // Ranks: from `source`; Mpi: known once MPI is initialized
  std::string source;  // where the ranks came from, for messages
};

using Getenv = std::function<const char*(const char*)>;

// Command-line --rank/--world-size first (a world of 1 means a single run, whatever the
// environment says); then an MPI launcher's variables; then RANK/WORLD_SIZE; then a Slurm job
// array (rank SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT). Usage error
// for a rank outside its world or a variable that is not a number.
Launch detect_launch(std::optional<uint32_t> rank, std::optional<uint32_t> world, const Getenv& env);

// This process's rank among those of its node, when the launcher says — torchrun's LOCAL_RANK,
// OpenMPI's OMPI_COMM_WORLD_LOCAL_RANK, MPICH's MPI_LOCALRANKID, srun's SLURM_LOCALID, first found
// — so that the ranks of a multi-GPU node each take their own GPU (cuda/choice.h).
std::optional<uint32_t> local_rank(const Getenv& env);

}  // namespace ckpt
