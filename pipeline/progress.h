// A progress line for long work: bytes done of total, throughput and ETA, redrawn in place a few
// times a second on stderr — for the command line, which creates one when stderr is a terminal
// and feeds it from the library's progress callback; the library itself never prints. `finish`
// clears the line.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace ckpt {

class Progress {
 public:
  Progress(std::string label, uint64_t total, bool enabled);
  ~Progress();
  std::atomic<uint64_t>& counter() { return done_; }
  void update(uint64_t done, uint64_t total) {
    total_ = total;
    done_ = done;
  }
  void finish();

  // "1.23 GB", "512.0 MB" — decimal units, as disks and throughput are quoted.
  static std::string bytes(double n);

 private:
  void draw();
  std::string label_;
  std::atomic<uint64_t> total_;
  std::atomic<uint64_t> done_{0};
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  bool enabled_;
  bool stop_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

}  // namespace ckpt
