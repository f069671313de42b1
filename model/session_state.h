// A session's complete model state: everything needed to continue its stream exactly.
//
// Per layer: the memory's chunk-start weights and momentum, the open chunk's pending tokens, the
// causal-conv tails, the attention cache (sliding window for MAG/MAL, current segment for MAC) and,
// for MAC, the memory weights at the segment start. Plus the position, the logits of the last
// token, the sampler's RNG and recent tokens (for repetition penalties).
//
// Size is bounded and independent of history length: about 2x the memory parameters plus at most
// one chunk of pending tokens and one window (or segment) of attention cache per layer.
//
// The model never changes a value a state holds: copying a SessionState is cheap (reference
// counted) and the copy stays valid while the model advances the original. The only writes in
// place go to free slots of ring buffers (attention caches, conv tails, the open chunk's rows)
// that no copy holds: see LayerState and memory_math.h's PendingChunk.
// Thread safety: none; a state belongs to one session and is used by one thread at a time.
#ifndef TITANS_MODEL_SESSION_STATE_H_
#define TITANS_MODEL_SESSION_STATE_H_

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/memory_math.h"
#include "model/params.h"

namespace titans {

// A conv tail in ring form (the sequence kernels): the tail tensor is a [B, capacity, H*dh]
// buffer holding `rows` rows from row `start` on (mod capacity), oldest first; start < 0: the
// tensor form. `room` is as LayerState::attn_room, for the tail.
struct TailRing {
  int64_t start = -1;
  int64_t rows = 0;
  int64_t room = 0;
};

struct LayerState {
  MemoryState memory;
  std::vector<at::Tensor> segment_weights;  // MAC with segment > chunk: Phi at segment start
  at::Tensor q_tail, k_tail, v_tail;        // [B, K-1, H*dh] conv inputs of the last tokens
  at::Tensor retrieval_tail;                // MAC: [B, K-1, H*dh]
  TailRing q_ring, k_ring, v_ring, retrieval_ring;  // each tail's ring form, if it has one
  at::Tensor attn_k, attn_v;  // [B, H, n, dh] rotated keys / values in the cache
  // The window attention's cache in ring form (MAG / MAL / SWA on the sequence kernels): attn_k
  // and attn_v are [B, H, capacity, dh] buffers holding attn_count entries from index
  // attn_start on (mod capacity), oldest first. attn_start < 0: the tensor form above. A forward
  // pass only ever writes a ring's free slots, never an entry a state holds, so a copy of the
  // state stays valid; and it writes in place only where attn_room says no other state holds
  // the slots (otherwise it writes a fresh ring).
  int64_t attn_start = -1;
  int64_t attn_count = 0;
  // Free ring slots the forward pass in progress may still write in place: set on its working
  // copy (whose source state it replaces on success) to the slots neither holds when nothing
  // else holds the ring, and spent as it writes them; 0 on every stored state.
  int64_t attn_room = 0;
};

// The ring form of the tail `tail` (one of LayerState's four tails).
TailRing& RingOf(LayerState& L, at::Tensor LayerState::*tail);
const TailRing& RingOf(const LayerState& L, at::Tensor LayerState::*tail);
// Puts ring-form tails into the tensor form (copies of their rows, exact bits).
void MaterializeTails(LayerState* L);

// Whether the layer's attention cache is in ring form, and how many entries it holds.
inline bool CacheIsRing(const LayerState& L) { return L.attn_start >= 0; }
inline int64_t CachedEntries(const LayerState& L) {
  return CacheIsRing(L) ? L.attn_count : (L.attn_k.defined() ? L.attn_k.size(2) : 0);
}
// Puts a ring-form cache into the tensor form (a copy of its entries, oldest first, exact bits);
// a no-op for the tensor form.
void MaterializeCache(LayerState* L);

struct SessionState {
  int64_t position = 0;  // tokens consumed so far, at most kMaxPosition
  // The longest stream a session may hold: 2^40 tokens (about 35 years at 1,000 tokens/s).
  // Positions enter the rotary angles and the attention masks as doubles, exact below 2^53.
  static constexpr int64_t kMaxPosition = int64_t{1} << 40;
  std::vector<LayerState> layers;
  at::Tensor last_logits;  // [B, V] logits after the last token; zeros while position == 0
  std::array<uint64_t, 4> rng_state{};  // sampler RNG (see model/sampler.h)
  std::vector<int32_t> recent_tokens;   // the last kRecentTokens tokens (batch 0), oldest first

  static constexpr size_t kRecentTokens = 256;
  int64_t batch() const { return last_logits.size(0); }
};

// Gives every ring of `copy` (attention caches and conv tails), a forward pass's working copy of
// a state made just before, the room it may write in place: the ring's free slots when no state
// but the copy and its source holds the ring's buffers (a snapshot, fork or rollback copy makes
// them shared), else none.
void GrantRingRoom(SessionState* copy);
// Sets every ring's room back to 0 (before a working copy is stored).
void RevokeRingRoom(SessionState* state);

// A fresh state for `batch` sequences at position 0, with memory weights Phi_init. With
// track_grad the initial weights stay attached to `params` (training); otherwise detached.
SessionState NewSessionState(const ModelConfig& config, const ModelParams& params, int64_t batch,
                             bool track_grad);

// Bytes held by the state's tensors (a ring-form cache counts its entries, not its free slots).
int64_t StateBytes(const SessionState& state);

// Gives every tensor of `state` storage of its own size where it is a small view of a much larger
// buffer (more than 1.25 times its bytes plus 4 KiB): a conv tail or attention cache sliced from a
// long append's rows, logits selected from a whole step's. Otherwise an idle session would keep
// those buffers alive. Pending rows in a PendingChunk stay views (the next step appends to them
// in place; the chunk holds at most one chunk's rows per layer). With keep_logits, last_logits is
// left as it is (ForwardMany: a row of the step's [sessions, V] logits, bounded by the step).
// Values are unchanged, bit for bit.
void CompactSessionState(SessionState* state, bool keep_logits = false);

// Puts `state` in its at-rest form, for a session with nothing queued: the attention caches and
// conv tails in tensor form (no ring's free slots), the open chunk's rows in tensors of their own
// (no chunk's spare rows), then CompactSessionState. A resting session then holds about its
// StateBytes and no working room; its next step makes new rings and a new chunk once. Values
// are unchanged, bit for bit.
void SettleSessionState(SessionState* state);

// Drops every tensor and chunk `state` holds, keeping its vectors' sizes and capacity: a copy
// assigned into it later reuses them (ForwardMany's working copies). With a pool, the memory's
// weights, momentum and open chunk and the last logits go to it instead where nothing else holds
// them (BufferPool::Give).
class BufferPool;
void ReleaseStateTensors(SessionState* state, BufferPool* pool = nullptr);

// Moves every tensor of `state` to `device` (a no-op for tensors already there), e.g. a state
// parsed on the host into a model that runs on a GPU.
void MoveSessionState(SessionState* state, at::Device device);

// Checks that every tensor of `state` has the shape `config` implies (batch from last_logits) and
// that the pending count is consistent with the position. INVALID_ARGUMENT names the tensor.
absl::Status ValidateSessionState(const ModelConfig& config, const SessionState& state);

// Serialises a batch-1 state to a versioned, checksummed blob:
//   "TTNSTATE" | u32 version | u32 crc32c(payload) | u64 payload length | payload
// where the payload is a safetensors file (tensors in float32, exact bits) whose metadata carries
// the position, RNG, recent tokens and `model_fingerprint`. The round trip is bit-exact.
// INVALID_ARGUMENT if the state does not match `config` (see ValidateSessionState).
absl::StatusOr<std::string> SerializeSessionState(const ModelConfig& config,
                                                  const SessionState& state,
                                                  const std::string& model_fingerprint);

// Parses a blob from SerializeSessionState. DATA_LOSS on a bad magic, checksum or truncation;
// FAILED_PRECONDITION when it was made by a different model (fingerprint mismatch) or an
// unsupported version; INVALID_ARGUMENT when a tensor is missing, has the wrong shape or holds a
// non-finite value, or the position exceeds SessionState::kMaxPosition (a checksum only proves
// the blob is intact, not that a client did not craft it).
// Never crashes on hostile input.
absl::StatusOr<SessionState> DeserializeSessionState(std::string_view blob,
                                                     const ModelConfig& config,
                                                     const std::string& model_fingerprint);

}  // namespace titans

#endif  // TITANS_MODEL_SESSION_STATE_H_
