// The executor: runs one step's work through the ModelRunner (token pieces, decodes, scores,
// control operations) and completes or fails each operation. Engine thread, without table_.mu()->

#include <algorithm>

#include "server/engine/engine_impl.h"

namespace titans::engine {

void Engine::Impl::Prepare(Session* s, int64_t tokens, std::vector<Forwarding>* batch,
                           std::vector<std::function<void()>>* callbacks) {
  Op& op = *s->ops.front();
  if (op.status == OpStatus::kWaiting) {  // first scheduled: running below, or failed
    observer().OnQueueTime(std::chrono::duration<double>(Clock::now() - op.arrival).count());
  }
  absl::Status resident = EnsureResident(s);
  if (!resident.ok()) {
    Fail(op, LoadError(s, resident), callbacks);
    return;
  }
  const SlotId slot = *s->slot;
  if (op.status == OpStatus::kWaiting) {
    op.status = OpStatus::kRunning;
    op.position_before = runner_->position(slot);
  }
  const bool cancelled = op.cancel && op.cancel->load();
  std::visit(Overloaded{
                 [&](AppendOp&) { PrepareAppend(s, &op, tokens, cancelled, batch, callbacks); },
                 [&](GenerateOp&) { PrepareGenerate(s, &op, tokens, cancelled, batch, callbacks); },
                 [&](ScoreOp&) { ExecuteScore(s, &op, callbacks); },
                 [&](ExportOp& e) {
                   callbacks->push_back(
                       [done = std::move(e.done), blob = runner_->Export(slot)] { done(blob); });
                   MarkDone(op);
                 },
                 [&](RewindOp&) { ExecuteRewind(s, op, callbacks); },
                 [&](ForkOp& f) { ExecuteFork(s, &op, f, callbacks); },
                 // Update() erases the session and answers the operations queued behind it.
                 [&](CloseOp&) { MarkDone(op); },
             },
             op.kind);
}

absl::Status Engine::Impl::LoadError(Session* s, const absl::Status& error) {
  if (error.code() == absl::StatusCode::kNotFound && shared_) {
    s->gone = true;  // closed or expired on another replica
    return absl::NotFoundError(
        absl::StrCat("session '", ShowValue(ClientId(s->record)), "' not found"));
  }
  if (error.code() == absl::StatusCode::kUnavailable) return error;
  return absl::DataLossError(
      absl::StrCat("session state could not be restored: ", error.message()));
}

void Engine::Impl::PrepareAppend(Session* s, Op* op, int64_t tokens, bool cancelled,
                                 std::vector<Forwarding>* batch,
                                 std::vector<std::function<void()>>* callbacks) {
  const SlotId slot = *s->slot;
  if (!op->backup) op->backup = runner_->Snapshot(slot);
  if (cancelled || draining_deadline_passed_) {
    (void)runner_->Restore(slot, *op->backup);
    Fail(*op,
         cancelled ? absl::CancelledError("append cancelled; the session is unchanged")
                   : absl::UnavailableError("server is shutting down"),
         callbacks);
    return;
  }
  // Pieces end where a rewind point falls due (a rewind replays at most the interval).
  batch->push_back(Forwarding{
      s, op, NextPiece(*op, std::min<int64_t>(tokens, TokensToNextPoint(*s, *op))), false});
}

void Engine::Impl::ExecuteFork(Session* s, Op* op, ForkOp& fork,
                               std::vector<std::function<void()>>* callbacks) {
  const SlotId slot = *s->slot;
  auto forked = StateAt(s, fork.position);
  if (!forked.ok()) {
    Fail(*op, forked.status(), callbacks);
    return;
  }
  if (s->history.end() != runner_->position(slot)) ResetHistory(s);
  RewindHistory history = s->history.CopyUpTo(ModelRunner::SnapshotPosition(**forked));
  absl::StatusOr<SlotId> fork_slot = runner_->FromSnapshot(**forked);
  if (!fork_slot.ok()) {
    Fail(*op, fork_slot.status(), callbacks);
    return;
  }
  CreateParams p;
  p.principal = s->record.principal;
  p.id = fork.new_id;
  p.idle_ttl_seconds = s->record.idle_ttl_seconds;
  p.labels = s->record.labels;
  p.sampling = s->sampling;
  absl::StatusOr<SessionInfo> info;
  {
    MutexLock lock(table_.mu());
    info = AddSession(p, *fork_slot, &history, s->record.id);
  }
  callbacks->push_back([done = std::move(fork.done), info] { done(info); });
  MarkDone(*op);
}

std::vector<int32_t> Engine::Impl::NextPiece(const Op& op, int64_t tokens) {
  const int64_t n = std::max<int64_t>(1, std::min<int64_t>(tokens, op.remaining()));
  return std::vector<int32_t>(op.tokens.begin() + op.consumed, op.tokens.begin() + op.consumed + n);
}

void Engine::Impl::PrepareGenerate(Session* s, Op* op, int64_t tokens, bool cancelled,
                                   std::vector<Forwarding>* batch,
                                   std::vector<std::function<void()>>* callbacks) {
  const SlotId slot = *s->slot;
  GenerateOp& g = *op->as<GenerateOp>();
  if (cancelled || draining_deadline_passed_) {
    // The session keeps what was consumed so far; in sync mode that part is logged like a
    // finished operation (otherwise recovery would find a gap in the session's log).
    std::string rest = g.stream ? g.stream->Flush() : "";
    GenerateEvent e = Event(runner_->position(slot), *op, Finish::kCancelled, {}, rest);
    auto on_event = g.on_event;
    auto done = std::move(g.done);
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
  if (!g.stream) {
    // Reseeds the slot's sampler (a request seed) or continues its own stream.
    absl::Status st = runner_->StartSampling(slot, g.sampling);
    if (!st.ok()) {
      Fail(*op, st, callbacks);
      return;
    }
    g.stream.emplace(runner_->tokenizer(), g.sampling);
  }
  // The token is drawn in the runner's step, together with every other decode of the step.
  batch->push_back(Forwarding{s, op, std::move(before_sampling), true});
}

void Engine::Impl::FinishDecode(Session* s, Op* op, int64_t token,
                                std::vector<std::function<void()>>* callbacks) {
  GenerateOp& g = *op->as<GenerateOp>();
  TextStream::Step step = g.stream->Commit(static_cast<int32_t>(token));
  const auto now = Clock::now();
  if (!g.first_token) {
    g.first_token = now;
    observer().OnTimeToFirstToken(std::chrono::duration<double>(now - op->arrival).count());
  } else {
    observer().OnInterTokenLatency(std::chrono::duration<double>(now - g.last_token).count());
  }
  g.last_token = now;
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
  auto on_event = g.on_event;
  if (f == Finish::kNone) {
    callbacks->push_back([on_event, e] { on_event(e); });
    return;
  }
  auto done = std::move(g.done);
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
  ScoreOp& score = *op->as<ScoreOp>();
  work.commit = score.commit;
  const int32_t bos = runner_->tokenizer().bos_id();
  const bool with_bos = runner_->position(slot) == 0 && bos >= 0;
  if (with_bos) work.tokens.push_back(bos);
  work.tokens.insert(work.tokens.end(), op->tokens.begin(), op->tokens.end());
  const std::vector<int32_t> consumed = work.tokens;
  // The runner changes the slot only for a committed, successful score; the snapshot undoes it
  // if the log commit then fails.
  std::shared_ptr<const SlotSnapshot> before = score.commit ? runner_->Snapshot(slot) : nullptr;
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
  auto done = std::move(score.done);
  if (result.ok() && score.commit) {
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
      w.sampling = &f.op->as<GenerateOp>()->sampling;
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
    AppendOp* append = op.as<AppendOp>();
    observer().OnTokens(append ? "appended" : "prompt", static_cast<int64_t>(tokens.size()));
    op.consumed += tokens.size();
    if (append) MaybeTakeInnerPoint(*f.session, &op);
    if (append && op.remaining() == 0) {
      AppendResult r{static_cast<int64_t>(op.tokens.size()), step->slots[i].position};
      auto done = std::move(append->done);
      Complete(
          f.session, op, [done, r] { done(r); }, [done](absl::Status st) { done(st); }, callbacks);
      op.tokens.clear();
      op.consumed = 0;
    }
  }
  return step.ok() ? step->kernel_seconds : 0;
}

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
  record.has_rng = op.is<GenerateOp>();
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

void Engine::Impl::Fail(Op& op, absl::Status status,
                        std::vector<std::function<void()>>* callbacks) {
  callbacks->push_back(op.TakeFailure(std::move(status)));
  MarkDone(op);
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
  const GenerateOp& g = *op.as<GenerateOp>();
  e.generated_tokens = g.stream ? g.stream->generated() : 0;
  e.total_seconds = std::chrono::duration<double>(Clock::now() - op.arrival).count();
  if (g.first_token) {
    e.time_to_first_token_seconds =
        std::chrono::duration<double>(*g.first_token - op.arrival).count();
  }
  return e;
}

}  // namespace titans::engine
