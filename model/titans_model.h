// TitansModel: a loaded Titans language model (config + parameters + tokenizer) and its forward
// pass over a session's stream.
//
// Forward consumes any number of tokens per call: a long append runs the chunked parallel form
// (many tokens per GEMM), a single token the dual form over the open chunk's pending tokens.
// Both give the same outputs and state (up to float reassociation), however a stream is split
// into calls, because chunk and segment boundaries sit at absolute positions.
//
// Thread safety: after Load/Create a TitansModel is immutable and Forward may run concurrently
// from many threads on distinct SessionStates. Mutating params() (training) requires exclusive use.
#ifndef TITANS_MODEL_TITANS_MODEL_H_
#define TITANS_MODEL_TITANS_MODEL_H_

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/config.h"
#include "model/params.h"
#include "model/session_state.h"
#include "model/tokenizer.h"

namespace titans {

struct LoadOptions {
  // "cpu" or "cuda" / "cuda:N" (needs a CUDA-enabled LibTorch build, TITANS_CUDA=ON).
  std::string device = "cpu";
};

enum class LogitsMode { kLast, kAll };

class TitansModel {
 public:
  // Loads <dir>/config.json and <dir>/model.safetensors. Errors: NOT_FOUND for a missing file,
  // INVALID_ARGUMENT for a bad config, a missing / unexpected / misshapen / wrongly typed tensor
  // (the message names it), DATA_LOSS for a truncated or corrupted file. Never crashes.
  static absl::StatusOr<std::unique_ptr<TitansModel>> Load(const std::string& dir,
                                                           const LoadOptions& options = {});

  // A randomly initialised model (deterministic in seed) with a byte-level tokenizer.
  static absl::StatusOr<std::unique_ptr<TitansModel>> CreateRandom(const ModelConfig& config,
                                                                   uint64_t seed,
                                                                   const LoadOptions& options = {});

  // Writes config.json and model.safetensors into dir (created if missing), atomically per file.
  absl::Status Save(const std::string& dir) const;

  const ModelConfig& config() const { return config_; }
  // Records how the weights came to be (config.json "initialization" and "description"), e.g.
  // after training. Changes nothing else.
  void SetProvenance(std::string initialization, std::string description) {
    config_.initialization = std::move(initialization);
    config_.description = std::move(description);
  }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const ModelParams& params() const { return params_; }
  ModelParams& mutable_params() { return params_; }
  // Identifies config + weights; session snapshots carry it and restore only into the same model.
  const std::string& fingerprint() const { return fingerprint_; }
  at::Device device() const { return device_; }

  // A fresh state for `batch` sequences. With track_grad, gradients flow into Phi_init (training).
  SessionState NewState(int64_t batch = 1, bool track_grad = false) const;

  // Consumes tokens [B, T] (int64, ids in [0, vocab)) and advances *state. Returns logits
  // [B, T, V] (kAll) or [B, 1, V] (kLast) for the consumed tokens. On any error *state is left
  // exactly as it was: INVALID_ARGUMENT for bad ids / shapes, INTERNAL for a LibTorch failure or
  // a numerical overflow (non-finite logits), OUT_OF_RANGE if the state would pass
  // SessionState::kMaxPosition.
  // Runs under autograd only if the caller enabled it (training); serving should hold a
  // NoGradGuard.
  absl::StatusOr<at::Tensor> Forward(SessionState* state, const at::Tensor& tokens,
                                     LogitsMode mode = LogitsMode::kLast) const;

  // Inference for many sessions at once (the server's continuous batching): states[i] (batch 1)
  // consumes tokens[i]; token-wise work runs once over all sessions' tokens and the memory
  // update is one kernel call per layer. Afterwards each state's last_logits is set. All or
  // nothing: on error no state changes. Caller holds a NoGradGuard.
  // If the model's numbers overflow for a session (non-finite logits), that session is left
  // unchanged: with `statuses` it gets INTERNAL there and the others are committed; without,
  // the whole call fails with INTERNAL. A session that would pass SessionState::kMaxPosition is
  // left unchanged in the same way, with OUT_OF_RANGE.
  absl::Status ForwardMany(const std::vector<SessionState*>& states,
                           absl::Span<const std::vector<int64_t>> tokens,
                           std::vector<absl::Status>* statuses = nullptr) const;

  // Log-probabilities of `tokens` continuing *state (inference; caller holds a NoGradGuard or
  // InferenceMode): entry i is log p(tokens[i] | the stream so far and tokens[0..i)), entry 0
  // from the state's last logits (all zeros at position 0: uniform). Advances *state over the
  // tokens. Errors as Forward, *state unchanged on error.
  absl::StatusOr<std::vector<float>> ScoreTokens(SessionState* state,
                                                 const std::vector<int64_t>& tokens) const;

  // Longest run of tokens processed as one step (bounds attention scratch memory).
  static constexpr int64_t kMaxStepTokens = 256;

 private:
  TitansModel(ModelConfig config, ModelParams params, std::unique_ptr<Tokenizer> tokenizer,
              at::Device device);
  static absl::StatusOr<std::unique_ptr<TitansModel>> Finish(ModelConfig config, ModelParams params,
                                                             std::unique_ptr<Tokenizer> tokenizer,
                                                             const LoadOptions& options);
  // One pass of the layer stack over packed tokens [B, sum(lengths)] of several streams.
  at::Tensor Step(const std::vector<SessionState*>& states, const at::Tensor& tokens,
                  const std::vector<int64_t>& lengths, bool all_logits) const;

  ModelConfig config_;
  ModelParams params_;
  std::unique_ptr<Tokenizer> tokenizer_;
  at::Device device_;
  std::string fingerprint_;
};

}  // namespace titans

#endif  // TITANS_MODEL_TITANS_MODEL_H_
