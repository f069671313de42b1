// Session state on disk: <dir>/<id>.state (the model's checksummed snapshot) and <dir>/<id>.json
// (id, owner, labels, TTL, timestamps). Used for spilling idle sessions out of RAM and for
// persisting sessions across restarts. Writes are atomic (temp file + rename).
#ifndef TITANS_SERVER_ENGINE_SESSION_FILES_H_
#define TITANS_SERVER_ENGINE_SESSION_FILES_H_

#include <map>
#include <string>
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
};

class SessionFiles {
 public:
  explicit SessionFiles(std::string dir) : dir_(std::move(dir)) {}
  // Creates the directory if needed.
  absl::Status Init();
  absl::Status Write(const SessionRecord& record, const std::string& state_blob);
  absl::StatusOr<std::string> ReadState(const std::string& id);
  void Remove(const std::string& id);
  // Records of every session stored here (unreadable ones are skipped and reported in *errors).
  std::vector<SessionRecord> List(std::vector<std::string>* errors);

 private:
  std::string dir_;
};

}  // namespace titans::engine

#endif  // TITANS_SERVER_ENGINE_SESSION_FILES_H_
