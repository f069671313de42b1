// DirectoryStore: sessions in a local directory (the default SessionStore; not shared).
//   <dir>/<id>.state    the model's checksummed state snapshot
//   <dir>/<id>.json     the SessionRecord
//   <dir>/<id>.rewind/  <position>.state per rewind point (written once, never changed) and
//                       `tokens` (EncodeRewindTokens)
// Every file is written atomically (temp file + fsync + rename). The write-ahead log of a local
// store is a separate Wal in another directory.
//
// Thread safety: calls for different sessions may run concurrently; calls for one session must
// be serialized by the caller (the engine does).
#ifndef TITANS_SERVER_ENGINE_DIRECTORY_STORE_H_
#define TITANS_SERVER_ENGINE_DIRECTORY_STORE_H_

#include "server/engine/env.h"
#include "server/engine/session_store.h"

namespace titans::engine {

class DirectoryStore : public SessionStore {
 public:
  // `env` (not owned) must outlive the store.
  DirectoryStore(std::string dir, Env* env) : dir_(std::move(dir)), env_(env) {}

  absl::Status Init() override;  // creates the directory if needed
  bool shared() const override { return false; }
  std::string Describe() const override { return "directory " + dir_; }

  absl::Status Create(const SessionRecord& record, const std::string& state_blob) override {
    return Write(record, state_blob);
  }
  absl::Status Write(const SessionRecord& record, const std::string& state_blob) override;
  absl::StatusOr<std::string> ReadState(const std::string& id) override;
  absl::StatusOr<SessionRecord> ReadRecord(const std::string& id) override;
  void Remove(const std::string& id) override;
  std::vector<SessionRecord> List(std::vector<std::string>* errors) override;

  absl::StatusOr<bool> Acquire(const std::string&) override { return false; }
  std::vector<std::string> Moved(const std::vector<std::string>&) override { return {}; }
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

 private:
  std::string RewindDir(const std::string& id) const { return dir_ + "/" + id + ".rewind"; }
  std::string PointPath(const std::string& id, int64_t position) const;

  std::string dir_;
  Env* const env_;
};

}  // namespace titans::engine

#endif  // TITANS_SERVER_ENGINE_DIRECTORY_STORE_H_
