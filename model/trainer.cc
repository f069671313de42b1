#include "model/trainer.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "model/file_util.h"
#include "model/params.h"
#include "model/session_state.h"
#include "model/status_macros.h"

namespace titans {
namespace {

// Parameters that get weight decay: the weight matrices of projections, gates and outputs.
// Embeddings, norms, biases, convolution taps, persistent tokens and Phi_init do not.
bool Decays(InitKind kind) {
  return kind == InitKind::kLinear || kind == InitKind::kGate || kind == InitKind::kOutput;
}

// A copy of `state` cut off from the autograd graph (truncated backpropagation through time).
SessionState DetachedState(const SessionState& state) {
  auto detach = [](at::Tensor& t) {
    if (t.defined()) t = t.detach();
  };
  auto detach_all = [&](std::vector<at::Tensor>& v) {
    for (at::Tensor& t : v) detach(t);
  };
  SessionState out = state;
  for (LayerState& layer : out.layers) {
    detach_all(layer.memory.weights);
    detach_all(layer.memory.momentum);
    detach_all(layer.memory.pending_inputs);
    detach_all(layer.memory.pending_deltas);
    detach(layer.memory.pending_gates.log_keep);
    detach(layer.memory.pending_gates.log_eta);
    detach(layer.memory.pending_gates.theta);
    detach_all(layer.segment_weights);
    for (at::Tensor* t : {&layer.q_tail, &layer.k_tail, &layer.v_tail, &layer.retrieval_tail,
                          &layer.attn_k, &layer.attn_v}) {
      detach(*t);
    }
  }
  detach(out.last_logits);
  return out;
}

}  // namespace

absl::Status ValidateTrainOptions(const TrainOptions& o) {
  auto bad = [](const std::string& what) { return absl::InvalidArgumentError(what); };
  if (o.batch < 1) return bad("batch must be at least 1");
  if (o.seq_len < 8) return bad("seq_len must be at least 8");
  if (o.steps < 1) return bad("steps must be at least 1");
  if (!(o.lr > 0) || !(o.min_lr >= 0)) return bad("lr must be > 0 and min_lr >= 0");
  for (double f : {o.passkey_fraction, o.recall_fraction, o.passkey_noise_fraction}) {
    if (!(f >= 0 && f <= 1)) return bad("task fractions must be in [0, 1]");
  }
  if (o.passkey_fraction + o.recall_fraction > 1) {
    return bad("passkey_fraction + recall_fraction must be at most 1");
  }
  if (o.stream_segments < 1) return bad("stream_segments must be at least 1");
  if (!(o.long_passkey_fraction >= 0 && o.long_passkey_fraction <= 1)) {
    return bad("long_passkey_fraction must be in [0, 1]");
  }
  if (o.long_passkey_fraction > 0 && o.stream_segments < 2) {
    return bad("long_passkey_fraction needs stream_segments >= 2");
  }
  if (!(o.long_recall_fraction >= 0 && o.long_recall_fraction <= 1) ||
      o.long_passkey_fraction + o.long_recall_fraction > 1) {
    return bad("long_recall_fraction must be in [0, 1 - long_passkey_fraction]");
  }
  if (o.long_recall_fraction > 0 && o.stream_segments < 2) {
    return bad("long_recall_fraction needs stream_segments >= 2");
  }
  if (o.long_recall_fraction > 0 && o.seq_len < 160) {
    return bad("long_recall_fraction needs seq_len >= 160 (facts and questions fit a segment)");
  }
  if (o.long_passkey_fraction > 0 && o.seq_len < 160) {
    return bad("long_passkey_fraction needs seq_len >= 160 (needle and question fit a segment)");
  }
  if (o.stream_segments > 1) {
    if (o.steps % o.stream_segments != 0) {
      return bad(absl::StrCat("steps (", o.steps, ") must be a multiple of stream_segments (",
                              o.stream_segments, ")"));
    }
    if (o.checkpoint_every % o.stream_segments != 0) {
      return bad(absl::StrCat("checkpoint_every (", o.checkpoint_every,
                              ") must be a multiple of stream_segments (", o.stream_segments, ")"));
    }
  }
  return absl::OkStatus();
}

// ---- Corpus -----------------------------------------------------------------------------------

TextCorpus TextCorpus::FromString(std::string text, double test_fraction) {
  TextCorpus c;
  const size_t test = static_cast<size_t>(static_cast<double>(text.size()) * test_fraction);
  c.test_ = text.substr(text.size() - test);
  text.resize(text.size() - test);
  c.train_ = std::move(text);
  return c;
}

absl::StatusOr<TextCorpus> TextCorpus::Load(const std::vector<std::string>& paths,
                                            double test_fraction, int64_t seq_len) {
  if (paths.empty()) return absl::InvalidArgumentError("no training text given");
  TextCorpus all;
  for (const std::string& path : paths) {
    TITANS_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
    TextCorpus part = FromString(std::move(text), test_fraction);
    all.train_ += part.train_;
    all.test_ += part.test_;
  }
  if (static_cast<int64_t>(all.train_.size()) < 4 * (seq_len + 1) ||
      static_cast<int64_t>(all.test_.size()) < seq_len + 1) {
    return absl::InvalidArgumentError(absl::StrCat("too little text (", all.train_.size(),
                                                   " training bytes, ", all.test_.size(),
                                                   " test bytes) for sequences of ", seq_len));
  }
  return all;
}

// ---- Synthetic passkey task ---------------------------------------------------------------------

PasskeyTask MakePasskeyTask(const std::string& filler, int64_t length, int digits, double depth,
                            std::mt19937_64* rng) {
  std::string key;
  std::uniform_int_distribution<int> digit(0, 9);
  for (int i = 0; i < digits; ++i)
    key += static_cast<char>('0' + (i == 0 ? 1 + digit(*rng) % 9 : digit(*rng)));
  const std::string needle = PasskeyNeedle(key);
  const std::string question = kPasskeyQuestion;
  PasskeyTask task;
  task.answer = key + ".";
  const int64_t fixed = static_cast<int64_t>(needle.size() + question.size() + task.answer.size());
  const int64_t hay = std::max<int64_t>(0, length - fixed);
  // Filler: one random window of the text (contiguous, so it reads like text).
  std::string haystack;
  if (hay > 0) {
    const int64_t span = static_cast<int64_t>(filler.size()) - hay;
    std::uniform_int_distribution<int64_t> start(0, std::max<int64_t>(0, span));
    haystack = filler.substr(static_cast<size_t>(start(*rng)), static_cast<size_t>(hay));
    while (static_cast<int64_t>(haystack.size()) < hay) haystack += haystack;  // tiny fillers
    haystack.resize(static_cast<size_t>(hay));
  }
  const size_t at = static_cast<size_t>(depth * static_cast<double>(haystack.size()));
  task.text = haystack.substr(0, at) + needle + haystack.substr(at) + question;
  task.answer_begin = static_cast<int64_t>(task.text.size());
  task.text += task.answer;
  return task;
}

RecallTask MakeRecallTask(const std::string& filler, int64_t length, int64_t filler_bytes,
                          std::mt19937_64* rng) {
  constexpr int64_t kPairBytes = 8;  // "kqz=47, "
  const int64_t pairs = std::max<int64_t>(1, (length - filler_bytes - 16) / (2 * kPairBytes));
  std::uniform_int_distribution<int> letter(0, 25), digit(0, 9);
  std::vector<std::string> keys, values;
  std::set<std::string> used;
  while (static_cast<int64_t>(keys.size()) < pairs) {
    std::string k = {static_cast<char>('a' + letter(*rng)), static_cast<char>('a' + letter(*rng)),
                     static_cast<char>('a' + letter(*rng))};
    if (!used.insert(k).second) continue;
    keys.push_back(k);
    values.push_back({static_cast<char>('0' + digit(*rng)), static_cast<char>('0' + digit(*rng))});
  }
  RecallTask task;
  for (int64_t i = 0; i < pairs; ++i) absl::StrAppend(&task.text, keys[i], "=", values[i], ", ");
  // Filler: a random window, so that the queries sit beyond the attention window of the pairs.
  std::string gap;
  if (filler_bytes > 0 && !filler.empty()) {
    const int64_t span = static_cast<int64_t>(filler.size()) - filler_bytes;
    std::uniform_int_distribution<int64_t> start(0, std::max<int64_t>(0, span));
    gap = filler.substr(static_cast<size_t>(start(*rng)), static_cast<size_t>(filler_bytes));
  }
  absl::StrAppend(&task.text, gap, " Recall: ");
  std::vector<int64_t> order(static_cast<size_t>(pairs));
  for (int64_t i = 0; i < pairs; ++i) order[static_cast<size_t>(i)] = i;
  std::shuffle(order.begin(), order.end(), *rng);
  for (int64_t i : order) {
    absl::StrAppend(&task.text, keys[i], "=");
    task.answers.push_back(static_cast<int64_t>(task.text.size()));
    task.answers.push_back(static_cast<int64_t>(task.text.size()) + 1);
    absl::StrAppend(&task.text, values[i], ", ");
  }
  while (static_cast<int64_t>(task.text.size()) < length) task.text += ' ';
  task.text.resize(static_cast<size_t>(std::max<int64_t>(length, 0)));
  while (!task.answers.empty() && task.answers.back() >= length) task.answers.pop_back();
  return task;
}

std::string PasskeyNeedle(const std::string& key) {
  return absl::StrCat(" The pass key is ", key, ". Remember it. ", key, " is the pass key. ");
}

namespace {
// RULER's niah "repeat" haystack (Hsieh et al. 2024), used by the Titans paper's S-NIAH-PK.
constexpr char kNoiseSentence[] =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
}  // namespace

std::string PasskeyNoise(int64_t bytes) {
  const std::string kSentence = kNoiseSentence;
  std::string out;
  out.reserve(static_cast<size_t>(bytes) + kSentence.size());
  while (static_cast<int64_t>(out.size()) < bytes) out += kSentence;
  return out;
}

// ---- Trainer ------------------------------------------------------------------------------------

struct Trainer::Optimizer {
  std::vector<at::Tensor> params;
  std::unique_ptr<torch::optim::AdamW> adam;
};

Trainer::Trainer(TitansModel* model, const TextCorpus* corpus, TrainOptions options,
                 std::string checkpoint_dir)
    : model_(model),
      corpus_(corpus),
      options_(options),
      checkpoint_dir_(std::move(checkpoint_dir)),
      rng_(options.seed),
      noise_(PasskeyNoise(2 * options.seq_len + 256)),
      optimizer_(std::make_unique<Optimizer>()) {
  torch::manual_seed(options_.seed);
  std::vector<at::Tensor> decay, no_decay;
  for (ParamSlot& slot : ParamSlots(model_->config(), &model_->mutable_params())) {
    slot.tensor->set_requires_grad(true);
    optimizer_->params.push_back(*slot.tensor);
    (Decays(slot.init) ? decay : no_decay).push_back(*slot.tensor);
  }
  auto opts = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(options_.lr)
                                                            .betas({options_.beta1, options_.beta2})
                                                            .weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, opts(options_.weight_decay));
  groups.emplace_back(no_decay, opts(0.0));
  optimizer_->adam =
      std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(options_.lr));
}

Trainer::~Trainer() = default;

double Trainer::LearningRate(int64_t step) const {
  if (step < options_.warmup) {
    return options_.lr * static_cast<double>(step + 1) / static_cast<double>(options_.warmup);
  }
  const double span = static_cast<double>(std::max<int64_t>(1, options_.steps - options_.warmup));
  const double progress = std::min(1.0, static_cast<double>(step - options_.warmup) / span);
  return options_.min_lr +
         0.5 * (options_.lr - options_.min_lr) * (1.0 + std::cos(M_PI * progress));
}

Trainer::RowContent Trainer::SampleRow(int64_t length, int64_t* text_cursor) {
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const std::string& text = corpus_->train();
  RowContent content;
  std::string row;
  const double kind = unit(rng_);
  if (kind < options_.recall_fraction && model_->config().tokenizer.type == "byte") {
    // Byte tokens: token positions are byte offsets. Filler a quarter of the row.
    const bool noise = unit(rng_) < options_.passkey_noise_fraction;
    RecallTask task = MakeRecallTask(noise ? noise_ : text, length, length / 4, &rng_);
    content.answers = std::move(task.answers);
    row = std::move(task.text);
  } else if (kind < options_.recall_fraction + options_.passkey_fraction) {
    const bool noise = unit(rng_) < options_.passkey_noise_fraction;
    PasskeyTask task = MakePasskeyTask(noise ? noise_ : text, length, 5, unit(rng_) * 0.5, &rng_);
    auto prefix = model_->tokenizer().Encode(task.text.substr(0, task.answer_begin), false);
    auto digits = model_->tokenizer().Encode(task.answer.substr(0, 5), false);
    if (prefix.ok() && digits.ok()) {
      for (size_t i = 0; i < digits->size(); ++i) {
        content.answers.push_back(static_cast<int64_t>(prefix->size() + i));
      }
    }
    row = std::move(task.text);
  } else if (text_cursor != nullptr) {  // the row's passage goes on (wrapping at the end)
    if (*text_cursor + length > static_cast<int64_t>(text.size())) *text_cursor = 0;
    row = text.substr(static_cast<size_t>(*text_cursor), static_cast<size_t>(length));
    *text_cursor += length;
  } else {
    std::uniform_int_distribution<int64_t> start(0, static_cast<int64_t>(text.size()) - length);
    row = text.substr(static_cast<size_t>(start(rng_)), static_cast<size_t>(length));
  }
  auto tokens = model_->tokenizer().Encode(row, false);
  content.tokens = tokens.ok() ? *tokens : std::vector<int32_t>();
  content.tokens.resize(static_cast<size_t>(length),
                        content.tokens.empty() ? 32 : content.tokens.back());
  return content;
}

Trainer::RowContent Trainer::LongPasskeyRow(LongPasskey* task, int64_t segment, int64_t length,
                                            int64_t* text_cursor) {
  const std::string& text = corpus_->train();
  // `n` filler bytes: the row's passage goes on, or the noise cycle does.
  auto filler = [&](int64_t n) {
    std::string out;
    if (n <= 0) return out;
    if (task->noise) {
      const int64_t period = static_cast<int64_t>(sizeof(kNoiseSentence) - 1);
      out = PasskeyNoise(task->noise_phase + n + period).substr(task->noise_phase, n);
      task->noise_phase = (task->noise_phase + n) % period;
    } else {
      if (*text_cursor + n > static_cast<int64_t>(text.size())) *text_cursor = 0;
      out = text.substr(static_cast<size_t>(*text_cursor), static_cast<size_t>(n));
      *text_cursor += n;
    }
    return out;
  };
  std::string row;
  RowContent content;
  // What segment 0 plants and what the asking segment ends with (answers: offsets in `ask`).
  std::string needle, ask;
  std::vector<int64_t> ask_answers;
  if (task->facts.empty()) {
    needle = PasskeyNeedle(task->key);
    ask = kPasskeyQuestion;
    for (int64_t i = 0; i < 5; ++i) ask_answers.push_back(static_cast<int64_t>(ask.size()) + i);
    ask += task->key + ".";
  } else {
    for (const auto& [key, value] : task->facts) absl::StrAppend(&needle, key, "=", value, ", ");
    ask = " Recall: ";
    for (size_t i : task->asked) {
      absl::StrAppend(&ask, task->facts[i].first, "=");
      ask_answers.push_back(static_cast<int64_t>(ask.size()));
      ask_answers.push_back(static_cast<int64_t>(ask.size()) + 1);
      absl::StrAppend(&ask, task->facts[i].second, ", ");
    }
  }
  if (segment == 0) {
    const int64_t hay = length - static_cast<int64_t>(needle.size());
    std::uniform_int_distribution<int64_t> at(0, std::max<int64_t>(0, hay));
    const int64_t before = at(rng_);
    row = filler(before);
    row += needle;
    row += filler(hay - before);
  } else if (segment == task->ask_segment) {
    row = filler(length - static_cast<int64_t>(ask.size()));
    for (int64_t j : ask_answers) content.answers.push_back(static_cast<int64_t>(row.size()) + j);
    row += ask;
  } else {
    row = filler(length);
  }
  // Byte tokens: one per byte (long passkey rows are used only with the byte tokenizer).
  auto tokens = model_->tokenizer().Encode(row, false);
  content.tokens = tokens.ok() ? *tokens : std::vector<int32_t>();
  content.tokens.resize(static_cast<size_t>(length), 32);
  return content;
}

void Trainer::MaybeStartLongTask(LongPasskey* long_task) {
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const double kind = unit(rng_);
  if (kind < options_.long_passkey_fraction + options_.long_recall_fraction) {
    long_task->active = true;
    long_task->facts.clear();
    long_task->asked.clear();
    if (kind >= options_.long_passkey_fraction) {  // a recall task: 2..8 distinct keys
      std::uniform_int_distribution<int> count(2, 8), letter(0, 25), digit(0, 9);
      const int n = count(rng_);
      std::set<std::string> used;
      while (static_cast<int>(long_task->facts.size()) < n) {
        std::string key = {static_cast<char>('a' + letter(rng_)),
                           static_cast<char>('a' + letter(rng_)),
                           static_cast<char>('a' + letter(rng_))};
        if (!used.insert(key).second) continue;
        long_task->facts.emplace_back(key, std::string{static_cast<char>('0' + digit(rng_)),
                                                       static_cast<char>('0' + digit(rng_))});
      }
      for (int i = 0; i < n; ++i) long_task->asked.push_back(static_cast<size_t>(i));
      std::shuffle(long_task->asked.begin(), long_task->asked.end(), rng_);
    }
    long_task->noise = unit(rng_) < options_.passkey_noise_fraction;
    std::uniform_int_distribution<int> digit(0, 9);
    long_task->key.clear();
    // Drawn for recall tasks too (unused there): the data stream, and so the shipped models,
    // stay what scripts/train-default.sh produced.
    for (int i = 0; i < 5; ++i)
      long_task->key += static_cast<char>('0' + (i == 0 ? 1 + digit(rng_) % 9 : digit(rng_)));
    std::uniform_int_distribution<int64_t> ask(1, options_.stream_segments - 1);
    long_task->ask_segment = ask(rng_);
    std::uniform_int_distribution<int64_t> phase(0, sizeof(kNoiseSentence) - 2);
    long_task->noise_phase = phase(rng_);
  }
}

Trainer::Batch Trainer::SampleBatch(bool streaming) {
  const int64_t B = options_.batch, T = options_.seq_len;
  // Stateless, or the first segment of new streams: every row is T + 1 new tokens.
  const bool fresh = !streaming || carried_ == nullptr;
  if (streaming && fresh) {
    text_cursor_.assign(static_cast<size_t>(B), 0);
    last_token_.assign(static_cast<size_t>(B), 32);
    long_passkey_.assign(static_cast<size_t>(B), LongPasskey{});
    stream_origin_ = step_;
  }
  // Which segment of the current streams this step is (streams restart after a skipped batch).
  const int64_t segment = streaming ? step_ - stream_origin_ : 0;
  const std::string& text = corpus_->train();
  std::uniform_int_distribution<int64_t> start(0, static_cast<int64_t>(text.size()) - (T + 1));
  std::vector<int64_t> ids;
  ids.reserve(static_cast<size_t>(B * (T + 1)));
  std::vector<float> mask(static_cast<size_t>(B * T), 0.0f);
  for (int64_t b = 0; b < B; ++b) {
    int64_t* cursor = streaming ? &text_cursor_[static_cast<size_t>(b)] : nullptr;
    std::vector<int32_t> row;      // T + 1 tokens: inputs [0, T), targets [1, T]
    std::vector<int64_t> answers;  // indices into row
    LongPasskey* long_task = streaming ? &long_passkey_[static_cast<size_t>(b)] : nullptr;
    if (fresh && long_task != nullptr &&
        options_.long_passkey_fraction + options_.long_recall_fraction > 0 &&
        model_->config().tokenizer.type == "byte") {
      MaybeStartLongTask(long_task);
    }
    if (long_task != nullptr && long_task->active) {
      if (fresh) *cursor = start(rng_);
      RowContent c = LongPasskeyRow(long_task, segment, fresh ? T + 1 : T, cursor);
      if (fresh) {
        row = std::move(c.tokens);
        answers = std::move(c.answers);
      } else {
        row.push_back(last_token_[static_cast<size_t>(b)]);
        row.insert(row.end(), c.tokens.begin(), c.tokens.end());
        for (int64_t j : c.answers) answers.push_back(j + 1);
      }
    } else if (fresh) {
      if (cursor != nullptr) *cursor = start(rng_);
      RowContent c = SampleRow(T + 1, cursor);
      row = std::move(c.tokens);
      answers = std::move(c.answers);
    } else {  // the previous segment's last token, then T new ones
      RowContent c = SampleRow(T, cursor);
      row.push_back(last_token_[static_cast<size_t>(b)]);
      row.insert(row.end(), c.tokens.begin(), c.tokens.end());
      for (int64_t j : c.answers) answers.push_back(j + 1);
    }
    if (streaming) last_token_[static_cast<size_t>(b)] = row.back();
    ids.insert(ids.end(), row.begin(), row.end());
    // Token j is predicted at input position j - 1.
    for (int64_t j : answers) {
      if (j >= 1 && j - 1 < T) mask[static_cast<size_t>(b * T + j - 1)] = 1.0f;
    }
  }
  Batch batch;
  batch.tokens = at::tensor(ids, at::kLong).view({B, T + 1}).to(model_->device());
  batch.answer_mask = at::tensor(mask).view({B, T}).to(model_->device());
  return batch;
}

absl::StatusOr<double> Trainer::Step() {
  const int64_t T = options_.seq_len;
  const bool streaming = options_.stream_segments > 1;
  if (streaming && step_ % options_.stream_segments == 0) carried_.reset();  // a new stream
  const Batch sampled = SampleBatch(streaming);
  const at::Tensor& batch = sampled.tokens;
  last_tokens_ = batch;
  last_answer_loss_ = -1;
  const double lr = LearningRate(step_);
  for (auto& group : optimizer_->adam->param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  }
  optimizer_->adam->zero_grad();
  SessionState state =
      carried_ != nullptr ? *carried_ : model_->NewState(options_.batch, /*track_grad=*/true);
  absl::StatusOr<at::Tensor> forward =
      model_->Forward(&state, batch.slice(1, 0, T), LogitsMode::kAll);
  if (!forward.ok() && forward.status().code() == absl::StatusCode::kInternal &&
      ++skipped_in_a_row_ <= kMaxSkippedSteps) {
    // An overflowing batch (non-finite logits) is skipped, not trained on; a run of them means
    // the model has diverged.
    std::fprintf(stderr, "trainer: step %lld: non-finite logits, batch skipped\n",
                 static_cast<long long>(step_ + 1));
    carried_.reset();  // the streams lost a segment: start them again
    ++step_;
    return std::numeric_limits<double>::quiet_NaN();
  }
  TITANS_ASSIGN_OR_RETURN(at::Tensor logits, std::move(forward));
  at::Tensor nats = at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}),
                                           batch.slice(1, 1, T + 1).reshape({-1}), {},
                                           at::Reduction::None);  // [B*T]
  at::Tensor loss = nats.mean();
  const double value = loss.item<double>();
  if (!std::isfinite(value)) {
    return absl::InternalError(absl::StrCat("training loss is not finite at step ", step_));
  }
  at::Tensor mask = sampled.answer_mask.reshape({-1});
  const double answer_tokens = mask.sum().item<double>();
  at::Tensor objective = loss;
  if (answer_tokens > 0) {
    at::Tensor answer_loss = (nats * mask).sum() / answer_tokens;
    last_answer_loss_ = answer_loss.item<double>();
    if (options_.answer_weight > 0) objective = loss + options_.answer_weight * answer_loss;
  }
  objective.backward();
  // The next segment starts where this one ended, without a path back into this graph.
  if (streaming) carried_ = std::make_unique<SessionState>(DetachedState(state));
  // The gradient norm, clipping to options_.clip when set (a huge limit otherwise just measures).
  const double norm = torch::nn::utils::clip_grad_norm_(
      optimizer_->params, options_.clip > 0 ? options_.clip : std::numeric_limits<double>::max());
  if (!std::isfinite(norm)) {
    // A non-finite gradient would poison every weight through Adam: skip this batch.
    std::fprintf(stderr, "trainer: step %lld: non-finite gradients (loss %.4f), batch skipped\n",
                 static_cast<long long>(step_ + 1), value);
    optimizer_->adam->zero_grad();
    ++step_;
    if (++skipped_in_a_row_ > kMaxSkippedSteps) {
      return absl::InternalError(absl::StrCat("gradients not finite ", skipped_in_a_row_,
                                              " steps in a row (step ", step_, ")"));
    }
    return std::numeric_limits<double>::quiet_NaN();
  }
  optimizer_->adam->step();
  skipped_in_a_row_ = 0;  // only an actual update ends a run of skipped batches
  ++step_;
  return value;
}

absl::StatusOr<double> Trainer::EvaluateBitsPerByte(int64_t sequences) {
  at::NoGradGuard no_grad;
  const int64_t T = options_.seq_len;
  const std::string& test = corpus_->test();
  const int64_t available = static_cast<int64_t>(test.size()) / (T + 1);
  double total = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < std::min(sequences, available); ++i) {
    const std::string window =
        test.substr(static_cast<size_t>(i * (T + 1)), static_cast<size_t>(T + 1));
    TITANS_ASSIGN_OR_RETURN(std::vector<int32_t> tokens, model_->tokenizer().Encode(window, false));
    std::vector<int64_t> ids(tokens.begin(), tokens.end());
    at::Tensor t = at::tensor(ids, at::kLong).unsqueeze(0).to(model_->device());
    SessionState state = model_->NewState();
    TITANS_ASSIGN_OR_RETURN(
        at::Tensor logits, model_->Forward(&state, t.slice(1, 0, t.size(1) - 1), LogitsMode::kAll));
    at::Tensor nats = at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}),
                                             t.slice(1, 1).reshape({-1}), {}, at::Reduction::Sum);
    total += nats.item<double>();
    count += t.size(1) - 1;
  }
  if (count == 0) return absl::FailedPreconditionError("no held-out text to evaluate on");
  return total / static_cast<double>(count) / std::log(2.0);
}

absl::Status Trainer::Checkpoint() {
  if (checkpoint_dir_.empty()) return absl::OkStatus();
  std::error_code ec;
  std::filesystem::create_directories(checkpoint_dir_, ec);
  TITANS_RETURN_IF_ERROR(model_->Save(checkpoint_dir_ + "/model"));
  try {
    torch::serialize::OutputArchive archive;
    optimizer_->adam->save(archive);
    archive.write("step", torch::tensor(step_));
    std::ostringstream rng;
    rng << rng_;
    const std::string s = rng.str();
    archive.write("rng", torch::tensor(std::vector<int64_t>(s.begin(), s.end())));
    const std::string tmp = checkpoint_dir_ + "/trainer.pt.tmp";
    archive.save_to(tmp);
    std::filesystem::rename(tmp, checkpoint_dir_ + "/trainer.pt", ec);
    if (ec) return absl::InternalError("cannot write " + checkpoint_dir_ + "/trainer.pt");
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("checkpoint failed: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::Status Trainer::Resume() {
  const std::string path = checkpoint_dir_ + "/trainer.pt";
  if (checkpoint_dir_.empty() || !std::filesystem::exists(path)) {
    return absl::NotFoundError("no checkpoint in " + checkpoint_dir_);
  }
  TITANS_ASSIGN_OR_RETURN(std::unique_ptr<TitansModel> saved,
                          TitansModel::Load(checkpoint_dir_ + "/model"));
  auto structure = [](ModelConfig c) {  // what the weights depend on (not names, provenance)
    c.name.clear();
    c.description.clear();
    c.initialization.clear();
    return ModelConfigToJson(c);
  };
  if (structure(saved->config()) != structure(model_->config())) {
    return absl::FailedPreconditionError("the checkpoint was made with another configuration");
  }
  {
    at::NoGradGuard no_grad;
    std::vector<ParamSlot> mine = ParamSlots(model_->config(), &model_->mutable_params());
    std::vector<ParamSlot> theirs = ParamSlots(saved->config(), &saved->mutable_params());
    for (size_t i = 0; i < mine.size(); ++i) mine[i].tensor->copy_(*theirs[i].tensor);
  }
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    optimizer_->adam->load(archive);
    at::Tensor step, rng;
    archive.read("step", step);
    archive.read("rng", rng);
    step_ = step.item<int64_t>();
    std::string s;
    for (int64_t i = 0; i < rng.numel(); ++i) s += static_cast<char>(rng[i].item<int64_t>());
    std::istringstream in(s);
    in >> rng_;
  } catch (const c10::Error& e) {
    return absl::DataLossError(absl::StrCat("unreadable checkpoint: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::Status Trainer::Run(const std::function<void(const TrainProgress&)>& progress) {
  TITANS_RETURN_IF_ERROR(ValidateTrainOptions(options_));
  while (step_ < options_.steps) {
    const auto start = std::chrono::steady_clock::now();
    TrainProgress p;
    p.lr = LearningRate(step_);
    TITANS_ASSIGN_OR_RETURN(p.loss, Step());
    p.answer_loss = last_answer_loss_;
    p.step = step_;
    p.tokens_per_second =
        static_cast<double>(options_.batch * options_.seq_len) /
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (options_.eval_every > 0 && (step_ % options_.eval_every == 0 || step_ == options_.steps)) {
      TITANS_ASSIGN_OR_RETURN(p.eval_bits_per_byte, EvaluateBitsPerByte(options_.eval_sequences));
    }
    if (progress) progress(p);
    if (options_.checkpoint_every > 0 && step_ % options_.checkpoint_every == 0) {
      TITANS_RETURN_IF_ERROR(Checkpoint());
    }
  }
  return Checkpoint();
}

}  // namespace titans
