// Runs the engine's completions (answers, failures, generated tokens) on a thread of their own,
// in the order the engine posted them, while the engine thread goes on to its next step.
//
// Why: a Generate event's completion serialises a message and starts a gRPC write, and every
// generating session has one per step. Run on the engine thread, that work sat between one step
// and the next (measured: gRPC decode at 64 sessions 0.88x of in-process, docs/benchmarks.md);
// here it overlaps the next step.
//
// Order: completions run one at a time, in posting order, so a session's events and its final
// answer arrive in the order the engine produced them. Backpressure: Post blocks while
// kMaxPendingBatches batches wait, so the engine never runs more than that many steps ahead of its
// completions. A completion may call into the engine (e.g. a Stream's next command); it must not
// wait for the engine to finish a step (none does: the front end's reactors never block).
// Thread safety: every method may be called from any thread.
#ifndef TITANS_SERVER_ENGINE_COMPLETION_QUEUE_H_
#define TITANS_SERVER_ENGINE_COMPLETION_QUEUE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "model/mutex.h"

namespace titans::engine {

class CompletionQueue {
 public:
  using Batch = std::vector<std::function<void()>>;
  static constexpr size_t kMaxPendingBatches = 4;

  CompletionQueue();
  // Runs everything posted, then stops its thread.
  ~CompletionQueue();
  CompletionQueue(const CompletionQueue&) = delete;
  CompletionQueue& operator=(const CompletionQueue&) = delete;

  // Queues `batch` to run after everything posted before it. An empty batch is ignored. Called
  // from the queue's own thread (a completion that completes something else), it runs the batch
  // at once instead of waiting for room behind itself.
  void Post(Batch batch) ABSL_LOCKS_EXCLUDED(mu_);

  // Returns once every completion posted before the call has run.
  void Flush() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);

  Mutex mu_;
  CondVar changed_;  // a batch was posted or finished, or the queue stops
  std::deque<Batch> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t posted_ ABSL_GUARDED_BY(mu_) = 0;    // batches posted so far
  uint64_t finished_ ABSL_GUARDED_BY(mu_) = 0;  // batches run so far
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts after the fields above exist
};

}  // namespace titans::engine

#endif  // TITANS_SERVER_ENGINE_COMPLETION_QUEUE_H_
