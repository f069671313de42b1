#include "model/titans_model.h"

#include <c10/util/Exception.h>

#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/buffer_pool.h"
#include "model/crc32c.h"
#include "model/file_util.h"
#include "model/ops.h"
#include "model/safetensors.h"
#include "model/status_macros.h"
#include "model/titans_layer.h"

namespace titans {
namespace {

absl::StatusOr<at::Device> ParseDevice(const std::string& name) {
  try {
    at::Device device(name);
    if (device.is_cuda() && !at::hasCUDA()) {
      return absl::FailedPreconditionError(
          "device '" + name +
          "' requested but this build has no CUDA (build with TITANS_CUDA=ON "
          "against a CUDA-enabled LibTorch) or no GPU is visible");
    }
    return device;
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError("invalid device '" + name + "'");
  }
}

// CRC-32C over the raw bytes of `tensors` in order (the parameters in slot order).
uint32_t TensorsCrc(const std::vector<at::Tensor>& tensors) {
  uint32_t crc = 0;
  for (const at::Tensor& tensor : tensors) {
    at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    crc = Crc32c(t.data_ptr(), t.numel() * t.element_size(), crc);
  }
  return crc;
}

std::vector<at::Tensor> SlotTensors(const ModelConfig& config, ModelParams* params) {
  std::vector<at::Tensor> out;
  for (const ParamSlot& slot : ParamSlots(config, params)) out.push_back(*slot.tensor);
  return out;
}

// config.json bytes + every parameter's bytes, in slot order.
std::string Fingerprint(const ModelConfig& config, ModelParams* params) {
  std::string cfg = ModelConfigToJson(config);
  return absl::StrFormat("%s-%08x%08x", config.name, Crc32c(cfg.data(), cfg.size()),
                         TensorsCrc(SlotTensors(config, params)));
}

constexpr char kWeightsCrcKey[] = "weights_crc32c";

}  // namespace

TitansModel::TitansModel(ModelConfig config, ModelParams params,
                         std::unique_ptr<Tokenizer> tokenizer, at::Device device)
    : config_(std::move(config)),
      params_(std::move(params)),
      tokenizer_(std::move(tokenizer)),
      device_(device) {}

absl::StatusOr<std::unique_ptr<TitansModel>> TitansModel::Finish(
    ModelConfig config, ModelParams params, std::unique_ptr<Tokenizer> tokenizer,
    const LoadOptions& options) {
  TITANS_ASSIGN_OR_RETURN(at::Device device, ParseDevice(options.device));
  if (tokenizer->vocab_size() > config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: vocab_size ", config.vocab_size,
                                                   " is smaller than the tokenizer's ",
                                                   tokenizer->vocab_size()));
  }
  std::string fingerprint = Fingerprint(config, &params);
  try {
    for (ParamSlot& slot : ParamSlots(config, &params)) *slot.tensor = slot.tensor->to(device);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("moving parameters to ", options.device, ": ", e.what()));
  }
  auto model = std::unique_ptr<TitansModel>(
      new TitansModel(std::move(config), std::move(params), std::move(tokenizer), device));
  model->fingerprint_ = std::move(fingerprint);
  return model;
}

absl::StatusOr<std::unique_ptr<TitansModel>> TitansModel::Load(const std::string& dir,
                                                               const LoadOptions& options) {
  TITANS_ASSIGN_OR_RETURN(std::string config_text, ReadFileToString(dir + "/config.json"));
  TITANS_ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(config_text));
  TITANS_ASSIGN_OR_RETURN(SafetensorsFile file, ReadSafetensors(dir + "/model.safetensors"));
  ModelParams params;
  std::vector<ParamSlot> slots = ParamSlots(config, &params);
  for (ParamSlot& slot : slots) {
    auto it = file.tensors.find(slot.name);
    if (it == file.tensors.end()) {
      return absl::InvalidArgumentError("model.safetensors: missing tensor '" + slot.name + "'");
    }
    const at::Tensor& t = it->second;
    if (t.scalar_type() != at::kFloat && t.scalar_type() != at::kBFloat16 &&
        t.scalar_type() != at::kHalf) {
      return absl::InvalidArgumentError(absl::StrCat("model.safetensors: tensor '", slot.name,
                                                     "' has dtype ", c10::toString(t.scalar_type()),
                                                     ", expected F32, BF16 or F16"));
    }
    if (t.sizes() != at::IntArrayRef(slot.shape)) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.safetensors: tensor '", slot.name, "' has shape ",
                       ShapeString(t.sizes()), ", the config implies ", ShapeString(slot.shape)));
    }
    *slot.tensor = t;
  }
  if (file.tensors.size() != slots.size()) {
    for (const auto& [name, t] : file.tensors) {
      bool known = false;
      for (const ParamSlot& slot : slots) known = known || slot.name == name;
      if (!known) {
        return absl::InvalidArgumentError("model.safetensors: unexpected tensor '" + name +
                                          "' (not part of a " +
                                          std::string(VariantName(config.variant)) + " model)");
      }
    }
  }
  // The safetensors layout has no checksum of its own: Save records one in the metadata, so a
  // flipped bit in the data is caught here instead of serving a silently different model.
  if (auto it = file.metadata.find(kWeightsCrcKey); it != file.metadata.end()) {
    const std::string actual = absl::StrFormat("%08x", TensorsCrc(SlotTensors(config, &params)));
    if (it->second != actual) {
      return absl::DataLossError(absl::StrCat("model.safetensors: weights checksum ", actual,
                                              " does not match the recorded ", it->second,
                                              " (corrupted file)"));
    }
  }
  for (ParamSlot& slot : slots) {
    *slot.tensor = slot.tensor->to(at::kFloat);
    if (!at::isfinite(*slot.tensor).all().item<bool>()) {
      return absl::InvalidArgumentError("model.safetensors: tensor '" + slot.name +
                                        "' contains NaN or infinite values");
    }
  }
  TokenizerConfig tc{config.tokenizer.type, config.tokenizer.model_file};
  TITANS_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, CreateTokenizer(tc, dir));
  return Finish(std::move(config), std::move(params), std::move(tokenizer), options);
}

absl::StatusOr<std::unique_ptr<TitansModel>> TitansModel::CreateRandom(const ModelConfig& config,
                                                                       uint64_t seed,
                                                                       const LoadOptions& options) {
  TITANS_RETURN_IF_ERROR(ValidateModelConfig(config));
  ModelConfig c = config;
  c.tokenizer = TokenizerSpec{};
  c.initialization = "random";
  TITANS_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                          CreateTokenizer(TokenizerConfig{"byte", ""}, ""));
  // The parameters first: a call's arguments are evaluated in no fixed order, and Finish's
  // moved-from config would build them with no per-layer head counts (clang moves first).
  ModelParams params = RandomParams(c, seed);
  return Finish(std::move(c), std::move(params), std::move(tokenizer), options);
}

absl::Status TitansModel::Save(const std::string& dir) const {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError("cannot create " + dir + ": " + ec.message());
  ModelParams copy = params_;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const ParamSlot& slot : ParamSlots(config_, &copy)) {
    tensors.emplace_back(slot.name, *slot.tensor);
  }
  std::map<std::string, std::string> metadata = {
      {"format", "titans"},
      {"variant", std::string(VariantName(config_.variant))},
      {"initialization", config_.initialization},
      {kWeightsCrcKey, absl::StrFormat("%08x", TensorsCrc(SlotTensors(config_, &copy)))}};
  TITANS_RETURN_IF_ERROR(WriteSafetensors(dir + "/model.safetensors", tensors, metadata));
  return WriteFileAtomic(dir + "/config.json", ModelConfigToJson(config_));
}

SessionState TitansModel::NewState(int64_t batch, bool track_grad) const {
  return NewSessionState(config_, params_, batch, track_grad);
}

at::Tensor TitansModel::Step(const std::vector<SessionState*>& states, const at::Tensor& tokens,
                             const std::vector<int64_t>& lengths, bool all_logits) const {
  at::Tensor x = at::embedding(params_.embedding, tokens);  // [B, N, d]
  std::vector<int64_t> begins;
  begins.reserve(lengths.size());
  int64_t begin = 0;
  for (int64_t len : lengths) {
    begins.push_back(begin);
    begin += len;
  }
  std::vector<StreamSlice> slices(states.size());
  for (int i = 0; i < config_.num_layers; ++i) {
    for (size_t k = 0; k < states.size(); ++k) {
      slices[k] = StreamSlice{&states[k]->layers[i], begins[k], lengths[k], states[k]->position};
    }
    x = LayerForward(config_, params_.layers[i], slices, x);
  }
  if (!all_logits) {
    std::vector<int64_t> last;
    last.reserve(states.size());
    for (size_t k = 0; k < states.size(); ++k) last.push_back(begins[k] + lengths[k] - 1);
    x = x.index_select(1, at::tensor(last).to(x.device()));  // [B, streams, d]
  }
  for (size_t k = 0; k < states.size(); ++k) states[k]->position += lengths[k];
  return Linear(RmsNorm(x, params_.final_norm, config_.norm_eps), params_.embedding);
}

namespace {

// Tokens the stream at `position` may take in one step: at most kMaxStepTokens and, for MAC,
// not past its segment's end. Neither limit changes results, only scratch memory and speed.
int64_t StepLength(const ModelConfig& c, int64_t position, int64_t remaining, int64_t max_step) {
  int64_t len = std::min(remaining, max_step);
  if (c.variant == Variant::kMAC) {
    const int64_t C = c.attention.segment_size;
    len = std::min(len, C - position % C);
  }
  return len;
}

absl::Status NonFinite() {
  return absl::InternalError(
      "the model's values overflowed (non-finite logits) on this input; the session is unchanged");
}

void AppendRecent(SessionState* s, const int64_t* ids, int64_t n) {
  // Room for all it will hold at once: no reallocation per session as a young one grows.
  if (s->recent_tokens.capacity() < SessionState::kRecentTokens) {
    s->recent_tokens.reserve(SessionState::kRecentTokens);
  }
  for (int64_t t = std::max<int64_t>(0, n - SessionState::kRecentTokens); t < n; ++t) {
    s->recent_tokens.push_back(static_cast<int32_t>(ids[t]));
  }
  if (s->recent_tokens.size() > SessionState::kRecentTokens) {
    s->recent_tokens.erase(s->recent_tokens.begin(),
                           s->recent_tokens.end() - SessionState::kRecentTokens);
  }
}

// ForwardMany's working copies, one per session of a call, reused by the thread's next call:
// copying a state into a used one reuses its vectors (measured: about 7 of the 14 allocations per
// session and decode step), and committing swaps it with the session's state. Between calls they
// hold no tensors (ReleaseStateTensors: nothing stays alive, and GrantRingRoom's count of a
// ring's holders stays exact); the buffers of the states they replaced that nothing else holds go
// to the current BufferPool (the runner's, in its steps), for the next call's new ones.
class WorkingCopies {
 public:
  explicit WorkingCopies(size_t n) : copies_(Pool()), used_(n) {
    if (copies_.size() < n) copies_.resize(n);
  }
  ~WorkingCopies() {
    BufferPool* const pool = BufferPool::Current();
    for (size_t i = 0; i < used_; ++i) ReleaseStateTensors(&copies_[i], pool);
  }
  WorkingCopies(const WorkingCopies&) = delete;
  WorkingCopies& operator=(const WorkingCopies&) = delete;
  SessionState& operator[](size_t i) { return copies_[i]; }

 private:
  static std::vector<SessionState>& Pool() {
    thread_local std::vector<SessionState> pool;
    return pool;
  }
  std::vector<SessionState>& copies_;
  const size_t used_;
};

// ForwardMany's arguments: one non-empty list of in-vocabulary tokens per batch-1 state.
absl::Status CheckForwardManyInput(const std::vector<SessionState*>& states,
                                   absl::Span<const std::vector<int64_t>> tokens,
                                   int64_t vocab_size) {
  if (states.size() != tokens.size()) {
    return absl::InvalidArgumentError("ForwardMany: one token list per state");
  }
  for (size_t i = 0; i < states.size(); ++i) {
    if (states[i]->batch() != 1) {
      return absl::InvalidArgumentError("ForwardMany needs batch-1 states");
    }
    if (tokens[i].empty()) return absl::InvalidArgumentError("no tokens to consume");
    for (int64_t id : tokens[i]) {
      if (id < 0 || id >= vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
      }
    }
  }
  return absl::OkStatus();
}

// Session k's logits [1, V] from a step's [1, sessions, V]. Where those are a plain CPU float
// tensor, a copy into a buffer of its own (from the current BufferPool where it has one): a
// decode step then makes no tensor per session (a view would be one) and a resting session holds
// no part of the step's logits. Elsewhere a view (detached where autograd records).
at::Tensor LogitsRow(const at::Tensor& logits, int64_t k) {
  if (logits.device().is_cpu() && logits.scalar_type() == at::kFloat && !logits.requires_grad() &&
      logits.is_contiguous()) {
    const int64_t vocab = logits.size(2);
    at::Tensor row = BufferPool::TakeOrEmpty(BufferPool::Current(), {1, vocab}, logits.options());
    std::memcpy(row.data_ptr<float>(), logits.data_ptr<float>() + k * vocab,
                static_cast<size_t>(vocab) * sizeof(float));
    return row;
  }
  at::Tensor row = logits.select(1, k);
  return row.requires_grad() ? row.detach() : row;
}

// One finiteness check (and one host sync) for all sessions' new logits: a session whose logits
// are not finite fails (its entry in *result), the others are unaffected.
void FailNonFiniteLogits(WorkingCopies& next, std::vector<absl::Status>* result) {
  std::vector<size_t> checked;
  std::vector<at::Tensor> rows;
  checked.reserve(result->size());
  rows.reserve(result->size());
  for (size_t i = 0; i < result->size(); ++i) {
    if (!(*result)[i].ok()) continue;
    checked.push_back(i);
    rows.push_back(next[i].last_logits);
  }
  if (rows.empty()) return;
  const at::Tensor finite = at::isfinite(at::cat(rows, 0)).all(-1).to(at::kCPU).contiguous();
  const bool* row_finite = finite.data_ptr<bool>();
  for (size_t k = 0; k < checked.size(); ++k) {
    if (!row_finite[k]) (*result)[checked[k]] = NonFinite();
  }
}

}  // namespace

absl::Status TitansModel::ForwardMany(const std::vector<SessionState*>& states,
                                      absl::Span<const std::vector<int64_t>> tokens,
                                      std::vector<absl::Status>* statuses) const {
  TITANS_RETURN_IF_ERROR(CheckForwardManyInput(states, tokens, config_.vocab_size));
  try {
    WorkingCopies next(states.size());
    for (size_t i = 0; i < states.size(); ++i) {
      next[i] = *states[i];  // shallow; committed at the end
      GrantRingRoom(&next[i]);
    }
    std::vector<int64_t> done(states.size(), 0);
    // A session that would pass the longest supported stream is refused alone (OUT_OF_RANGE).
    std::vector<absl::Status> result(states.size());
    for (size_t i = 0; i < states.size(); ++i) {
      const int64_t n = static_cast<int64_t>(tokens[i].size());
      if (states[i]->position > SessionState::kMaxPosition - n) {
        result[i] = absl::OutOfRangeError(
            absl::StrCat("the session would pass the longest supported stream (",
                         SessionState::kMaxPosition, " tokens)"));
        done[i] = n;
      }
    }
    while (true) {
      std::vector<SessionState*> active;
      std::vector<int64_t> lengths, packed;
      std::vector<size_t> which;
      active.reserve(states.size());
      lengths.reserve(states.size());
      which.reserve(states.size());
      packed.reserve(states.size());
      for (size_t i = 0; i < states.size(); ++i) {
        const int64_t remaining = static_cast<int64_t>(tokens[i].size()) - done[i];
        if (remaining == 0) continue;
        const int64_t len = StepLength(config_, next[i].position, remaining, kMaxStepTokens);
        active.push_back(&next[i]);
        lengths.push_back(len);
        which.push_back(i);
        packed.insert(packed.end(), tokens[i].begin() + done[i], tokens[i].begin() + done[i] + len);
      }
      if (active.empty()) break;
      at::Tensor logits = Step(active, at::tensor(packed).unsqueeze(0).to(device_), lengths, false);
      for (size_t k = 0; k < active.size(); ++k) {
        const size_t i = which[k];
        done[i] += lengths[k];
        if (done[i] == static_cast<int64_t>(tokens[i].size())) {
          next[i].last_logits = LogitsRow(logits, static_cast<int64_t>(k));
        }
      }
    }
    FailNonFiniteLogits(next, &result);
    if (statuses == nullptr) {
      for (const absl::Status& st : result) {
        if (!st.ok()) return st;
      }
    }
    for (size_t i = 0; i < states.size(); ++i) {
      if (!result[i].ok()) continue;
      AppendRecent(&next[i], tokens[i].data(), static_cast<int64_t>(tokens[i].size()));
      RevokeRingRoom(&next[i]);
      CompactSessionState(&next[i], /*keep_logits=*/true);
      std::swap(*states[i], next[i]);  // the old state's vectors become the next call's copy
    }
    if (statuses) *statuses = std::move(result);
    return absl::OkStatus();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("model forward failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("model forward failed: ", e.what()));
  }
}

absl::StatusOr<at::Tensor> TitansModel::Forward(SessionState* state, const at::Tensor& tokens,
                                                LogitsMode mode) const {
  if (!tokens.defined() || tokens.dim() != 2 || tokens.scalar_type() != at::kLong) {
    return absl::InvalidArgumentError("tokens must be an int64 tensor [batch, time]");
  }
  if (tokens.size(0) != state->batch()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokens have batch ", tokens.size(0), ", the state has ", state->batch()));
  }
  const int64_t T = tokens.size(1);
  if (T == 0) return absl::InvalidArgumentError("no tokens to consume");
  if (state->position > SessionState::kMaxPosition - T) {
    return absl::OutOfRangeError(
        absl::StrCat("the session would pass the longest supported stream (",
                     SessionState::kMaxPosition, " tokens)"));
  }
  try {
    const int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
    if (lo < 0 || hi >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", lo < 0 ? lo : hi,
                                                     " is outside the vocabulary [0, ",
                                                     config_.vocab_size, ")"));
    }
    // Shallow: the model writes no tensor entry a state holds (rings only in free slots).
    SessionState next = *state;
    GrantRingRoom(&next);
    at::Tensor on_device = tokens.to(device_);
    std::vector<at::Tensor> outputs;
    int64_t begin = 0;
    while (begin < T) {
      const int64_t len = StepLength(config_, next.position, T - begin, kMaxStepTokens);
      const bool last = begin + len == T;
      at::Tensor logits =
          Step({&next}, on_device.slice(1, begin, begin + len), {len}, mode == LogitsMode::kAll);
      if (mode == LogitsMode::kAll) outputs.push_back(logits);
      if (last) {
        next.last_logits = logits.select(1, logits.size(1) - 1).detach();
        if (mode == LogitsMode::kLast) outputs.push_back(logits);
      }
      begin += len;
    }
    if (!at::isfinite(next.last_logits).all().item<bool>()) return NonFinite();
    at::Tensor cpu_tokens = tokens.select(0, 0).to(at::kCPU).contiguous();
    AppendRecent(&next, cpu_tokens.data_ptr<int64_t>(), T);
    RevokeRingRoom(&next);
    // An idle session keeps nothing alive beyond its state (training keeps its graph instead).
    if (!at::GradMode::is_enabled()) CompactSessionState(&next);
    *state = std::move(next);
    return outputs.size() == 1 ? outputs[0] : at::cat(outputs, 1);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("model forward failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {  // e.g. std::bad_alloc
    return absl::InternalError(absl::StrCat("model forward failed: ", e.what()));
  }
}

absl::StatusOr<std::vector<float>> TitansModel::ScoreTokens(
    SessionState* state, const std::vector<int64_t>& tokens) const {
  if (tokens.empty()) return absl::InvalidArgumentError("no tokens to score");
  SessionState work = *state;                              // shallow; committed on success
  const at::Tensor first = work.last_logits;               // [1, V]
  const at::Tensor ids = at::tensor(tokens).unsqueeze(0);  // [1, T]
  TITANS_ASSIGN_OR_RETURN(at::Tensor logits, Forward(&work, ids, LogitsMode::kAll));
  // The prediction of token t: the logits before the call for t = 0, after token t-1 otherwise.
  const int64_t T = ids.size(1);
  const at::Tensor pred = at::cat({first.unsqueeze(1), logits.slice(1, 0, T - 1)}, 1);
  const at::Tensor lp = at::log_softmax(pred.to(at::kCPU).to(at::kFloat), -1)
                            .gather(2, ids.unsqueeze(2))
                            .reshape({-1})
                            .contiguous();
  *state = std::move(work);
  return std::vector<float>(lp.data_ptr<float>(), lp.data_ptr<float>() + lp.numel());
}

}  // namespace titans
