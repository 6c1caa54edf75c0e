// `ckptconv bench` end to end on a small checkpoint: the rounds it reports are the conversions it
// ran (bytes equal to a plain convert's, one run per round and thread count, medians of those
// runs), the floors are measured in the same rounds, and the report and plots are written.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>

#include "tests/support.h"

namespace fs = std::filesystem;
using ckpt::test::run_cli;

TEST_CASE("bench reports the conversions it ran, with their floors", "[bench][cli]") {
  ckpt::test::TempDir dir;
  const fs::path in = dir / "in";
  REQUIRE(run_cli("synth --family minimax_m2 --out " + in.string() + " --layers 1 --experts 4 --hidden 256 "
                  "--inter 128 --shards 2").exit_code == 0);
  const auto plain = run_cli("convert --in " + in.string() + " --out " + (dir / "plain").string() +
                             " --to native --json");
  REQUIRE(plain.exit_code == 0);
  const auto expect = nlohmann::json::parse(plain.out);
  const auto sharded = run_cli("convert --in " + in.string() + " --out " + (dir / "sharded").string() +
                               " --to native --json --max-shard-size 100kB");
  REQUIRE(sharded.exit_code == 0);
  const auto shards = nlohmann::json::parse(sharded.out)["shards"].get<uint64_t>();
  REQUIRE(shards > 1);

  const fs::path report = dir / "report.md";
  // Shards of at most 100 kB: convert's --max-shard-size passed through (default: one shard).
  const auto r = run_cli("bench --in " + in.string() + " --threads 1,2 --runs 3 --json --work " +
                         (dir / "work").string() + " --report " + report.string() + " --max-shard-size 100kB");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j["rounds"] == 3);
  REQUIRE(j["memcpy_gb_per_s"].size() == 3);
  for (const auto& g : j["memcpy_gb_per_s"]) CHECK(g.get<double>() > 0);
  CHECK(j["floors"].get<std::string>().find("right after a file of its size was removed") != std::string::npos);
  REQUIRE(j["points"].size() == 2);
  for (size_t i = 0; i < 2; ++i) {
    const auto& p = j["points"][i];
    INFO("point " << i);
    CHECK(p["threads"] == i + 1);
    CHECK(p["input_bytes"] == expect["input_bytes"]);  // the checkpoint's tensor bytes, as convert reads them
    CHECK(p["output_bytes"] == expect["output_bytes"]);
    CHECK(p["output_shards"] == shards);
    REQUIRE(p["runs"].size() == 3);
    std::vector<double> walls;
    for (const auto& run : p["runs"]) {
      walls.push_back(run["wall_seconds"].get<double>());
      CHECK(run["execute_seconds"].get<double>() < run["wall_seconds"].get<double>());
      CHECK(run["peak_rss_bytes"].get<uint64_t>() > 1'000'000);
    }
    std::sort(walls.begin(), walls.end());
    CHECK(p["median_wall_seconds"].get<double>() == walls[1]);
    CHECK(p["cp_seconds"].size() == 3);
    // The write floor: one per round, of the output's files (tensor bytes and headers), and the
    // ratio recomputed here from the medians the report gives.
    CHECK(p["floor_bytes"].get<uint64_t>() > p["output_bytes"].get<uint64_t>());
    REQUIRE(p["floor_seconds"].size() == 3);
    std::vector<double> floors;
    for (const auto& f : p["floor_seconds"]) floors.push_back(f.get<double>());
    CHECK(*std::min_element(floors.begin(), floors.end()) > 0);
    std::sort(floors.begin(), floors.end());
    CHECK(p["median_floor_seconds"].get<double>() == floors[1]);
    CHECK(p["convert_over_floor"].get<double>() == Approx(walls[1] / floors[1]));
    CHECK(p["convert_over_cp"].get<double>() ==
          Approx(walls[1] / p["median_cp_seconds"].get<double>()));
    double shares = 0;
    for (const auto& [stage, share] : p["stage_share"].items()) shares += share.get<double>();
    CHECK(shares == Approx(1.0));
    CHECK(p["output_gb_per_s"].get<double>() ==
          Approx(p["output_bytes"].get<double>() / walls[1] / 1e9));
  }
  // The scratch outputs are gone; the report holds one table row per point.
  CHECK(ckpt::test::listing(dir / "work").empty());
  const std::string md = ckpt::test::read_bytes(report);
  CHECK(std::count(md.begin(), md.end(), '\n') > 5);
  CHECK(md.find("| 1 |") != std::string::npos);
  CHECK(md.find("| 2 |") != std::string::npos);
  CHECK(md.find("| conv/floor |") != std::string::npos);
  CHECK(md.find("after a warm-up") != std::string::npos);
  CHECK(md.find("Floors, in every round after its conversions") != std::string::npos);
  CHECK(md.find("memcpy: ") != std::string::npos);
}

TEST_CASE("bench refuses bad lists, and floors without an output", "[bench][cli]") {
  CHECK(run_cli("bench --threads 1,,2 --no-floor").exit_code == 2);
  CHECK(run_cli("bench --threads two").exit_code == 2);
  CHECK(run_cli("bench --sizes 1XB").exit_code == 2);
  CHECK(run_cli("bench --sink null").exit_code == 2);
}
