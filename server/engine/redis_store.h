// RedisStore: sessions in a Redis server shared by several replicas (a SessionStore with
// shared() == true). Spec: "redis://HOST:PORT[/PREFIX]" (PREFIX defaults to "titans").
//
// Keys, per session (the {id} hash tag keeps a session's keys in one Redis Cluster slot):
//   PREFIX:{id}:rec    SessionRecord JSON          PREFIX:{id}:state   state snapshot
//   PREFIX:{id}:log    list of log records since the checkpoint (sync durability)
//   PREFIX:{id}:fence  integer, incremented by every Acquire; writes carry the writer's value
//   PREFIX:{id}:rwt    rewind tokens               PREFIX:{id}:rwp     sorted set of point
//   positions PREFIX:{id}:rw:<position>  rewind point state PREFIX:sessions    set of session ids
//   (for List)
// Every write is a Lua script that first checks the fence, so a replica that lost a session to
// another (failover, re-routing) can never overwrite it: its write fails with ABORTED. Every
// write also renews the session's keys' expiry to its idle TTL, so sessions nobody uses expire
// in Redis itself.
//
// Durability: AppendLog returns after Redis acknowledged the records; for an acknowledged
// operation to survive a Redis crash, run Redis with `appendonly yes` and `appendfsync always`.
//
// Thread safety: all methods are safe to call concurrently (one connection behind a mutex,
// reconnected after errors).
#ifndef TITANS_SERVER_ENGINE_REDIS_STORE_H_
#define TITANS_SERVER_ENGINE_REDIS_STORE_H_

#include <map>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "model/mutex.h"
#include "server/engine/session_store.h"

struct redisContext;

namespace titans::engine {

class RedisStore : public SessionStore {
 public:
  // INVALID_ARGUMENT for a malformed spec. Does not connect (Init does).
  static absl::StatusOr<std::unique_ptr<RedisStore>> Open(const std::string& spec);
  ~RedisStore() override;

  absl::Status Init() override;  // connects and pings; UNAVAILABLE if Redis cannot be reached
  bool shared() const override { return true; }
  std::string Describe() const override;

  absl::Status Create(const SessionRecord& record, const std::string& state_blob) override;
  absl::Status Write(const SessionRecord& record, const std::string& state_blob) override;
  absl::StatusOr<std::string> ReadState(const std::string& id) override;
  absl::StatusOr<SessionRecord> ReadRecord(const std::string& id) override;
  void Remove(const std::string& id) override;
  std::vector<SessionRecord> List(std::vector<std::string>* errors) override;

  absl::StatusOr<bool> Acquire(const std::string& id) override;
  std::vector<std::string> Moved(const std::vector<std::string>& ids) override;
  std::vector<absl::Status> AppendLog(const std::vector<WalRecord>& records) override;
  absl::StatusOr<std::vector<WalRecord>> ReadLog(const std::string& id) override;

  absl::Status WriteRewindPoint(const std::string& id, int64_t position,
                                const std::string& blob) override;
  absl::StatusOr<std::string> ReadRewindPoint(const std::string& id, int64_t position) override;
  void RemoveRewindPoint(const std::string& id, int64_t position) override;
  std::vector<int64_t> ListRewindPoints(const std::string& id) override;
  absl::Status CopyRewindPoint(const std::string& from_id, const std::string& to_id,
                               int64_t position) override;
  absl::Status WriteRewindTokens(const std::string& id, const RewindTokens& tokens) override;
  absl::StatusOr<RewindTokens> ReadRewindTokens(const std::string& id) override;

  // One reply, decoded: nil, an integer, a string (bulk or status) or an array of those.
  struct Reply {
    enum Kind { kNil, kInteger, kString, kArray } kind = kNil;
    int64_t integer = 0;
    std::string str;
    std::vector<Reply> elements;
  };

 private:
  RedisStore(std::string host, int port, std::string prefix)
      : host_(std::move(host)), port_(port), prefix_(std::move(prefix)) {}

  std::string Key(const std::string& id, const char* suffix) const;
  // Runs commands pipelined (one round trip); one result per command. Redis error replies
  // become statuses (a fence mismatch: ABORTED).
  std::vector<absl::StatusOr<Reply>> Pipeline(const std::vector<std::vector<std::string>>& cmds);
  absl::StatusOr<Reply> Command(const std::vector<std::string>& cmd);
  absl::Status ConnectLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The fence this replica holds for `id` ("0" if none: every write then fails with ABORTED
  // until Acquire).
  std::string FenceOf(const std::string& id);
  // EVAL of a fenced write script: args after KEYS.
  std::vector<std::string> Fenced(const std::string& script, const std::string& id,
                                  std::vector<std::string> keys, std::vector<std::string> args);
  int64_t TtlMs(const std::string& id);

  const std::string host_;
  const int port_;
  const std::string prefix_;
  Mutex mu_;
  redisContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
  Mutex fences_mu_;
  std::map<std::string, std::string> fences_ ABSL_GUARDED_BY(fences_mu_);
  std::map<std::string, int64_t> ttl_ms_ ABSL_GUARDED_BY(fences_mu_);
};

}  // namespace titans::engine

#endif  // TITANS_SERVER_ENGINE_REDIS_STORE_H_
