// A small fixed pool of worker threads for the kernels' "parallel for". Work is split into
// contiguous chunks that the threads take in turn; each item is computed by one thread on its
// own, so which thread runs it never changes its result.
// Thread safety: ParallelFor may be called from several threads; calls are serialised.
#ifndef TITANS_KERNELS_THREAD_POOL_H_
#define TITANS_KERNELS_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace titans::kernels {

// The CPUs this process may run on: the CPUs in its affinity mask, capped by its cgroup's CPU
// quota (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us / cpu.cfs_period_us, rounded up), at least 1.
// A container limited to 2 CPUs on a 64-core node gets 2, where hardware_concurrency() says 64:
// a pool of 64 threads under a 2-CPU quota is throttled in every step.
// Thread safety: safe to call from any thread (reads the calling thread's affinity and the
// cgroup files each call).
int UsableCpuCount();

// The CPU limit of a process whose cgroup v2 is `own_cgroup` (the path after "0::" in
// /proc/self/cgroup; "/" inside a container with its own cgroup namespace) in the hierarchy
// mounted at `cgroup_root`: the tightest `cpu.max` of that cgroup and its ancestors, else the
// v1 `cpu/cpu.cfs_quota_us` / `cpu/cpu.cfs_period_us` at the root; ceil(quota / period), or 0
// where there is no limit or no readable file. UsableCpuCount reads "/sys/fs/cgroup".
int CgroupCpuLimit(const std::string& cgroup_root, const std::string& own_cgroup = "/");

// A non-owning reference to a callable taking (begin, end): what ParallelFor runs. Unlike a
// std::function it never allocates (a lambda capturing more than two pointers makes
// std::function allocate on every call; measured: about 30 allocations per decode step at 256
// sessions). Written here because the kernels link no library but the C++ runtime (Abseil has
// FunctionRef). The callable must outlive the call it is passed to.
class RangeFn {
 public:
  template <typename F, typename = std::enable_if_t<!std::is_same_v<F, RangeFn>>>
  RangeFn(const F& f)  // NOLINT(google-explicit-constructor): lambdas convert implicitly
      : object_(&f),
        call_([](const void* o, int64_t b, int64_t e) { (*static_cast<const F*>(o))(b, e); }) {}
  void operator()(int64_t begin, int64_t end) const { call_(object_, begin, end); }

 private:
  const void* object_;
  void (*call_)(const void*, int64_t, int64_t);
};

class ThreadPool {
 public:
  // Starts `threads - 1` workers (the caller is the last one). threads >= 1.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) on disjoint ranges covering [0, count), on the calling thread and up to
  // `max_parts` - 1 workers, and returns when all are done. The range is cut evenly into up to
  // kChunksPerPart chunks per thread, which the threads take in turn as they finish one: a thread
  // that is late or preempted (other processes, gRPC threads on the same cores) or given costly
  // items (sessions closing a memory chunk) leaves more of the work to the others instead of
  // holding the call up. Callers' results must not depend on which thread runs an item or on
  // where the chunks are cut (every kernel here computes each item on its own).
  void ParallelFor(int64_t count, int max_parts, RangeFn fn);
  static constexpr int kChunksPerPart = 4;

  // The process-wide pool: SetDefaultSize's threads, else UsableCpuCount().
  static ThreadPool& Default();
  // Sizes Default() (threads >= 1; 0: UsableCpuCount()). Effective only before Default()
  // is first used; returns false (and changes nothing) after that.
  static bool SetDefaultSize(int threads);

 private:
  void WorkerLoop(int index);
  // Takes chunks of the current call and runs them until none is left.
  void RunChunks(const RangeFn& fn);

  std::mutex call_mu_;  // one ParallelFor at a time
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  std::vector<std::thread> workers_;
  const RangeFn* fn_ = nullptr;
  int64_t count_ = 0;
  int parts_ = 0;
  int64_t chunks_ = 0;
  std::atomic<int64_t> next_chunk_{0};  // the next chunk to take
  bool open_ = false;                   // workers may still join the current call
  int joined_ = 0;                      // workers running chunks of the current call
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace titans::kernels

#endif  // TITANS_KERNELS_THREAD_POOL_H_
