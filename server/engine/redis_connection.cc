// RedisStore's connection: opening it from a spec, reconnecting, and pipelined commands with
// their replies decoded (the session operations are in redis_store.cc).
#include <hiredis/hiredis.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "model/status_macros.h"
#include "server/engine/redis_store.h"

namespace titans::engine {
namespace {

RedisStore::Reply Decode(const redisReply* r) {
  RedisStore::Reply out;
  switch (r->type) {
    case REDIS_REPLY_INTEGER:
      out.kind = RedisStore::Reply::kInteger;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
      out.kind = RedisStore::Reply::kString;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ARRAY:
      out.kind = RedisStore::Reply::kArray;
      for (size_t i = 0; i < r->elements; ++i) out.elements.push_back(Decode(r->element[i]));
      break;
    default:
      break;
  }
  return out;
}

absl::Status ErrorReply(std::string_view message) {
  const std::string m(message);
  if (absl::StartsWith(m, "FENCED")) return absl::AbortedError(m.substr(7));
  if (absl::StartsWith(m, "NOTFOUND")) return absl::NotFoundError("session not in the store");
  if (absl::StartsWith(m, "EXISTS")) return absl::AlreadyExistsError(m.substr(7));
  if (absl::StartsWith(m, "OOM")) return absl::ResourceExhaustedError("redis: " + m);
  return absl::UnavailableError("redis: " + m);
}

}  // namespace

absl::StatusOr<std::unique_ptr<RedisStore>> RedisStore::Open(const std::string& spec) {
  const std::string kScheme = "redis://";
  if (!absl::StartsWith(spec, kScheme)) {
    return absl::InvalidArgumentError("a Redis store is redis://HOST:PORT[/PREFIX]");
  }
  std::string rest = spec.substr(kScheme.size());
  std::string prefix = "titans";
  if (size_t slash = rest.find('/'); slash != std::string::npos) {
    prefix = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
  }
  const size_t colon = rest.rfind(':');
  int port = 6379;
  if (colon != std::string::npos && !absl::SimpleAtoi(rest.substr(colon + 1), &port)) port = -1;
  const std::string host = colon == std::string::npos ? rest : rest.substr(0, colon);
  if (host.empty() || port <= 0 || port > 65535 || prefix.empty()) {
    return absl::InvalidArgumentError("a Redis store is redis://HOST:PORT[/PREFIX], got " + spec);
  }
  return std::unique_ptr<RedisStore>(new RedisStore(host, port, prefix));
}

RedisStore::~RedisStore() {
  MutexLock lock(&mu_);
  if (context_) redisFree(context_);
}

std::string RedisStore::Describe() const { return absl::StrCat("redis ", host_, ":", port_); }

absl::Status RedisStore::ConnectLocked() {
  if (context_ && context_->err == 0) return absl::OkStatus();
  if (context_) redisFree(context_);
  const timeval timeout{5, 0};
  context_ = redisConnectWithTimeout(host_.c_str(), port_, timeout);
  if (!context_ || context_->err) {
    const std::string why = context_ ? context_->errstr : "out of memory";
    if (context_) redisFree(context_);
    context_ = nullptr;
    return absl::UnavailableError(absl::StrCat("redis ", host_, ":", port_, ": ", why));
  }
  redisSetTimeout(context_, timeout);
  return absl::OkStatus();
}

std::vector<absl::StatusOr<RedisStore::Reply>> RedisStore::Pipeline(
    const std::vector<std::vector<std::string>>& cmds) {
  std::vector<absl::StatusOr<Reply>> out;
  MutexLock lock(&mu_);
  absl::Status st = ConnectLocked();
  if (st.ok()) {
    for (const auto& cmd : cmds) {
      std::vector<const char*> argv;
      std::vector<size_t> lens;
      for (const std::string& a : cmd) {
        argv.push_back(a.data());
        lens.push_back(a.size());
      }
      redisAppendCommandArgv(context_, static_cast<int>(argv.size()), argv.data(), lens.data());
    }
    for (size_t i = 0; i < cmds.size(); ++i) {
      void* raw = nullptr;
      if (redisGetReply(context_, &raw) != REDIS_OK || raw == nullptr) {
        st = absl::UnavailableError(
            absl::StrCat("redis ", host_, ":", port_, ": ", context_->errstr));
        break;
      }
      auto* reply = static_cast<redisReply*>(raw);
      if (reply->type == REDIS_REPLY_ERROR) {
        out.push_back(ErrorReply(std::string_view(reply->str, reply->len)));
      } else {
        out.push_back(Decode(reply));
      }
      freeReplyObject(reply);
    }
  }
  if (!st.ok()) {
    // The connection is in an unknown state: drop it (the next call reconnects).
    if (context_) redisFree(context_);
    context_ = nullptr;
    while (out.size() < cmds.size()) out.push_back(st);
  }
  return out;
}

absl::StatusOr<RedisStore::Reply> RedisStore::Command(const std::vector<std::string>& cmd) {
  return Pipeline({cmd})[0];
}

}  // namespace titans::engine
