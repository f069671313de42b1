// Write-ahead log of acknowledged session operations, shared by all sessions so that one fsync
// commits a whole scheduler step (group commit).
//
// Files: <dir>/<sequence>.wal segments (20-digit sequence, appended in order). A record is
//   u32 payload length | u32 crc32c(payload) | payload
// and the payload holds the session id, the session position before the operation, the session's
// rewind epoch, its tokens,
// the piece lengths they were consumed in (so replay repeats the same computation), and the
// sampler state after it. Reading stops at the first damaged record of a segment: a torn tail
// (crash mid-write) is cut there and reported.
//
// Thread safety: none; the engine thread owns the log.
#ifndef TITANS_SERVER_ENGINE_WAL_H_
#define TITANS_SERVER_ENGINE_WAL_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/engine/env.h"

namespace titans::engine {

struct WalRecord {
  std::string session_id;
  int64_t position_before = 0;
  int64_t epoch = 0;  // the session's rewind epoch (SessionRecord::epoch) when it was logged
  std::vector<int32_t> tokens;
  std::vector<int32_t> pieces;  // lengths summing to tokens.size()
  bool has_rng = false;
  std::array<uint64_t, 4> rng{};
};

std::string EncodeWalRecord(const WalRecord& record);
// Decodes one payload (without the length / checksum frame). INVALID_ARGUMENT if malformed.
absl::StatusOr<WalRecord> DecodeWalPayload(std::string_view payload);

// Parses one segment's bytes: appends its whole records to *out and returns "" or, if the
// segment ends in a torn or damaged record, a description of what was cut.
std::string ParseWalSegment(std::string_view data, std::vector<WalRecord>* out);

class Wal {
 public:
  // Opens (creating if needed) the log directory and starts a new segment after the existing
  // ones. Existing segments are left for ReadAll (recovery). `env` must outlive the log.
  static absl::StatusOr<std::unique_ptr<Wal>> Open(const std::string& dir,
                                                   Env* env = Env::Default());

  // Buffers a record in the current segment (not yet durable).
  absl::Status Append(const WalRecord& record);
  // Writes buffered records and fdatasyncs the segment: after OK, every appended record survives
  // a crash. On error the buffered records are dropped and the segment is cut back to its last
  // durable size, so the log never holds a record whose operation was not acknowledged.
  absl::Status Sync();

  // Every record of every segment in order. `warnings` receives torn tails and damaged records
  // (the segment is cut at the first damaged record; later segments are still read).
  static std::vector<WalRecord> ReadAll(const std::string& dir, std::vector<std::string>* warnings,
                                        Env* env = Env::Default());

  // Starts a new segment and deletes all older ones (the caller has checkpointed every record
  // they hold).
  absl::Status DropOldSegments();

  int64_t bytes_since_drop() const { return bytes_since_drop_; }
  int64_t bytes_total() const { return bytes_total_; }

 private:
  Wal(std::string dir, uint64_t next_sequence, Env* env)
      : dir_(std::move(dir)), sequence_(next_sequence), env_(env) {}
  absl::Status OpenSegment();

  std::string dir_;
  uint64_t sequence_;
  Env* const env_;
  std::unique_ptr<WritableFile> file_;
  int64_t durable_size_ = 0;
  std::string buffer_;
  int64_t bytes_since_drop_ = 0;
  int64_t bytes_total_ = 0;
};

}  // namespace titans::engine

#endif  // TITANS_SERVER_ENGINE_WAL_H_
