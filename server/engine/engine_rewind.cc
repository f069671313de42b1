// Rewind history: rewind points taken, stored and restored, a session's state at an earlier
// position, and the Rewind operation.

#include <algorithm>
#include <limits>

#include "server/engine/engine_impl.h"
#include "server/log.h"

namespace titans::engine {

void Engine::Impl::LoadHistory(Session* s) {
  const int64_t position = PositionOf(*s);
  const std::string& id = s->record.id;
  bool restored = false;
  if (s->history.enabled()) {
    auto tokens = files_->ReadRewindTokens(id);
    std::vector<int64_t> stored = files_->ListRewindPoints(id);
    if (tokens.ok()) {
      std::vector<RewindPoint> points;
      for (int64_t p : stored) points.push_back(RewindPoint{p, nullptr});
      // Tokens of this epoch may reach past the checkpoint (Persist writes them first): the
      // part up to the checkpoint is its history. Tokens of unknown epoch must meet it exactly.
      const int64_t end = tokens->first_position + static_cast<int64_t>(tokens->tokens.size());
      const bool same_timeline = tokens->epoch == s->record.epoch
                                     ? tokens->first_position <= position && position <= end
                                     : tokens->epoch < 0 && end == position;
      // The oldest point may be gone (points the window dropped are removed as they go, before
      // the next tokens are written): the history then starts at the oldest point still there.
      auto first = std::lower_bound(stored.begin(), stored.end(), tokens->first_position);
      if (same_timeline && first != stored.end() && *first <= position) {
        std::vector<int32_t>& kept = tokens->tokens;
        kept.resize(static_cast<size_t>(position - tokens->first_position));
        kept.erase(kept.begin(), kept.begin() + (*first - tokens->first_position));
        restored = s->history.Restore(*first, std::move(kept), std::move(points));
      }
    }
    // Points past the restored end belong to a timeline that was not persisted.
    for (int64_t p : stored) {
      if (!restored || p > s->history.end() || p < s->history.first_position()) {
        files_->RemoveRewindPoint(id, p);
      }
    }
    if (!restored && tokens.status().code() != absl::StatusCode::kNotFound) {
      server::Log(server::LogLevel::kWarning, "rewind_history_not_restored",
                  {{"session", id}, {"restarts_at", std::to_string(position)}});
    }
  }
  if (!restored) ResetHistory(s);
}

void Engine::Impl::ResetHistory(Session* s) {
  s->history.Reset(RewindPoint{PositionOf(*s), runner_->Snapshot(*s->slot)});
}

void Engine::Impl::MaybeTakePoint(Session* s) {
  if (!s->history.enabled()) return;
  if (s->history.end() != PositionOf(*s)) ResetHistory(s);  // never out of step
  if (s->history.PointDue()) {
    std::vector<int64_t> dropped =
        s->history.AddPoint(RewindPoint{PositionOf(*s), runner_->Snapshot(*s->slot)});
    if (files_) {
      for (int64_t p : dropped) files_->RemoveRewindPoint(s->record.id, p);
    }
  }
  StorePoints(s);
}

// The newest rewind point of the session, counting the append's own (-1 if none).
int64_t Engine::Impl::LastPointPosition(const Session& s, const Op& op) {
  if (!op.inner_points.empty()) return op.inner_points.back().position;
  return s.history.points().empty() ? -1 : s.history.points().back().position;
}

int64_t Engine::Impl::TokensToNextPoint(const Session& s, const Op& op) const {
  if (!s.history.enabled() || !s.slot) return std::numeric_limits<int64_t>::max();
  const int64_t last = LastPointPosition(s, op);
  if (last < 0) return std::numeric_limits<int64_t>::max();  // MaybeTakePoint starts the history
  return std::max<int64_t>(1, last + options_.rewind_interval_tokens - PositionOf(s));
}

void Engine::Impl::MaybeTakeInnerPoint(const Session& s, Op* op) {
  if (!s.history.enabled() || !s.slot || op->remaining() == 0) return;
  const int64_t position = PositionOf(s);
  const int64_t last = LastPointPosition(s, *op);
  if (last < 0 || position - last < options_.rewind_interval_tokens) return;
  op->inner_points.push_back(RewindPoint{position, runner_->Snapshot(*s.slot)});
  // As RewindHistory::AddPoint: keep the newest point at or before position - window.
  const int64_t floor = position - options_.rewind_window_tokens;
  size_t drop = 0;
  while (drop + 1 < op->inner_points.size() && op->inner_points[drop + 1].position <= floor) ++drop;
  op->inner_points.erase(op->inner_points.begin(), op->inner_points.begin() + drop);
}

void Engine::Impl::RecordWithInnerPoints(Session* s, Op* op) {
  if (op->inner_points.empty() || s->history.end() != op->position_before) {
    s->history.Record(op->log_tokens);
    op->inner_points.clear();
    return;
  }
  size_t at = 0;
  for (RewindPoint& point : op->inner_points) {
    const size_t upto = static_cast<size_t>(point.position - op->position_before);
    s->history.Record(
        std::vector<int32_t>(op->log_tokens.begin() + at, op->log_tokens.begin() + upto));
    at = upto;
    std::vector<int64_t> dropped = s->history.AddPoint(std::move(point));
    if (files_) {
      for (int64_t p : dropped) files_->RemoveRewindPoint(s->record.id, p);
    }
  }
  s->history.Record(std::vector<int32_t>(op->log_tokens.begin() + at, op->log_tokens.end()));
  op->inner_points.clear();
}

void Engine::Impl::StorePoints(Session* s) {
  if (!files_) return;
  for (const RewindPoint& point : s->history.points()) {
    if (!point.state) continue;
    auto blob = runner_->ExportSnapshot(*point.state);
    if (blob.ok() && files_->WriteRewindPoint(s->record.id, point.position, *blob).ok()) {
      s->history.MarkStored(point.position);
    }
  }
}

absl::StatusOr<std::shared_ptr<const SlotSnapshot>> Engine::Impl::StateAt(Session* s,
                                                                          int64_t position) {
  const SlotId live = *s->slot;
  const int64_t live_position = runner_->position(live);
  if (position < 0 || position == live_position) return runner_->Snapshot(live);
  if (position > live_position) {
    return absl::OutOfRangeError(
        absl::StrCat("position ", position, " is beyond the session's position ", live_position));
  }
  if (!s->history.enabled()) {
    return absl::FailedPreconditionError(
        "rewinding is disabled on this server (--rewind_window_tokens=0)");
  }
  if (s->history.end() != live_position) ResetHistory(s);
  TITANS_ASSIGN_OR_RETURN(RewindHistory::Plan plan, s->history.PlanRewind(position));
  // The replay runs in a scratch slot.
  absl::StatusOr<SlotId> scratch;
  if (plan.start.state) {
    scratch = runner_->FromSnapshot(*plan.start.state);
  } else {
    auto blob = files_->ReadRewindPoint(s->record.id, plan.start.position);
    scratch = blob.ok() ? runner_->Import(*blob) : absl::StatusOr<SlotId>(blob.status());
    if (scratch.ok() && runner_->position(*scratch) != plan.start.position) {
      runner_->Free(*scratch);
      scratch = absl::DataLossError("wrong position");
    }
    if (!scratch.ok() && scratch.status().code() != absl::StatusCode::kResourceExhausted) {
      return absl::DataLossError(absl::StrCat("the rewind point at position ", plan.start.position,
                                              " could not be read: ", scratch.status().message()));
    }
  }
  if (!scratch.ok()) return scratch.status();
  ScopedSlot replay(runner_.get(), *scratch);  // freed on every path out
  constexpr size_t kReplayPiece = 4096;
  for (size_t at = 0; at < plan.replay.size(); at += kReplayPiece) {
    const size_t n = std::min(kReplayPiece, plan.replay.size() - at);
    TITANS_RETURN_IF_ERROR(Feed(
        *scratch, std::vector<int32_t>(plan.replay.begin() + at, plan.replay.begin() + at + n)));
  }
  return runner_->Snapshot(*scratch);
}

void Engine::Impl::ExecuteRewind(Session* s, Op& op,
                                 std::vector<std::function<void()>>* callbacks) {
  RewindOp& rewind = *op.as<RewindOp>();
  auto done = std::move(rewind.done);
  auto target = StateAt(s, rewind.position);
  if (!target.ok()) {
    callbacks->push_back([done, st = target.status()] { done(st); });
    MarkDone(op);
    return;
  }
  const SlotId slot = *s->slot;
  std::shared_ptr<const SlotSnapshot> before = runner_->Snapshot(slot);
  RewindHistory history_before = s->history;
  const int64_t position_before = s->history.end();
  std::vector<int64_t> dropped;
  for (const RewindPoint& p : s->history.points()) {
    if (p.position > rewind.position) dropped.push_back(p.position);
  }
  (void)runner_->Restore(slot, **target);
  s->history.TruncateTo(runner_->position(slot));
  // The new epoch is written without the engine lock (only this thread changes the session's
  // state).
  SessionRecord record;
  {
    MutexLock lock(table_.mu());
    record = s->record;
  }
  ++record.epoch;
  absl::Status st = files_ ? WriteCheckpoint(s, &record, false) : absl::OkStatus();
  table_.mu()->Lock();
  ++s->record.epoch;
  if (files_) CommitCheckpoint(s, record, st);
  if (st.code() == absl::StatusCode::kAborted) st = MovedError(ClientId(s->record));
  if (!st.ok() && (options_.durability == Durability::kSync || s->moved)) {
    (void)runner_->Restore(slot, *before);
    s->history = std::move(history_before);
    --s->record.epoch;
    s->record.position = position_before;
    s->state_bytes = runner_->state_bytes(slot);
    callbacks->push_back([done, st] {
      done(absl::Status(st.code(), absl::StrCat("the rewind could not be made durable (the "
                                                "session is unchanged): ",
                                                st.message())));
    });
    MarkDone(op);
    table_.mu()->Unlock();
    return;
  }
  s->record.position = runner_->position(slot);
  s->state_bytes = runner_->state_bytes(slot);
  s->rewind_floor = s->history.first_position();
  MarkDone(op);
  SessionInfo info = InfoOf(*s);
  info.queued_operations -= 1;  // this operation is done
  observer().OnTokens("rewound", position_before - s->record.position);
  callbacks->push_back([done, info] { done(info); });
  table_.mu()->Unlock();
  if (files_) {
    for (int64_t p : dropped) files_->RemoveRewindPoint(record.id, p);
  }
}

}  // namespace titans::engine
