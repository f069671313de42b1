#include "kernels/thread_pool.h"

#include <algorithm>
#include <atomic>

namespace titans::kernels {
namespace {

std::pair<int64_t, int64_t> Range(int64_t count, int parts, int part) {
  return {count * part / parts, count * (part + 1) / parts};
}

}  // namespace

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
    if (index >= parts_) continue;
    const auto* fn = fn_;
    const auto [begin, end] = Range(count_, parts_, index);
    lock.unlock();
    if (begin < end) (*fn)(begin, end);
    lock.lock();
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

void ThreadPool::ParallelFor(int64_t count, int max_parts,
                             const std::function<void(int64_t, int64_t)>& fn) {
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
    pending_ = parts - 1;
    ++generation_;
  }
  start_cv_.notify_all();
  const auto [begin, end] = Range(count, parts, 0);
  fn(begin, end);
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return pending_ == 0; });
}

namespace {

std::atomic<int> default_size{0};       // 0: the hardware threads
std::atomic<bool> default_made{false};  // Default() has run

}  // namespace

ThreadPool& ThreadPool::Default() {
  static ThreadPool* pool = [] {
    default_made = true;
    const int size = default_size.load();
    return new ThreadPool(
        size > 0 ? size : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  }();
  return *pool;
}

bool ThreadPool::SetDefaultSize(int threads) {
  if (default_made.load() || threads < 0) return false;
  default_size = threads;
  return true;
}

}  // namespace titans::kernels
