// The conformance cases (copied from ../shared/conformance into tests/data/conformance, see its
// README) run through the CLI exactly as cases.tsv says, on every kernel ISA this CPU has; each
// output must match the reference implementation's by the conformance rule (library `verify`).
#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "formats/checkpoint.h"
#include "pipeline/verify.h"
#include "tests/support.h"
#include "transforms/kernels.h"

using namespace ckpt;
namespace fs = std::filesystem;

namespace {

struct Case {
  std::string name, input, args;
};

std::vector<Case> load_cases() {
  const fs::path dir = fs::path(CKPT_TEST_DATA) / "conformance";
  std::ifstream in(dir / "cases.tsv");
  std::vector<Case> cases;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ss(line);
    Case c;
    std::getline(ss, c.name, '\t');
    std::getline(ss, c.input, '\t');
    std::getline(ss, c.args);
    cases.push_back(c);
  }
  return cases;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}

}  // namespace

TEST_CASE("conformance cases reproduce the reference bit for bit", "[conformance]") {
  const fs::path dir = fs::path(CKPT_TEST_DATA) / "conformance";
  const auto cases = load_cases();
  REQUIRE(cases.size() >= 34);
  for (Isa isa : supported_isas()) {
    for (const auto& c : cases) {
      test::TempDir tmp;
      const fs::path out = tmp / "out";
      std::string args = replace_all(c.args, "{in}", (dir / c.input).string());
      args = replace_all(args, "{out}", out.string());
      INFO("case " << c.name << " isa " << isa_name(isa));
      // run_cli starts a shell, which passes the environment on to the binary.
      ::setenv("CKPT_ISA", std::string(isa_name(isa)).c_str(), 1);
      const auto r = test::run_cli(args);
      ::unsetenv("CKPT_ISA");
      INFO(r.err);
      REQUIRE(r.exit_code == 0);
      const fs::path expected = dir / c.name.substr(0, c.name.find('.')) / "expected" / c.name.substr(c.name.find('.') + 1);
      const auto report = verify(Checkpoint::open(expected), Checkpoint::open(out), {});
      std::string problems;
      for (const auto& p : report.problems) problems += p + "\n";
      INFO(problems);
      CHECK(report.problems.empty());
      CHECK(report.compared > 0);
    }
  }
}
