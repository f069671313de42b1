#include "server/blocking_pool.h"

#include <algorithm>
#include <utility>

namespace titans::server {

BlockingPool::BlockingPool(int threads) {
  for (int i = 0; i < std::max(threads, 1); ++i) threads_.emplace_back([this] { Loop(); });
}

BlockingPool::~BlockingPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void BlockingPool::Run(std::function<void()> work) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(work));
}

bool BlockingPool::HasWorkOrStopping() const { return stopping_ || !queue_.empty(); }

void BlockingPool::Loop() {
  for (;;) {
    std::function<void()> work;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &BlockingPool::HasWorkOrStopping));
      if (queue_.empty()) return;  // stopping, and everything submitted is done
      work = std::move(queue_.front());
      queue_.pop_front();
    }
    work();
  }
}

}  // namespace titans::server
