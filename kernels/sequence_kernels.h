// The per-stream sequence operations of a Titans layer (causal conv over a tail, sliding-window
// attention over a cache), run for many streams packed along time in one call: one call per
// layer and step whatever the number of sessions, instead of a dozen LibTorch ops per session.
//
// Layout: rows of every stream lie one after another in x / q / k / v / y (row r at ptr + r *
// width); each stream names its first row, its length and its own state (tail or cache).
//
// Determinism: each output element is computed by one thread in an order that depends only on
// the stream's own data and the element's absolute position in its stream, never on the other
// streams or on how the stream was split into calls. So results are bit-identical alone or
// batched, and however a stream is split (split invariance). Products and sums are rounded
// separately (no fused multiply-add: the files build with -ffp-contract=off), so the conv gives
// the same bits as LibTorch's multiply-then-add form, on every instruction set.
//
// Compiled per instruction set (AVX-512, AVX2, generic) and chosen at run time like the memory
// kernel. Thread safety: safe to call concurrently on distinct outputs (work runs on
// ThreadPool::Default()). No LibTorch: plain floats in, plain floats out.
#ifndef TITANS_KERNELS_SEQUENCE_KERNELS_H_
#define TITANS_KERNELS_SEQUENCE_KERNELS_H_

#include <cstdint>
#include <string>

namespace titans::kernels {

// One stream of a causal depthwise conv.
struct ConvStream {
  int64_t begin = 0;   // first row in x and y
  int64_t length = 0;  // rows
  // The inputs just before `begin`, taps - 1 rows of `channels`, oldest first: packed
  // (tail_capacity 0, row i at i), or a ring of tail_capacity rows (row i at (tail_start + i) %
  // tail_capacity).
  const float* tail = nullptr;
  float* tail_out = nullptr;  // [taps - 1, channels]: receives the last taps - 1 inputs after the
                              // stream's rows (from its old tail when length < taps - 1); must
                              // not overlap `tail`, x or y
  int64_t tail_capacity = 0;
  int64_t tail_start = 0;
  // Instead of tail_out: the stream's rows are written into the ring tail itself, row t of the
  // stream at (tail_start + taps - 1 + t) % tail_capacity (only the last taps - 1 are), so the
  // tail after the call is the ring's rows from (tail_start + length) % tail_capacity. Needs a
  // ring with tail_capacity >= taps - 1 + length: then no row of the tail before the call is
  // overwritten, and that tail stays valid for whoever else reads it.
  bool in_place = false;
};

// y[r, c] = sum_{i < taps} x'[r + i, c] * w[c * taps + i] over x' = tail ++ the stream's rows,
// summed for i = 0, 1, ... (the first product, then one rounded add per further tap). x, y are
// [rows, channels]; y must not overlap x.
void RaggedCausalConv(const float* x, int64_t channels, const float* w, int taps,
                      const ConvStream* streams, int64_t count, float* y);

// Shape of the sliding-window attention: token t of a stream (absolute position pos) attends
// to the `persistent` position-free keys and to the keys of the tokens at positions
// (pos - window, pos]. Each token has `entries_per_token` (E) keys and values, all at its
// position: 1 for plain attention, 2 for MAC's segment attention (the retrieved memory token h_j,
// then x_j). Queries and keys of window tokens are rotated (RoPE over head_dim / 2 frequency
// pairs, theta^(-2i / head_dim), angles in double); persistent keys meet the unrotated query.
struct WindowShape {
  int heads = 0;
  int head_dim = 0;
  int window = 0;
  int persistent = 0;
  int entries_per_token = 1;
  double rope_theta = 10000;
};

// One stream of a sliding-window attention.
struct AttentionStream {
  int64_t begin = 0;     // first token: its query and output are row `begin` of q and out, its
                         // keys and values rows begin * E .. begin * E + E - 1 of k and v
  int64_t length = 0;    // tokens
  int64_t position = 0;  // absolute position of the first token
  // The cache: rotated keys and values of the tokens just before `position`, E entries per
  // token in order, `cached` of them; cached <= E * (window - 1), a multiple of E. Packed
  // (cache_capacity 0): [heads, cached, head_dim], entry j at index j. A ring (cache_capacity >
  // 0): [heads, cache_capacity, head_dim], entry j at index (cache_start + j) % cache_capacity.
  const float* cache_k = nullptr;
  const float* cache_v = nullptr;
  int64_t cached = 0;
  int64_t cache_capacity = 0;
  int64_t cache_start = 0;
  // Receive the cache after the stream's tokens, keep = min(E * (window - 1), cached + E *
  // length) entries: packed [heads, keep, head_dim] (out_capacity 0), or the first keep entries
  // of a ring [heads, out_capacity, head_dim] starting at index 0 (out_capacity >= keep). Must
  // not overlap the inputs.
  float* cache_k_out = nullptr;
  float* cache_v_out = nullptr;
  int64_t out_capacity = 0;
  // Instead of the above: the new entries are written into the ring cache itself, entry j at
  // index (cache_start + j) % cache_capacity (the kept old entries stay where they are), so the
  // cache after the call is the ring's entries from (cache_start + cached + E * length - keep) %
  // cache_capacity. Needs a ring with cache_capacity >= cached + E * length: then no entry of
  // the cache before the call is overwritten, and that cache stays valid for whoever else reads
  // it. cache_k_out / cache_v_out are ignored.
  bool in_place = false;
};

// out[r] = the merged heads of softmax(q_r . keys / sqrt(head_dim)) . values for every row of
// every stream. q, out: [rows, heads * head_dim]; k, v: [rows * E, heads * head_dim] (the
// projections, not yet rotated);
// persistent_k / persistent_v: [heads, persistent, head_dim] (may be null when persistent = 0).
void RaggedWindowAttention(const WindowShape& shape, const float* q, const float* k, const float* v,
                           const float* persistent_k, const float* persistent_v,
                           const AttentionStream* streams, int64_t count, float* out);

// The same on one instruction set ("avx512", "avx2", "generic"), on the calling thread; false
// (nothing run) if this CPU lacks it. For tests.
bool RaggedCausalConvOnIsa(const std::string& isa, const float* x, int64_t channels, const float* w,
                           int taps, const ConvStream* streams, int64_t count, float* y);
bool RaggedWindowAttentionOnIsa(const std::string& isa, const WindowShape& shape, const float* q,
                                const float* k, const float* v, const float* persistent_k,
                                const float* persistent_v, const AttentionStream* streams,
                                int64_t count, float* out);

}  // namespace titans::kernels

#endif  // TITANS_KERNELS_SEQUENCE_KERNELS_H_
