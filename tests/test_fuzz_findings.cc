// Regression tests for what the fuzzers (tests/fuzz, tests/FUZZING.md) found: each case is a
// minimized finding, and asserts the behaviour the contract asks for instead.
#include <catch2/catch.hpp>

#include <string>

#include "formats/checkpoint.h"
#include "formats/error.h"
#include "pipeline/plan.h"
#include "tests/support.h"

using namespace ckpt;
using Catch::Matchers::Contains;
using test::TensorSpec;

namespace {

const std::string kM2Config =
    R"({"architectures":["MiniMaxM2ForCausalLM"],"model_type":"minimax_m2","num_hidden_layers":1,)"
    R"("num_local_experts":1,"intermediate_size":2})";

// The error make_plan throws for `opt` on the checkpoint in `dir`, or "" when it plans.
std::string plan_error(const std::filesystem::path& dir, const PlanOptions& opt, ErrorKind& kind) {
  const Checkpoint ck = Checkpoint::open(dir);
  try {
    make_plan(ck, opt);
  } catch (const Error& e) {
    kind = e.kind();
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("integer experts are refused when planned, not half-way through the run", "[fuzz]") {
  // fuzz_plan: grouped experts are written in --dtype; no kernel casts I64 to BF16, and the
  // executor used to find that out mid-run as an internal error (exit 1).
  test::TempDir dir;
  const std::string p = "model.layers.0.block_sparse_moe.experts.0.";
  test::write_checkpoint(dir / "in", {{{p + "w1.weight", DType::I64, {2, 1}, std::string(16, '\0')},
                                       {p + "w2.weight", DType::I64, {1, 2}, std::string(16, '\0')},
                                       {p + "w3.weight", DType::I64, {2, 1}, std::string(16, '\0')}}},
                         kM2Config);
  PlanOptions opt;
  opt.direction = Direction::Native;
  ErrorKind kind = ErrorKind::Internal;
  const std::string err = plan_error(dir / "in", opt, kind);
  CHECK(kind == ErrorKind::InvalidInput);
  CHECK_THAT(err, Contains("'" + p + "w1.weight' is I64, which cannot be converted to BF16"));

  const auto r = test::run_cli("convert --in '" + (dir / "in").string() + "' --out '" + (dir / "out").string() +
                               "' --to native");
  CHECK(r.exit_code == 3);
  CHECK_THAT(r.err, Contains("cannot be converted to BF16"));
  CHECK(test::listing(dir / "out").empty());
}

TEST_CASE("FP8 export of an integer tensor is refused when planned", "[fuzz]") {
  // --quantize computes the exported values in F32 first; an I32 weight has no such cast.
  test::TempDir dir;
  test::write_checkpoint(dir / "in", {{{"model.layers.0.self_attn.q_proj.weight", DType::I32, {2, 2},
                                        std::string(16, '\0')}}});
  PlanOptions opt;
  opt.direction = Direction::Hf;
  opt.family = "minimax_m2";
  opt.quantize = QuantizeMode::Real;
  ErrorKind kind = ErrorKind::Internal;
  const std::string err = plan_error(dir / "in", opt, kind);
  CHECK(kind == ErrorKind::InvalidInput);
  CHECK_THAT(err, Contains("is I32, which cannot be converted to F32"));
  // Without --quantize the same tensor is copied unchanged.
  opt.quantize = QuantizeMode::None;
  CHECK(plan_error(dir / "in", opt, kind).empty());
}
