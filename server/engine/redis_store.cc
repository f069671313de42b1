#include "server/engine/redis_store.h"

#include <hiredis/hiredis.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "model/status_macros.h"
#include "server/engine/engine.h"

namespace titans::engine {
namespace {

// Every fenced script starts by checking that KEYS[1] (the session's fence) still holds ARGV[1].
constexpr char kFenceCheck[] =
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then "
    "  return redis.error_reply('FENCED session was acquired by another replica') end ";

// Renews the expiry of KEYS[2..] when ARGV[ttl_arg] > 0.
std::string Renew(int ttl_arg) {
  return absl::StrCat("local ttl = tonumber(ARGV[", ttl_arg,
                      "]) if ttl > 0 then for i = 1, #KEYS do "
                      "redis.call('PEXPIRE', KEYS[i], ttl) end end ");
}

// KEYS: fence rec state log rwt rwp | ARGV: fence rec state ttl point-key-prefix
const std::string kWriteScript = std::string(kFenceCheck) +
                                 "redis.call('SET', KEYS[2], ARGV[2]) "
                                 "redis.call('SET', KEYS[3], ARGV[3]) "
                                 "redis.call('DEL', KEYS[4]) " +
                                 Renew(4) +
                                 "local ttl = tonumber(ARGV[4]) if ttl > 0 then "
                                 "  for _, p in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do "
                                 "    redis.call('PEXPIRE', ARGV[5] .. p, ttl) end end "
                                 "return 1";

// KEYS: counter fence rec state log sessions | ARGV: rec state ttl id
constexpr char kCreateScript[] =
    "if redis.call('EXISTS', KEYS[3]) == 1 then "
    "  return redis.error_reply('EXISTS session already exists') end "
    "local f = redis.call('INCR', KEYS[1]) "
    "redis.call('SET', KEYS[2], f) "
    "redis.call('SET', KEYS[3], ARGV[1]) "
    "redis.call('SET', KEYS[4], ARGV[2]) "
    "redis.call('DEL', KEYS[5]) "
    "redis.call('SADD', KEYS[6], ARGV[4]) "
    "local ttl = tonumber(ARGV[3]) if ttl > 0 then for i = 2, 4 do "
    "  redis.call('PEXPIRE', KEYS[i], ttl) end end "
    "return f";

// KEYS: counter fence rec | ARGV: ttl. Returns {new fence, previous fence or ""}.
constexpr char kAcquireScript[] =
    "if redis.call('EXISTS', KEYS[3]) == 0 then return redis.error_reply('NOTFOUND no such "
    "session') end "
    "local previous = redis.call('GET', KEYS[2]) or '' "
    "local f = redis.call('INCR', KEYS[1]) "
    "redis.call('SET', KEYS[2], f) "
    "local ttl = tonumber(ARGV[1]) if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end "
    "return {f, previous}";

// KEYS: fence log | ARGV: fence record ttl
const std::string kAppendLogScript =
    std::string(kFenceCheck) + "redis.call('RPUSH', KEYS[2], ARGV[2]) " + Renew(3) + "return 1";

// KEYS: fence point rwp | ARGV: fence blob position ttl
const std::string kWritePointScript = std::string(kFenceCheck) +
                                      "redis.call('SET', KEYS[2], ARGV[2]) "
                                      "redis.call('ZADD', KEYS[3], ARGV[3], ARGV[3]) " +
                                      Renew(4) + "return 1";

// KEYS: fence point rwp | ARGV: fence position
const std::string kRemovePointScript = std::string(kFenceCheck) +
                                       "redis.call('DEL', KEYS[2]) "
                                       "redis.call('ZREM', KEYS[3], ARGV[2]) return 1";

// KEYS: fence rwt | ARGV: fence blob ttl
const std::string kWriteTokensScript =
    std::string(kFenceCheck) + "redis.call('SET', KEYS[2], ARGV[2]) " + Renew(3) + "return 1";

// KEYS: rec state log rwt rwp fence sessions | ARGV: point-key-prefix id
constexpr char kRemoveScript[] =
    "for _, p in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do "
    "  redis.call('DEL', ARGV[1] .. p) end "
    "redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]) "
    "redis.call('SREM', KEYS[7], ARGV[2]) return 1";

}  // namespace

absl::Status RedisStore::Init() {
  TITANS_ASSIGN_OR_RETURN(Reply pong, Command({"PING"}));
  if (pong.str != "PONG") return absl::UnavailableError("redis: unexpected reply to PING");
  return absl::OkStatus();
}

std::string RedisStore::Key(const std::string& id, const char* suffix) const {
  return absl::StrCat(prefix_, ":{", id, "}:", suffix);
}

std::string RedisStore::FenceOf(const std::string& id) {
  MutexLock lock(&fences_mu_);
  auto it = fences_.find(id);
  return it == fences_.end() ? "0" : it->second;
}

int64_t RedisStore::TtlMs(const std::string& id) {
  MutexLock lock(&fences_mu_);
  auto it = ttl_ms_.find(id);
  return it == ttl_ms_.end() ? 0 : it->second;
}

std::vector<std::string> RedisStore::Fenced(const std::string& script, const std::string& id,
                                            std::vector<std::string> keys,
                                            std::vector<std::string> args) {
  std::vector<std::string> cmd = {"EVAL", script, std::to_string(keys.size() + 1),
                                  Key(id, "fence")};
  cmd.insert(cmd.end(), keys.begin(), keys.end());
  cmd.push_back(FenceOf(id));
  cmd.insert(cmd.end(), args.begin(), args.end());
  return cmd;
}

absl::Status RedisStore::Create(const SessionRecord& r, const std::string& state_blob) {
  const int64_t ttl = r.idle_ttl_seconds * 1000;
  TITANS_ASSIGN_OR_RETURN(
      Reply fence,
      Command({"EVAL", kCreateScript, "6", prefix_ + ":fence_counter", Key(r.id, "fence"),
               Key(r.id, "rec"), Key(r.id, "state"), Key(r.id, "log"), prefix_ + ":sessions",
               EncodeSessionRecord(r), state_blob, std::to_string(ttl), r.id}));
  MutexLock lock(&fences_mu_);
  fences_[r.id] = std::to_string(fence.integer);
  ttl_ms_[r.id] = ttl;
  return absl::OkStatus();
}

absl::Status RedisStore::Write(const SessionRecord& r, const std::string& state_blob) {
  const int64_t ttl = r.idle_ttl_seconds * 1000;
  {
    MutexLock lock(&fences_mu_);
    ttl_ms_[r.id] = ttl;
  }
  return Command(
             Fenced(kWriteScript, r.id,
                    {Key(r.id, "rec"), Key(r.id, "state"), Key(r.id, "log"), Key(r.id, "rwt"),
                     Key(r.id, "rwp")},
                    {EncodeSessionRecord(r), state_blob, std::to_string(ttl), Key(r.id, "rw:")}))
      .status();
}

absl::StatusOr<std::string> RedisStore::ReadState(const std::string& id) {
  TITANS_ASSIGN_OR_RETURN(Reply r, Command({"GET", Key(id, "state")}));
  if (r.kind != Reply::kString)
    return absl::NotFoundError("session '" + ShowValue(id) + "' not in the store");
  return r.str;
}

absl::StatusOr<SessionRecord> RedisStore::ReadRecord(const std::string& id) {
  std::vector<absl::StatusOr<Reply>> replies =
      Pipeline({{"GET", Key(id, "rec")}, {"LINDEX", Key(id, "log"), "-1"}});
  TITANS_RETURN_IF_ERROR(replies[0].status());
  if (replies[0]->kind != Reply::kString) {
    return absl::NotFoundError("session '" + ShowValue(id) + "' not in the store");
  }
  TITANS_ASSIGN_OR_RETURN(SessionRecord record, DecodeSessionRecord(replies[0]->str));
  if (replies[1].ok() && replies[1]->kind == Reply::kString) {  // the last logged operation
    std::vector<WalRecord> last;
    ParseWalSegment(replies[1]->str, &last);
    if (last.size() == 1 && last[0].epoch == record.epoch) {
      record.position = std::max(
          record.position, last[0].position_before + static_cast<int64_t>(last[0].tokens.size()));
    }
  }
  MutexLock lock(&fences_mu_);
  ttl_ms_[id] = record.idle_ttl_seconds * 1000;
  return record;
}

void RedisStore::Remove(const std::string& id) {
  (void)Command({"EVAL", kRemoveScript, "7", Key(id, "rec"), Key(id, "state"), Key(id, "log"),
                 Key(id, "rwt"), Key(id, "rwp"), Key(id, "fence"), prefix_ + ":sessions",
                 Key(id, "rw:"), id});
  MutexLock lock(&fences_mu_);
  fences_.erase(id);
  ttl_ms_.erase(id);
}

std::vector<SessionRecord> RedisStore::List(std::vector<std::string>* errors) {
  std::vector<SessionRecord> out;
  auto ids = Command({"SMEMBERS", prefix_ + ":sessions"});
  if (!ids.ok()) {
    if (errors) errors->push_back(std::string(ids.status().message()));
    return out;
  }
  std::vector<std::vector<std::string>> gets;
  for (const Reply& id : ids->elements) gets.push_back({"GET", Key(id.str, "rec")});
  std::vector<absl::StatusOr<Reply>> recs = Pipeline(gets);
  for (size_t i = 0; i < recs.size(); ++i) {
    const std::string& id = ids->elements[i].str;
    if (recs[i].ok() && recs[i]->kind == Reply::kNil) {  // expired in Redis
      (void)Command({"SREM", prefix_ + ":sessions", id});
      continue;
    }
    absl::StatusOr<SessionRecord> r = recs[i].ok()
                                          ? DecodeSessionRecord(recs[i]->str)
                                          : absl::StatusOr<SessionRecord>(recs[i].status());
    if (r.ok()) {
      out.push_back(std::move(*r));
    } else if (errors) {
      errors->push_back(id + ": " + std::string(r.status().message()));
    }
  }
  return out;
}

absl::StatusOr<bool> RedisStore::Acquire(const std::string& id) {
  const int64_t ttl = TtlMs(id);
  TITANS_ASSIGN_OR_RETURN(Reply reply,
                          Command({"EVAL", kAcquireScript, "3", prefix_ + ":fence_counter",
                                   Key(id, "fence"), Key(id, "rec"), std::to_string(ttl)}));
  if (reply.elements.size() != 2) return absl::UnavailableError("redis: unexpected acquire reply");
  const std::string previous = reply.elements[1].str;
  MutexLock lock(&fences_mu_);
  auto it = fences_.find(id);
  const bool migrated = it == fences_.end() || it->second != previous;
  fences_[id] = std::to_string(reply.elements[0].integer);
  return migrated;
}

std::vector<std::string> RedisStore::Moved(const std::vector<std::string>& ids) {
  std::vector<std::vector<std::string>> gets;
  for (const std::string& id : ids) gets.push_back({"GET", Key(id, "fence")});
  std::vector<absl::StatusOr<Reply>> fences = Pipeline(gets);
  std::vector<std::string> moved;
  for (size_t i = 0; i < ids.size(); ++i) {
    // Unreachable Redis: assume nothing moved (writes are fenced anyway).
    if (!fences[i].ok()) continue;
    if (fences[i]->kind != Reply::kString || fences[i]->str != FenceOf(ids[i])) {
      moved.push_back(ids[i]);
    }
  }
  return moved;
}

std::vector<absl::Status> RedisStore::AppendLog(const std::vector<WalRecord>& records) {
  std::vector<std::vector<std::string>> cmds;
  for (const WalRecord& r : records) {
    cmds.push_back(Fenced(kAppendLogScript, r.session_id, {Key(r.session_id, "log")},
                          {EncodeWalRecord(r), std::to_string(TtlMs(r.session_id))}));
  }
  std::vector<absl::Status> out;
  for (auto& reply : Pipeline(cmds)) out.push_back(reply.status());
  return out;
}

absl::StatusOr<std::vector<WalRecord>> RedisStore::ReadLog(const std::string& id) {
  TITANS_ASSIGN_OR_RETURN(Reply list, Command({"LRANGE", Key(id, "log"), "0", "-1"}));
  std::string joined;
  for (const Reply& e : list.elements) joined += e.str;
  std::vector<WalRecord> records;
  const std::string damage = ParseWalSegment(joined, &records);
  if (!damage.empty()) {
    return absl::DataLossError("session '" + id + "': its log in Redis is damaged: " + damage);
  }
  return records;
}

absl::Status RedisStore::WriteRewindPoint(const std::string& id, int64_t position,
                                          const std::string& blob) {
  const std::string p = std::to_string(position);
  return Command(Fenced(kWritePointScript, id, {Key(id, ("rw:" + p).c_str()), Key(id, "rwp")},
                        {blob, p, std::to_string(TtlMs(id))}))
      .status();
}

absl::StatusOr<std::string> RedisStore::ReadRewindPoint(const std::string& id, int64_t position) {
  const std::string p = std::to_string(position);
  TITANS_ASSIGN_OR_RETURN(Reply r, Command({"GET", Key(id, ("rw:" + p).c_str())}));
  if (r.kind != Reply::kString) return absl::NotFoundError("rewind point " + p + " not stored");
  return r.str;
}

void RedisStore::RemoveRewindPoint(const std::string& id, int64_t position) {
  const std::string p = std::to_string(position);
  (void)Command(
      Fenced(kRemovePointScript, id, {Key(id, ("rw:" + p).c_str()), Key(id, "rwp")}, {p}));
}

std::vector<int64_t> RedisStore::ListRewindPoints(const std::string& id) {
  std::vector<int64_t> out;
  auto r = Command({"ZRANGE", Key(id, "rwp"), "0", "-1"});
  if (!r.ok()) return out;
  for (const Reply& e : r->elements) {
    int64_t p;
    if (absl::SimpleAtoi(e.str, &p)) out.push_back(p);
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::Status RedisStore::CopyRewindPoint(const std::string& from_id, const std::string& to_id,
                                         int64_t position) {
  TITANS_ASSIGN_OR_RETURN(std::string blob, ReadRewindPoint(from_id, position));
  return WriteRewindPoint(to_id, position, blob);
}

absl::Status RedisStore::WriteRewindTokens(const std::string& id, const RewindTokens& tokens) {
  return Command(Fenced(kWriteTokensScript, id, {Key(id, "rwt")},
                        {EncodeRewindTokens(tokens), std::to_string(TtlMs(id))}))
      .status();
}

absl::StatusOr<RewindTokens> RedisStore::ReadRewindTokens(const std::string& id) {
  TITANS_ASSIGN_OR_RETURN(Reply r, Command({"GET", Key(id, "rwt")}));
  if (r.kind != Reply::kString) return absl::NotFoundError("no rewind tokens");
  return DecodeRewindTokens(r.str);
}

}  // namespace titans::engine
