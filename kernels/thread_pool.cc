#include "kernels/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>

namespace titans::kernels {
namespace {

std::pair<int64_t, int64_t> Range(int64_t count, int parts, int part) {
  return {count * part / parts, count * (part + 1) / parts};
}

// ceil(quota / period) from a cgroup's limits; 0 where there is no limit or it cannot be read.
int QuotaCpus(double quota, double period) {
  if (!(quota > 0) || !(period > 0)) return 0;
  return static_cast<int>(std::ceil(quota / period));
}

}  // namespace

int CgroupCpuLimit(const std::string& cgroup_root, const std::string& own_cgroup) {
  // cgroup v2: "max 100000" (no limit) or "200000 100000", in the process's cgroup and each
  // ancestor (a parent's limit binds its children too).
  int tightest = 0;
  bool found_v2 = false;
  for (std::string dir = own_cgroup;;) {
    while (!dir.empty() && dir.back() == '/') dir.pop_back();
    std::ifstream in(cgroup_root + dir + "/cpu.max");
    std::string quota;
    double period = 0;
    if (in >> quota >> period) {
      found_v2 = true;
      const int limit = quota == "max" ? 0 : QuotaCpus(std::atof(quota.c_str()), period);
      if (limit > 0 && (tightest == 0 || limit < tightest)) tightest = limit;
    }
    if (dir.empty()) break;
    const size_t parent_end = dir.rfind('/');
    dir.resize(parent_end == std::string::npos ? 0 : parent_end);
  }
  if (found_v2) return tightest;
  // cgroup v1; a quota of -1 means no limit.
  std::ifstream quota_in(cgroup_root + "/cpu/cpu.cfs_quota_us");
  std::ifstream period_in(cgroup_root + "/cpu/cpu.cfs_period_us");
  double quota = 0, period = 0;
  if (quota_in >> quota && period_in >> period) return QuotaCpus(quota, period);
  return 0;
}

int UsableCpuCount() {
  int cpus = static_cast<int>(std::thread::hardware_concurrency());
  cpu_set_t mask;
  CPU_ZERO(&mask);
  if (sched_getaffinity(0, sizeof(mask), &mask) == 0) cpus = CPU_COUNT(&mask);
  std::string own_cgroup = "/";
  std::ifstream cgroups("/proc/self/cgroup");
  for (std::string line; std::getline(cgroups, line);) {
    if (line.rfind("0::", 0) == 0) own_cgroup = line.substr(3);
  }
  const int limit = CgroupCpuLimit("/sys/fs/cgroup", own_cgroup);
  if (limit > 0) cpus = std::min(cpus, limit);
  return std::max(1, cpus);
}

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < std::max(1, threads); ++i)
    workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  while (true) {
    std::unique_lock<std::mutex> lock(mu_);
    start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    if (!open_ || index >= parts_) continue;  // late for this call, or not needed by it
    ++joined_;
    const RangeFn* fn = fn_;
    lock.unlock();
    RunChunks(*fn);
    lock.lock();
    if (--joined_ == 0) done_cv_.notify_one();
  }
}

void ThreadPool::RunChunks(const RangeFn& fn) {
  while (true) {
    const int64_t chunk = next_chunk_.fetch_add(1, std::memory_order_relaxed);
    if (chunk >= chunks_) return;
    const auto [begin, end] = Range(count_, static_cast<int>(chunks_), static_cast<int>(chunk));
    if (begin < end) fn(begin, end);
  }
}

void ThreadPool::ParallelFor(int64_t count, int max_parts, RangeFn fn) {
  if (count <= 0) return;
  const int parts = static_cast<int>(std::min<int64_t>({count, max_parts, size()}));
  if (parts <= 1) {
    fn(0, count);
    return;
  }
  std::lock_guard<std::mutex> call_lock(call_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    count_ = count;
    parts_ = parts;
    chunks_ = std::min<int64_t>(count, int64_t{parts} * kChunksPerPart);
    next_chunk_.store(0, std::memory_order_relaxed);
    open_ = true;
    ++generation_;
  }
  start_cv_.notify_all();
  RunChunks(fn);
  // Every chunk is taken: workers that have not joined yet must not (fn is about to go), and
  // those that did finish their last chunk.
  std::unique_lock<std::mutex> lock(mu_);
  open_ = false;
  done_cv_.wait(lock, [&] { return joined_ == 0; });
}

namespace {

std::atomic<int> default_size{0};       // 0: UsableCpuCount()
std::atomic<bool> default_made{false};  // Default() has run

}  // namespace

ThreadPool& ThreadPool::Default() {
  static ThreadPool* pool = [] {
    default_made = true;
    const int size = default_size.load();
    return new ThreadPool(size > 0 ? size : UsableCpuCount());
  }();
  return *pool;
}

bool ThreadPool::SetDefaultSize(int threads) {
  if (default_made.load() || threads < 0) return false;
  default_size = threads;
  return true;
}

}  // namespace titans::kernels
