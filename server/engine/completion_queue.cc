#include "server/engine/completion_queue.h"

#include <utility>

namespace titans::engine {

CompletionQueue::CompletionQueue() : thread_([this] { Loop(); }) {}

CompletionQueue::~CompletionQueue() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
    changed_.SignalAll();
  }
  thread_.join();
}

void CompletionQueue::Post(Batch batch) {
  if (batch.empty()) return;
  if (std::this_thread::get_id() == thread_.get_id()) {
    for (auto& completion : batch) completion();
    return;
  }
  MutexLock lock(&mu_);
  while (queue_.size() >= kMaxPendingBatches) changed_.Wait(&mu_);
  queue_.push_back(std::move(batch));
  ++posted_;
  changed_.SignalAll();
}

void CompletionQueue::Flush() {
  if (std::this_thread::get_id() == thread_.get_id()) return;  // would wait for itself
  MutexLock lock(&mu_);
  const uint64_t target = posted_;
  while (finished_ < target) changed_.Wait(&mu_);
}

void CompletionQueue::Loop() {
  mu_.Lock();
  while (true) {
    if (queue_.empty()) {
      if (stop_) break;
      changed_.Wait(&mu_);
      continue;
    }
    Batch batch = std::move(queue_.front());
    queue_.pop_front();
    changed_.SignalAll();  // room for a blocked Post
    mu_.Unlock();
    for (auto& completion : batch) completion();
    batch.clear();  // the completions' captures go before the count says they ran
    mu_.Lock();
    ++finished_;
    changed_.SignalAll();
  }
  mu_.Unlock();
}

}  // namespace titans::engine
