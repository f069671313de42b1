// RewindHistory: what a session needs to go back to an earlier position (Rewind, Fork at a past
// position): rewind points (the session's state at some positions, every `interval` tokens: the
// engine takes them between operations and inside long appends, see Op::inner_points) and every
// token consumed since the oldest point. The state at position p is the nearest point at or before
// p with the tokens up to p replayed onto it, so the replay is bounded by the interval. Points
// older than `window` tokens behind the session are dropped (always keeping one at or before
// position - window), which bounds memory and disk.
//
// A point holds its state in memory, or only its position when the state lives in the session
// store (the engine writes point states there as they are taken and releases the memory).
//
// Pure bookkeeping: no model, no I/O. Thread safety: none (the engine thread owns it).
#ifndef TITANS_SERVER_ENGINE_REWIND_HISTORY_H_
#define TITANS_SERVER_ENGINE_REWIND_HISTORY_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"

namespace titans {
class SlotSnapshot;  // model/model_runner.h
}

namespace titans::engine {

struct RewindPoint {
  int64_t position = 0;
  std::shared_ptr<const SlotSnapshot> state;  // null when stored outside (see above)
};

class RewindHistory {
 public:
  // window == 0 disables rewinding (no points, no tokens kept).
  RewindHistory(int64_t window_tokens, int64_t interval_tokens)
      : window_(window_tokens), interval_(interval_tokens) {}

  bool enabled() const { return window_ > 0; }

  // Starts over with a single point at `position` (session creation, import, or a history that
  // could not be restored).
  void Reset(RewindPoint point);
  // Starts from restored parts: `tokens` consumed from `first_position` on, and the points (in
  // any order). Points outside [first_position, first_position + tokens.size()] are ignored.
  // False (and nothing changes) if no point is at first_position.
  bool Restore(int64_t first_position, std::vector<int32_t> tokens,
               std::vector<RewindPoint> points);

  // Tokens the session consumed, in order, right after end().
  void Record(const std::vector<int32_t>& tokens);
  // Forgets everything after `position` (a rolled-back operation, or a rewind); no-op when
  // position >= end().
  void TruncateTo(int64_t position);

  // Whether a point should be taken now that the session is at end() between operations.
  bool PointDue() const;
  // Adds a point at end() and drops what the window no longer needs; returns the positions of
  // dropped points (so the caller can delete their stored states).
  std::vector<int64_t> AddPoint(RewindPoint point);
  // Replaces the in-memory state of the point at `position` by "stored outside".
  void MarkStored(int64_t position);

  // Where to start to reach `target`: the nearest point at or before it and the tokens to replay
  // from there. OUT_OF_RANGE when target is beyond end() or before the oldest point.
  struct Plan {
    RewindPoint start;
    std::vector<int32_t> replay;
  };
  absl::StatusOr<Plan> PlanRewind(int64_t target) const;

  // A copy ending at `position` (<= end()): the history of a fork at that position.
  RewindHistory CopyUpTo(int64_t position) const;

  int64_t first_position() const { return points_.empty() ? end_ : points_.front().position; }
  int64_t end() const { return end_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }  // from first_position()
  const std::deque<RewindPoint>& points() const { return points_; }

 private:
  int64_t window_, interval_;
  std::deque<RewindPoint> points_;  // ascending positions; front() at first_position()
  std::vector<int32_t> tokens_;     // tokens from first_position() to end_
  int64_t end_ = 0;
};

}  // namespace titans::engine

#endif  // TITANS_SERVER_ENGINE_REWIND_HISTORY_H_
