#include <malloc.h>

#include "server/engine/engine_impl.h"

namespace titans::engine {

namespace {

// Hands the allocator's free memory back to the operating system. A step allocates and frees
// many tensors between the states it keeps, so freed memory ends up between live blocks, where
// glibc never returns it by itself: measured, 400 sessions of 2 KiB left the process holding
// 1.76x their state bytes, 0.94x with this (docs/benchmarks.md). A trim walks every arena (5-35
// ms for ~500 MiB here), so the engine calls this only when it falls idle, and it trims only
// when at least kMinFreeBytes lie free in the allocator (mallinfo2 only sums the free lists).
void ReleaseFreeHeap() {
#ifdef __GLIBC__
  constexpr size_t kMinFreeBytes = size_t{64} << 20;
  if (mallinfo2().fordblks >= kMinFreeBytes) malloc_trim(0);
#endif
}

}  // namespace

void Engine::Impl::Loop() {
  mu_.Lock();
  auto last_sweep = Clock::now();
  auto last_ownership_check = Clock::now();
  const auto ownership_check_interval = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options_.ownership_check_seconds));
  int64_t steps_at_release = 0;
  auto last_release = Clock::now();
  while (!stop_) {
    if (!HasRunnable()) {
      // Idle after work (at most once a second): give freed memory back, without the lock.
      if (steps_ != steps_at_release && Clock::now() - last_release >= std::chrono::seconds(1)) {
        steps_at_release = steps_;
        last_release = Clock::now();
        mu_.Unlock();
        ReleaseFreeHeap();
        mu_.Lock();
        continue;  // work may have arrived meanwhile
      }
      cv_.WaitWithTimeout(&mu_, std::chrono::milliseconds(500));
    }
    if (stop_) break;
    if (Clock::now() - last_sweep > std::chrono::seconds(1)) {
      std::vector<std::function<void()>> callbacks;
      Sweep(&callbacks);
      if (!callbacks.empty()) {
        mu_.Unlock();
        for (auto& cb : callbacks) cb();
        mu_.Lock();
      }
      last_sweep = Clock::now();
    }
    if (shared_ && options_.ownership_check_seconds > 0 &&
        Clock::now() - last_ownership_check > ownership_check_interval) {
      DropLostSessions();
      last_ownership_check = Clock::now();
      if (stop_) break;
    }
    if (!HasRunnable()) continue;
    // Schedule (plain data), execute (no lock held), update.
    std::vector<Session*> order;
    std::vector<Candidate> candidates;
    for (auto& [id, s] : sessions_) {
      if (s->ops.empty()) continue;
      order.push_back(s.get());
    }
    std::rotate(order.begin(), order.begin() + (rr_cursor_++ % order.size()), order.end());
    for (size_t i = 0; i < order.size(); ++i) {
      const Op& op = *order[i]->ops.front();
      Candidate c{static_cast<int64_t>(i), 0, false};
      switch (op.kind) {
        case OpKind::kAppend:
          c.wanted_tokens = std::max<int64_t>(op.remaining(), 2);
          break;
        case OpKind::kGenerate:
          c.wanted_tokens = op.remaining() > 0 ? std::max<int64_t>(op.remaining(), 2) : 1;
          break;
        case OpKind::kScore:
          c.wanted_tokens = std::max<int64_t>(op.remaining(), 2);
          c.indivisible = true;
          break;
        default:
          c.wanted_tokens = 0;
      }
      candidates.push_back(c);
    }
    std::vector<Assignment> plan = PlanStep(candidates, options_.step_token_budget);
    for (const Assignment& a : plan) order[a.session]->busy = true;
    ++steps_;
    mu_.Unlock();
    if (shared_) DropMoved(order, plan);
    std::vector<std::function<void()>> callbacks;
    std::vector<Forwarding> batch;
    const auto step_start = Clock::now();
    for (const Assignment& a : plan) Prepare(order[a.session], a.tokens, &batch, &callbacks);
    int64_t step_tokens = 0;
    for (const Forwarding& f : batch) {
      step_tokens += static_cast<int64_t>(f.tokens.size()) + (f.decode ? 1 : 0);
    }
    const double kernel_seconds = RunBatch(batch, &callbacks);
    CommitDurable(&callbacks);
    observer().OnStep(static_cast<int>(plan.size()), step_tokens,
                      std::chrono::duration<double>(Clock::now() - step_start).count(),
                      kernel_seconds);
    mu_.Lock();
    Update(order, plan, &callbacks);
    mu_.Unlock();
    for (auto& cb : callbacks) cb();
    mu_.Lock();
  }
  mu_.Unlock();
}

void Engine::Impl::DropMoved(const std::vector<Session*>& order,
                             const std::vector<Assignment>& plan) {
  std::vector<std::string> ids;
  std::map<std::string, Session*> by_id;
  for (const Assignment& a : plan) {
    Session* s = order[a.session];
    if (!s->slot || s->ops.front()->position_before >= 0) continue;  // not loaded / mid-op
    ids.push_back(s->record.id);
    by_id[s->record.id] = s;
  }
  if (ids.empty()) return;
  std::vector<std::string> moved = files_->Moved(ids);
  if (moved.empty()) return;
  MutexLock lock(&mu_);
  for (const std::string& id : moved) DropResident(by_id[id]);
}

void Engine::Impl::DropLostSessions() {
  std::vector<std::string> names;
  for (auto& [name, s] : sessions_) {
    if (s->held && !s->busy && s->ops.empty()) names.push_back(name);
  }
  if (names.empty()) return;
  mu_.Unlock();
  const std::vector<std::string> moved = files_->Moved(names);
  mu_.Lock();
  for (const std::string& name : moved) {
    auto it = sessions_.find(name);
    // A session with work queued meanwhile is the next step's (DropMoved, then acquire).
    if (it == sessions_.end() || it->second->busy || !it->second->ops.empty()) continue;
    DropResident(it->second.get());
  }
}

int64_t Engine::Impl::QueuedTokens() {
  int64_t total = 0;
  for (auto& [id, s] : sessions_) {
    for (auto& op : s->ops) total += op->queued_tokens;
  }
  return total;
}

bool Engine::Impl::HasRunnable() {
  for (auto& [id, s] : sessions_) {
    if (!s->ops.empty()) return true;
  }
  return false;
}

void Engine::Impl::Prepare(Session* s, int64_t tokens, std::vector<Forwarding>* batch,
                           std::vector<std::function<void()>>* callbacks) {
  Op& op = *s->ops.front();
  if (!op.started) {
    op.started = true;
    observer().OnQueueTime(std::chrono::duration<double>(Clock::now() - op.arrival).count());
  }
  absl::Status resident = EnsureResident(s);
  if (!resident.ok()) {
    if (resident.code() == absl::StatusCode::kNotFound && shared_) {
      s->gone = true;  // closed or expired on another replica
      Fail(op,
           absl::NotFoundError(
               absl::StrCat("session '", ShowValue(ClientId(s->record)), "' not found")),
           callbacks);
    } else if (resident.code() == absl::StatusCode::kUnavailable) {
      Fail(op, resident, callbacks);
    } else {
      Fail(op,
           absl::DataLossError(
               absl::StrCat("session state could not be restored: ", resident.message())),
           callbacks);
    }
    return;
  }
  const SlotId slot = *s->slot;
  if (op.position_before < 0) op.position_before = runner_->position(slot);
  const bool cancelled = op.cancel && op.cancel->load();
  switch (op.kind) {
    case OpKind::kAppend: {
      if (!op.backup) op.backup = runner_->Snapshot(slot);
      if (cancelled || draining_deadline_passed_) {
        (void)runner_->Restore(slot, *op.backup);
        Fail(op,
             cancelled ? absl::CancelledError("append cancelled; the session is unchanged")
                       : absl::UnavailableError("server is shutting down"),
             callbacks);
        return;
      }
      // Pieces end where a rewind point falls due (a rewind replays at most the interval).
      batch->push_back(Forwarding{
          s, &op, NextPiece(op, std::min<int64_t>(tokens, TokensToNextPoint(*s, op))), false});
      return;
    }
    case OpKind::kGenerate:
      PrepareGenerate(s, &op, tokens, cancelled, batch, callbacks);
      return;
    case OpKind::kScore:
      ExecuteScore(s, &op, callbacks);
      return;
    case OpKind::kExport: {
      auto blob = runner_->Export(slot);
      auto done = std::move(op.export_done);
      callbacks->push_back([done, blob] { done(blob); });
      MarkDone(op);
      return;
    }
    case OpKind::kRewind:
      ExecuteRewind(s, op, callbacks);
      return;
    case OpKind::kFork: {
      auto forked = StateAt(s, op.target_position);
      if (!forked.ok()) {
        Fail(op, forked.status(), callbacks);
        return;
      }
      if (s->history.end() != runner_->position(slot)) ResetHistory(s);
      RewindHistory history = s->history.CopyUpTo(ModelRunner::SnapshotPosition(**forked));
      absl::StatusOr<SlotId> fork_slot = runner_->FromSnapshot(**forked);
      if (!fork_slot.ok()) {
        Fail(op, fork_slot.status(), callbacks);
        return;
      }
      CreateParams p;
      p.principal = s->record.principal;
      p.id = op.new_id;
      p.idle_ttl_seconds = s->record.idle_ttl_seconds;
      p.labels = s->record.labels;
      p.sampling = s->sampling;
      absl::StatusOr<SessionInfo> info;
      {
        MutexLock lock(&mu_);
        info = AddSession(p, *fork_slot, &history, s->record.id);
      }
      auto done = std::move(op.fork_done);
      callbacks->push_back([done, info] { done(info); });
      MarkDone(op);
      return;
    }
    case OpKind::kClose:
      MarkDone(op);  // Update() erases the session and answers the queued operations
      return;
  }
}

std::vector<int32_t> Engine::Impl::NextPiece(const Op& op, int64_t tokens) {
  const int64_t n = std::max<int64_t>(1, std::min<int64_t>(tokens, op.remaining()));
  return std::vector<int32_t>(op.tokens.begin() + op.consumed, op.tokens.begin() + op.consumed + n);
}

void Engine::Impl::Complete(Session* s, Op& op, std::function<void()> on_done,
                            std::function<void(absl::Status)> on_error,
                            std::vector<std::function<void()>>* callbacks) {
  MarkDone(op);
  RecordWithInnerPoints(s, &op);
  if (options_.durability != Durability::kSync || op.log_tokens.empty()) {
    callbacks->push_back(std::move(on_done));
    return;
  }
  WalRecord record;
  record.session_id = s->record.id;
  record.position_before = op.position_before;
  record.epoch = s->record.epoch;
  record.tokens = std::move(op.log_tokens);
  record.pieces = std::move(op.log_pieces);
  record.has_rng = op.kind == OpKind::kGenerate;
  record.rng = runner_->rng_state(*s->slot);
  std::shared_ptr<const SlotSnapshot> before = op.backup;
  ModelRunner* runner = runner_.get();
  pending_durable_.push_back(
      PendingDurable{s, std::move(record), std::move(on_done),
                     [s, before, runner, on_error, callbacks](absl::Status st) {
                       if (before && s->slot) {
                         (void)runner->Restore(*s->slot, *before);
                         s->history.TruncateTo(ModelRunner::SnapshotPosition(*before));
                       }
                       callbacks->push_back([on_error, st] { on_error(st); });
                     }});
}

double Engine::Impl::RunBatch(std::vector<Forwarding>& batch,
                              std::vector<std::function<void()>>* callbacks) {
  if (batch.empty()) return 0;
  StepPlan plan;
  plan.work.reserve(batch.size());
  for (Forwarding& f : batch) {
    SlotWork w;
    w.slot = *f.session->slot;
    w.tokens = std::move(f.tokens);  // read back from the plan below
    if (f.decode) {
      w.action = SlotAction::kSample;
      w.sampling = &f.op->sampling;
    }
    plan.work.push_back(std::move(w));
  }
  absl::StatusOr<StepResult> step = runner_->Step(plan);
  for (size_t i = 0; i < batch.size(); ++i) {
    const Forwarding& f = batch[i];
    const std::vector<int32_t>& tokens = plan.work[i].tokens;
    Op& op = *f.op;
    const absl::Status st = step.ok() ? step->slots[i].status : step.status();
    if (!st.ok()) {  // the runner left this slot unchanged; the operation goes back to its start
      if (op.backup) (void)runner_->Restore(*f.session->slot, *op.backup);
      Fail(op, st, callbacks);
      continue;
    }
    if (!tokens.empty()) {
      op.log_tokens.insert(op.log_tokens.end(), tokens.begin(), tokens.end());
      op.log_pieces.push_back(static_cast<int32_t>(tokens.size()));
    }
    if (f.decode) {
      // The runner consumed the sampled token after `tokens`, in a pass of its own.
      const int32_t token = step->slots[i].sampled;
      op.log_tokens.push_back(token);
      op.log_pieces.push_back(1);
      observer().OnTokens("generated", 1);
      FinishDecode(f.session, &op, token, callbacks);
      continue;
    }
    observer().OnTokens(op.kind == OpKind::kAppend ? "appended" : "prompt",
                        static_cast<int64_t>(tokens.size()));
    op.consumed += tokens.size();
    if (op.kind == OpKind::kAppend) MaybeTakeInnerPoint(*f.session, &op);
    if (op.kind == OpKind::kAppend && op.remaining() == 0) {
      AppendResult r{static_cast<int64_t>(op.tokens.size()), step->slots[i].position};
      auto done = std::move(op.append_done);
      Complete(
          f.session, op, [done, r] { done(r); }, [done](absl::Status st) { done(st); }, callbacks);
      op.tokens.clear();
      op.consumed = 0;
    }
  }
  return step.ok() ? step->kernel_seconds : 0;
}

SamplingParams Engine::Impl::Resolve(const Session& s, const GenerateParams& g) const {
  SamplingParams p =
      ApplySamplingOverrides(s.sampling.value_or(options_.default_sampling), g.sampling);
  p.has_seed = g.sampling.seed.has_value();
  p.seed = g.sampling.seed.value_or(0);
  p.max_tokens = g.max_tokens;
  p.stop = g.stop;
  p.stop_at_eos = g.stop_at_eos;
  return p;
}

GenerateEvent Engine::Impl::Event(int64_t position, const Op& op, Finish f,
                                  std::vector<int32_t> tokens, std::string text) const {
  GenerateEvent e;
  e.tokens = std::move(tokens);
  e.text = std::move(text);
  e.finish = f;
  e.position = position;
  e.prompt_tokens = static_cast<int32_t>(op.tokens.size());
  e.generated_tokens = op.stream ? op.stream->generated() : 0;
  e.total_seconds = std::chrono::duration<double>(Clock::now() - op.arrival).count();
  if (op.first_token) {
    e.time_to_first_token_seconds =
        std::chrono::duration<double>(*op.first_token - op.arrival).count();
  }
  return e;
}

void Engine::Impl::PrepareGenerate(Session* s, Op* op, int64_t tokens, bool cancelled,
                                   std::vector<Forwarding>* batch,
                                   std::vector<std::function<void()>>* callbacks) {
  const SlotId slot = *s->slot;
  if (cancelled || draining_deadline_passed_) {
    // The session keeps what was consumed so far; in sync mode that part is logged like a
    // finished operation (otherwise recovery would find a gap in the session's log).
    std::string rest = op->stream ? op->stream->Flush() : "";
    GenerateEvent e = Event(runner_->position(slot), *op, Finish::kCancelled, {}, rest);
    auto on_event = op->on_event;
    auto done = std::move(op->done);
    const absl::Status st = cancelled ? absl::CancelledError("generation cancelled")
                                      : absl::UnavailableError("server is shutting down");
    op->backup.reset();  // keep, do not roll back, if the log commit fails: report its error
    Complete(
        s, *op,
        [on_event, done, e, st] {
          on_event(e);
          done(st);
        },
        [done](absl::Status failed) { done(failed); }, callbacks);
    return;
  }
  if (!op->backup) op->backup = runner_->Snapshot(slot);
  if (op->remaining() > 0) {  // the prompt first, in pieces like an append
    batch->push_back(Forwarding{s, op, NextPiece(*op, tokens), false});
    return;
  }
  std::vector<int32_t> before_sampling;
  if (runner_->position(slot) == 0) {
    // An empty session has no logits yet: it starts with the beginning-of-sequence token.
    const int32_t bos = runner_->tokenizer().bos_id();
    if (bos < 0) {
      Fail(*op,
           absl::FailedPreconditionError("the session is empty and the model's tokenizer has no "
                                         "beginning-of-sequence token: append text first"),
           callbacks);
      return;
    }
    before_sampling.push_back(bos);
  }
  if (!op->stream) {
    // Reseeds the slot's sampler (a request seed) or continues its own stream.
    absl::Status st = runner_->StartSampling(slot, op->sampling);
    if (!st.ok()) {
      Fail(*op, st, callbacks);
      return;
    }
    op->stream.emplace(runner_->tokenizer(), op->sampling);
  }
  // The token is drawn in the runner's step, together with every other decode of the step.
  batch->push_back(Forwarding{s, op, std::move(before_sampling), true});
}

void Engine::Impl::FinishDecode(Session* s, Op* op, int64_t token,
                                std::vector<std::function<void()>>* callbacks) {
  TextStream::Step step = op->stream->Commit(static_cast<int32_t>(token));
  const auto now = Clock::now();
  if (!op->first_token) {
    op->first_token = now;
    observer().OnTimeToFirstToken(std::chrono::duration<double>(now - op->arrival).count());
  } else {
    observer().OnInterTokenLatency(std::chrono::duration<double>(now - op->last_token).count());
  }
  op->last_token = now;
  Finish f = Finish::kNone;
  if (step.finished) {
    switch (step.finish_reason) {
      case FinishReason::kLength:
        f = Finish::kLength;
        break;
      case FinishReason::kStop:
        f = Finish::kStop;
        break;
      case FinishReason::kEndOfSequence:
        f = Finish::kEndOfSequence;
        break;
      case FinishReason::kCancelled:
        f = Finish::kCancelled;
        break;
    }
  }
  GenerateEvent e = Event(runner_->position(*s->slot), *op, f, {step.token}, step.text_delta);
  auto on_event = op->on_event;
  if (f == Finish::kNone) {
    callbacks->push_back([on_event, e] { on_event(e); });
    return;
  }
  auto done = std::move(op->done);
  Complete(
      s, *op,
      [on_event, done, e] {
        on_event(e);
        done(absl::OkStatus());
      },
      [done](absl::Status st) { done(st); }, callbacks);
}

void Engine::Impl::ExecuteScore(Session* s, Op* op, std::vector<std::function<void()>>* callbacks) {
  const SlotId slot = *s->slot;
  // From an empty session the first token is predicted after the beginning-of-sequence token,
  // as a generation would see it: BOS leads the scored tokens and its own score is dropped.
  SlotWork work;
  work.slot = slot;
  work.action = SlotAction::kScore;
  work.commit = op->commit;
  const int32_t bos = runner_->tokenizer().bos_id();
  const bool with_bos = runner_->position(slot) == 0 && bos >= 0;
  if (with_bos) work.tokens.push_back(bos);
  work.tokens.insert(work.tokens.end(), op->tokens.begin(), op->tokens.end());
  const std::vector<int32_t> consumed = work.tokens;
  // The runner changes the slot only for a committed, successful score; the snapshot undoes it
  // if the log commit then fails.
  std::shared_ptr<const SlotSnapshot> before = op->commit ? runner_->Snapshot(slot) : nullptr;
  absl::StatusOr<SlotOutcome> outcome = StepOne(std::move(work));
  absl::StatusOr<ScoreResult> result = [&]() -> absl::StatusOr<ScoreResult> {
    if (!outcome.ok()) return outcome.status();
    ScoreResult r;
    r.logprobs = std::move(outcome->logprobs);
    if (with_bos) r.logprobs.erase(r.logprobs.begin());
    r.position = outcome->position;
    observer().OnTokens("scored", static_cast<int64_t>(op->tokens.size()));
    return r;
  }();
  auto done = std::move(op->score_done);
  if (result.ok() && op->commit) {
    op->backup = std::move(before);
    op->log_tokens.insert(op->log_tokens.end(), consumed.begin(), consumed.end());
    op->log_pieces.push_back(static_cast<int32_t>(consumed.size()));
    Complete(
        s, *op, [done, result] { done(result); }, [done](absl::Status st) { done(st); }, callbacks);
  } else {
    callbacks->push_back([done, result] { done(result); });
    MarkDone(*op);
  }
  op->tokens.clear();
}

void Engine::Impl::Fail(Op& op, absl::Status status,
                        std::vector<std::function<void()>>* callbacks) {
  switch (op.kind) {
    case OpKind::kAppend:
      callbacks->push_back([done = std::move(op.append_done), status] { done(status); });
      break;
    case OpKind::kGenerate:
      callbacks->push_back([done = std::move(op.done), status] { done(status); });
      break;
    case OpKind::kScore:
      callbacks->push_back([done = std::move(op.score_done), status] { done(status); });
      break;
    case OpKind::kFork:
    case OpKind::kRewind:
      callbacks->push_back([done = std::move(op.fork_done), status] { done(status); });
      break;
    case OpKind::kExport:
      callbacks->push_back([done = std::move(op.export_done), status] { done(status); });
      break;
    case OpKind::kClose:
      callbacks->push_back([done = std::move(op.done), status] { done(status); });
      break;
  }
  MarkDone(op);
}

void Engine::Impl::Update(const std::vector<Session*>& order, const std::vector<Assignment>& plan,
                          std::vector<std::function<void()>>* callbacks) {
  const int64_t now = NowMs();
  for (const Assignment& a : plan) {
    Session* s = order[a.session];
    s->busy = false;
    Op& op = *s->ops.front();
    op.queued_tokens = op.remaining();
    s->record.last_used_unix_ms = now;
    if (s->slot) {
      s->record.position = runner_->position(*s->slot);
      s->state_bytes = runner_->state_bytes(*s->slot);
      s->spilled = false;
    }
    if (!op.finished) continue;
    if (s->slot && op.kind != OpKind::kClose && !s->moved) {
      // Nothing more queued: the slot gives up its working room (before a rewind point shares it).
      if (s->ops.size() == 1) runner_->Settle(*s->slot);
      MaybeTakePoint(s);
    }
    s->rewind_floor = s->history.first_position();
    if (s->moved) DropResident(s);
    const bool close = op.kind == OpKind::kClose || s->gone;
    Done close_done = close ? std::move(op.done) : nullptr;
    s->ops.pop_front();
    if (close) {
      std::vector<std::unique_ptr<Op>> rest;
      for (auto& o : s->ops) rest.push_back(std::move(o));
      const std::string id = s->record.id;
      const bool gone = s->gone;
      if (files_ && !gone) files_->Remove(id);
      Erase(id);
      if (!gone) {
        observer().OnSessionClosed("closed");
        callbacks->push_back([close_done] { close_done(absl::OkStatus()); });
      }
      for (auto& o : rest) {
        Fail(*o, absl::NotFoundError("session '" + ShowValue(id) + "' was closed"), callbacks);
      }
    }
  }
  CheckpointIfDue();
  SpillIfNeeded(callbacks);
}

}  // namespace titans::engine

namespace titans::engine {

absl::StatusOr<SlotOutcome> Engine::Impl::StepOne(SlotWork work) {
  StepPlan plan;
  plan.work.push_back(std::move(work));
  TITANS_ASSIGN_OR_RETURN(StepResult step, runner_->Step(plan));
  if (!step.slots[0].status.ok()) return step.slots[0].status;
  return std::move(step.slots[0]);
}

absl::Status Engine::Impl::Feed(SlotId slot, std::vector<int32_t> tokens) {
  SlotWork work;
  work.slot = slot;
  work.tokens = std::move(tokens);
  return StepOne(std::move(work)).status();
}

void Engine::Impl::Erase(const std::string& id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  if (it->second->slot) runner_->Free(*it->second->slot);
  sessions_.erase(it);
}

}  // namespace titans::engine
