// Session state on disk: <dir>/<id>.state (the model's checksummed snapshot) and <dir>/<id>.json
// (id, owner, labels, TTL, timestamps). Used for spilling idle sessions out of RAM and for
// persisting sessions across restarts. Writes are atomic (temp file + rename).
//
// Rewind data (see rewind_history.h) lives in <dir>/<id>.rewind/: one <position>.state per rewind
// point (written once, never changed) and `tokens` (checksummed: the first point's position and
// every token consumed since, up to the checkpoint written with it).
//
// Thread safety: none; the engine serializes calls.
#ifndef TITANS_SERVER_ENGINE_SESSION_FILES_H_
#define TITANS_SERVER_ENGINE_SESSION_FILES_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace titans::engine {

struct SessionRecord {
  std::string id, principal;
  std::map<std::string, std::string> labels;
  int64_t idle_ttl_seconds = 0;
  int64_t created_unix_ms = 0;
  int64_t last_used_unix_ms = 0;
  int64_t position = 0;
  int64_t state_bytes = 0;
  // Incremented by every rewind: write-ahead log records of an older epoch are not replayed.
  int64_t epoch = 0;
};

// The rewind tokens file's contents.
struct RewindTokens {
  int64_t first_position = 0;
  std::vector<int32_t> tokens;
};
std::string EncodeRewindTokens(const RewindTokens& tokens);
// DATA_LOSS when truncated or damaged.
absl::StatusOr<RewindTokens> DecodeRewindTokens(std::string_view blob);

class SessionFiles {
 public:
  explicit SessionFiles(std::string dir) : dir_(std::move(dir)) {}
  // Creates the directory if needed.
  absl::Status Init();
  absl::Status Write(const SessionRecord& record, const std::string& state_blob);
  absl::StatusOr<std::string> ReadState(const std::string& id);
  // Removes the session's record, state and rewind data.
  void Remove(const std::string& id);
  // Records of every session stored here (unreadable ones are skipped and reported in *errors).
  std::vector<SessionRecord> List(std::vector<std::string>* errors);

  absl::Status WriteRewindPoint(const std::string& id, int64_t position, const std::string& blob);
  absl::StatusOr<std::string> ReadRewindPoint(const std::string& id, int64_t position);
  void RemoveRewindPoint(const std::string& id, int64_t position);
  // Positions of the stored rewind points, ascending.
  std::vector<int64_t> ListRewindPoints(const std::string& id);
  // Makes `to_id`'s rewind point at `position` a copy of `from_id`'s (a hard link when possible).
  absl::Status CopyRewindPoint(const std::string& from_id, const std::string& to_id,
                               int64_t position);
  absl::Status WriteRewindTokens(const std::string& id, const RewindTokens& tokens);
  // NOT_FOUND when the session has none.
  absl::StatusOr<RewindTokens> ReadRewindTokens(const std::string& id);

 private:
  std::string RewindDir(const std::string& id) const { return dir_ + "/" + id + ".rewind"; }
  std::string PointPath(const std::string& id, int64_t position) const;

  std::string dir_;
};

}  // namespace titans::engine

#endif  // TITANS_SERVER_ENGINE_SESSION_FILES_H_
