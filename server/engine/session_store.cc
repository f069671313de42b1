#include "server/engine/session_store.h"

#include "absl/strings/match.h"
#include "server/engine/directory_store.h"
#include "server/engine/env.h"
#include "server/engine/redis_store.h"

namespace titans::engine {

absl::StatusOr<std::unique_ptr<SessionStore>> OpenSessionStore(const std::string& spec, Env* env) {
  std::unique_ptr<SessionStore> store;
  if (absl::StartsWith(spec, "redis://")) {
    auto redis = RedisStore::Open(spec);
    if (!redis.ok()) return redis.status();
    store = std::move(*redis);
  } else {
    store = std::make_unique<DirectoryStore>(spec, env ? env : Env::Default());
  }
  absl::Status st = store->Init();
  if (!st.ok()) return st;
  return store;
}

}  // namespace titans::engine
