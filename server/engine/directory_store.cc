#include "server/engine/directory_store.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/status_macros.h"

namespace titans::engine {

absl::Status DirectoryStore::Init() { return env_->CreateDirs(dir_); }

absl::Status DirectoryStore::Write(const SessionRecord& r, const std::string& state_blob) {
  // State first: a record without its state is never visible.
  TITANS_RETURN_IF_ERROR(env_->WriteFileAtomic(dir_ + "/" + r.id + ".state", state_blob));
  return env_->WriteFileAtomic(dir_ + "/" + r.id + ".json", EncodeSessionRecord(r));
}

absl::StatusOr<std::string> DirectoryStore::ReadState(const std::string& id) {
  return env_->ReadFile(dir_ + "/" + id + ".state");
}

void DirectoryStore::Remove(const std::string& id) {
  // The record first: a state without its record is never listed.
  (void)env_->RemoveFile(dir_ + "/" + id + ".json");
  (void)env_->RemoveFile(dir_ + "/" + id + ".state");
  (void)env_->RemoveTree(RewindDir(id));
}

std::string DirectoryStore::PointPath(const std::string& id, int64_t position) const {
  return absl::StrFormat("%s/%020d.state", RewindDir(id), position);
}

absl::Status DirectoryStore::WriteRewindPoint(const std::string& id, int64_t position,
                                              const std::string& blob) {
  TITANS_RETURN_IF_ERROR(env_->CreateDirs(RewindDir(id)));
  return env_->WriteFileAtomic(PointPath(id, position), blob);
}

absl::StatusOr<std::string> DirectoryStore::ReadRewindPoint(const std::string& id,
                                                            int64_t position) {
  return env_->ReadFile(PointPath(id, position));
}

void DirectoryStore::RemoveRewindPoint(const std::string& id, int64_t position) {
  (void)env_->RemoveFile(PointPath(id, position));
}

std::vector<int64_t> DirectoryStore::ListRewindPoints(const std::string& id) {
  std::vector<int64_t> out;
  absl::StatusOr<std::vector<std::string>> names = env_->ListDir(RewindDir(id));
  if (!names.ok()) return out;
  for (const std::string& name : *names) {
    if (name.size() != 26 || name.substr(20) != ".state") continue;
    if (name.find_first_not_of("0123456789") != 20) continue;
    out.push_back(std::stoll(name.substr(0, 20)));
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::Status DirectoryStore::CopyRewindPoint(const std::string& from_id, const std::string& to_id,
                                             int64_t position) {
  TITANS_RETURN_IF_ERROR(env_->CreateDirs(RewindDir(to_id)));
  const std::string to = PointPath(to_id, position);
  (void)env_->RemoveFile(to);
  // Point files are never modified after they are written, so sharing the inode is safe.
  if (env_->LinkFile(PointPath(from_id, position), to).ok()) return absl::OkStatus();
  TITANS_ASSIGN_OR_RETURN(std::string blob, ReadRewindPoint(from_id, position));
  return env_->WriteFileAtomic(to, blob);
}

absl::Status DirectoryStore::WriteRewindTokens(const std::string& id, const RewindTokens& tokens) {
  TITANS_RETURN_IF_ERROR(env_->CreateDirs(RewindDir(id)));
  return env_->WriteFileAtomic(RewindDir(id) + "/tokens", EncodeRewindTokens(tokens));
}

absl::StatusOr<RewindTokens> DirectoryStore::ReadRewindTokens(const std::string& id) {
  TITANS_ASSIGN_OR_RETURN(std::string blob, env_->ReadFile(RewindDir(id) + "/tokens"));
  return DecodeRewindTokens(blob);
}

absl::StatusOr<SessionRecord> DirectoryStore::ReadRecord(const std::string& id) {
  TITANS_ASSIGN_OR_RETURN(std::string json, env_->ReadFile(dir_ + "/" + id + ".json"));
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
  absl::StatusOr<std::vector<std::string>> names = env_->ListDir(dir_);
  if (!names.ok()) {
    if (errors) errors->push_back(std::string(names.status().message()));
    return out;
  }
  std::sort(names->begin(), names->end());
  for (const std::string& name : *names) {
    if (!absl::EndsWith(name, ".json")) continue;
    const std::string path = dir_ + "/" + name;
    auto text = env_->ReadFile(path);
    absl::StatusOr<SessionRecord> r =
        text.ok() ? DecodeSessionRecord(*text) : absl::StatusOr<SessionRecord>(text.status());
    if (r.ok() && !env_->FileExists(dir_ + "/" + r->id + ".state")) {
      r = absl::DataLossError("state missing");
    }
    if (r.ok()) {
      out.push_back(std::move(*r));
    } else if (errors) {
      errors->push_back(path + ": " + std::string(r.status().message()));
    }
  }
  return out;
}

}  // namespace titans::engine
