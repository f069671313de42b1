#include "server/engine/session_store.h"

#include <cstring>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "model/crc32c.h"
#include "server/engine/directory_store.h"
#include "server/engine/redis_store.h"

namespace titans::engine {

std::string EncodeSessionRecord(const SessionRecord& r) {
  nlohmann::json j = {{"id", r.id},
                      {"principal", r.principal},
                      {"labels", r.labels},
                      {"idle_ttl_seconds", r.idle_ttl_seconds},
                      {"created_unix_ms", r.created_unix_ms},
                      {"last_used_unix_ms", r.last_used_unix_ms},
                      {"position", r.position},
                      {"state_bytes", r.state_bytes},
                      {"epoch", r.epoch}};
  return j.dump();
}

absl::StatusOr<SessionRecord> DecodeSessionRecord(std::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  try {
    if (j.is_discarded() || !j.is_object()) throw std::runtime_error("not a JSON object");
    SessionRecord r;
    r.id = j.at("id").get<std::string>();
    r.principal = j.at("principal").get<std::string>();
    r.labels = j.at("labels").get<std::map<std::string, std::string>>();
    r.idle_ttl_seconds = j.at("idle_ttl_seconds").get<int64_t>();
    r.created_unix_ms = j.at("created_unix_ms").get<int64_t>();
    r.last_used_unix_ms = j.at("last_used_unix_ms").get<int64_t>();
    r.position = j.at("position").get<int64_t>();
    r.state_bytes = j.at("state_bytes").get<int64_t>();
    r.epoch = j.value("epoch", int64_t{0});
    if (r.id.empty() || r.position < 0 || r.epoch < 0) throw std::runtime_error("bad values");
    return r;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(std::string("malformed session record: ") + e.what());
  }
}

namespace {
constexpr char kRewindMagic[8] = {'T', 'T', 'N', 'R', 'W', 'T', 'K', '1'};
}  // namespace

// "TTNRWTK1" | u32 crc32c(rest) | i64 first position | u32 count | count x i32
std::string EncodeRewindTokens(const RewindTokens& t) {
  std::string body(12 + 4 * t.tokens.size(), '\0');
  const uint32_t n = static_cast<uint32_t>(t.tokens.size());
  std::memcpy(body.data(), &t.first_position, 8);
  std::memcpy(body.data() + 8, &n, 4);
  if (n) std::memcpy(body.data() + 12, t.tokens.data(), 4 * t.tokens.size());
  const uint32_t crc = Crc32c(body.data(), body.size());
  std::string out(kRewindMagic, 8);
  out.append(reinterpret_cast<const char*>(&crc), 4);
  return out + body;
}

absl::StatusOr<RewindTokens> DecodeRewindTokens(std::string_view blob) {
  if (blob.size() < 24 || blob.substr(0, 8) != std::string_view(kRewindMagic, 8)) {
    return absl::DataLossError("rewind tokens: bad header");
  }
  uint32_t crc, n;
  RewindTokens t;
  std::memcpy(&crc, blob.data() + 8, 4);
  std::string_view body = blob.substr(12);
  std::memcpy(&t.first_position, body.data(), 8);
  std::memcpy(&n, body.data() + 8, 4);
  if (body.size() != 12 + 4 * static_cast<uint64_t>(n) || Crc32c(body.data(), body.size()) != crc ||
      t.first_position < 0) {
    return absl::DataLossError("rewind tokens: truncated or damaged");
  }
  t.tokens.resize(n);
  if (n) std::memcpy(t.tokens.data(), body.data() + 12, 4 * static_cast<size_t>(n));
  return t;
}


absl::StatusOr<std::unique_ptr<SessionStore>> OpenSessionStore(const std::string& spec) {
  std::unique_ptr<SessionStore> store;
  if (absl::StartsWith(spec, "redis://")) {
    auto redis = RedisStore::Open(spec);
    if (!redis.ok()) return redis.status();
    store = std::move(*redis);
  } else {
    store = std::make_unique<DirectoryStore>(spec);
  }
  absl::Status st = store->Init();
  if (!st.ok()) return st;
  return store;
}

}  // namespace titans::engine
