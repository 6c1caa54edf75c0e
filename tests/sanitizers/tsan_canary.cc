// A deliberate data race between two flow-graph bodies, for tests/sanitize.sh: with oneTBB's
// synchronization made visible to ThreadSanitizer (tsan_tbb.cc), this program must still be
// reported — proof that the ThreadSanitizer stage is not silenced by over-synchronization.
#include <oneapi/tbb/flow_graph.h>
#include <oneapi/tbb/global_control.h>

#include <chrono>
#include <cstdio>
#include <thread>

int main() {
  namespace flow = oneapi::tbb::flow;
  // At least two threads even on a one-core machine, or there would be no race to find.
  oneapi::tbb::global_control threads(oneapi::tbb::global_control::max_allowed_parallelism, 4);
  flow::graph g;
  int next = 0;
  long unguarded = 0;
  flow::input_node<int> source(g, [&](oneapi::tbb::flow_control& fc) {
    if (next == 64) fc.stop();
    return next++;
  });
  // Unlimited concurrency and no lock: bodies on different threads update `unguarded` at once.
  flow::function_node<int> racy(g, flow::unlimited, [&](int i) {
    unguarded += i;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  flow::make_edge(source, racy);
  source.activate();
  g.wait_for_all();
  std::printf("%ld\n", unguarded);
}
