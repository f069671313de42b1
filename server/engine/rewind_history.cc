#include "server/engine/rewind_history.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace titans::engine {

void RewindHistory::Reset(RewindPoint point) {
  points_.clear();
  tokens_.clear();
  end_ = point.position;
  if (enabled()) points_.push_back(std::move(point));
}

bool RewindHistory::Restore(int64_t first_position, std::vector<int32_t> tokens,
                            std::vector<RewindPoint> points) {
  const int64_t end = first_position + static_cast<int64_t>(tokens.size());
  std::sort(points.begin(), points.end(),
            [](const RewindPoint& a, const RewindPoint& b) { return a.position < b.position; });
  std::deque<RewindPoint> kept;
  for (RewindPoint& p : points) {
    if (p.position < first_position || p.position > end) continue;
    if (!kept.empty() && kept.back().position == p.position) continue;
    kept.push_back(std::move(p));
  }
  if (!enabled() || kept.empty() || kept.front().position != first_position) return false;
  points_ = std::move(kept);
  tokens_ = std::move(tokens);
  end_ = end;
  return true;
}

void RewindHistory::Record(const std::vector<int32_t>& tokens) {
  end_ += static_cast<int64_t>(tokens.size());
  if (enabled()) tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
}

void RewindHistory::TruncateTo(int64_t position) {
  if (position >= end_) return;
  end_ = position;
  if (!enabled()) return;
  while (!points_.empty() && points_.back().position > position) points_.pop_back();
  if (points_.empty()) {  // before every point: nothing left to rewind with
    tokens_.clear();
    return;
  }
  tokens_.resize(static_cast<size_t>(position - points_.front().position));
}

bool RewindHistory::PointDue() const {
  return enabled() && (points_.empty() || end_ - points_.back().position >= interval_);
}

std::vector<int64_t> RewindHistory::AddPoint(RewindPoint point) {
  std::vector<int64_t> dropped;
  if (!enabled()) return dropped;
  point.position = end_;
  if (!points_.empty() && points_.back().position == end_) {
    points_.back() = std::move(point);
  } else {
    points_.push_back(std::move(point));
  }
  // Keep the newest point at or before end_ - window; drop the ones before it.
  const int64_t floor = end_ - window_;
  while (points_.size() >= 2 && points_[1].position <= floor) {
    const int64_t gone = points_.front().position;
    const int64_t next = points_[1].position;
    tokens_.erase(tokens_.begin(), tokens_.begin() + (next - gone));
    dropped.push_back(gone);
    points_.pop_front();
  }
  return dropped;
}

void RewindHistory::MarkStored(int64_t position) {
  for (RewindPoint& p : points_) {
    if (p.position == position) p.state.reset();
  }
}

absl::StatusOr<RewindHistory::Plan> RewindHistory::PlanRewind(int64_t target) const {
  if (target > end_ || target < 0) {
    return absl::OutOfRangeError(
        absl::StrCat("position ", target, " is outside the session's history [0, ", end_, "]"));
  }
  if (points_.empty() || target < points_.front().position) {
    return absl::OutOfRangeError(
        absl::StrCat("position ", target, " is before the oldest rewind point (",
                     points_.empty() ? end_ : points_.front().position, "); the server keeps ",
                     window_, " tokens of history (--rewind_window_tokens)"));
  }
  auto it = std::upper_bound(points_.begin(), points_.end(), target,
                             [](int64_t t, const RewindPoint& p) { return t < p.position; });
  --it;
  Plan plan;
  plan.start = *it;
  const int64_t from = it->position - points_.front().position;
  const int64_t to = target - points_.front().position;
  plan.replay.assign(tokens_.begin() + from, tokens_.begin() + to);
  return plan;
}

RewindHistory RewindHistory::CopyUpTo(int64_t position) const {
  RewindHistory copy = *this;
  copy.TruncateTo(position);
  return copy;
}

}  // namespace titans::engine
