// One writer per output directory (pipeline/writer_lock.h): a live holder of the directory's
// flock makes a second run stop with one line naming it, before anything is written; the file a
// dead holder leaves is no obstacle; a finished run leaves no lock behind.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "pipeline/writer_lock.h"
#include "support.h"

namespace fs = std::filesystem;
using ckpt::test::run_cli;

namespace {

bool one_line(const std::string& s) { return !s.empty() && s.find('\n') == s.size() - 1; }

}  // namespace

TEST_CASE("lock: a second writer is refused naming the holder; a stale lock is no obstacle", "[lock]") {
  ckpt::test::TempDir tmp;
  const fs::path in = tmp / "in", out = tmp / "out";
  REQUIRE(run_cli("synth --family minimax_m2 --out " + in.string()).exit_code == 0);
  fs::create_directories(out);
  const fs::path lock = out / ckpt::kLockName;
  {
    // Another writer, alive: holds the flock and has written its name.
    const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(flock(fd, LOCK_EX | LOCK_NB) == 0);
    const std::string who = "host testhost, pid 4242\n";
    REQUIRE(::write(fd, who.data(), who.size()) == static_cast<ssize_t>(who.size()));
    const auto r = run_cli("convert --in " + in.string() + " --out " + out.string() + " --to native");
    CHECK(r.exit_code == 2);
    CHECK(one_line(r.err));
    CHECK_THAT(r.err, Catch::Contains("another ckptconv is writing it") && Catch::Contains("host testhost, pid 4242"));
    CHECK(ckpt::test::listing(out) == std::vector<std::string>{ckpt::kLockName});  // nothing of the second run
    ::close(fd);  // the holder dies; its file stays
  }
  REQUIRE(fs::exists(lock));
  const auto r = run_cli("convert --in " + in.string() + " --out " + out.string() + " --to native");
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK_FALSE(fs::exists(lock));
  CHECK(fs::exists(out / "model.safetensors"));
}

TEST_CASE("lock: the lock of a directory is exclusive within one process too, and released on scope exit",
          "[lock]") {
  ckpt::test::TempDir tmp;
  {
    ckpt::WriterLock a(tmp.path());
    CHECK_THROWS_WITH(ckpt::WriterLock(tmp.path()), Catch::Contains("another ckptconv is writing it") &&
                                                         Catch::Contains("pid " + std::to_string(getpid())));
  }
  CHECK_FALSE(fs::exists(tmp / ckpt::kLockName));
  ckpt::WriterLock again(tmp.path());  // free once the first is gone
}
