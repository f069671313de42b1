// The stored forms of SessionRecord and RewindTokens (declared in session_store.h): JSON and a
// checksummed binary list; and the naming rule for what becomes a file or key name (engine.h).
// Kept apart from the stores so that the fuzz targets can link them alone.
#include <cctype>
#include <cstring>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/crc32c.h"
#include "server/engine/engine.h"
#include "server/engine/session_store.h"

namespace titans::engine {

absl::Status ValidateName(const std::string& name, const char* field) {
  bool ok = !name.empty() && name.size() <= 128 && name[0] != '.';
  for (char c : name) {
    ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-');
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " must be 1..128 characters of [A-Za-z0-9._-] not starting with '.'"));
}

std::string ShowValue(std::string_view value) {
  constexpr size_t kShown = 64;
  std::string out;
  for (size_t i = 0; i < value.size() && i < kShown; ++i) {
    const unsigned char c = static_cast<unsigned char>(value[i]);
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
    }
  }
  if (value.size() > kShown) absl::StrAppend(&out, "...(", value.size(), " bytes)");
  return out;
}

std::string StorageName(const std::string& principal, const std::string& id) {
  return principal.empty() ? id : absl::StrCat(principal, "+", id);
}

std::string ClientId(const SessionRecord& record) {
  if (record.principal.empty()) return record.id;
  const std::string prefix = record.principal + "+";
  if (!absl::StartsWith(record.id, prefix)) return record.id;  // stored before ids were scoped
  return record.id.substr(prefix.size());
}

std::vector<std::string> StorageNames(const std::string& principal, const std::string& id) {
  if (principal.empty()) return {id};
  return {StorageName(principal, id), id};
}

absl::Status ValidatePrincipal(const std::string& principal) {
  bool ok = principal.size() <= 64 && (principal.empty() || principal[0] != '.');
  for (char c : principal) {
    ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' ||
                c == '@' || c == ':');
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("principal '", ShowValue(principal),
                   "' must be at most 64 characters of [A-Za-z0-9._@:-], not starting with '.'"));
}

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
    if (!ValidatePrincipal(r.principal).ok()) throw std::runtime_error("bad principal");
    if (!ValidateName(ClientId(r), "id").ok()) throw std::runtime_error("bad session id");
    if (r.position < 0 || r.epoch < 0 || r.idle_ttl_seconds < 0) {
      throw std::runtime_error("bad values");
    }
    return r;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(std::string("malformed session record: ") + e.what());
  }
}

namespace {
// Version 1 had no epoch; it is still read (as epoch -1: "unknown", see RewindTokens).
constexpr char kRewindMagicV1[8] = {'T', 'T', 'N', 'R', 'W', 'T', 'K', '1'};
constexpr char kRewindMagic[8] = {'T', 'T', 'N', 'R', 'W', 'T', 'K', '2'};
}  // namespace

// "TTNRWTK2" | u32 crc32c(rest) | i64 epoch | i64 first position | u32 count | count x i32
std::string EncodeRewindTokens(const RewindTokens& t) {
  std::string body(20 + 4 * t.tokens.size(), '\0');
  const uint32_t n = static_cast<uint32_t>(t.tokens.size());
  std::memcpy(body.data(), &t.epoch, 8);
  std::memcpy(body.data() + 8, &t.first_position, 8);
  std::memcpy(body.data() + 16, &n, 4);
  if (n) std::memcpy(body.data() + 20, t.tokens.data(), 4 * t.tokens.size());
  const uint32_t crc = Crc32c(body.data(), body.size());
  std::string out(kRewindMagic, 8);
  out.append(reinterpret_cast<const char*>(&crc), 4);
  return out + body;
}

absl::StatusOr<RewindTokens> DecodeRewindTokens(std::string_view blob) {
  const bool v1 = blob.size() >= 8 && blob.substr(0, 8) == std::string_view(kRewindMagicV1, 8);
  const size_t header = v1 ? 12 : 20;  // the body's bytes before the tokens
  if (blob.size() < 12 + header ||
      (!v1 && blob.substr(0, 8) != std::string_view(kRewindMagic, 8))) {
    return absl::DataLossError("rewind tokens: bad header");
  }
  uint32_t crc, n;
  RewindTokens t;
  std::memcpy(&crc, blob.data() + 8, 4);
  std::string_view body = blob.substr(12);
  if (!v1) std::memcpy(&t.epoch, body.data(), 8);
  std::memcpy(&t.first_position, body.data() + header - 12, 8);
  std::memcpy(&n, body.data() + header - 4, 4);
  if (body.size() != header + 4 * static_cast<uint64_t>(n) ||
      Crc32c(body.data(), body.size()) != crc || t.first_position < 0 || t.epoch < -1) {
    return absl::DataLossError("rewind tokens: truncated or damaged");
  }
  t.tokens.resize(n);
  if (n) std::memcpy(t.tokens.data(), body.data() + header, 4 * static_cast<size_t>(n));
  return t;
}

}  // namespace titans::engine
