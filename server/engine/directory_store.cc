#include "server/engine/directory_store.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/file_util.h"
#include "model/status_macros.h"

namespace titans::engine {

namespace fs = std::filesystem;

absl::Status DirectoryStore::Init() {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) return absl::InternalError("cannot create state directory " + dir_ + ": " + ec.message());
  return absl::OkStatus();
}

absl::Status DirectoryStore::Write(const SessionRecord& r, const std::string& state_blob) {
  // State first: a record without its state is never visible.
  TITANS_RETURN_IF_ERROR(WriteFileAtomic(dir_ + "/" + r.id + ".state", state_blob));
  return WriteFileAtomic(dir_ + "/" + r.id + ".json", EncodeSessionRecord(r));
}

absl::StatusOr<std::string> DirectoryStore::ReadState(const std::string& id) {
  return ReadFileToString(dir_ + "/" + id + ".state");
}

void DirectoryStore::Remove(const std::string& id) {
  std::error_code ec;
  fs::remove(dir_ + "/" + id + ".json", ec);
  fs::remove(dir_ + "/" + id + ".state", ec);
  fs::remove_all(RewindDir(id), ec);
}

std::string DirectoryStore::PointPath(const std::string& id, int64_t position) const {
  return absl::StrFormat("%s/%020d.state", RewindDir(id), position);
}

absl::Status DirectoryStore::WriteRewindPoint(const std::string& id, int64_t position,
                                              const std::string& blob) {
  std::error_code ec;
  fs::create_directories(RewindDir(id), ec);
  if (ec) return absl::InternalError("cannot create " + RewindDir(id) + ": " + ec.message());
  return WriteFileAtomic(PointPath(id, position), blob);
}

absl::StatusOr<std::string> DirectoryStore::ReadRewindPoint(const std::string& id,
                                                            int64_t position) {
  return ReadFileToString(PointPath(id, position));
}

void DirectoryStore::RemoveRewindPoint(const std::string& id, int64_t position) {
  std::error_code ec;
  fs::remove(PointPath(id, position), ec);
}

std::vector<int64_t> DirectoryStore::ListRewindPoints(const std::string& id) {
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

absl::Status DirectoryStore::CopyRewindPoint(const std::string& from_id, const std::string& to_id,
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

absl::Status DirectoryStore::WriteRewindTokens(const std::string& id, const RewindTokens& tokens) {
  std::error_code ec;
  fs::create_directories(RewindDir(id), ec);
  if (ec) return absl::InternalError("cannot create " + RewindDir(id) + ": " + ec.message());
  return WriteFileAtomic(RewindDir(id) + "/tokens", EncodeRewindTokens(tokens));
}

absl::StatusOr<RewindTokens> DirectoryStore::ReadRewindTokens(const std::string& id) {
  TITANS_ASSIGN_OR_RETURN(std::string blob, ReadFileToString(RewindDir(id) + "/tokens"));
  return DecodeRewindTokens(blob);
}

absl::StatusOr<SessionRecord> DirectoryStore::ReadRecord(const std::string& id) {
  TITANS_ASSIGN_OR_RETURN(std::string json, ReadFileToString(dir_ + "/" + id + ".json"));
  return DecodeSessionRecord(json);
}

std::vector<absl::Status> DirectoryStore::AppendLog(const std::vector<WalRecord>& records) {
  return std::vector<absl::Status>(
      records.size(), absl::UnimplementedError("a directory store logs through a Wal"));
}

absl::StatusOr<std::vector<WalRecord>> DirectoryStore::ReadLog(const std::string&) {
  return absl::UnimplementedError("a directory store logs through a Wal");
}

std::vector<SessionRecord> DirectoryStore::List(std::vector<std::string>* errors) {
  std::vector<SessionRecord> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    if (entry.path().extension() != ".json") continue;
    auto text = ReadFileToString(entry.path().string());
    absl::StatusOr<SessionRecord> r =
        text.ok() ? DecodeSessionRecord(*text) : absl::StatusOr<SessionRecord>(text.status());
    if (r.ok() && !fs::exists(dir_ + "/" + r->id + ".state")) {
      r = absl::DataLossError("state missing");
    }
    if (r.ok()) {
      out.push_back(std::move(*r));
    } else if (errors) {
      errors->push_back(entry.path().string() + ": " + std::string(r.status().message()));
    }
  }
  return out;
}

}  // namespace titans::engine
