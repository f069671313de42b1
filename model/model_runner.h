// ModelRunner: runs one model for many resident sessions, each held in a numbered slot, one
// batched step at a time. The caller (the server's engine) speaks to it in plain data only: a
// StepPlan in (per slot: the tokens to consume and what to do with them), a StepResult out
// (per slot: status, position, the sampled token or the scores). This header includes no
// LibTorch header and exposes no tensor, so code that drives the runner needs neither.
//
// Slots are addressed by SlotId. A slot holds everything a session's stream needs to continue
// exactly: the model state (memory weights and momentum, the open chunk, conv tails, attention
// caches, last logits), the sampler's RNG and the recent tokens (repetition penalty).
//
// Version 0 (this one) keeps each slot's state as a model/session_state.h SessionState and
// runs TitansModel::ForwardMany over the plan; sampling is batched (one host copy of every
// sampled slot's logits per step). Later versions move the storage into preallocated device
// slots behind the same interface (docs/design/runner-survey.md).
//
// Errors are values. Step() checks the whole plan before anything runs: a malformed plan
// (unknown or repeated slot, token outside the vocabulary, empty work, sampling without logits)
// fails the call and no slot changes. A slot whose numbers overflow (non-finite logits) or that
// would pass SessionState::kMaxPosition gets its own error and is left exactly as it was; the
// other slots of the step are committed.
//
// Slot storage grows in blocks of kSlotBlock slots as slots are taken, up to the capacity given
// at creation; it never shrinks (freed slots are reused, the most recently freed first).
//
// Thread safety: every method may be called from any thread. Calls are serialised by one
// internal lock, which Step() holds for the whole step, so a slot operation on another thread
// waits for the step in progress. A TitansModel passed by reference must outlive the runner.
#ifndef TITANS_MODEL_MODEL_RUNNER_H_
#define TITANS_MODEL_MODEL_RUNNER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/mutex.h"
#include "model/sampler.h"
#include "model/tokenizer.h"

namespace titans {

class BufferPool;
class TitansModel;

using SlotId = int32_t;

// What a slot does in a step once its tokens (if any) are consumed.
enum class SlotAction : uint8_t {
  kFeed,    // consume `tokens` (at least one)
  kSample,  // consume `tokens` (possibly none), then draw one token from the resulting logits
            // with the slot's sampler and consume it too: one decode step
  kScore,   // consume `tokens` (at least one) and return log p(tokens[i] | everything before);
            // tokens[0] is predicted from the slot's logits before the step (at position 0
            // those are all zeros: a uniform prediction)
};

struct SlotWork {
  SlotId slot = -1;
  std::vector<int32_t> tokens;
  SlotAction action = SlotAction::kFeed;
  // kSample: the filters (temperature, top-k/p, min-p, repetition penalty). Owned by the caller
  // and read during Step() only; must have passed ValidateSamplingParams (StartSampling checks).
  const SamplingParams* sampling = nullptr;
  // kScore: false leaves the slot as it was (a what-if score); true consumes the tokens.
  bool commit = true;
};

// A slot appears at most once per plan.
struct StepPlan {
  std::vector<SlotWork> work;
};

struct SlotOutcome {
  // OK; INTERNAL for non-finite logits; OUT_OF_RANGE past SessionState::kMaxPosition. On
  // error the slot is unchanged.
  absl::Status status;
  int64_t position = 0;         // the slot's position after the step
  int32_t sampled = -1;         // kSample: the token drawn (and consumed)
  std::vector<float> logprobs;  // kScore: one per token
};

struct StepResult {
  std::vector<SlotOutcome> slots;  // in plan order
  double seconds = 0;              // wall time of the whole step
  double kernel_seconds = 0;       // of that, in the memory kernel
};

// An immutable copy of one slot's contents (a rollback point, a rewind point, a fork source).
// Opaque; made and read only by the runner that took it (or one over the same model).
class SlotSnapshot;

class ModelRunner {
 public:
  static constexpr int32_t kSlotBlock = 64;

  // A runner with room for `capacity` slots (> 0). INVALID_ARGUMENT for a bad capacity.
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(const TitansModel& model,
                                                             int32_t capacity);
  // The same, owning the model.
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(std::unique_ptr<TitansModel> model,
                                                             int32_t capacity);
  // Loads the model directory `model_dir` onto `device` ("cpu", "cuda", "cuda:N") and returns a
  // runner that owns it. The model loader's errors (TitansModel::Load), or INVALID_ARGUMENT for a
  // bad capacity.
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Load(const std::string& model_dir,
                                                           const std::string& device,
                                                           int32_t capacity);
  ~ModelRunner();
  ModelRunner(const ModelRunner&) = delete;
  ModelRunner& operator=(const ModelRunner&) = delete;

  // The model's description, tokenizer and weights fingerprint (immutable: no lock needed).
  const ModelConfig& config() const;
  const Tokenizer& tokenizer() const;
  const std::string& fingerprint() const;
  int64_t parameter_count() const;

  int32_t capacity() const { return capacity_; }
  int32_t slots_in_use() const;

  // A fresh slot at position 0. RESOURCE_EXHAUSTED when every slot is taken.
  absl::StatusOr<SlotId> NewSlot();
  // Releases a slot (its contents are dropped). Unknown or free slots are ignored.
  void Free(SlotId slot);
  // A new slot holding a copy of `slot`. RESOURCE_EXHAUSTED when full; NOT_FOUND for a free slot.
  absl::StatusOr<SlotId> Fork(SlotId slot);

  // A new slot holding a snapshot blob (model/session_state.h format; the model's fingerprint
  // must match). The blob's errors (DATA_LOSS, FAILED_PRECONDITION, INVALID_ARGUMENT), or
  // RESOURCE_EXHAUSTED when full.
  absl::StatusOr<SlotId> Import(std::string_view blob);
  // The slot as a snapshot blob: canonical, so the same contents always give the same bytes.
  absl::StatusOr<std::string> Export(SlotId slot) const;

  std::shared_ptr<const SlotSnapshot> Snapshot(SlotId slot) const;  // nullptr for a free slot
  // Sets an allocated slot's contents to the snapshot's. NOT_FOUND for a free slot.
  absl::Status Restore(SlotId slot, const SlotSnapshot& snapshot);
  // A new slot holding the snapshot. RESOURCE_EXHAUSTED when full.
  absl::StatusOr<SlotId> FromSnapshot(const SlotSnapshot& snapshot);
  absl::StatusOr<std::string> ExportSnapshot(const SlotSnapshot& snapshot) const;
  static int64_t SnapshotPosition(const SlotSnapshot& snapshot);

  // Prepares `slot` for kSample steps under `params`: INVALID_ARGUMENT for bad parameters
  // (nothing changes). With params.has_seed the slot's RNG is reseeded (reproducible runs);
  // otherwise it continues the slot's own RNG stream (seeded at random if it has none yet).
  absl::Status StartSampling(SlotId slot, const SamplingParams& params);

  // Puts a slot's state in its at-rest form (SettleSessionState) for a session with nothing
  // queued: it then holds about its state bytes, without the rings' and the open chunk's working
  // room, until its next step. Values are unchanged, bit for bit. A no-op for a free slot.
  void Settle(SlotId slot);

  // Frees the buffers the runner keeps for its next steps' new state buffers (model/buffer_pool.h:
  // those its steps' states gave up; at most 256 MiB). For a caller that falls idle.
  void ReleaseCachedBuffers();

  // Accessors for an allocated slot (0 / zeros for a free one).
  int64_t position(SlotId slot) const;
  int64_t state_bytes(SlotId slot) const;
  Rng::State rng_state(SlotId slot) const;
  void set_rng_state(SlotId slot, const Rng::State& state);  // e.g. from a write-ahead log
  bool allocated(SlotId slot) const;

  // Runs one step over the plan (see the header comment for the error contract).
  absl::StatusOr<StepResult> Step(const StepPlan& plan);

 private:
  struct Slot;
  ModelRunner(const TitansModel& model, int32_t capacity);
  // Every slot taken and no room to grow.
  bool Full() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return free_.empty() && static_cast<SlotId>(slots_.size()) >= capacity_;
  }
  Slot* Find(SlotId slot) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<SlotId> Take() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckPlan(const StepPlan& plan) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  std::unique_ptr<TitansModel> owned_model_;  // null when the caller owns the model
  const TitansModel& model_;
  const int32_t capacity_;
  mutable Mutex mu_;  // model/mutex.h says why not absl::Mutex
  std::vector<std::unique_ptr<Slot>> slots_ ABSL_GUARDED_BY(mu_);  // nullptr: free
  std::vector<SlotId> free_ ABSL_GUARDED_BY(mu_);  // free slot ids of slots_, lowest last
  int32_t in_use_ ABSL_GUARDED_BY(mu_) = 0;
  // Buffers replaced states gave up, for the next steps (a pointer: no LibTorch in this header).
  std::unique_ptr<BufferPool> buffers_ ABSL_GUARDED_BY(mu_);
};

// Frees a runner slot when it goes out of scope unless Release()d: for a slot taken for work
// that may fail partway (a scratch replay, a session not registered yet).
class ScopedSlot {
 public:
  ScopedSlot(ModelRunner* runner, SlotId slot) : runner_(runner), slot_(slot) {}
  ~ScopedSlot() {
    if (runner_ != nullptr) runner_->Free(slot_);
  }
  ScopedSlot(const ScopedSlot&) = delete;
  ScopedSlot& operator=(const ScopedSlot&) = delete;

  SlotId get() const { return slot_; }
  // The slot stays taken; the caller owns it now.
  SlotId Release() {
    runner_ = nullptr;
    return slot_;
  }

 private:
  ModelRunner* runner_;
  SlotId slot_;
};

}  // namespace titans

#endif  // TITANS_MODEL_MODEL_RUNNER_H_
