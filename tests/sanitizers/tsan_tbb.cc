// ThreadSanitizer support for Debian's uninstrumented oneTBB, preloaded into the ThreadSanitizer
// build's processes by tests/sanitize.sh (LD_PRELOAD, and INTEL_LIBITTNOTIFY64 naming this same
// library). oneTBB synchronizes inside libtbb.so — task spawn and steal, wait_for_all, its own
// task allocator — where ThreadSanitizer sees none of it, so every hand-over of data between TBB
// tasks would be reported as a race. Instead of suppressing those (which would hide real races in
// ckptconv's node bodies, since every body runs under TBB frames) this library tells
// ThreadSanitizer about TBB's synchronization:
//
// 1. oneTBB reports its synchronization to "ITT" collectors (the interface Intel's race detector
//    uses): sync_releasing on the object a thread publishes, sync_acquired on the object a thread
//    consumes. With TBB_USE_PROFILING_TOOLS=2 its headers add the task-level events (spawn, task
//    completion, wait). Loaded as the collector, this library turns them into __tsan_release and
//    __tsan_acquire: the same happens-before edges, no more. INTEL_ITTNOTIFY_GROUPS=sync makes
//    libtbb bind only these entry points.
// 2. TBB recycles task objects through a per-thread pool inside libtbb; memory freed on one
//    thread and handed out again on another would look like a race between the two tasks.
//    Interposing the pool's four exported functions with aligned operator new/delete lets
//    ThreadSanitizer see each task object's allocation and release.
//
// tests/sanitize.sh checks that a deliberate race in a flow-graph body is still reported.
#include <oneapi/tbb/detail/_small_object_pool.h>

#include <cstddef>
#include <new>

namespace {

struct Pool : tbb::detail::d1::small_object_pool {};
Pool pool;
// TBB's tasks are cache-line aligned (d1::task is alignas(64)).
constexpr std::align_val_t kTaskAlign{64};

}  // namespace

namespace tbb::detail::r1 {

void* allocate(d1::small_object_pool*& p, std::size_t bytes, const d1::execution_data&) {
  p = &pool;
  return ::operator new(bytes, kTaskAlign);
}

void* allocate(d1::small_object_pool*& p, std::size_t bytes) {
  p = &pool;
  return ::operator new(bytes, kTaskAlign);
}

void deallocate(d1::small_object_pool&, void* ptr, std::size_t, const d1::execution_data&) {
  ::operator delete(ptr, kTaskAlign);
}

void deallocate(d1::small_object_pool&, void* ptr, std::size_t) { ::operator delete(ptr, kTaskAlign); }

}  // namespace tbb::detail::r1

extern "C" {

// Weak: LD_PRELOAD also puts this library into the uninstrumented processes a test starts (the
// shell, ctest), where there is no ThreadSanitizer runtime and these calls never happen.
void __tsan_acquire(void* addr) __attribute__((weak));
void __tsan_release(void* addr) __attribute__((weak));

// Its presence makes libtbb's ITT loader bind the entry points below by name.
const char* __itt_api_version() { return "ckpt-tsan"; }
void __itt_sync_acquired(void* addr) {
  if (__tsan_acquire) __tsan_acquire(addr);
}
void __itt_sync_releasing(void* addr) {
  if (__tsan_release) __tsan_release(addr);
}

}  // extern "C"
