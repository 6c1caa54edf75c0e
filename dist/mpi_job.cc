#include "dist/mpi_job.h"

#include <mpi.h>

#include <cstdlib>
#include <vector>

#include "formats/error.h"

namespace ckpt {

MpiJob::MpiJob() {
  int provided = 0;
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
    fail(ErrorKind::Internal, "MPI_Init failed");
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  part_ = {static_cast<uint32_t>(rank), static_cast<uint32_t>(size)};
}

MpiJob::~MpiJob() { MPI_Finalize(); }

int MpiJob::first_differing(uint64_t value) const {
  std::vector<uint64_t> all(part_.world);
  MPI_Allgather(&value, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD);
  for (uint32_t r = 1; r < part_.world; ++r)
    if (all[r] != all[0]) return static_cast<int>(r);
  return -1;
}

void MpiJob::barrier() const { MPI_Barrier(MPI_COMM_WORLD); }

int MpiJob::broadcast(int value) const {
  MPI_Bcast(&value, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return value;
}

void MpiJob::abort(int code) const {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; should an implementation, the process still ends
}

}  // namespace ckpt
