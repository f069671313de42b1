// SessionStore: where session states live outside RAM (spilled, checkpointed, persisted across
// restarts), with their rewind data and, for shared stores, their write-ahead log.
//
// Two implementations: DirectoryStore (a local directory; the default, works on a Kubernetes
// volume) and RedisStore (a Redis server shared by several replicas). A *shared* store may hold
// sessions created by other replicas, and a session may move between replicas: a replica
// Acquire()s a session before loading it, which fences off the previous holder (its later writes
// fail with ABORTED, and it must drop its copy).
//
// Errors: NOT_FOUND (no such session), DATA_LOSS (unreadable data), RESOURCE_EXHAUSTED (disk /
// memory full), UNAVAILABLE (I/O or connection errors), ABORTED (shared: the session was acquired
// by another replica). Thread safety: implementations are safe to call from any thread.
#ifndef TITANS_SERVER_ENGINE_SESSION_STORE_H_
#define TITANS_SERVER_ENGINE_SESSION_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/wal.h"

namespace titans::engine {

class Env;

struct SessionRecord {
  // `id` is the storage name (StorageName below): the key of the session in the engine, in the
  // store, in the write-ahead log and in Redis. The client sees ClientId(record).
  std::string id, principal;
  std::map<std::string, std::string> labels;
  int64_t idle_ttl_seconds = 0;
  int64_t created_unix_ms = 0;
  int64_t last_used_unix_ms = 0;
  int64_t position = 0;
  int64_t state_bytes = 0;
  // Incremented by every rewind: write-ahead log records of an older epoch are not replayed.
  int64_t epoch = 0;
};

// The id the client knows the session by (the record's id is its StorageName, engine.h).
std::string ClientId(const SessionRecord& record);
// Where a principal's session `id` may be stored, in the order to look: its StorageName, then,
// for a named principal, the bare id it had if stored before ids were scoped (such a record
// still names its principal, which the caller must check).
std::vector<std::string> StorageNames(const std::string& principal, const std::string& id);

std::string EncodeSessionRecord(const SessionRecord& record);  // JSON
// INVALID_ARGUMENT naming the problem when malformed.
absl::StatusOr<SessionRecord> DecodeSessionRecord(std::string_view json);

// The rewind tokens: the first rewind point's position and every token consumed since, written
// just before the checkpoint they pair with (so a crash or a takeover between the two writes
// leaves tokens that reach at least as far as the checkpoint; the engine cuts them back to it).
// `epoch` is the session's epoch (SessionRecord::epoch) when they were written: tokens of
// another epoch belong to another timeline. -1 when unknown (written by an older version).
struct RewindTokens {
  int64_t first_position = 0;
  std::vector<int32_t> tokens;
  int64_t epoch = -1;
};
// "TTNRWTK2" | u32 crc32c(rest) | i64 epoch | i64 first position | u32 count | count x i32
// (version 1, "TTNRWTK1" without the epoch, is still read)
std::string EncodeRewindTokens(const RewindTokens& tokens);
// DATA_LOSS when truncated or damaged.
absl::StatusOr<RewindTokens> DecodeRewindTokens(std::string_view blob);

class SessionStore {
 public:
  virtual ~SessionStore() = default;

  virtual absl::Status Init() = 0;
  // Whether other replicas share this store (see above).
  virtual bool shared() const = 0;
  // A short description for logs ("directory /var/lib/titans", "redis 10.0.0.5:6379").
  virtual std::string Describe() const = 0;

  // Stores a new session. ALREADY_EXISTS if a shared store already holds the id.
  virtual absl::Status Create(const SessionRecord& record, const std::string& state_blob) = 0;
  // Replaces the session's record and state atomically (a checkpoint). In a shared store this
  // also clears the session's log (the checkpoint contains every logged record).
  virtual absl::Status Write(const SessionRecord& record, const std::string& state_blob) = 0;
  virtual absl::StatusOr<std::string> ReadState(const std::string& id) = 0;
  // The record; in a shared store its position includes the operations logged since the
  // checkpoint (the record itself is only rewritten by checkpoints).
  virtual absl::StatusOr<SessionRecord> ReadRecord(const std::string& id) = 0;
  // Removes everything of the session.
  virtual void Remove(const std::string& id) = 0;
  // Records of every stored session (unreadable ones are skipped and reported in *errors).
  virtual std::vector<SessionRecord> List(std::vector<std::string>* errors) = 0;

  // Shared stores: which of `ids` (sessions this replica acquired) another replica has acquired
  // since. Local stores: none.
  virtual std::vector<std::string> Moved(const std::vector<std::string>& ids) = 0;
  // Shared stores: takes the session over from whichever replica held it; true when that was
  // another replica (or this one before a restart): a migration. Local stores: false, no-op.
  virtual absl::StatusOr<bool> Acquire(const std::string& id) = 0;
  // Shared stores: appends records to their sessions' logs, durably on return; one status per
  // record (ABORTED for sessions acquired elsewhere). Local stores: UNIMPLEMENTED (they use Wal).
  virtual std::vector<absl::Status> AppendLog(const std::vector<WalRecord>& records) = 0;
  // Shared stores: the session's log since its checkpoint, in order.
  virtual absl::StatusOr<std::vector<WalRecord>> ReadLog(const std::string& id) = 0;

  virtual absl::Status WriteRewindPoint(const std::string& id, int64_t position,
                                        const std::string& blob) = 0;
  virtual absl::StatusOr<std::string> ReadRewindPoint(const std::string& id, int64_t position) = 0;
  virtual void RemoveRewindPoint(const std::string& id, int64_t position) = 0;
  // Positions of the stored rewind points, ascending.
  virtual std::vector<int64_t> ListRewindPoints(const std::string& id) = 0;
  // Makes `to_id`'s rewind point at `position` a copy of `from_id`'s.
  virtual absl::Status CopyRewindPoint(const std::string& from_id, const std::string& to_id,
                                       int64_t position) = 0;
  virtual absl::Status WriteRewindTokens(const std::string& id, const RewindTokens& tokens) = 0;
  // NOT_FOUND when the session has none.
  virtual absl::StatusOr<RewindTokens> ReadRewindTokens(const std::string& id) = 0;
};

// Opens the store named by `spec`: a directory path, or "redis://HOST:PORT[/PREFIX]".
// `env` (directory stores only; null: Env::Default()) must outlive the store.
absl::StatusOr<std::unique_ptr<SessionStore>> OpenSessionStore(const std::string& spec,
                                                               Env* env = nullptr);

}  // namespace titans::engine

#endif  // TITANS_SERVER_ENGINE_SESSION_STORE_H_
