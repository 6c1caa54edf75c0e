#include "dist/launch.h"

#include <charconv>

#include "formats/error.h"

namespace ckpt {

namespace {

std::optional<uint32_t> number(const Getenv& env, const char* name) {
  const char* v = env(name);
  if (!v || !*v) return std::nullopt;
  uint32_t n = 0;
  const char* end = v + std::char_traits<char>::length(v);
  const auto [p, ec] = std::from_chars(v, end, n);
  if (ec != std::errc() || p != end) fail_usage("{}={}: not a rank or process count", name, v);
  return n;
}

Launch ranks(uint32_t rank, uint32_t world, std::string source) {
  if (world == 0) fail_usage("{}: the world size must be at least 1", source);
  if (rank >= world) fail_usage("{}: rank {} is not below the world size {}", source, rank, world);
  if (world == 1) return {};
  return {Launch::Kind::Ranks, {rank, world}, std::move(source)};
}

}  // namespace

Launch detect_launch(std::optional<uint32_t> rank, std::optional<uint32_t> world, const Getenv& env) {
  if (rank || world) {
    if (!world) fail_usage("--rank needs --world-size");
    return ranks(rank.value_or(0), *world, "--rank/--world-size");
  }
  // OpenMPI's own variable, MPICH's and Slurm's PMI2, PMIx: any one means an MPI launch.
  const auto mpi_size = number(env, "OMPI_COMM_WORLD_SIZE") ? number(env, "OMPI_COMM_WORLD_SIZE")
                                                             : number(env, "PMI_SIZE");
  if (mpi_size || env("PMIX_RANK")) {
    if (mpi_size == 1u) return {};
    return {Launch::Kind::Mpi, {}, "an MPI launcher"};
  }
  const auto r = number(env, "RANK"), n = number(env, "WORLD_SIZE");
  if (r && n) return ranks(*r, *n, "RANK/WORLD_SIZE");
  const auto task = number(env, "SLURM_ARRAY_TASK_ID"), count = number(env, "SLURM_ARRAY_TASK_COUNT");
  if (task && count) {
    const uint32_t min = number(env, "SLURM_ARRAY_TASK_MIN").value_or(0);
    if (*task < min) fail_usage("SLURM_ARRAY_TASK_ID={} is below SLURM_ARRAY_TASK_MIN={}", *task, min);
    return ranks(*task - min, *count, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT");
  }
  return {};
}

std::optional<uint32_t> local_rank(const Getenv& env) {
  for (const char* name : {"LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const auto n = number(env, name)) return n;
  return std::nullopt;
}

}  // namespace ckpt
