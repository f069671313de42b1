// The engine thread's loop: schedule -> execute (engine_execute.cc) -> update, with the
// periodic work between steps (checkpoints, spilling, the TTL sweep).

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

// What the scheduler sees of a session's head operation (plain data).
Candidate CandidateFor(const Op& op, int64_t index) {
  Candidate c{index, 0, false};
  const int64_t rest = std::max<int64_t>(op.remaining(), 2);
  std::visit(Overloaded{
                 [&](const AppendOp&) { c.wanted_tokens = rest; },
                 [&](const GenerateOp&) { c.wanted_tokens = op.remaining() > 0 ? rest : 1; },
                 [&](const ScoreOp&) {
                   c.wanted_tokens = rest;
                   c.indivisible = true;
                 },
                 [](const auto&) {},  // control operations take no tokens
             },
             op.kind);
  return c;
}

}  // namespace

void Engine::Impl::Loop() {
  table_.mu()->Lock();
  auto last_sweep = Clock::now();
  auto last_ownership_check = Clock::now();
  const auto ownership_check_interval = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options_.ownership_check_seconds));
  int64_t steps_at_release = 0;
  auto last_release = Clock::now();
  while (!stop_) {
    if (!table_.HasRunnable()) {
      // Idle after work (at most once a second): give freed memory back, without the lock.
      if (steps_ != steps_at_release && Clock::now() - last_release >= std::chrono::seconds(1)) {
        steps_at_release = steps_;
        last_release = Clock::now();
        table_.mu()->Unlock();
        runner_->ReleaseCachedBuffers();  // this thread runs the steps: its buffers
        ReleaseFreeHeap();
        table_.mu()->Lock();
        continue;  // work may have arrived meanwhile
      }
      cv_.WaitWithTimeout(table_.mu(), std::chrono::milliseconds(500));
    }
    if (stop_) break;
    if (Clock::now() - last_sweep > std::chrono::seconds(1)) {
      std::vector<std::function<void()>> callbacks;
      Sweep(&callbacks);
      if (!callbacks.empty()) {
        table_.mu()->Unlock();
        completions_.Post(std::move(callbacks));
        table_.mu()->Lock();
      }
      last_sweep = Clock::now();
    }
    if (shared_ && options_.ownership_check_seconds > 0 &&
        Clock::now() - last_ownership_check > ownership_check_interval) {
      DropLostSessions();
      last_ownership_check = Clock::now();
      if (stop_) break;
    }
    if (!table_.HasRunnable()) continue;
    // Schedule (plain data), execute (no lock held), update.
    std::vector<Session*> order = table_.Runnable();
    std::vector<Candidate> candidates;
    std::rotate(order.begin(), order.begin() + (rr_cursor_++ % order.size()), order.end());
    for (size_t i = 0; i < order.size(); ++i) {
      candidates.push_back(CandidateFor(*order[i]->ops.front(), static_cast<int64_t>(i)));
    }
    std::vector<Assignment> plan = PlanStep(candidates, options_.step_token_budget);
    for (const Assignment& a : plan) order[a.session]->busy = true;
    ++steps_;
    table_.mu()->Unlock();
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
    table_.mu()->Lock();
    std::vector<Closing> closing = Update(order, plan);
    table_.mu()->Unlock();
    FinishCloses(closing, &callbacks);
    CheckpointIfDue();
    SpillIfNeeded();
    completions_.Post(std::move(callbacks));  // they run while the next step does
    table_.mu()->Lock();
  }
  table_.mu()->Unlock();
}

std::vector<Engine::Impl::Closing> Engine::Impl::Update(const std::vector<Session*>& order,
                                                        const std::vector<Assignment>& plan) {
  const int64_t now = env_->NowUnixMs();
  std::vector<Closing> closing;
  for (const Assignment& a : plan) {
    Session* s = order[a.session];
    s->busy = false;
    Op& op = *s->ops.front();
    table_.SetQueuedTokens(&op, op.remaining());
    s->record.last_used_unix_ms = now;
    if (s->slot) {
      s->record.position = runner_->position(*s->slot);
      s->state_bytes = runner_->state_bytes(*s->slot);
      s->spilled = false;
    }
    if (op.status != OpStatus::kFinished) continue;
    CloseOp* close_op = op.as<CloseOp>();
    if (s->slot && !close_op && !s->moved) {
      // Nothing more queued: the slot gives up its working room (before a rewind point shares it).
      if (s->ops.size() == 1) runner_->Settle(*s->slot);
      MaybeTakePoint(s);
    }
    s->rewind_floor = s->history.first_position();
    if (s->moved) DropResident(s);
    if (close_op || s->gone) {
      s->phase = SessionPhase::kClosing;  // no new operations while its files go
      closing.push_back(Closing{s, close_op ? std::move(close_op->done) : nullptr});
    }
    table_.PopOp(s);
  }
  return closing;
}

void Engine::Impl::FinishCloses(std::vector<Closing>& closing,
                                std::vector<std::function<void()>>* callbacks) {
  if (closing.empty()) return;
  // The files go without table_.mu()-> The sessions stay in the table meanwhile, so no new session
  // can take their ids (and then lose its files) before they are erased below.
  for (const Closing& c : closing) {
    if (files_ && !c.session->gone) files_->Remove(c.session->record.id);
  }
  MutexLock lock(table_.mu());
  for (Closing& c : closing) {
    const std::string id = c.session->record.id;
    const bool gone = c.session->gone;
    while (!c.session->ops.empty()) {  // queued behind the close
      std::unique_ptr<Op> rest = table_.PopOp(c.session);
      Fail(*rest, absl::NotFoundError("session '" + ShowValue(id) + "' was closed"), callbacks);
    }
    Erase(id);
    if (!gone) {
      observer().OnSessionClosed("closed");
      callbacks->push_back([done = std::move(c.done)] { done(absl::OkStatus()); });
    }
  }
}

void Engine::Impl::Erase(const std::string& id) {
  Session* s = table_.Get(id);
  if (s == nullptr) return;
  if (s->slot) runner_->Free(*s->slot);
  table_.Remove(id);  // its queued operations were answered by the caller
}

}  // namespace titans::engine
