#include "server/blocking_pool.h"

#include <algorithm>
#include <utility>

namespace titans::server {

BlockingPool::BlockingPool(int threads) {
  for (int i = 0; i < std::max(threads, 1); ++i) threads_.emplace_back([this] { Loop(); });
}

BlockingPool::~BlockingPool() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.SignalAll();
  for (std::thread& t : threads_) t.join();
}

void BlockingPool::Run(std::function<void()> work) {
  {
    MutexLock lock(&mu_);
    queue_.push_back(std::move(work));
  }
  cv_.Signal();
}

void BlockingPool::Loop() {
  for (;;) {
    std::function<void()> work;
    {
      MutexLock lock(&mu_);
      while (!stopping_ && queue_.empty()) cv_.Wait(&mu_);
      if (queue_.empty()) return;  // stopping, and everything submitted is done
      work = std::move(queue_.front());
      queue_.pop_front();
    }
    work();
  }
}

}  // namespace titans::server
