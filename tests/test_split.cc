// A conversion split across processes (pipeline/partition.h, dist/launch.h): the partition by
// bytes on hand-computed cases, where ranks come from, the locks ranks share, and — in one
// process, rank after rank — every world size publishing the bytes a single run writes.
// tests/split_test.sh runs the same under mpirun and as separate processes, with kills.
#include <catch2/catch.hpp>

#include <map>
#include <string>

#include "cuda/choice.h"
#include "dist/launch.h"
#include "formats/error.h"
#include "pipeline/convert.h"
#include "pipeline/manifest.h"
#include "pipeline/partition.h"
#include "pipeline/writer_lock.h"
#include "support.h"

namespace fs = std::filesystem;
using namespace ckpt;

namespace {

Plan plan_of_sizes(const std::vector<uint64_t>& sizes) {
  Plan p;
  for (uint64_t s : sizes) {
    ShardLayout l;
    l.file_size = s;
    p.shards.push_back(l);
  }
  return p;
}

Getenv env_of(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const char* name) -> const char* {
    const auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
}

}  // namespace

TEST_CASE("split: shards go largest first to the least-loaded rank", "[split]") {
  SECTION("an exact fit") {
    // 10→r0, 9→r1, 8→r2, 7→r2 (8 is least), 6→r1 (9), 5→r0 (10): 15 bytes each.
    const Plan p = plan_of_sizes({10, 9, 8, 7, 6, 5});
    const auto ranks = partition_shards(p, 3);
    CHECK(ranks == std::vector<uint32_t>{0, 1, 2, 2, 1, 0});
    const Balance b = partition_balance(p, ranks, 3);
    CHECK(b.bytes == std::vector<uint64_t>{15, 15, 15});
    CHECK(b.ratio == 1.0);
  }
  SECTION("ties go to the lower rank, in shard order") {
    const Plan p = plan_of_sizes({4, 4, 4, 4});
    const auto ranks = partition_shards(p, 3);
    CHECK(ranks == std::vector<uint32_t>{0, 1, 2, 0});
    const Balance b = partition_balance(p, ranks, 3);
    CHECK(b.max == 8);
    CHECK(b.ratio == Approx(8.0 / (16.0 / 3)));
  }
  SECTION("more ranks than shards: the extra ranks get none") {
    const Plan p = plan_of_sizes({3, 7});
    const auto ranks = partition_shards(p, 5);
    CHECK(ranks == std::vector<uint32_t>{1, 0});
    CHECK(partition_balance(p, ranks, 5).bytes == std::vector<uint64_t>{7, 3, 0, 0, 0});
  }
  SECTION("one rank takes everything") {
    CHECK(partition_shards(plan_of_sizes({1, 2, 3}), 1) == std::vector<uint32_t>{0, 0, 0});
  }
  CHECK_THROWS_AS(partition_shards(plan_of_sizes({1}), 0), Error);
}

TEST_CASE("split: where ranks come from", "[split]") {
  const auto none = env_of({});
  CHECK(detect_launch(std::nullopt, std::nullopt, none).kind == Launch::Kind::Single);
  SECTION("the command line wins over the environment, and a world of 1 is a single run") {
    const auto env = env_of({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_SIZE", "4"}});
    const Launch l = detect_launch(2, 3, env);
    CHECK(l.kind == Launch::Kind::Ranks);
    CHECK((l.part.rank == 2 && l.part.world == 3));
    CHECK(detect_launch(0, 1, env).kind == Launch::Kind::Single);
    CHECK_THROWS_WITH(detect_launch(1, std::nullopt, none), Catch::Contains("--rank needs --world-size"));
    CHECK_THROWS_WITH(detect_launch(3, 3, none), Catch::Contains("rank 3 is not below the world size 3"));
  }
  SECTION("an MPI launcher's variables before torchrun's") {
    CHECK(detect_launch({}, {}, env_of({{"OMPI_COMM_WORLD_SIZE", "2"}, {"RANK", "0"}, {"WORLD_SIZE", "2"}})).kind ==
          Launch::Kind::Mpi);
    CHECK(detect_launch({}, {}, env_of({{"PMIX_RANK", "0"}})).kind == Launch::Kind::Mpi);
    CHECK(detect_launch({}, {}, env_of({{"PMI_SIZE", "1"}})).kind == Launch::Kind::Single);
  }
  SECTION("RANK/WORLD_SIZE, then a Slurm job array relative to its first task") {
    const Launch t = detect_launch({}, {}, env_of({{"RANK", "1"}, {"WORLD_SIZE", "2"}}));
    CHECK((t.kind == Launch::Kind::Ranks && t.part.rank == 1 && t.part.world == 2));
    const Launch s = detect_launch(
        {}, {}, env_of({{"SLURM_ARRAY_TASK_ID", "12"}, {"SLURM_ARRAY_TASK_MIN", "10"}, {"SLURM_ARRAY_TASK_COUNT", "4"}}));
    CHECK((s.kind == Launch::Kind::Ranks && s.part.rank == 2 && s.part.world == 4));
    CHECK(detect_launch({}, {}, env_of({{"RANK", "0"}})).kind == Launch::Kind::Single);  // no world: not split
    CHECK_THROWS_WITH(detect_launch({}, {}, env_of({{"RANK", "x"}, {"WORLD_SIZE", "2"}})),
                      Catch::Contains("RANK=x: not a rank"));
  }
}

TEST_CASE("split: each rank of a multi-GPU node takes its own GPU", "[split]") {
  CHECK_FALSE(local_rank(env_of({})));
  CHECK(local_rank(env_of({{"LOCAL_RANK", "3"}, {"SLURM_LOCALID", "5"}})) == 3u);  // torchrun's first
  CHECK(local_rank(env_of({{"OMPI_COMM_WORLD_LOCAL_RANK", "6"}})) == 6u);
  CHECK(local_rank(env_of({{"MPI_LOCALRANKID", "1"}})) == 1u);
  CHECK(local_rank(env_of({{"SLURM_LOCALID", "2"}})) == 2u);
  CHECK_THROWS_AS(local_rank(env_of({{"LOCAL_RANK", "x"}})), Error);
  // cuda/choice.h: bare "cuda" and "auto" take local_rank mod the node's devices.
  CHECK(device_for(std::nullopt, 8) == 0);
  CHECK(device_for(5u, 8) == 5);
  CHECK(device_for(11u, 8) == 3);
  CHECK(device_for(3u, 0) == 0);  // no device: the choice fails later, saying why
}

TEST_CASE("split: ranks share the directory lock; a single writer or a second same rank is refused", "[split]") {
  test::TempDir tmp;
  const fs::path d = tmp.path();
  {
    WriterLock a(d, kLockName, WriterLock::Mode::Shared), b(d, kLockName, WriterLock::Mode::Shared);
    WriterLock r0(d, rank_lock_name(0)), r1(d, rank_lock_name(1));
    CHECK_THROWS_WITH(WriterLock(d), Catch::Contains("another ckptconv is writing it") &&
                                         Catch::Contains("the ranks of a split conversion"));
    CHECK_THROWS_WITH(WriterLock(d, rank_lock_name(1)), Catch::Contains("pid " + std::to_string(getpid())));
  }
  CHECK(fs::exists(d / kLockName));  // shared holders leave the file to each other
  CHECK_FALSE(fs::exists(d / rank_lock_name(0)));
  {
    WriterLock single(d);
    CHECK_THROWS_WITH(WriterLock(d, kLockName, WriterLock::Mode::Shared), Catch::Contains("another ckptconv"));
  }
  CHECK_FALSE(fs::exists(d / kLockName));
}

namespace {

void synth(const fs::path& out, const std::string& family, const std::string& extra) {
  const auto r = test::run_cli("synth --family " + family + " --out " + out.string() + " " + extra);
  REQUIRE(r.exit_code == 0);
}

// A small MiniMax-M2 checkpoint at `in`, and the options of a native conversion of it into
// shards of 200 kB (several per rank).
PlanOptions small_native_input(const fs::path& in) {
  synth(in, "minimax_m2", "--layers 2 --experts 4 --hidden 256 --inter 128 --shards 2");
  PlanOptions po;
  po.direction = Direction::Native;
  po.max_shard_size = 200'000;
  return po;
}

// Every regular file under `dir`, relative path → bytes.
std::map<std::string, std::string> files_of(const fs::path& dir) {
  std::map<std::string, std::string> m;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) m[fs::relative(e.path(), dir).string()] = test::read_bytes(e.path());
  return m;
}

}  // namespace

TEST_CASE("split: every world size publishes the bytes of a single run", "[split]") {
  test::TempDir tmp;
  PlanOptions po = small_native_input(tmp / "in");
  po.ep_size = GENERATE(1u, 2u);  // 2: every expert-parallel rank, in rank-0000/ and rank-0001/
  INFO("ep_size " << po.ep_size);
  const Conversion c = Conversion::plan(tmp / "in", po);
  REQUIRE(c.plan().shards.size() >= 4);
  c.write(tmp / "ref", {}, {});
  const auto expected = files_of(tmp / "ref");
  for (uint32_t world : {2u, 3u, static_cast<uint32_t>(c.plan().shards.size() + 2)}) {
    INFO("world " << world);
    const fs::path out = tmp / ("out" + std::to_string(world) + "-" + std::to_string(po.ep_size));
    for (uint32_t r = 0; r < world; ++r) {
      if (r == world - 1)  // publishing before the last rank is complete names it, and publishes nothing
        CHECK_THROWS_WITH(publish_split(out, {}), Catch::Contains(fmt::format("rank {} of {} has not started", r, world)));
      WriteOptions wo;
      wo.part = Part{r, world};
      c.write(out, wo, {});
    }
    CHECK_FALSE(fs::exists(out / "config.json"));
    CHECK(publish_split(out, {}) == world);
    CHECK(files_of(out) == expected);  // no record, lock or temporary file left either
  }
}

TEST_CASE("split: a rank refuses a directory whose sibling ranks converted something else", "[split]") {
  test::TempDir tmp;
  PlanOptions po = small_native_input(tmp / "in");
  WriteOptions wo;
  wo.part = Part{0, 2};
  Conversion::plan(tmp / "in", po).write(tmp / "out", wo, {});
  po.max_shard_size = 300'000;
  wo.part = Part{1, 2};
  const Conversion other = Conversion::plan(tmp / "in", po);
  try {
    other.write(tmp / "out", wo, {});
    FAIL("rank 1 wrote a different conversion beside rank 0's");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::InvalidInput);
    CHECK_THAT(e.what(), Catch::Contains("(rank 0 of 2) records another conversion") &&
                             Catch::Contains("--max-shard-size was 200000"));
  }
  // Published by a record's own options, rank 1 being missing is what stops it.
  CHECK_THROWS_WITH(publish_split(tmp / "out", {}), Catch::Contains("rank 1 of 2 has not started"));
}

TEST_CASE("split: a job resumed with another world size keeps what the first one finished", "[split]") {
  test::TempDir tmp;
  PlanOptions po = small_native_input(tmp / "in");
  const Conversion c = Conversion::plan(tmp / "in", po);
  c.write(tmp / "ref", {}, {});
  WriteOptions wo;
  wo.part = Part{0, 3};  // the first job: only its rank 0 finished
  c.write(tmp / "out", wo, {});
  wo.resume = true;
  size_t kept = 0;
  for (uint32_t r = 0; r < 2; ++r) {
    wo.part = Part{r, 2};
    kept += c.write(tmp / "out", wo, {}).reused_shards;
  }
  const auto first_job = partition_shards(c.plan(), 3);
  CHECK(kept == static_cast<size_t>(std::count(first_job.begin(), first_job.end(), 0u)));
  CHECK(publish_split(tmp / "out", {}) == 2);  // the complete world, not the older one
  CHECK(files_of(tmp / "out") == files_of(tmp / "ref"));
}
