#include "pipeline/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

namespace ckpt {

std::string Progress::bytes(double n) {
  static const char* kUnits[] = {"B", "kB", "MB", "GB", "TB"};
  int u = 0;
  while (n >= 1000 && u < 4) n /= 1000, ++u;
  return u == 0 ? fmt::format("{:.0f} B", n) : fmt::format("{:.2f} {}", n, kUnits[u]);
}

Progress::Progress(std::string label, uint64_t total, bool enabled)
    : label_(std::move(label)), total_(total), enabled_(enabled) {
  if (!enabled_) return;
  thread_ = std::thread([this] {
    std::unique_lock lock(mu_);
    while (!cv_.wait_for(lock, std::chrono::milliseconds(250), [this] { return stop_; })) draw();
  });
}

Progress::~Progress() { finish(); }

void Progress::finish() {
  if (!enabled_) return;
  {
    std::lock_guard lock(mu_);
    if (stop_) return;
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  std::fputs("\r\033[K", stderr);
  std::fflush(stderr);
}

void Progress::draw() {
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double done = static_cast<double>(done_.load());
  const double rate = secs > 0 ? done / secs : 0;
  const auto total = static_cast<double>(total_.load());
  const double pct = total > 0 ? 100.0 * done / total : 100.0;
  std::string eta = "--:--";
  if (rate > 0 && total > done) {
    const auto left = static_cast<long>((total - done) / rate);
    eta = fmt::format("{:02d}:{:02d}", left / 60, left % 60);
  }
  fmt::print(stderr, "\r\033[K{} {:5.1f}%  {} / {}  {}/s  ETA {}", label_, pct, bytes(done),
             bytes(total), bytes(rate), eta);
  std::fflush(stderr);
}

}  // namespace ckpt
