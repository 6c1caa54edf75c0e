// Tests of full disks and failing writes, on small filesystems the tests mount themselves (tmpfs
// with a size or inode limit, remounted read-only) and under a file-size limit: the free-space
// check refuses a plan that cannot fit, with both numbers; a write that fails after it ends the
// run with exit 4 and one line on stderr, and leaves no file at all behind — no shard, no
// temporary file, no manifest, not even the output directory the run created. Mounting needs
// root or CAP_SYS_ADMIN; without them the tests fail saying so (run them under `unshare -rm`).
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "tests/support.h"

using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using ckpt::test::read_bytes;
using ckpt::test::RunResult;
using ckpt::test::TempDir;
namespace fs = std::filesystem;

namespace {

// A tmpfs mounted for the test's lifetime, unmounted however the test ends.
class Tmpfs {
 public:
  Tmpfs(fs::path dir, const std::string& options) : dir_(std::move(dir)) {
    fs::create_directories(dir_);
    if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, options.c_str()) != 0) {
      const int err = errno;
      FAIL("cannot mount a tmpfs at " << dir_ << " (" << std::strerror(err)
                                      << "): these tests need root or CAP_SYS_ADMIN; "
                                         "run them as `unshare -rm ckpt_tests \"[diskfull]\"`");
    }
  }
  ~Tmpfs() { ::umount2(dir_.c_str(), MNT_DETACH); }
  Tmpfs(const Tmpfs&) = delete;
  Tmpfs& operator=(const Tmpfs&) = delete;

  void remount_read_only() const {
    REQUIRE(::mount(nullptr, dir_.c_str(), nullptr, MS_REMOUNT | MS_RDONLY, nullptr) == 0);
  }
  uint64_t available() const {
    struct statvfs st{};
    REQUIRE(::statvfs(dir_.c_str(), &st) == 0);
    return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  }
  const fs::path& path() const { return dir_; }

 private:
  fs::path dir_;
};

// Every entry under `dir`, directories included, relative to it.
std::vector<std::string> everything(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) out.push_back(fs::relative(e.path(), dir).string());
  std::sort(out.begin(), out.end());
  return out;
}

// A failed run: exit 4 and exactly one line on stderr.
void require_io_failure(const RunResult& r) {
  INFO(r.err);
  REQUIRE(r.exit_code == 4);
  CHECK_THAT(r.err, StartsWith("ckptconv: "));
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
}

// A small MiniMax-M2 checkpoint and its native conversion in six shards of ~2 MB, made on the
// ordinary temporary filesystem as the reference.
struct Fixture {
  TempDir tmp;
  fs::path in = tmp / "in", ref = tmp / "ref";
  uint64_t shard_blocks = 0;  // the shards' sizes rounded up to 4 KiB pages, summed
  Fixture() {
    REQUIRE(ckpt::test::run_cli("synth --family minimax_m2 --out " + in.string() +
                                " --layers 2 --experts 4 --hidden 512 --inter 256 --shards 2")
                .exit_code == 0);
    REQUIRE(run(ref).exit_code == 0);
    size_t shards = 0;
    for (const auto& e : fs::directory_iterator(ref))
      if (e.path().extension() == ".safetensors") {
        shard_blocks += (fs::file_size(e.path()) + 4095) / 4096 * 4096;
        ++shards;
      }
    REQUIRE(shards >= 4);
  }
  RunResult run(const fs::path& out, const std::string& extra = "") const {
    return ckpt::test::run_cli("convert --in " + in.string() + " --out " + out.string() +
                               " --to native --max-shard-size 2MB --threads 2 " + extra);
  }
  // Converts onto a fresh tmpfs mounted at `mnt` with `options`. True when the conversion fitted
  // (its output must equal the reference); otherwise it must have failed as a full disk, one line
  // and nothing left, and `err` holds its message.
  bool fits(const fs::path& mnt, const std::string& options, std::string& err) const {
    Tmpfs disk(mnt, options);
    const auto r = run(disk.path() / "out");
    if (r.exit_code == 0) {
      require_reference(disk.path() / "out");
      return true;
    }
    require_io_failure(r);
    CHECK_THAT(r.err, Contains("No space left on device"));
    CHECK(everything(disk.path()).empty());
    err = r.err;
    return false;
  }
  void require_reference(const fs::path& out) const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(ref)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    REQUIRE(everything(out) == names);
    for (const auto& n : names) {
      INFO(n);
      const bool same = read_bytes(ref / n) == read_bytes(out / n);
      REQUIRE(same);
    }
  }
};

}  // namespace

TEST_CASE("diskfull: a plan larger than the free space is refused before anything is written", "[diskfull]") {
  Fixture fx;
  // One page short of the shards alone. The check runs once the writer lock (one page: it names
  // its holder) is taken, so it sees a page less than the empty filesystem.
  Tmpfs fs_small(fx.tmp / "mnt", "size=" + std::to_string(fx.shard_blocks - 4096));
  const uint64_t avail = fs_small.available();
  REQUIRE(avail == fx.shard_blocks - 4096);
  const auto r = fx.run(fs_small.path() / "out");
  require_io_failure(r);
  CHECK_THAT(r.err, Contains(fmt::format("not enough free space: the output needs {} bytes, {} are available",
                                         fx.shard_blocks, avail - 4096)));
  CHECK(everything(fs_small.path()).empty());
}

TEST_CASE("diskfull: out of space after the check, at every point of the run", "[diskfull]") {
  Fixture fx;
  // The check counts the shards; the writer lock (taken before the check, hence the first extra
  // page), the manifest, its rewrites and the staged config, tokenizer and index files need a few
  // pages more. Growing the filesystem a page at a time from the shards' size plus the lock's page
  // makes each of the later ones run out in turn, until the conversion fits.
  std::set<std::string> failures;
  bool fitted = false;
  for (uint64_t extra = 1; extra <= 32; ++extra) {
    INFO("tmpfs of the shards' size + " << extra << " pages");
    std::string err;
    fitted = fx.fits(fx.tmp / ("mnt" + std::to_string(extra)), "size=" + std::to_string(fx.shard_blocks + extra * 4096),
                     err);
    if (fitted) break;
    failures.insert(err.find(".ckptconv-manifest.json") != std::string::npos ? "manifest"
                    : err.find("/.model-") != std::string::npos           ? "shard"
                                                                          : "staged file");
  }
  REQUIRE(fitted);
  // The run failed at two or more different files. Which one meets the full disk first at a
  // given size is a race since shards are reserved while they are written (a shard, the
  // manifest's rewrite, a staged file); every failure was clean (`fits` checks exit 4, one line,
  // nothing left). A shard's own write failing is also the file-size-limit case below.
  CHECK(failures.size() >= 2);
}

TEST_CASE("diskfull: out of inodes at every file the run creates", "[diskfull]") {
  Fixture fx;
  // The byte check cannot see inodes: with room for k files, creating the (k+1)-th fails — the
  // manifest, each shard, a manifest rewrite's temporary file, each staged file in turn.
  int failed = 0;
  bool fitted = false;
  for (int inodes = 2; inodes <= 40; ++inodes) {
    INFO("tmpfs with " << inodes << " inodes");
    std::string err;
    fitted = fx.fits(fx.tmp / ("mnt" + std::to_string(inodes)), "size=64m,nr_inodes=" + std::to_string(inodes), err);
    if (fitted) break;
    ++failed;
  }
  REQUIRE(fitted);
  // Root + output dir + manifest + six shards + their staging: well over ten creation points.
  CHECK(failed >= 10);
}

TEST_CASE("diskfull: a read-only filesystem fails with exit 4 and writes nothing", "[diskfull]") {
  Fixture fx;
  Tmpfs disk(fx.tmp / "mnt", "size=64m");
  fs::create_directories(disk.path() / "out");
  disk.remount_read_only();
  SECTION("an existing, empty output directory") {
    const auto r = fx.run(disk.path() / "out");
    require_io_failure(r);
    CHECK_THAT(r.err, Contains("Read-only file system"));
  }
  SECTION("an output directory to create") {
    const auto r = fx.run(disk.path() / "new");
    require_io_failure(r);
    CHECK_THAT(r.err, Contains("cannot create"));
  }
  CHECK(everything(disk.path()) == std::vector<std::string>{"out"});
}

TEST_CASE("diskfull: a file-size limit (EFBIG) is an I/O error, not SIGXFSZ", "[diskfull]") {
  Fixture fx;
  const fs::path out = fx.tmp / "out";
  // ulimit -f of 1 MB: the 2 MB shards cannot be reserved. The child starts with SIGXFSZ's
  // default action (death); the CLI must ignore it so that the write fails with EFBIG instead.
  const std::string err_path = (fx.tmp / "err").string();
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    signal(SIGXFSZ, SIG_DFL);
    const rlimit lim{1'000'000, 1'000'000};
    const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int null = ::open("/dev/null", O_WRONLY);
    if (err < 0 || null < 0 || dup2(err, 2) < 0 || dup2(null, 1) < 0 || setrlimit(RLIMIT_FSIZE, &lim) != 0) _exit(99);
    execl(CKPT_BINARY, CKPT_BINARY, "convert", "--in", fx.in.c_str(), "--out", out.c_str(), "--to", "native",
          "--max-shard-size", "2MB", static_cast<char*>(nullptr));
    _exit(98);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  INFO("wait status " << status);
  REQUIRE(WIFEXITED(status));
  require_io_failure({WEXITSTATUS(status), "", read_bytes(fx.tmp / "err")});
  CHECK_THAT(read_bytes(fx.tmp / "err"), Contains("File too large"));
  CHECK(!fs::exists(out));
}
