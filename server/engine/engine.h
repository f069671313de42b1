// Engine: sessions, continuous batching and storage behind the gRPC handlers. Torch-free header.
//
// Every operation on a session is queued on that session and runs in arrival order; the engine
// thread takes work from all sessions in each step under a token budget (round-robin), so no
// session waits behind a long append on another. Completion is reported through callbacks that
// run on the engine thread: they must not block (enqueue and return).
//
// Errors are absl::Status: INVALID_ARGUMENT, NOT_FOUND (unknown / closed / expired / another
// principal's session), ALREADY_EXISTS, RESOURCE_EXHAUSTED (limits), UNAVAILABLE (shutting
// down), CANCELLED, FAILED_PRECONDITION / DATA_LOSS (snapshots).
//
// Thread safety: all public methods are safe to call from any thread.
#ifndef TITANS_SERVER_ENGINE_ENGINE_H_
#define TITANS_SERVER_ENGINE_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/sampler.h"
#include "server/engine/env.h"
#include "server/engine/observer.h"

namespace titans::engine {

// What survives a crash (kill -9, OOM, power loss) of the server process:
//   kNone      nothing beyond what spilling and graceful shutdown wrote;
//   kPeriodic  session states are checkpointed every checkpoint_interval_tokens tokens or
//              checkpoint_interval_seconds seconds (a crash loses at most that much);
//   kSync      additionally, every acknowledged Append / Generate / committed Score is in the
//              write-ahead log (fsync'd, one group commit per scheduler step) before the RPC
//              returns; recovery replays the log after the latest checkpoints.
enum class Durability { kNone, kPeriodic, kSync };

struct EngineOptions {
  std::string model_dir;
  std::string device = "cpu";
  int64_t max_sessions = 10000;
  // Sessions whose state stays in RAM; beyond it the least recently used spill to state_dir.
  int64_t max_resident_sessions = 1000;
  // Where spilled and persisted states live; empty = memory only (no spilling, nothing persisted).
  std::string state_dir;
  // The file system and clock the engine's storage uses (state_dir, the write-ahead log, session
  // timestamps and TTLs). Null: the real ones (Env::Default()). Not owned; must outlive the engine.
  // Tests pass a fault-injecting Env.
  Env* env = nullptr;
  // Where session states are stored: empty = <state_dir>/sessions (a local directory), or
  // "redis://HOST:PORT[/PREFIX]" to share sessions between replicas (see redis_store.h). With a
  // shared store, a session can be served by any replica: the one that gets a request for it
  // acquires it (fencing off the previous holder) and loads it, replaying its log in sync mode.
  std::string session_store;
  // Shared stores: how often a replica asks the store whether another replica has acquired
  // sessions it holds but is not using (then drops its copy and stops counting it); 0 = only
  // when a request for the session comes here.
  double ownership_check_seconds = 2;
  Durability durability = Durability::kNone;  // kPeriodic / kSync need a state_dir
  int64_t checkpoint_interval_tokens = 65536;
  double checkpoint_interval_seconds = 300;
  // Past this many log bytes every session is checkpointed and the old log deleted.
  int64_t wal_max_bytes = int64_t{256} << 20;
  int64_t default_idle_ttl_seconds = 6 * 3600;
  int64_t max_idle_ttl_seconds = 30 * 24 * 3600;
  // Tokens queued (not yet consumed) across all sessions; beyond it requests are refused at once.
  int64_t max_queued_tokens = 1 << 22;
  int64_t max_tokens_per_request = 1 << 20;
  int32_t max_generate_tokens = 4096;
  int32_t max_ops_per_session = 64;
  // Rewinding (Rewind, Fork at a past position) reaches back this many tokens behind a session's
  // position; 0 disables it. The session keeps a rewind point (a copy of its state, written to
  // state_dir when there is one, else held in RAM: about one state size each) every
  // rewind_interval_tokens tokens, which also bounds the tokens replayed by a rewind, and the
  // tokens since its oldest point (4 bytes each).
  int64_t rewind_window_tokens = 32768;
  int64_t rewind_interval_tokens = 8192;
  // Tokens processed per scheduler step, over all sessions.
  int64_t step_token_budget = 512;
  SamplingParams default_sampling;
  // Receives metrics events; not owned; may be null.
  EngineObserver* observer = nullptr;
};

struct SessionInfo {
  std::string id;
  std::string model;
  int64_t position = 0;
  int64_t state_bytes = 0;
  int64_t created_unix_ms = 0;
  int64_t last_used_unix_ms = 0;
  int64_t idle_ttl_seconds = 0;
  std::map<std::string, std::string> labels;
  bool spilled = false;
  int32_t queued_operations = 0;
  // The oldest position Rewind / Fork at a position can reach now.
  int64_t rewind_floor = 0;
};

struct CreateParams {
  std::string principal;
  std::string id;  // empty = assign
  int64_t idle_ttl_seconds = 0;
  std::map<std::string, std::string> labels;
  std::optional<SamplingParams> sampling;  // session defaults
};

// Text or token ids (exactly one is used: tokens if has_tokens).
struct Input {
  std::string text;
  std::vector<int32_t> tokens;
  bool has_tokens = false;
};

struct AppendResult {
  int64_t tokens_consumed = 0;
  int64_t position = 0;
};

// Partial sampling settings: unset fields come from the session, then the server defaults.
struct SamplingOverrides {
  std::optional<float> temperature, top_p, min_p, repetition_penalty;
  std::optional<int32_t> top_k;
  std::optional<uint64_t> seed;
};

// `base` with every field set in `overrides` replaced (the seed is not part of it: an unset seed
// means "continue the session's RNG", see Engine::Generate).
SamplingParams ApplySamplingOverrides(SamplingParams base, const SamplingOverrides& overrides);

// The one naming rule for client-chosen session ids and snapshot file names (both become file
// names): 1..128 characters of [A-Za-z0-9._-], not starting with '.'. INVALID_ARGUMENT names
// `field`.
absl::Status ValidateName(const std::string& name, const char* field);

// Session ids (and snapshot file names) are scoped per principal: two principals may each have
// a session "x". The storage name, under which the session is kept in RAM, on disk, in the
// write-ahead log and in Redis, is the id itself for the anonymous principal "" (and for
// sessions stored before ids were scoped), else "<principal>+<id>". '+' is in neither a valid
// principal nor a valid id, so two storage names are equal only if both parts are.
std::string StorageName(const std::string& principal, const std::string& id);

// Principals become part of file names and Redis keys: "" (anonymous) or 1..64 characters of
// [A-Za-z0-9._@:-], not starting with '.'. INVALID_ARGUMENT otherwise.
absl::Status ValidatePrincipal(const std::string& principal);

// A client-supplied value as it may appear in a status message or a log line: at most 64 bytes
// of it, bytes outside printable ASCII (and the quote and backslash) written as \xNN, and a
// "...(N bytes)" tail when it was cut. Never longer than ~300 bytes, whatever the input.
std::string ShowValue(std::string_view value);

struct GenerateParams {
  Input prompt;  // optional (empty text and no tokens = none)
  SamplingOverrides sampling;
  int32_t max_tokens = 256;
  std::vector<std::string> stop;
  bool stop_at_eos = true;
};

enum class Finish { kNone, kLength, kStop, kEndOfSequence, kCancelled };

struct GenerateEvent {
  std::vector<int32_t> tokens;
  std::string text;
  Finish finish = Finish::kNone;  // set on the last event
  int64_t position = 0;
  double time_to_first_token_seconds = 0;
  double total_seconds = 0;
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;
};

struct ScoreResult {
  std::vector<float> logprobs;
  int64_t position = 0;
};

struct ModelInfo {
  std::string name, variant, tokenizer, initialization, fingerprint, description, config_json;
  int64_t parameters = 0;
  int32_t vocab_size = 0;
};

// Set by the caller to stop an operation between steps (client cancelled or deadline passed).
using CancelFlag = std::shared_ptr<std::atomic<bool>>;

class Engine {
 public:
  // Loads the model and starts the engine thread. Sessions persisted in state_dir by an earlier
  // run (graceful shutdown, spilling) are registered again.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);
  ~Engine();  // Shutdown() if not done

  const ModelInfo& model_info() const;
  // EngineOptions::max_tokens_per_request (front ends check streamed input against it early).
  int64_t max_tokens_per_request() const;

  absl::StatusOr<SessionInfo> CreateSession(const CreateParams& params);
  absl::StatusOr<SessionInfo> GetSession(const std::string& principal, const std::string& id);
  // Sessions of `principal` with all labels in `filter`, ordered by id, starting after
  // `after_id`; at most `limit`. *more is set if further sessions exist.
  std::vector<SessionInfo> ListSessions(const std::string& principal,
                                        const std::map<std::string, std::string>& filter,
                                        const std::string& after_id, int limit, bool* more);

  using Done = std::function<void(absl::Status)>;
  void CloseSession(const std::string& principal, const std::string& id, Done done);
  // A new session with the state `id` had at `position` (-1: its current state). The fork's
  // rewind history is the source's up to that position. OUT_OF_RANGE beyond the session's
  // position or before its rewind floor.
  void ForkSession(const std::string& principal, const std::string& id, const std::string& new_id,
                   int64_t position, std::function<void(absl::StatusOr<SessionInfo>)> done);
  // Takes the session back to `position` (0 <= position <= its position, and >= its rewind
  // floor): the nearest rewind point at or before it, then replay of the tokens up to it. The
  // sampler's random state is the rewind point's. Durable before done(OK) in every mode that has
  // a state_dir (the abandoned tokens are never recovered). OUT_OF_RANGE outside the history,
  // FAILED_PRECONDITION when rewinding is disabled, DATA_LOSS when a stored point is damaged.
  void Rewind(const std::string& principal, const std::string& id, int64_t position,
              std::function<void(absl::StatusOr<SessionInfo>)> done);

  void Append(const std::string& principal, const std::string& id, Input input, CancelFlag cancel,
              std::function<void(absl::StatusOr<AppendResult>)> done);
  // on_event is called for every batch of new tokens; the last call has finish != kNone or the
  // operation ends with done(error). done(OK) follows the last event.
  void Generate(const std::string& principal, const std::string& id, GenerateParams params,
                CancelFlag cancel, std::function<void(const GenerateEvent&)> on_event, Done done);
  void Score(const std::string& principal, const std::string& id, std::vector<int32_t> tokens,
             bool commit, std::function<void(absl::StatusOr<ScoreResult>)> done);

  void Export(const std::string& principal, const std::string& id,
              std::function<void(absl::StatusOr<std::string>)> done);
  absl::StatusOr<SessionInfo> Import(const CreateParams& params, const std::string& snapshot);

  // Stops admitting work (UNAVAILABLE), lets queued operations finish until `deadline_ms` from
  // now, then cancels the rest, persists resident sessions when a state_dir is set, and stops
  // the engine thread. Idempotent.
  void Shutdown(int64_t deadline_ms);

  struct Stats {
    int64_t sessions = 0, resident = 0, spilled = 0, queued_tokens = 0, queued_operations = 0;
    int64_t resident_state_bytes = 0, spilled_state_bytes = 0, steps = 0;
    // Acknowledged tokens of open sessions not yet in a persisted state (the durability lag;
    // with kSync they are in the log, so lag counts what a crash would have to replay).
    int64_t unpersisted_tokens = 0;
    int64_t log_bytes = 0;               // written to the write-ahead log since start
    double recovery_seconds = 0;         // time the start-up recovery took
    int64_t recovered_records = 0;       // log records replayed at start-up
    int64_t unrecoverable_sessions = 0;  // sessions whose log could not be replayed completely
  };
  Stats stats() const;

  class Impl;

 private:
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace titans::engine

#endif  // TITANS_SERVER_ENGINE_ENGINE_H_
