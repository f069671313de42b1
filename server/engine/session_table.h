// SessionTable: the engine's sessions, their operation queues and the running totals over them,
// under the engine's one lock (which the table owns). Plain bookkeeping: it never touches states,
// runner slots or storage (Engine::Impl does, through the sessions it finds here).
//
// Thread safety: every method requires mu() (checked by clang's -Wthread-safety). Session fields
// marked "engine thread only" are not the table's to guard.
#ifndef TITANS_SERVER_ENGINE_SESSION_TABLE_H_
#define TITANS_SERVER_ENGINE_SESSION_TABLE_H_

#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "model/model_runner.h"
#include "model/mutex.h"
#include "server/engine/operation.h"
#include "server/engine/rewind_history.h"
#include "server/engine/session_store.h"

namespace titans::engine {

// Where a session is in its life; it only moves forward. Only an open session is found by
// requests: a creating one is being written to the store for the first time (not yet visible), a
// closing one has had its Close done and is having its files removed.
enum class SessionPhase { kCreating, kOpen, kClosing };

struct Session {
  Session(int64_t rewind_window, int64_t rewind_interval)
      : history(rewind_window, rewind_interval) {}
  SessionRecord record;
  SessionPhase phase = SessionPhase::kOpen;  // under the table's lock
  std::optional<SamplingParams> sampling;
  std::optional<SlotId> slot;  // the runner slot holding the state; empty while spilled
  std::deque<std::unique_ptr<Op>> ops;
  bool busy = false;               // the engine thread is executing its head operation
  bool spilled = false;            // mirror of !slot, kept under the lock for readers
  int64_t persisted_position = 0;  // position of the last state written to disk
  std::chrono::steady_clock::time_point last_checkpoint = std::chrono::steady_clock::now();
  int64_t state_bytes = 0;
  // Engine thread only (loaded with the state, dropped when spilled).
  RewindHistory history;
  int64_t rewind_floor = 0;  // history.first_position(), under the lock for readers
  // Shared store: another replica acquired the session; the resident copy is dropped between
  // operations (and the session acquired again if a request comes here).
  bool moved = false;
  // The session no longer exists in the (shared) store: closed or expired elsewhere.
  bool gone = false;
  // This replica holds the session: always without a shared store; with one, it created or
  // acquired the session and has not seen another replica acquire it since. Only held sessions
  // are counted in stats() (the gauges), so that the counts summed over replicas are the open
  // sessions. Atomic: the engine thread sets it while loading, without the lock.
  std::atomic<bool> held{true};
};

class SessionTable {
 public:
  Mutex* mu() ABSL_LOCK_RETURNED(mu_) { return &mu_; }

  // An open session of `principal` by its client id (NOT_FOUND otherwise).
  absl::StatusOr<Session*> Find(const std::string& principal, const std::string& id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Any session of `principal` with that client id, whatever its phase (null if none).
  Session* FindAnyPhase(const std::string& principal, const std::string& id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // By storage name (SessionRecord::id); null if none.
  Session* Get(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Contains(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return sessions_.count(name) > 0;
  }

  // Adds `s` under its record's id (which must be new); returns it.
  Session* Insert(std::unique_ptr<Session> s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes the session and drops its queued operations (already answered by the caller). The
  // caller has freed its runner slot.
  void Remove(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Every change to a session's queue goes through these three, which keep the running totals.
  void PushOp(Session* s, std::unique_ptr<Op> op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::unique_ptr<Op> PopOp(Session* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The op's tokens still to consume as admission control counts them.
  void SetQueuedTokens(Op* op, int64_t tokens) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Tokens accepted but not yet consumed, over all sessions.
  int64_t QueuedTokens() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queued_tokens_; }
  // Some session has an operation queued.
  bool HasRunnable() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !runnable_.empty(); }
  // The sessions with queued operations, in id order.
  std::vector<Session*> Runnable() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Calls f(Session*) for every session, in id order (f must not insert or remove).
  template <typename F>
  void ForEach(F f) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (auto& [name, s] : sessions_) f(s.get());
  }

 private:
  Mutex mu_;
  std::map<std::string, std::unique_ptr<Session>> sessions_ ABSL_GUARDED_BY(mu_);
  // Ids of the sessions with queued operations, and the sum of every queued operation's
  // queued_tokens: kept by PushOp / PopOp / SetQueuedTokens.
  std::set<std::string> runnable_ ABSL_GUARDED_BY(mu_);
  int64_t queued_tokens_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace titans::engine

#endif  // TITANS_SERVER_ENGINE_SESSION_TABLE_H_
