// Turns at writing an output shard, for sinks whose writes to one shard serialise anyway (a
// file's writes take its lock in the kernel, where a waiting thread spins: 21% of the CPU of a
// 2-thread FP8 export into one shard). A thread that finds its shard being written leaves its item
// to the thread writing it and goes back to converting; that thread writes the item left to it
// before it lets go of the shard. At most one item waits per shard: a thread that finds one
// already waiting writes its own item itself, beside the turn's writer, and the kernel orders the
// two. Handing every item over made the writing thread do every item's whole write stage
// (hashes, input releases) alone: --to dequant, whose conversion is cheap next to its writes, ran
// 23% slower (RESULTS.md, issue #14).
#pragma once

#include <cstddef>
#include <mutex>
#include <vector>

namespace ckpt {

template <typename Item>
class WriteTurns {
 public:
  explicit WriteTurns(size_t shards) : turns_(shards) {}

  // write(it), then write(left) for the item left meanwhile, until none is; or, while another
  // thread writes the shard and nothing waits for it, `it` is left to that thread.
  template <typename Write>
  void take(size_t shard, const Item& it, Write&& write) {
    Turn& t = turns_[shard];
    {
      std::lock_guard lock(t.mu);
      if (t.busy && !t.waiting) {
        t.left = it;
        t.waiting = true;
        return;
      }
      if (t.busy) return write(it);  // beside the turn's writer
      t.busy = true;
    }
    Item next = it;
    for (;;) {
      write(next);
      std::lock_guard lock(t.mu);
      if (!t.waiting) {
        t.busy = false;
        return;
      }
      next = t.left;
      t.waiting = false;
    }
  }

 private:
  struct Turn {
    std::mutex mu;
    bool busy = false, waiting = false;
    Item left{};
  };
  std::vector<Turn> turns_;
};

}  // namespace ckpt
