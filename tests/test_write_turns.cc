// WriteTurns (pipeline/write_turns.h): who writes an item when its shard is being written. The
// turn's writer is held inside its write until the test lets it go, so every hand-over is seen.
#include <catch2/catch.hpp>

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "pipeline/write_turns.h"

using ckpt::WriteTurns;

namespace {

// A gate the first write waits at until opened; records (writer, item) pairs in order.
struct Log {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false, first_inside = false;
  std::vector<std::string> writes;
  void record(const std::string& who, int item) {
    std::unique_lock lock(mu);
    writes.push_back(who + ":" + std::to_string(item));
    if (writes.size() == 1) {
      first_inside = true;
      cv.notify_all();
      cv.wait(lock, [&] { return open; });
    }
  }
  void wait_first_inside() {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return first_inside; });
  }
  void let_go() {
    std::lock_guard lock(mu);
    open = true;
    cv.notify_all();
  }
};

}  // namespace

TEST_CASE("write turns: a busy shard takes one waiting item, its writer writes it", "[pipeline]") {
  WriteTurns<int> turns(2);
  Log log;
  std::thread a([&] { turns.take(0, 1, [&](int i) { log.record("a", i); }); });
  log.wait_first_inside();
  // Shard 0 is being written by a: b's item is left to a, and b returns at once.
  turns.take(0, 2, [&](int i) { log.record("b", i); });
  // One item already waits: c writes its own, beside a.
  turns.take(0, 3, [&](int i) { log.record("c", i); });
  // Another shard is not affected.
  turns.take(1, 4, [&](int i) { log.record("d", i); });
  log.let_go();
  a.join();
  CHECK(log.writes == std::vector<std::string>{"a:1", "c:3", "d:4", "a:2"});
  // The turn is free again: the next item is written by its own thread.
  turns.take(0, 5, [&](int i) { log.record("e", i); });
  CHECK(log.writes.back() == "e:5");
}
