// Training a Titans model (CPU; CUDA when the model is on a CUDA device): next-byte prediction on
// text plus synthetic long-context tasks, AdamW with linear warm-up and cosine decay, global
// gradient-norm clipping, periodic held-out evaluation, checkpoint and exact resume.
//
// Determinism: everything random (initialisation, data order, synthetic tasks) comes from the
// seed; a run resumed from a checkpoint continues exactly as if it had not stopped (same data,
// same optimizer state), given the same thread count.
//
// Thread safety: a Trainer is used from one thread.
#ifndef TITANS_MODEL_TRAINER_H_
#define TITANS_MODEL_TRAINER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/titans_model.h"

namespace titans {

struct TrainOptions {
  int64_t batch = 8;          // sequences per step
  int64_t seq_len = 512;      // tokens per sequence
  int64_t steps = 1000;       // optimizer steps in total
  int64_t warmup = 100;       // linear warm-up steps
  double lr = 3e-3;           // peak learning rate
  double min_lr = 3e-4;       // cosine decay floor
  double weight_decay = 0.1;  // AdamW, on matrices only (not norms, biases, gates' biases)
  double beta1 = 0.9, beta2 = 0.95;
  double clip = 1.0;  // global gradient-norm clip (0 = none)
  uint64_t seed = 1;
  // Share of sequences that are synthetic passkey tasks (the rest: windows of the training text).
  double passkey_fraction = 0.25;
  // Share of passkey tasks whose haystack is the repeated noise of RULER's S-NIAH-PK
  // (PasskeyNoise(); the paper's passkey task); the others hide the key in training text.
  double passkey_noise_fraction = 0.5;
  // Share of sequences that are multi-query associative recall tasks (MakeRecallTask): dense
  // practice at storing and retrieving associations across more than the attention window.
  double recall_fraction = 0.0;
  // Extra weight of the passkey and recall answers: the objective is mean cross-entropy over all
  // tokens plus answer_weight x the mean over the answer's digits (5 of seq_len tokens would
  // otherwise give retrieval almost no gradient). 0 = plain language modelling.
  double answer_weight = 1.0;
  // Stateful training (truncated backpropagation through time): with stream_segments > 1 each
  // batch row is a stream that lasts stream_segments steps of seq_len tokens. A step starts from
  // the session state the previous step ended with (detached: gradients stay inside a segment),
  // so the model learns to work with a memory that has already read up to
  // stream_segments x seq_len tokens, as a long-lived session's has. A text row continues the
  // same passage from segment to segment; a segment may instead hold a passkey or recall task
  // (same fractions as above), after which the passage goes on. Every stream_segments steps all
  // rows start again from a fresh state. 1 = every step starts fresh (stateless).
  int64_t stream_segments = 1;
  // Stream mode only: share of stream rows that are one long passkey task. The needle is planted
  // in the stream's first segment and the question ends a later segment (uniform over the
  // remaining ones), with the stream's filler (text, or the noise with passkey_noise_fraction)
  // in between; the rest of the stream is filler. So the model is trained to read a key back
  // across up to stream_segments x seq_len bytes (the gradient stays inside the asking segment:
  // it trains the read and the haystack writes just before it). 0 = none.
  double long_passkey_fraction = 0.0;
  // Stream mode only: share of stream rows that are one long multi-fact recall task, like a long
  // passkey: 2 to 8 key-value facts ("kqz=47, ...") at a random place in the first segment, and
  // a later segment ends with " Recall: " and every key again, in another order, each followed
  // by its value (the answers). Trains reading several associations back across segments.
  double long_recall_fraction = 0.0;
  int64_t eval_every = 100;        // steps between held-out evaluations (0 = never)
  int64_t eval_sequences = 16;     // held-out windows per evaluation
  int64_t checkpoint_every = 200;  // steps between checkpoints (0 = only at the end)
};

// Checks option ranges; INVALID_ARGUMENT names the first bad option. With stream_segments > 1,
// steps and checkpoint_every must be multiples of it, so that a checkpoint (and a resume) always
// falls on a stream boundary, where there is no carried state to lose.
absl::Status ValidateTrainOptions(const TrainOptions& options);

// Text split into a training part and a held-out test part (the last `test_fraction` of each
// file, so no test byte is ever trained on), with deterministic sampling.
class TextCorpus {
 public:
  // Reads the files; INVALID_ARGUMENT if there is too little text for `seq_len`.
  static absl::StatusOr<TextCorpus> Load(const std::vector<std::string>& paths,
                                         double test_fraction, int64_t seq_len);
  static TextCorpus FromString(std::string text, double test_fraction);

  const std::string& train() const { return train_; }
  const std::string& test() const { return test_; }

 private:
  std::string train_, test_;
};

// One synthetic passkey task (the paper's S-NIAH-PK): filler text with "The pass key is N.
// Remember it. N is the pass key." planted near the start, and "What is the pass key? The pass
// key is " at the end, followed by the answer. `answer_begin` is where the answer's bytes start.
struct PasskeyTask {
  std::string text;
  std::string answer;
  int64_t answer_begin = 0;
};
// `length` bytes in total (at least ~120); the key has `digits` digits; filler comes from
// `filler` (random windows). The needle sits at depth `depth` in [0, 1) of the haystack.
PasskeyTask MakePasskeyTask(const std::string& filler, int64_t length, int digits, double depth,
                            std::mt19937_64* rng);

// One multi-query associative recall task (Zoology's MQAR, in bytes): key-value pairs
// ("kqz=47, ..."), filler (random windows of `filler`, longer than an attention window), then the
// keys again in another order, each followed by its value. `answers` are the byte offsets of the
// recalled values' digits (what a model can only get right by remembering the pairs).
struct RecallTask {
  std::string text;
  std::vector<int64_t> answers;
};
// `length` bytes (>= 160); `filler_bytes` of filler between the pairs and the queries.
RecallTask MakeRecallTask(const std::string& filler, int64_t length, int64_t filler_bytes,
                          std::mt19937_64* rng);

// The needle (" The pass key is N. Remember it. N is the pass key. ") and the question that
// ends every passkey task; shared by the trainer, titans-eval, titans-bench and the tests.
std::string PasskeyNeedle(const std::string& key);
inline constexpr char kPasskeyQuestion[] = " What is the pass key? The pass key is ";

// RULER's passkey noise ("The grass is green. The sky is blue. ...") repeated to at least
// `bytes` bytes: the haystack of the paper's S-NIAH-PK. Random windows of it start at random
// phases of the sentence cycle.
std::string PasskeyNoise(int64_t bytes);

struct TrainProgress {
  int64_t step = 0;
  double loss = 0;          // training loss (nats per token, all tokens) of this step
  double answer_loss = -1;  // nats per passkey answer digit this step (-1: no passkey task)
  double lr = 0;
  double tokens_per_second = 0;
  double eval_bits_per_byte = -1;  // set on steps with an evaluation
};

class Trainer {
 public:
  // Trains `model` (its parameters are updated in place). A checkpoint directory, if given, is
  // where Checkpoint() writes and Resume() reads.
  Trainer(TitansModel* model, const TextCorpus* corpus, TrainOptions options,
          std::string checkpoint_dir);
  ~Trainer();

  // Runs steps until options.steps, calling `progress` after each. Checkpoints every
  // checkpoint_every steps and at the end (when a checkpoint directory is set). INTERNAL if the
  // loss stops being finite.
  absl::Status Run(const std::function<void(const TrainProgress&)>& progress);

  // One optimizer step; returns its training loss, or NaN when the batch was skipped because it
  // overflowed the model (non-finite logits) or gave non-finite gradients (no weight changes).
  // INTERNAL after kMaxSkippedSteps such batches in a row. last_answer_loss() is the step's
  // passkey answer loss (-1 when the batch had no passkey task).
  absl::StatusOr<double> Step();
  double last_answer_loss() const { return last_answer_loss_; }
  // The last step's tokens [batch, seq_len + 1] (inputs are [:, :T], targets [:, 1:]).
  const at::Tensor& last_tokens() const { return last_tokens_; }
  // Mean bits per byte of the model on `sequences` held-out windows of seq_len bytes (from the
  // start of the test text onward, deterministic), each read from a fresh session.
  absl::StatusOr<double> EvaluateBitsPerByte(int64_t sequences);

  // Writes <dir>/model (the model) and <dir>/trainer.pt (optimizer, step, data RNG).
  absl::Status Checkpoint();
  // Restores a checkpoint written by Checkpoint() into this trainer and its model. NOT_FOUND if
  // there is none.
  absl::Status Resume();

  int64_t step() const { return step_; }
  double LearningRate(int64_t step) const;

 private:
  struct Optimizer;
  struct Batch {
    at::Tensor tokens;       // [B, T + 1] int64
    at::Tensor answer_mask;  // [B, T] float: 1 where the target is a passkey answer digit
  };
  // One row's new content: `length` tokens and the indices (into them) of answer tokens.
  struct RowContent {
    std::vector<int32_t> tokens;
    std::vector<int64_t> answers;
  };
  // A text window (from *text_cursor when given, which then advances), or a passkey or recall
  // task, drawn by the options' fractions.
  RowContent SampleRow(int64_t length, int64_t* text_cursor);
  // Stream mode: a row's long passkey task (long_passkey_fraction), drawn at the stream's start.
  struct LongPasskey {
    bool active = false;
    bool noise = false;  // the filler is PasskeyNoise (else the row's passage of text)
    std::string key;     // 5 digits
    // A recall task instead of a passkey when not empty: the facts, and the order asked.
    std::vector<std::pair<std::string, std::string>> facts;
    std::vector<size_t> asked;
    int64_t ask_segment = 0;  // the segment (0-based) that ends with the question
    int64_t noise_phase = 0;  // where in the noise cycle the next filler byte is
  };
  // At a stream's start: makes the row a long passkey or recall task by the options' fractions
  // (drawing its key or facts, the segment that asks, the noise phase).
  void MaybeStartLongTask(LongPasskey* long_task);
  // The `segment`-th `length` tokens of a long passkey row (answers index into them).
  RowContent LongPasskeyRow(LongPasskey* task, int64_t segment, int64_t length,
                            int64_t* text_cursor);
  // The step's batch. Streaming: the next segment of every row's stream (new streams when none
  // is carried); otherwise independent rows.
  Batch SampleBatch(bool streaming);

  TitansModel* model_;
  const TextCorpus* corpus_;
  TrainOptions options_;
  std::string checkpoint_dir_;
  std::mt19937_64 rng_;
  int64_t step_ = 0;
  int skipped_in_a_row_ = 0;
  double last_answer_loss_ = -1;
  at::Tensor last_tokens_;
  std::string noise_;  // PasskeyNoise, long enough for any window
  // Stream mode: the carried session state, each row's text position and its last token (the
  // first input of its next segment).
  std::unique_ptr<SessionState> carried_;
  std::vector<int64_t> text_cursor_;
  std::vector<int32_t> last_token_;
  std::vector<LongPasskey> long_passkey_;
  int64_t stream_origin_ = 0;  // the step at which the current streams started
  static constexpr int kMaxSkippedSteps = 10;
  std::unique_ptr<Optimizer> optimizer_;
};

}  // namespace titans

#endif  // TITANS_MODEL_TRAINER_H_
