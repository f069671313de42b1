#include "server/engine/session_files.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/crc32c.h"
#include "model/file_util.h"
#include "model/status_macros.h"

namespace titans::engine {

namespace fs = std::filesystem;

absl::Status SessionFiles::Init() {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) return absl::InternalError("cannot create state directory " + dir_ + ": " + ec.message());
  return absl::OkStatus();
}

absl::Status SessionFiles::Write(const SessionRecord& r, const std::string& state_blob) {
  nlohmann::json j = {{"id", r.id},
                      {"principal", r.principal},
                      {"labels", r.labels},
                      {"idle_ttl_seconds", r.idle_ttl_seconds},
                      {"created_unix_ms", r.created_unix_ms},
                      {"last_used_unix_ms", r.last_used_unix_ms},
                      {"position", r.position},
                      {"state_bytes", r.state_bytes},
                      {"epoch", r.epoch}};
  // State first: a record without its state is never visible.
  TITANS_RETURN_IF_ERROR(WriteFileAtomic(dir_ + "/" + r.id + ".state", state_blob));
  return WriteFileAtomic(dir_ + "/" + r.id + ".json", j.dump());
}

absl::StatusOr<std::string> SessionFiles::ReadState(const std::string& id) {
  return ReadFileToString(dir_ + "/" + id + ".state");
}

void SessionFiles::Remove(const std::string& id) {
  std::error_code ec;
  fs::remove(dir_ + "/" + id + ".json", ec);
  fs::remove(dir_ + "/" + id + ".state", ec);
  fs::remove_all(RewindDir(id), ec);
}

std::string SessionFiles::PointPath(const std::string& id, int64_t position) const {
  return absl::StrFormat("%s/%020d.state", RewindDir(id), position);
}

absl::Status SessionFiles::WriteRewindPoint(const std::string& id, int64_t position,
                                            const std::string& blob) {
  std::error_code ec;
  fs::create_directories(RewindDir(id), ec);
  if (ec) return absl::InternalError("cannot create " + RewindDir(id) + ": " + ec.message());
  return WriteFileAtomic(PointPath(id, position), blob);
}

absl::StatusOr<std::string> SessionFiles::ReadRewindPoint(const std::string& id,
                                                          int64_t position) {
  return ReadFileToString(PointPath(id, position));
}

void SessionFiles::RemoveRewindPoint(const std::string& id, int64_t position) {
  std::error_code ec;
  fs::remove(PointPath(id, position), ec);
}

std::vector<int64_t> SessionFiles::ListRewindPoints(const std::string& id) {
  std::vector<int64_t> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(RewindDir(id), ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() != 26 || name.substr(20) != ".state") continue;
    if (name.find_first_not_of("0123456789") != 20) continue;
    out.push_back(std::stoll(name.substr(0, 20)));
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::Status SessionFiles::CopyRewindPoint(const std::string& from_id, const std::string& to_id,
                                           int64_t position) {
  std::error_code ec;
  fs::create_directories(RewindDir(to_id), ec);
  if (ec) return absl::InternalError("cannot create " + RewindDir(to_id) + ": " + ec.message());
  const std::string to = PointPath(to_id, position);
  fs::remove(to, ec);
  // Point files are never modified after they are written, so sharing the inode is safe.
  fs::create_hard_link(PointPath(from_id, position), to, ec);
  if (!ec) return absl::OkStatus();
  TITANS_ASSIGN_OR_RETURN(std::string blob, ReadRewindPoint(from_id, position));
  return WriteFileAtomic(to, blob);
}

absl::Status SessionFiles::WriteRewindTokens(const std::string& id, const RewindTokens& tokens) {
  std::error_code ec;
  fs::create_directories(RewindDir(id), ec);
  if (ec) return absl::InternalError("cannot create " + RewindDir(id) + ": " + ec.message());
  return WriteFileAtomic(RewindDir(id) + "/tokens", EncodeRewindTokens(tokens));
}

absl::StatusOr<RewindTokens> SessionFiles::ReadRewindTokens(const std::string& id) {
  TITANS_ASSIGN_OR_RETURN(std::string blob, ReadFileToString(RewindDir(id) + "/tokens"));
  return DecodeRewindTokens(blob);
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

std::vector<SessionRecord> SessionFiles::List(std::vector<std::string>* errors) {
  std::vector<SessionRecord> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    if (entry.path().extension() != ".json") continue;
    auto text = ReadFileToString(entry.path().string());
    nlohmann::json j = nlohmann::json::parse(text.ok() ? *text : std::string(), nullptr, false);
    try {
      if (j.is_discarded()) throw std::runtime_error("unreadable");
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
      if (!fs::exists(dir_ + "/" + r.id + ".state")) throw std::runtime_error("state missing");
      out.push_back(std::move(r));
    } catch (const std::exception& e) {
      if (errors) errors->push_back(entry.path().string() + ": " + e.what());
    }
  }
  return out;
}

}  // namespace titans::engine
