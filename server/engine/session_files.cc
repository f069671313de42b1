#include "server/engine/session_files.h"

#include <filesystem>
#include <nlohmann/json.hpp>

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
                      {"state_bytes", r.state_bytes}};
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
      if (!fs::exists(dir_ + "/" + r.id + ".state")) throw std::runtime_error("state missing");
      out.push_back(std::move(r));
    } catch (const std::exception& e) {
      if (errors) errors->push_back(entry.path().string() + ": " + e.what());
    }
  }
  return out;
}

}  // namespace titans::engine
