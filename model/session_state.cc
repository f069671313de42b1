#include "model/session_state.h"

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "model/buffer_pool.h"
#include "model/crc32c.h"
#include "model/ops.h"
#include "model/safetensors.h"
#include "model/status_macros.h"

namespace titans {
namespace {

constexpr char kMagic[8] = {'T', 'T', 'N', 'S', 'T', 'A', 'T', 'E'};
constexpr uint32_t kStateVersion = 1;
constexpr size_t kHeaderBytes = 8 + 4 + 4 + 8;

struct StateSlot {
  std::string name;
  at::Tensor* tensor;
  std::vector<int64_t> shape;
};

bool IsMac(const ModelConfig& c) { return c.variant == Variant::kMAC; }
bool HasMemory(const ModelConfig& c) { return c.variant != Variant::kSWA; }
bool HasSegmentWeights(const ModelConfig& c) {
  return IsMac(c) && c.attention.segment_size > c.memory.chunk_size;
}

int64_t PendingTokens(const ModelConfig& c, int64_t position) {
  return position % c.memory.chunk_size;
}

// Tokens in the attention cache after `position` tokens.
int64_t CachedTokens(const ModelConfig& c, int64_t position) {
  if (c.variant == Variant::kLMM) return 0;
  if (IsMac(c)) return 2 * (position % c.attention.segment_size);  // h and x of the segment
  return std::min<int64_t>(position, c.attention.window - 1);
}

// Every tensor of a state, with the shape `config` and `position` imply.
std::vector<StateSlot> StateSlots(const ModelConfig& c, int64_t batch, SessionState* s) {
  // Layer i's memory has memory_heads(i) heads (G groups per batch row); the attention num_heads.
  const int64_t B = batch, H = c.num_heads, dh = c.head_dim, hd = H * dh;
  const int64_t K1 = c.memory.conv_kernel - 1;
  const int64_t p = PendingTokens(c, s->position), n = CachedTokens(c, s->position);
  const auto shapes = MemoryLayerShapes(c.memory.depth, dh, c.memory_hidden());
  std::vector<StateSlot> slots;
  s->layers.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    LayerState& L = s->layers[i];
    const std::string pre = absl::StrCat("layers.", i, ".");
    const int64_t Hm = c.memory_heads(i), mhd = Hm * dh, G = B * Hm;
    if (HasMemory(c)) {
      MemoryState& m = L.memory;
      const size_t depth = shapes.size();
      m.weights.resize(depth);
      m.momentum.resize(depth);
      m.pending_inputs.resize(depth);
      m.pending_deltas.resize(depth);
      for (size_t l = 0; l < depth; ++l) {
        const auto [in, out] = shapes[l];
        slots.push_back({absl::StrCat(pre, "memory.weights.", l), &m.weights[l], {G, out, in}});
        slots.push_back({absl::StrCat(pre, "memory.momentum.", l), &m.momentum[l], {G, out, in}});
        slots.push_back(
            {absl::StrCat(pre, "memory.pending_inputs.", l), &m.pending_inputs[l], {G, p, in}});
        slots.push_back(
            {absl::StrCat(pre, "memory.pending_deltas.", l), &m.pending_deltas[l], {G, p, out}});
      }
      slots.push_back({pre + "memory.pending_log_keep", &m.pending_gates.log_keep, {G, p}});
      slots.push_back({pre + "memory.pending_log_eta", &m.pending_gates.log_eta, {G, p}});
      slots.push_back({pre + "memory.pending_theta", &m.pending_gates.theta, {G, p}});
      if (HasSegmentWeights(c)) {
        L.segment_weights.resize(depth);
        for (size_t l = 0; l < depth; ++l) {
          slots.push_back({absl::StrCat(pre, "segment_weights.", l),
                           &L.segment_weights[l],
                           {G, shapes[l].second, shapes[l].first}});
        }
      }
      slots.push_back({pre + "q_tail", &L.q_tail, {B, K1, mhd}});
      slots.push_back({pre + "k_tail", &L.k_tail, {B, K1, mhd}});
      slots.push_back({pre + "v_tail", &L.v_tail, {B, K1, mhd}});
    }
    if (IsMac(c)) slots.push_back({pre + "retrieval_tail", &L.retrieval_tail, {B, K1, hd}});
    if (c.variant != Variant::kLMM) {
      slots.push_back({pre + "attn_k", &L.attn_k, {B, H, n, dh}});
      slots.push_back({pre + "attn_v", &L.attn_v, {B, H, n, dh}});
    }
  }
  slots.push_back({"last_logits", &s->last_logits, {B, c.vocab_size}});
  return slots;
}

void PutU32(std::string* out, uint32_t v) { out->append(reinterpret_cast<const char*>(&v), 4); }
void PutU64(std::string* out, uint64_t v) { out->append(reinterpret_cast<const char*>(&v), 8); }

}  // namespace

SessionState NewSessionState(const ModelConfig& c, const ModelParams& params, int64_t batch,
                             bool track_grad) {
  SessionState s;
  const int64_t B = batch, H = c.num_heads, dh = c.head_dim;
  const int64_t K1 = c.memory.conv_kernel - 1;
  const at::TensorOptions opt = params.embedding.options().requires_grad(false);
  s.layers.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    LayerState& L = s.layers[i];
    if (c.variant != Variant::kLMM) {
      L.attn_k = at::zeros({B, H, 0, dh}, opt);
      L.attn_v = L.attn_k;
    }
    if (!HasMemory(c)) continue;
    const int64_t Hm = c.memory_heads(i);
    std::vector<at::Tensor> init;
    for (const at::Tensor& w : params.layers[i].memory.initial_weights) {
      at::Tensor src = track_grad ? w : w.detach();
      // [Hm, out, in] -> [B*Hm, out, in], group index = b * Hm + h.
      init.push_back(
          src.unsqueeze(0).expand({B, -1, -1, -1}).reshape({B * Hm, w.size(1), w.size(2)}));
    }
    L.memory = NewMemoryState(init);
    if (HasSegmentWeights(c)) L.segment_weights = init;
    L.q_tail = at::zeros({B, K1, Hm * dh}, opt);
    L.k_tail = L.q_tail;
    L.v_tail = L.q_tail;
    // MAC's retrieval tail is [B, K1, H * dh]: the same shape, as MAC has Hm == H (config.cc).
    if (IsMac(c)) L.retrieval_tail = L.q_tail;
  }
  s.last_logits = at::zeros({B, c.vocab_size}, opt);
  return s;
}

const TailRing& RingOf(const LayerState& L, at::Tensor LayerState::*tail) {
  if (tail == &LayerState::q_tail) return L.q_ring;
  if (tail == &LayerState::k_tail) return L.k_ring;
  if (tail == &LayerState::v_tail) return L.v_ring;
  return L.retrieval_ring;
}
TailRing& RingOf(LayerState& L, at::Tensor LayerState::*tail) {
  return const_cast<TailRing&>(RingOf(static_cast<const LayerState&>(L), tail));
}

namespace {

constexpr at::Tensor LayerState::*kTails[] = {&LayerState::q_tail, &LayerState::k_tail,
                                              &LayerState::v_tail, &LayerState::retrieval_tail};

// Rows start .. start + count - 1 (mod the buffer's size along `dim`) of `ring`, as a tensor of
// their own.
at::Tensor RingRows(const at::Tensor& ring, int64_t dim, int64_t start, int64_t count) {
  const at::Tensor index =
      at::arange(start, start + count, at::TensorOptions().dtype(at::kLong).device(ring.device())) %
      ring.size(dim);
  return ring.index_select(dim, index);
}

// Whether a working copy and its source are the only holders of `t`: they share its TensorImpl
// (use_count 2); any other holder (a snapshot, a fork, a rollback copy) or a view of its storage
// makes the count higher.
bool HeldByCopyAndSource(const at::Tensor& t) {
  return t.defined() && t.use_count() == 2 && t.storage().use_count() == 1;
}

}  // namespace

void MaterializeCache(LayerState* L) {
  if (!CacheIsRing(*L)) return;
  L->attn_k = RingRows(L->attn_k, 2, L->attn_start, L->attn_count);
  L->attn_v = RingRows(L->attn_v, 2, L->attn_start, L->attn_count);
  L->attn_start = -1;
  L->attn_count = 0;
  L->attn_room = 0;
}

void MaterializeTails(LayerState* L) {
  for (at::Tensor LayerState::*tail : kTails) {
    TailRing& ring = RingOf(*L, tail);
    if (ring.start < 0) continue;
    L->*tail = RingRows(L->*tail, 1, ring.start, ring.rows);
    ring = TailRing{};
  }
}

void GrantRingRoom(SessionState* copy) {
  for (LayerState& L : copy->layers) {
    const bool unshared = CacheIsRing(L) && !L.attn_k.is_same(L.attn_v) &&
                          HeldByCopyAndSource(L.attn_k) && HeldByCopyAndSource(L.attn_v);
    L.attn_room = unshared ? L.attn_k.size(2) - L.attn_count : 0;
    for (at::Tensor LayerState::*tail : kTails) {
      TailRing& ring = RingOf(L, tail);
      // Tails that alias one another (a fresh state's) are never rings.
      ring.room =
          ring.start >= 0 && HeldByCopyAndSource(L.*tail) ? (L.*tail).size(1) - ring.rows : 0;
    }
  }
}

void RevokeRingRoom(SessionState* state) {
  for (LayerState& L : state->layers) {
    L.attn_room = 0;
    for (at::Tensor LayerState::*tail : kTails) RingOf(L, tail).room = 0;
  }
}

namespace {

// Calls fn(tensor) for every tensor a state holds (State: SessionState or const SessionState),
// except pending rows held in a PendingChunk (MemoryState: those are not tensors of the state).
template <typename State, typename Fn>
void ForEachStateTensor(State& state, Fn fn) {
  for (auto& L : state.layers) {
    for (auto* list : {&L.memory.weights, &L.memory.momentum, &L.segment_weights}) {
      for (auto& t : *list) fn(t);
    }
    if (L.memory.chunk == nullptr) {
      for (auto* list : {&L.memory.pending_inputs, &L.memory.pending_deltas}) {
        for (auto& t : *list) fn(t);
      }
      for (auto* t : {&L.memory.pending_gates.log_keep, &L.memory.pending_gates.log_eta,
                      &L.memory.pending_gates.theta}) {
        fn(*t);
      }
    }
    for (auto* t : {&L.q_tail, &L.k_tail, &L.v_tail, &L.retrieval_tail, &L.attn_k, &L.attn_v}) {
      fn(*t);
    }
  }
  fn(state.last_logits);
}

}  // namespace

int64_t StateBytes(const SessionState& state) {
  int64_t bytes = 0;
  ForEachStateTensor(state, [&](const at::Tensor& t) {
    if (t.defined()) bytes += t.numel() * static_cast<int64_t>(t.element_size());
  });
  for (const LayerState& L : state.layers) {
    bytes += PendingBytes(L.memory);
    // A ring counts its entries, as the tensor form does: the same state has the same size in
    // either form (the ring's free slots are the forward pass's working room).
    if (CacheIsRing(L)) {
      const int64_t free_slots = L.attn_k.size(2) - L.attn_count;
      bytes -= 2 * free_slots * (L.attn_k.numel() / L.attn_k.size(2)) *
               static_cast<int64_t>(L.attn_k.element_size());
    }
    for (at::Tensor LayerState::*tail : kTails) {
      const TailRing& ring = RingOf(L, tail);
      const at::Tensor& t = L.*tail;
      if (ring.start < 0) continue;
      bytes -= (t.size(1) - ring.rows) * (t.numel() / t.size(1)) *
               static_cast<int64_t>(t.element_size());
    }
  }
  return bytes;
}

void CompactSessionState(SessionState* state, bool keep_logits) {
  // With keep_logits the logits are set aside while the rest is compacted (not cloned and then
  // dropped: that was one wasted copy per session and step).
  at::Tensor logits;
  if (keep_logits) logits = std::move(state->last_logits);
  // A chunk's pending rows stay where they are: the next step appends to them in place, and the
  // chunk's spare rows are bounded by one chunk per layer.
  ForEachStateTensor(*state, [](at::Tensor& t) {
    if (!t.defined() || !t.has_storage()) return;
    const int64_t view = t.numel() * static_cast<int64_t>(t.element_size());
    if (static_cast<int64_t>(t.storage().nbytes()) > view + view / 4 + 4096) t = t.clone();
  });
  if (keep_logits) state->last_logits = std::move(logits);
}

void SettleSessionState(SessionState* state) {
  for (LayerState& L : state->layers) {
    MaterializePending(&L.memory);  // views of the chunk's rows: cloned below
    MaterializeCache(&L);
    MaterializeTails(&L);
  }
  CompactSessionState(state);
}

void ReleaseStateTensors(SessionState* state, BufferPool* pool) {
  if (pool != nullptr) {
    for (LayerState& L : state->layers) {
      for (auto* list : {&L.memory.weights, &L.memory.momentum}) {
        for (at::Tensor& t : *list) pool->Give(t);
      }
      pool->GiveChunk(L.memory.chunk);
    }
    pool->Give(state->last_logits);
  }
  // With a chunk the pending tensor fields are empty (memory_math.h), so this reaches them all.
  ForEachStateTensor(*state, [](at::Tensor& t) { t.reset(); });
  for (LayerState& L : state->layers) L.memory.chunk.reset();
}

void MoveSessionState(SessionState* state, at::Device device) {
  for (LayerState& L : state->layers) {
    // The moved pending rows are copies: they no longer live in the chunk.
    if (L.memory.chunk && L.memory.chunk->gates.defined() &&
        L.memory.chunk->gates.device() != device) {
      MaterializePending(&L.memory);
    }
  }
  ForEachStateTensor(*state, [&](at::Tensor& t) {
    if (t.defined() && t.device() != device) t = t.to(device);
  });
}

absl::Status ValidateSessionState(const ModelConfig& config, const SessionState& state) {
  if (state.position < 0) return absl::InvalidArgumentError("session state: negative position");
  if (!state.last_logits.defined() || state.last_logits.dim() != 2) {
    return absl::InvalidArgumentError("session state: last_logits must be [batch, vocab]");
  }
  if (static_cast<int>(state.layers.size()) != config.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("session state: has ", state.layers.size(),
                                                   " layers, the model has ", config.num_layers));
  }
  SessionState copy = state;  // StateSlots resizes vectors; keep the caller's state untouched
  for (LayerState& L : copy.layers) {
    MaterializePending(&L.memory);
    MaterializeCache(&L);
    MaterializeTails(&L);
  }
  for (const StateSlot& slot : StateSlots(config, state.batch(), &copy)) {
    const at::Tensor& t = *slot.tensor;
    if (!t.defined()) return absl::InvalidArgumentError("session state: missing " + slot.name);
    if (t.sizes() != at::IntArrayRef(slot.shape)) {
      return absl::InvalidArgumentError(absl::StrCat("session state: ", slot.name, " has shape ",
                                                     ShapeString(t.sizes()), ", expected ",
                                                     ShapeString(slot.shape)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> SerializeSessionState(const ModelConfig& config,
                                                  const SessionState& state,
                                                  const std::string& model_fingerprint) {
  if (state.batch() != 1) {
    return absl::InvalidArgumentError("session state: only batch-1 states can be serialised");
  }
  SessionState copy = state;
  for (LayerState& L : copy.layers) {
    MaterializePending(&L.memory);
    MaterializeCache(&L);
    MaterializeTails(&L);
  }
  TITANS_RETURN_IF_ERROR(ValidateSessionState(config, copy));
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const StateSlot& slot : StateSlots(config, 1, &copy)) {
    tensors.emplace_back(slot.name, *slot.tensor);
  }
  for (auto& [name, t] : tensors) {
    if (t.scalar_type() != at::kFloat) {
      return absl::InvalidArgumentError("session state: " + name + " is not float32");
    }
  }
  std::string recent;
  for (size_t i = 0; i < state.recent_tokens.size(); ++i) {
    absl::StrAppend(&recent, i ? "," : "", state.recent_tokens[i]);
  }
  std::map<std::string, std::string> metadata = {
      {"format", "titans-session-state"},
      {"position", absl::StrCat(state.position)},
      {"model_fingerprint", model_fingerprint},
      {"rng", absl::StrCat(state.rng_state[0], ",", state.rng_state[1], ",", state.rng_state[2],
                           ",", state.rng_state[3])},
      {"recent_tokens", recent}};
  TITANS_ASSIGN_OR_RETURN(std::string payload, SerializeSafetensors(tensors, metadata));
  std::string out(kMagic, sizeof(kMagic));
  PutU32(&out, kStateVersion);
  PutU32(&out, Crc32c(payload.data(), payload.size()));
  PutU64(&out, payload.size());
  out += payload;
  return out;
}

namespace {

// The payload of a serialized state, after checking its frame: magic, version, length, checksum.
absl::StatusOr<std::string_view> StatePayload(std::string_view blob) {
  if (blob.size() < kHeaderBytes || std::memcmp(blob.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError(
        "session state: not a Titans session state (bad magic or too short)");
  }
  uint32_t version, crc;
  uint64_t length;
  std::memcpy(&version, blob.data() + 8, 4);
  std::memcpy(&crc, blob.data() + 12, 4);
  std::memcpy(&length, blob.data() + 16, 8);
  if (version != kStateVersion) {
    return absl::FailedPreconditionError(absl::StrCat("session state: format version ", version,
                                                      " is not supported (expected ", kStateVersion,
                                                      ")"));
  }
  if (length != blob.size() - kHeaderBytes) {
    return absl::DataLossError(absl::StrCat("session state: payload is ",
                                            blob.size() - kHeaderBytes, " bytes, header says ",
                                            length, " (truncated?)"));
  }
  std::string_view payload = blob.substr(kHeaderBytes);
  if (Crc32c(payload.data(), payload.size()) != crc) {
    return absl::DataLossError("session state: checksum mismatch (corrupted)");
  }
  return payload;
}

// A serialized state's metadata into *s: the model it belongs to, position, sampler, recent
// tokens (the tensors are read separately).
absl::Status ReadStateMetadata(const SafetensorsFile& file, const ModelConfig& config,
                               const std::string& model_fingerprint, SessionState* state) {
  SessionState& s = *state;
  auto meta = [&](const char* key) -> const std::string* {
    auto it = file.metadata.find(key);
    return it == file.metadata.end() ? nullptr : &it->second;
  };
  const std::string* fp = meta("model_fingerprint");
  if (fp == nullptr || *fp != model_fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat("session state: made by model '",
                                                      fp ? *fp : "?", "', this model is '",
                                                      model_fingerprint, "'"));
  }
  const std::string* pos = meta("position");
  if (pos == nullptr || !absl::SimpleAtoi(*pos, &s.position) || s.position < 0) {
    return absl::InvalidArgumentError("session state: missing or invalid position");
  }
  if (s.position > SessionState::kMaxPosition) {
    return absl::InvalidArgumentError(absl::StrCat("session state: position ", s.position,
                                                   " is beyond the longest supported stream (",
                                                   SessionState::kMaxPosition, " tokens)"));
  }
  const std::string* rng = meta("rng");
  std::vector<std::string> words = rng ? absl::StrSplit(*rng, ',') : std::vector<std::string>{};
  if (words.size() != 4) return absl::InvalidArgumentError("session state: invalid rng");
  for (int i = 0; i < 4; ++i) {
    if (!absl::SimpleAtoi(words[i], &s.rng_state[i])) {
      return absl::InvalidArgumentError("session state: invalid rng");
    }
  }
  const std::string* recent = meta("recent_tokens");
  if (recent != nullptr && !recent->empty()) {
    for (absl::string_view w : absl::StrSplit(*recent, ',')) {
      int32_t id;
      if (!absl::SimpleAtoi(w, &id) || id < 0 || id >= config.vocab_size ||
          s.recent_tokens.size() >= SessionState::kRecentTokens) {
        return absl::InvalidArgumentError("session state: invalid recent_tokens");
      }
      s.recent_tokens.push_back(id);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SessionState> DeserializeSessionState(std::string_view blob,
                                                     const ModelConfig& config,
                                                     const std::string& model_fingerprint) {
  TITANS_ASSIGN_OR_RETURN(std::string_view payload, StatePayload(blob));
  TITANS_ASSIGN_OR_RETURN(SafetensorsFile file, ParseSafetensors(payload));
  SessionState s;
  TITANS_RETURN_IF_ERROR(ReadStateMetadata(file, config, model_fingerprint, &s));
  std::vector<StateSlot> slots = StateSlots(config, 1, &s);
  if (slots.size() != file.tensors.size()) {
    return absl::InvalidArgumentError(absl::StrCat("session state: has ", file.tensors.size(),
                                                   " tensors, this model's state has ",
                                                   slots.size()));
  }
  for (StateSlot& slot : slots) {
    auto it = file.tensors.find(slot.name);
    if (it == file.tensors.end()) {
      return absl::InvalidArgumentError("session state: missing tensor " + slot.name);
    }
    const at::Tensor& t = it->second;
    if (t.scalar_type() != at::kFloat || t.sizes() != at::IntArrayRef(slot.shape)) {
      return absl::InvalidArgumentError(absl::StrCat("session state: ", slot.name, " is ",
                                                     ShapeString(t.sizes()), ", expected float32 ",
                                                     ShapeString(slot.shape)));
    }
    if (!at::isfinite(t).all().item<bool>()) {
      return absl::InvalidArgumentError("session state: " + slot.name + " holds non-finite values");
    }
    *slot.tensor = t;
  }
  return s;
}

}  // namespace titans
