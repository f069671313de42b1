// GenerateEventQueue: hands a generation's events from the engine thread to the gRPC handler
// thread that writes them to the client.
//
// When the handler falls behind (its thread waits for CPU while the engine keeps stepping), the
// events queued meanwhile leave as one message: their tokens and text concatenated, the newest
// position, and the finish reason and timings of the last (GenerateResponse carries "the new
// tokens since the previous message", so clients see the same stream either way). Under load
// this saves a gRPC write per token; an idle handler still sends every token as it comes.
//
// Thread safety: Push and Finish from one producer thread, Next from one consumer thread;
// status() from any.
#ifndef TITANS_SERVER_GENERATE_EVENTS_H_
#define TITANS_SERVER_GENERATE_EVENTS_H_

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>

#include "absl/status/status.h"
#include "server/engine/engine.h"

namespace titans {

// Appends `next` to `into` as one event: tokens and text concatenated, everything else (position,
// finish, timings, counts) taken from `next`, the newer one.
void MergeGenerateEvents(engine::GenerateEvent* into, engine::GenerateEvent next);

class GenerateEventQueue {
 public:
  void Push(const engine::GenerateEvent& e);
  // No more events; `status` is the generation's outcome.
  void Finish(absl::Status status);

  // Waits for events; returns false when finished and drained. Otherwise *event receives every
  // event queued so far, merged (MergeGenerateEvents). While waiting, calls `check` every `poll`
  // (e.g. to notice a cancelled call).
  bool Next(engine::GenerateEvent* event, std::chrono::milliseconds poll,
            const std::function<void()>& check);

  absl::Status status();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<engine::GenerateEvent> events_;
  absl::Status status_;
  bool done_ = false;
};

}  // namespace titans

#endif  // TITANS_SERVER_GENERATE_EVENTS_H_
