#include "model/model_runner.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "kernels/memory_kernel.h"
#include "model/buffer_pool.h"
#include "model/session_state.h"
#include "model/status_macros.h"
#include "model/titans_model.h"

namespace titans {

struct ModelRunner::Slot {
  SessionState state;
};

class SlotSnapshot {
 public:
  explicit SlotSnapshot(SessionState state) : state(std::move(state)) {}
  // The model never changes a value a state holds (model/session_state.h), so this shallow copy
  // stays valid while the slot it came from moves on.
  const SessionState state;
};

namespace {

using Clock = std::chrono::steady_clock;

// The slot's sampler: its saved RNG stream, or a fresh random one if it has none yet.
Rng ContinueOrSeed(const Rng::State& saved) {
  absl::StatusOr<Rng> rng = Rng::FromState(saved);
  return rng.ok() ? *rng : Rng(std::random_device{}());
}

absl::Status SlotError(SlotId slot, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("step plan: slot ", slot, " ", what));
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(const TitansModel& model,
                                                                 int32_t capacity) {
  if (capacity <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("runner capacity must be positive, got ", capacity));
  }
  return std::unique_ptr<ModelRunner>(new ModelRunner(model, capacity));
}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(std::unique_ptr<TitansModel> model,
                                                                 int32_t capacity) {
  if (model == nullptr) return absl::InvalidArgumentError("runner needs a model");
  TITANS_ASSIGN_OR_RETURN(std::unique_ptr<ModelRunner> runner, Create(*model, capacity));
  runner->owned_model_ = std::move(model);
  return runner;
}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Load(const std::string& model_dir,
                                                               const std::string& device,
                                                               int32_t capacity) {
  LoadOptions load;
  load.device = device;
  TITANS_ASSIGN_OR_RETURN(std::unique_ptr<TitansModel> model, TitansModel::Load(model_dir, load));
  return Create(std::move(model), capacity);
}

ModelRunner::ModelRunner(const TitansModel& model, int32_t capacity)
    : model_(model), capacity_(capacity), buffers_(std::make_unique<BufferPool>()) {}

const ModelConfig& ModelRunner::config() const { return model_.config(); }
const Tokenizer& ModelRunner::tokenizer() const { return model_.tokenizer(); }
const std::string& ModelRunner::fingerprint() const { return model_.fingerprint(); }
int64_t ModelRunner::parameter_count() const { return CountParameters(model_.config()); }

int32_t ModelRunner::slots_in_use() const {
  MutexLock lock(&mu_);
  return in_use_;
}

ModelRunner::~ModelRunner() = default;

ModelRunner::Slot* ModelRunner::Find(SlotId slot) const {
  if (slot < 0 || slot >= static_cast<SlotId>(slots_.size())) return nullptr;
  return slots_[slot].get();
}

bool ModelRunner::allocated(SlotId slot) const {
  MutexLock lock(&mu_);
  return Find(slot) != nullptr;
}

absl::StatusOr<SlotId> ModelRunner::Take() {
  if (Full()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("all ", capacity_, " runner slots are in use"));
  }
  if (free_.empty()) {
    const SlotId size = static_cast<SlotId>(slots_.size());
    // One more block of slots; ids are handed out lowest first.
    const SlotId grown = size + std::min(kSlotBlock, capacity_ - size);
    slots_.resize(static_cast<size_t>(grown));
    for (SlotId id = grown - 1; id >= size; --id) free_.push_back(id);
  }
  const SlotId id = free_.back();
  free_.pop_back();
  slots_[id] = std::make_unique<Slot>();
  ++in_use_;
  return id;
}

absl::StatusOr<SlotId> ModelRunner::NewSlot() {
  MutexLock lock(&mu_);
  TITANS_ASSIGN_OR_RETURN(SlotId id, Take());
  slots_[id]->state = model_.NewState();
  return id;
}

void ModelRunner::Free(SlotId slot) {
  MutexLock lock(&mu_);
  if (Find(slot) == nullptr) return;
  slots_[slot].reset();
  free_.push_back(slot);
  --in_use_;
}

absl::StatusOr<SlotId> ModelRunner::Fork(SlotId slot) {
  MutexLock lock(&mu_);
  const Slot* from = Find(slot);
  if (from == nullptr) return absl::NotFoundError(absl::StrCat("runner slot ", slot, " is free"));
  TITANS_ASSIGN_OR_RETURN(SlotId id, Take());
  slots_[id]->state = from->state;
  return id;
}

absl::StatusOr<SlotId> ModelRunner::Import(std::string_view blob) {
  {
    MutexLock lock(&mu_);
    if (Full()) return Take().status();  // RESOURCE_EXHAUSTED before parsing anything
  }
  // Parsed without the lock: a large blob does not hold up the step in progress.
  TITANS_ASSIGN_OR_RETURN(SessionState state,
                          DeserializeSessionState(blob, model_.config(), model_.fingerprint()));
  MoveSessionState(&state, model_.device());
  MutexLock lock(&mu_);
  TITANS_ASSIGN_OR_RETURN(SlotId id, Take());
  slots_[id]->state = std::move(state);
  return id;
}

absl::StatusOr<std::string> ModelRunner::Export(SlotId slot) const {
  SessionState copy;  // shallow (held values never change): serialised without the lock
  {
    MutexLock lock(&mu_);
    const Slot* s = Find(slot);
    if (s == nullptr) return absl::NotFoundError(absl::StrCat("runner slot ", slot, " is free"));
    copy = s->state;
  }
  return SerializeSessionState(model_.config(), copy, model_.fingerprint());
}

std::shared_ptr<const SlotSnapshot> ModelRunner::Snapshot(SlotId slot) const {
  MutexLock lock(&mu_);
  const Slot* s = Find(slot);
  if (s == nullptr) return nullptr;
  return std::make_shared<const SlotSnapshot>(s->state);
}

absl::Status ModelRunner::Restore(SlotId slot, const SlotSnapshot& snapshot) {
  MutexLock lock(&mu_);
  Slot* s = Find(slot);
  if (s == nullptr) return absl::NotFoundError(absl::StrCat("runner slot ", slot, " is free"));
  s->state = snapshot.state;
  return absl::OkStatus();
}

absl::StatusOr<SlotId> ModelRunner::FromSnapshot(const SlotSnapshot& snapshot) {
  MutexLock lock(&mu_);
  TITANS_ASSIGN_OR_RETURN(SlotId id, Take());
  slots_[id]->state = snapshot.state;
  return id;
}

absl::StatusOr<std::string> ModelRunner::ExportSnapshot(const SlotSnapshot& snapshot) const {
  return SerializeSessionState(model_.config(), snapshot.state, model_.fingerprint());
}

int64_t ModelRunner::SnapshotPosition(const SlotSnapshot& snapshot) {
  return snapshot.state.position;
}

void ModelRunner::Settle(SlotId slot) {
  MutexLock lock(&mu_);
  Slot* s = Find(slot);
  if (s != nullptr) SettleSessionState(&s->state);
}

void ModelRunner::ReleaseCachedBuffers() {
  MutexLock lock(&mu_);
  buffers_->Clear();
}

absl::Status ModelRunner::StartSampling(SlotId slot, const SamplingParams& params) {
  MutexLock lock(&mu_);
  Slot* s = Find(slot);
  if (s == nullptr) return absl::NotFoundError(absl::StrCat("runner slot ", slot, " is free"));
  TITANS_RETURN_IF_ERROR(ValidateSamplingParams(params, model_.config().vocab_size));
  if (params.has_seed) {
    s->state.rng_state = Rng(params.seed).state();
  } else {
    s->state.rng_state = ContinueOrSeed(s->state.rng_state).state();
  }
  return absl::OkStatus();
}

int64_t ModelRunner::position(SlotId slot) const {
  MutexLock lock(&mu_);
  const Slot* s = Find(slot);
  return s ? s->state.position : 0;
}

int64_t ModelRunner::state_bytes(SlotId slot) const {
  MutexLock lock(&mu_);
  const Slot* s = Find(slot);
  return s ? StateBytes(s->state) : 0;
}

Rng::State ModelRunner::rng_state(SlotId slot) const {
  MutexLock lock(&mu_);
  const Slot* s = Find(slot);
  return s ? s->state.rng_state : Rng::State{};
}

void ModelRunner::set_rng_state(SlotId slot, const Rng::State& state) {
  MutexLock lock(&mu_);
  if (Slot* s = Find(slot)) s->state.rng_state = state;
}

absl::Status ModelRunner::CheckPlan(const StepPlan& plan) const {
  const int32_t vocab = model_.config().vocab_size;
  std::vector<bool> seen(slots_.size(), false);
  for (const SlotWork& w : plan.work) {
    const Slot* s = Find(w.slot);
    if (s == nullptr) return SlotError(w.slot, "is not allocated");
    if (seen[w.slot]) return SlotError(w.slot, "appears twice");
    seen[w.slot] = true;
    for (int32_t id : w.tokens) {
      if (id < 0 || id >= vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab, ")"));
      }
    }
    switch (w.action) {
      case SlotAction::kFeed:
      case SlotAction::kScore:
        if (w.tokens.empty()) return SlotError(w.slot, "has no tokens to consume");
        break;
      case SlotAction::kSample:
        if (w.sampling == nullptr) return SlotError(w.slot, "samples without sampling parameters");
        if (w.tokens.empty() && s->state.position == 0) {
          return absl::FailedPreconditionError(absl::StrCat(
              "step plan: slot ", w.slot,
              " has no logits to sample from yet (feed a beginning-of-sequence token first)"));
        }
        break;
    }
  }
  return absl::OkStatus();
}

namespace {

// Token lists for one forward pass, kept by each thread between steps with their capacity, so
// that a decode step allocates no list per slot. Only the first `used_` lists are the pass's.
class TokenLists {
 public:
  void Clear() { used_ = 0; }
  std::vector<int64_t>& Next() {
    if (used_ == lists_.size()) lists_.emplace_back();
    std::vector<int64_t>& list = lists_[used_++];
    list.clear();
    return list;
  }
  absl::Span<const std::vector<int64_t>> View() const { return {lists_.data(), used_}; }

 private:
  std::vector<std::vector<int64_t>> lists_;
  size_t used_ = 0;
};

// One Step's passes over its slots' live states: what ModelRunner::Step runs under the runner's
// lock, after checking the plan. Per-slot failures go into the slots' outcomes; a failure of a
// whole pass (LibTorch) is returned.
class StepExecution {
 public:
  StepExecution(const TitansModel& model, const StepPlan& plan,
                const std::vector<SessionState*>& live, StepResult* result)
      : model_(model), plan_(plan), live_(live), result_(result), rng_after_(live.size()) {}

  // Decode slots with nothing to consume first sample from their logits and join the feed pass
  // with the drawn token; slots with tokens before sampling sample after it and run a second
  // pass (the first token of a generation, after its prompt or BOS). Scores run last, one
  // forward each (they need every position's logits).
  absl::Status Run() {
    const size_t n = plan_.work.size();
    std::vector<size_t> decode_now, sample_later, pass, scores;
    decode_now.reserve(n);
    pass.reserve(n);
    thread_local TokenLists pass_tokens;
    pass_tokens.Clear();
    for (size_t i = 0; i < n; ++i) {
      const SlotWork& w = plan_.work[i];
      if (w.action == SlotAction::kScore) {
        scores.push_back(i);
      } else if (w.action == SlotAction::kSample && w.tokens.empty()) {
        decode_now.push_back(i);
      } else {
        if (w.action == SlotAction::kSample) sample_later.push_back(i);
        pass.push_back(i);
        pass_tokens.Next().assign(w.tokens.begin(), w.tokens.end());
      }
    }
    Sample(decode_now);
    for (size_t i : decode_now) {
      pass.push_back(i);
      pass_tokens.Next().push_back(result_->slots[i].sampled);
    }
    TITANS_RETURN_IF_ERROR(Forward(pass, pass_tokens.View()));
    std::vector<size_t> second;
    for (size_t i : sample_later) {
      if (result_->slots[i].status.ok()) second.push_back(i);
    }
    Sample(second);
    thread_local TokenLists second_tokens;
    second_tokens.Clear();
    for (size_t i : second) second_tokens.Next().push_back(result_->slots[i].sampled);
    TITANS_RETURN_IF_ERROR(Forward(second, second_tokens.View()));
    for (size_t i : scores) Score(i);
    return absl::OkStatus();
  }

  // The sampler state of slot i after its draw.
  const Rng::State& rng_after(size_t i) const { return rng_after_[i]; }

 private:
  // Draws one token for each listed slot from its current logits: one host copy for them all.
  void Sample(const std::vector<size_t>& which) {
    if (which.empty()) return;
    const int32_t vocab = model_.config().vocab_size;
    std::vector<at::Tensor> rows;
    rows.reserve(which.size());
    for (size_t i : which) rows.push_back(live_[i]->last_logits);
    const at::Tensor host = at::cat(rows, 0).to(at::kCPU).to(at::kFloat).contiguous();  // [k, V]
    const float* logits = host.data_ptr<float>();
    for (size_t k = 0; k < which.size(); ++k) {
      const size_t i = which[k];
      Rng rng = ContinueOrSeed(live_[i]->rng_state);  // seeded here if StartSampling was skipped
      result_->slots[i].sampled = SampleToken(logits + k * vocab, vocab, *plan_.work[i].sampling,
                                              live_[i]->recent_tokens, &rng);
      rng_after_[i] = rng.state();
    }
  }

  // Runs the listed slots' token lists through one batched forward pass.
  absl::Status Forward(const std::vector<size_t>& which,
                       absl::Span<const std::vector<int64_t>> tokens) {
    if (which.empty()) return absl::OkStatus();
    std::vector<SessionState*> states;
    states.reserve(which.size());
    for (size_t i : which) states.push_back(live_[i]);
    std::vector<absl::Status> statuses;
    TITANS_RETURN_IF_ERROR(model_.ForwardMany(states, tokens, &statuses));
    for (size_t k = 0; k < which.size(); ++k) {
      if (!statuses[k].ok()) result_->slots[which[k]].status = statuses[k];
    }
    return absl::OkStatus();
  }

  // Slot i's tokens scored from its state (kept only for a committed score).
  void Score(size_t i) {
    const SlotWork& w = plan_.work[i];
    SessionState work = *live_[i];
    absl::StatusOr<std::vector<float>> logprobs =
        model_.ScoreTokens(&work, std::vector<int64_t>(w.tokens.begin(), w.tokens.end()));
    if (!logprobs.ok()) {
      result_->slots[i].status = logprobs.status();
      return;
    }
    result_->slots[i].logprobs = *std::move(logprobs);
    if (w.commit) *live_[i] = std::move(work);
  }

  const TitansModel& model_;
  const StepPlan& plan_;
  const std::vector<SessionState*>& live_;
  StepResult* const result_;
  std::vector<Rng::State> rng_after_;
};

}  // namespace

absl::StatusOr<StepResult> ModelRunner::Step(const StepPlan& plan) {
  MutexLock lock(&mu_);
  const auto start = Clock::now();
  const int64_t kernel_start = kernels::MemoryKernelNanos();
  TITANS_RETURN_IF_ERROR(CheckPlan(plan));
  // InferenceMode: no autograd metadata for the step's many small tensors. Slot states are never
  // modified in place, so the inference tensors they end up holding are safe to copy later.
  c10::InferenceMode inference;
  BufferPool::Use use_buffers(buffers_.get());  // new state buffers from replaced ones
  const size_t n = plan.work.size();
  StepResult result;
  result.slots.resize(n);
  std::vector<SessionState*> live(n);
  // Rollback copies (shallow: see SlotSnapshot), needed only when a slot runs two forward passes
  // (tokens, then a sampled token): a failure in the second must undo the first. One pass is
  // atomic per slot already (ForwardMany and ScoreTokens commit a slot only when it succeeds).
  bool two_passes = false;
  for (size_t i = 0; i < n; ++i) {
    live[i] = &slots_[plan.work[i].slot]->state;
    two_passes |= plan.work[i].action == SlotAction::kSample && !plan.work[i].tokens.empty();
  }
  std::vector<SessionState> before;
  if (two_passes) {
    before.reserve(n);
    for (size_t i = 0; i < n; ++i) before.push_back(*live[i]);
  }
  StepExecution execution(model_, plan, live, &result);
  const absl::Status failed = execution.Run();
  for (size_t i = 0; i < n; ++i) {
    SlotOutcome& out = result.slots[i];
    if (!failed.ok() || !out.status.ok()) {
      if (two_passes) *live[i] = before[i];  // all or nothing for this slot
      out.sampled = -1;
      out.logprobs.clear();
    } else if (plan.work[i].action == SlotAction::kSample) {
      live[i]->rng_state = execution.rng_after(i);
    }
    out.position = live[i]->position;
  }
  if (!failed.ok()) return failed;
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  result.kernel_seconds = (kernels::MemoryKernelNanos() - kernel_start) * 1e-9;
  return result;
}

}  // namespace titans
