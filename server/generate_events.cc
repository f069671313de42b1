#include "server/generate_events.h"

#include <utility>

namespace titans {

void MergeGenerateEvents(engine::GenerateEvent* into, engine::GenerateEvent next) {
  next.tokens.insert(next.tokens.begin(), into->tokens.begin(), into->tokens.end());
  next.text.insert(0, into->text);
  *into = std::move(next);
}

void GenerateEventQueue::Push(const engine::GenerateEvent& e) {
  std::lock_guard<std::mutex> lock(mu_);
  events_.push_back(e);
  cv_.notify_one();
}

void GenerateEventQueue::Finish(absl::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  status_ = std::move(status);
  done_ = true;
  cv_.notify_one();
}

bool GenerateEventQueue::Next(engine::GenerateEvent* event, std::chrono::milliseconds poll,
                              const std::function<void()>& check) {
  std::unique_lock<std::mutex> lock(mu_);
  while (events_.empty() && !done_) {
    cv_.wait_for(lock, poll);
    if (check) check();
  }
  if (events_.empty()) return false;
  *event = std::move(events_.front());
  events_.pop_front();
  while (!events_.empty()) {
    MergeGenerateEvents(event, std::move(events_.front()));
    events_.pop_front();
  }
  return true;
}

absl::Status GenerateEventQueue::status() {
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

}  // namespace titans
