// The engine's internals, shared by its implementation files (not a public header: include
// server/engine/engine.h). Engine::Impl's parts, one job per file:
//   engine.cc             the facade, start-up, shutdown and statistics
//   engine_requests.cc    admission and operations on caller (gRPC) threads
//   engine_step.cc        the engine thread's loop: schedule -> execute -> update
//   engine_execute.cc     the executor: a step's work through the runner, completions, failures
//   engine_durability.cc  the write-ahead log's group commit, checkpoints, Persist
//   engine_recovery.cc    start-up recovery, registering sessions, loading a stored session
//   engine_residency.cc   spilling, the TTL sweep, copies taken over by another replica
//   engine_rewind.cc      rewind points, a session's state at an earlier position, Rewind
// Completions (answers, generated tokens) run on their own thread, in order (completion_queue.h).
// Plain data and bookkeeping in their own headers: a session, its phase, and the table of them
// that owns the engine's lock (session_table.h), an operation and its completion (operation.h).
// The scheduling policy is a pure function in scheduler.h; storage is behind SessionStore
// (directory_store.h, redis_store.h) and the write-ahead log (wal.h).
// The engine reaches the model only through its ModelRunner (model/model_runner.h): a resident
// session is a runner slot id, rollback and rewind points are SlotSnapshots, stored states are
// blobs, and a step is a plain-data StepPlan. No LibTorch header is included here
// (tests/server/engine/engine_tensor_free_test.py checks the whole include graph).
#ifndef TITANS_SERVER_ENGINE_ENGINE_IMPL_H_
#define TITANS_SERVER_ENGINE_ENGINE_IMPL_H_

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/model_runner.h"
#include "model/mutex.h"
#include "model/status_macros.h"
#include "model/text_stream.h"
#include "model/utf8.h"
#include "server/engine/completion_queue.h"
#include "server/engine/directory_store.h"
#include "server/engine/engine.h"
#include "server/engine/operation.h"
#include "server/engine/rewind_history.h"
#include "server/engine/scheduler.h"
#include "server/engine/session_store.h"
#include "server/engine/session_table.h"
#include "server/engine/wal.h"

namespace titans::engine {

class Engine::Impl {
 public:
  // ---- Start, shutdown, statistics (engine.cc) --------------------------------------------------
  // Caller threads; Start before any other call.

  Impl(EngineOptions options, std::unique_ptr<ModelRunner> runner);

  ~Impl() { Shutdown(0); }

  absl::Status Start() ABSL_LOCKS_EXCLUDED(table_.mu());

  void Shutdown(int64_t deadline_ms) ABSL_LOCKS_EXCLUDED(table_.mu());

  Engine::Stats stats() ABSL_LOCKS_EXCLUDED(table_.mu());

  const ModelInfo& info() const { return info_; }
  int64_t max_tokens_per_request() const { return options_.max_tokens_per_request; }

  EngineObserver& observer() { return options_.observer ? *options_.observer : null_observer_; }

  // ---- Admission and operations (engine_requests.cc) --------------------------------------------
  // Caller (gRPC) threads: validate, take the lock to find or add a session and queue an operation,
  // never touch a state.

  absl::Status CheckOpen() const;

  SessionInfo InfoOf(const Session& s) const;

  absl::StatusOr<int64_t> ResolveTtl(int64_t ttl) const;

  // Registers a new session holding runner slot `slot` (taken over: freed if the session cannot
  // be added). Its rewind history starts at the slot's state, or is `history` (a fork's: stored
  // points are those of session `history_owner`). Requires the lock.
  absl::StatusOr<SessionInfo> AddSession(const CreateParams& p, SlotId slot,
                                         const RewindHistory* history = nullptr,
                                         const std::string& history_owner = "")
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(table_.mu());

  // AddSession's writes (without the engine lock): a fork's stored rewind points copied, and in
  // sync mode or with a shared store the new session's first checkpoint.
  absl::Status CreateFiles(Session* s, SessionRecord* record,
                           const std::vector<int64_t>& stored_points,
                           const std::string& history_owner) ABSL_LOCKS_EXCLUDED(table_.mu());

  absl::StatusOr<SessionInfo> CreateSession(const CreateParams& p) ABSL_LOCKS_EXCLUDED(table_.mu());

  absl::StatusOr<SessionInfo> GetSession(const std::string& principal, const std::string& id)
      ABSL_LOCKS_EXCLUDED(table_.mu());

  // Shared stores: updates the registry's view of a session that another replica may be serving
  // (not resident here, or resident but taken over): its record from the store.
  void Refresh(const std::string& id) ABSL_LOCKS_EXCLUDED(table_.mu());

  std::vector<SessionInfo> List(const std::string& principal,
                                const std::map<std::string, std::string>& filter,
                                const std::string& after, int limit, bool* more)
      ABSL_LOCKS_EXCLUDED(table_.mu());

  absl::StatusOr<std::vector<int32_t>> Tokenize(const Input& input, bool allow_empty);

  // Queues `op` on the session; on failure the op is returned to the caller to report.
  absl::Status Enqueue(const std::string& principal, const std::string& id, std::unique_ptr<Op>& op)
      ABSL_LOCKS_EXCLUDED(table_.mu());

  void Append(const std::string& principal, const std::string& id, Input input, CancelFlag cancel,
              std::function<void(absl::StatusOr<AppendResult>)> done);

  void Generate(const std::string& principal, const std::string& id, GenerateParams params,
                CancelFlag cancel, std::function<void(const GenerateEvent&)> on_event, Done done)
      ABSL_LOCKS_EXCLUDED(table_.mu());

  void Score(const std::string& principal, const std::string& id, std::vector<int32_t> tokens,
             bool commit, std::function<void(absl::StatusOr<ScoreResult>)> done);

  void Close(const std::string& principal, const std::string& id, Done done);

  void Fork(const std::string& principal, const std::string& id, const std::string& new_id,
            int64_t position, std::function<void(absl::StatusOr<SessionInfo>)> done);

  void Rewind(const std::string& principal, const std::string& id, int64_t position,
              std::function<void(absl::StatusOr<SessionInfo>)> done);

  void Export(const std::string& principal, const std::string& id,
              std::function<void(absl::StatusOr<std::string>)> done);

  absl::StatusOr<SessionInfo> Import(const CreateParams& p, const std::string& snapshot)
      ABSL_LOCKS_EXCLUDED(table_.mu());

  // ---- The loop (engine_step.cc) ----------------------------------------------------------------
  // Engine thread: schedule under the lock (plain data), execute without it, update under it.

  void Loop() ABSL_LOCKS_EXCLUDED(table_.mu());

  // With the engine lock: pops finished operations, refreshes session metadata, erases closed
  // sessions. A session whose Close finished in this step (or that is gone from the shared store).
  struct Closing {
    Session* session;
    Engine::Done done;  // the Close's completion (null when gone)
  };
  std::vector<Closing> Update(const std::vector<Session*>& order,
                              const std::vector<Assignment>& plan)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(table_.mu());

  // Engine thread, after Update: removes the closed sessions' files (without the engine lock), then
  // erases them, failing what was queued behind the close, and answers the closes.
  void FinishCloses(std::vector<Closing>& closing, std::vector<std::function<void()>>* callbacks)
      ABSL_LOCKS_EXCLUDED(table_.mu());

  // Removes the session from the registry, releasing its runner slot if it has one.
  void Erase(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(table_.mu());

  // ---- The executor (engine_execute.cc) ---------------------------------------------------------
  // Engine thread, without the lock: only this thread touches states and head operations.

  // One session's work in this step's batched runner step.
  struct Forwarding {
    Session* session;
    Op* op;
    // A piece of an append or prompt; for a decode, what to consume before sampling (the BOS
    // token of an empty session, else nothing).
    std::vector<int32_t> tokens;
    bool decode = false;  // sample one token of a generation after `tokens`
  };

  // Engine thread, without the engine lock (only this thread touches states and head operations).
  // Runs control operations, scores and failures directly; queues token work into *batch.
  void Prepare(Session* s, int64_t tokens, std::vector<Forwarding>* batch,
               std::vector<std::function<void()>>* callbacks) ABSL_LOCKS_EXCLUDED(table_.mu());

  // Fails loading a session's state (EnsureResident's `error`) as the operation reports it.
  absl::Status LoadError(Session* s, const absl::Status& error);

  void PrepareAppend(Session* s, Op* op, int64_t tokens, bool cancelled,
                     std::vector<Forwarding>* batch, std::vector<std::function<void()>>* callbacks);

  // Fork op: a new session at the fork's position (the current one, or from the rewind history).
  void ExecuteFork(Session* s, Op* op, ForkOp& fork, std::vector<std::function<void()>>* callbacks);

  void PrepareGenerate(Session* s, Op* op, int64_t tokens, bool cancelled,
                       std::vector<Forwarding>* batch,
                       std::vector<std::function<void()>>* callbacks);

  void ExecuteScore(Session* s, Op* op, std::vector<std::function<void()>>* callbacks);

  // The next up-to-`tokens` tokens of an append or prompt.
  static std::vector<int32_t> NextPiece(const Op& op, int64_t tokens);

  // One runner step for every session's tokens of this step (continuous batching; the tokens move
  // into the runner's plan), then each operation's bookkeeping. If the step fails as a whole, every
  // operation in it fails (and is rolled back to its state before the operation); a session's own
  // failure fails its operation only. Returns the step's seconds in the memory kernel.
  double RunBatch(std::vector<Forwarding>& batch, std::vector<std::function<void()>>* callbacks);

  void FinishDecode(Session* s, Op* op, int64_t token,
                    std::vector<std::function<void()>>* callbacks);

  // One slot's work in a runner step of its own (replay, rewind, a score): its outcome, or the
  // step's or the slot's error (then the slot is unchanged).
  absl::StatusOr<SlotOutcome> StepOne(SlotWork work);
  // StepOne consuming `tokens` into `slot`.
  absl::Status Feed(SlotId slot, std::vector<int32_t> tokens);

  // The position of a resident session.
  int64_t PositionOf(const Session& s) const { return runner_->position(*s.slot); }

  // Finishes an operation that changed the session. Without a log its callback runs now; in sync
  // mode it waits for this step's group commit, and if that fails the session is rolled back to
  // its state before the operation and the operation fails.
  void Complete(Session* s, Op& op, std::function<void()> on_done,
                std::function<void(absl::Status)> on_error,
                std::vector<std::function<void()>>* callbacks);

  void Fail(Op& op, absl::Status status, std::vector<std::function<void()>>* callbacks);

  void MarkDone(Op& op) { op.status = OpStatus::kFinished; }

  SamplingParams Resolve(const Session& s, const GenerateParams& g) const;

  GenerateEvent Event(int64_t position, const Op& op, Finish f, std::vector<int32_t> tokens,
                      std::string text) const;

  // ---- Durability (engine_durability.cc) --------------------------------------------------------
  // Engine thread; writes happen without the lock, what readers see changes under it.

  // The step's group commit: every completed operation's record, one write and one fdatasync.
  void CommitDurable(std::vector<std::function<void()>>* callbacks)
      ABSL_LOCKS_EXCLUDED(table_.mu());

  // With the engine lock: periodic checkpoints (kPeriodic, kSync) of sessions with unpersisted
  // tokens, and in sync mode, once the log is large, a checkpoint of every session so the old log
  // can go. Engine thread: chooses under the engine lock, writes without it (only this thread
  // changes states).
  void CheckpointIfDue() ABSL_LOCKS_EXCLUDED(table_.mu());

  // Checkpoints the session from the engine thread (or at shutdown, the thread stopped): the writes
  // happen without the engine lock, what readers see of the session changes under it afterwards.
  // In a shared store an ABORTED result means another replica acquired the session: this
  // replica's copy must be dropped (the session is marked moved).
  absl::Status Persist(Session* s) ABSL_LOCKS_EXCLUDED(table_.mu());
  // Persist's I/O: the state, and the rewind points and tokens, stored under `*record` (the
  // session's record, whose position and state size it sets). Changes nothing other threads read.
  absl::Status WriteCheckpoint(Session* s, SessionRecord* record, bool create);
  // Persist's outcome into the session: its persisted position, or `moved` when another replica
  // fenced the write off (ABORTED).
  void CommitCheckpoint(Session* s, const SessionRecord& written, const absl::Status& st)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(table_.mu());

  // ---- Recovery and loading (engine_recovery.cc) ------------------------------------------------
  // Start-up (Recover) and the engine thread (EnsureResident); Register and Discover for caller
  // threads too.

  // Replays the write-ahead log onto the latest checkpoints, checkpoints the result and starts a
  // fresh log. A session whose records do not continue its checkpoint (a gap) keeps its last
  // consistent state and is counted as unrecoverable.
  absl::Status Recover() ABSL_LOCKS_EXCLUDED(table_.mu());

  // Registers a stored session (not resident).
  void Register(SessionRecord r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(table_.mu());

  // Shared stores: a session this replica has not seen may have been created by another one;
  // register it so that it can be acquired. No-op otherwise.
  void Discover(const std::string& principal, const std::string& id)
      ABSL_LOCKS_EXCLUDED(table_.mu());

  std::unique_ptr<Session> NewSession() const;

  // Runs on the engine thread without the engine lock: only it touches states and head operations.
  // With a shared store the session is first acquired (fencing off any replica that held it),
  // its record re-read (another replica may have changed it) and its log since the checkpoint
  // replayed. NOT_FOUND when the session no longer exists in the store.
  absl::Status EnsureResident(Session* s) ABSL_LOCKS_EXCLUDED(table_.mu());
  // EnsureResident's work, timed and reported by it (OnRestore): reads the state (adding its
  // size to *bytes) and, from a shared store, replays the session's log; *complete is false when
  // a log record could not be applied (the session keeps its last consistent state).
  absl::Status Restore(Session* s, int64_t* bytes, bool* complete) ABSL_LOCKS_EXCLUDED(table_.mu());

  // After a replay: the session's position and state size as the state now has them, published
  // at once under the engine lock (readers never see the replay's intermediate positions), and
  // `records` more recovered records counted.
  void PublishReplayed(Session* s, int64_t records) ABSL_LOCKS_EXCLUDED(table_.mu());

  // Applies one log record to the session's state (not to its record: PublishReplayed does). False
  // if the state already contains it (or it belongs to an abandoned epoch); DATA_LOSS if it does
  // not continue the state (a gap).
  absl::StatusOr<bool> ReplayRecord(Session* s, const WalRecord& r)
      ABSL_LOCKS_EXCLUDED(table_.mu());

  // ---- Residency (engine_residency.cc) ----------------------------------------------------------
  // Engine thread: which states stay in RAM, expiry, and copies another replica took over.

  // Forgets the resident state (another replica holds the session now); a later operation here
  // acquires the session again and loads it from the store.
  void DropResident(Session* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(table_.mu());

  static absl::Status MovedError(const std::string& id);

  // No operation of the session has started changing its state.
  static bool Quiescent(const Session& s);

  // With the engine lock: keeps at most max_resident_sessions states in RAM by spilling the least
  // recently used idle ones to state_dir (without a state_dir nothing is spilled). Engine thread:
  // chooses under the engine lock, writes without it.
  void SpillIfNeeded() ABSL_LOCKS_EXCLUDED(table_.mu());

  // With the engine lock: expires idle sessions past their TTL (never ones with queued work). With
  // a state_dir, the state is persisted to <state_dir>/expired first. Releases the engine lock
  // while it writes files; operations queued meanwhile on an expiring session fail (NOT_FOUND)
  // through *callbacks, which the caller runs without table_.mu()->
  void Sweep(std::vector<std::function<void()>>* callbacks)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(table_.mu());

  // Shared stores, before a step: a session this replica holds in RAM may have been taken over
  // by another replica since; such copies are dropped so that the step acquires and loads the
  // current state (one round trip to the store per step).
  void DropMoved(const std::vector<Session*>& order, const std::vector<Assignment>& plan)
      ABSL_LOCKS_EXCLUDED(table_.mu());

  // Shared stores, every ownership_check_seconds: one round trip asks which of the idle sessions
  // this replica holds another replica has acquired since; their copies are dropped (memory and
  // gauges). Called by the engine loop holding the engine lock, which it releases meanwhile.
  void DropLostSessions() ABSL_EXCLUSIVE_LOCKS_REQUIRED(table_.mu());

  // ---- Rewind (engine_rewind.cc) ----------------------------------------------------------------
  // Engine thread: rewind points and histories (session fields it alone touches).

  // Restores the session's rewind history from the store. Whatever cannot be restored
  // consistently (missing or damaged tokens file, no point at its start, a different end) is
  // dropped and the history restarts at the current state: rewinding less far, never wrongly.
  void LoadHistory(Session* s);

  void ResetHistory(Session* s);

  // Between operations: takes a rewind point if one is due, and writes new points to the store
  // (then only their positions stay in memory).
  void MaybeTakePoint(Session* s);
  // Inside an append: how many tokens may be consumed before the next rewind point is due (a
  // huge number when rewinding is off), and taking that point when it is due.
  int64_t TokensToNextPoint(const Session& s, const Op& op) const;
  static int64_t LastPointPosition(const Session& s, const Op& op);
  void MaybeTakeInnerPoint(const Session& s, Op* op);
  // The operation's tokens into the session's history, with its inner points at their positions.
  void RecordWithInnerPoints(Session* s, Op* op);

  void StorePoints(Session* s);

  // The session's state at `position` <= its position: the nearest rewind point at or before
  // it with the tokens up to `position` replayed (in pieces; the result equals the original
  // state at that position up to float rounding). OUT_OF_RANGE outside the history,
  // FAILED_PRECONDITION when rewinding is disabled, DATA_LOSS when a stored point is damaged.
  absl::StatusOr<std::shared_ptr<const SlotSnapshot>> StateAt(Session* s, int64_t position);

  // Rewind op: the session goes back to op.target_position. Persisted at once (with a new epoch,
  // so that log records of the abandoned tokens are never replayed onto it); in sync mode a
  // failed write leaves the session as it was and fails the operation.
  void ExecuteRewind(Session* s, Op& op, std::vector<std::function<void()>>* callbacks)
      ABSL_LOCKS_EXCLUDED(table_.mu());

 private:
  EngineOptions options_;
  EngineObserver null_observer_;
  Env* const env_;                       // options_.env or the default
  std::unique_ptr<ModelRunner> runner_;  // every resident session's state, in slots
  ModelInfo info_;
  std::unique_ptr<SessionStore> files_;

  SessionTable table_;  // the sessions, their queues and the engine's lock
  CondVar cv_;          // signalled when work arrives, the queues drain, or the engine stops
  int64_t steps_ ABSL_GUARDED_BY(table_.mu()) = 0;
  int64_t expired_total_ ABSL_GUARDED_BY(table_.mu()) = 0;
  uint64_t rr_cursor_ = 0;
  std::unique_ptr<Wal> wal_;
  // Operations complete only after their log record is durable (sync mode): the step's records
  // are committed together, then these callbacks run (or, if the commit failed, the failures).
  struct PendingDurable {
    Session* session;
    WalRecord record;
    std::function<void()> on_durable;
    std::function<void(absl::Status)> on_failure;
  };
  std::vector<PendingDurable> pending_durable_;
  int64_t recovered_records_ ABSL_GUARDED_BY(table_.mu()) = 0;
  int64_t log_bytes_ ABSL_GUARDED_BY(table_.mu()) =
      0;                 // added to by the engine thread, read by stats()
  bool shared_ = false;  // files_ is shared with other replicas
  int64_t unrecoverable_sessions_ ABSL_GUARDED_BY(table_.mu()) = 0;
  double recovery_seconds_ ABSL_GUARDED_BY(table_.mu()) = 0;
  std::atomic<bool> draining_{false};
  std::atomic<bool> draining_deadline_passed_{false};
  bool stop_ ABSL_GUARDED_BY(table_.mu()) = false;
  bool stopped_ = false;
  // The engine thread's completions run here, in order, while it goes on (completion_queue.h).
  CompletionQueue completions_;
  std::thread thread_;
};

}  // namespace titans::engine

#endif  // TITANS_SERVER_ENGINE_ENGINE_IMPL_H_
