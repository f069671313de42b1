#include "model/titans_layer.h"

#include <vector>

#include "kernels/linear.h"
#include "kernels/memory_kernel_cuda.h"
#include "kernels/sequence_kernels.h"
#include "kernels/sequence_kernels_cuda.h"
#include "model/memory_math.h"
#include "model/ops.h"

#ifdef TITANS_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace titans {
namespace {

// [B, T, H*dh] -> [B*H, T, dh] (group index b * H + h), and back.
at::Tensor ToGroups(const at::Tensor& x, int64_t heads) {
  const int64_t B = x.size(0), T = x.size(1);
  return x.reshape({B, T, heads, -1}).transpose(1, 2).reshape({B * heads, T, -1});
}
at::Tensor FromGroups(const at::Tensor& g, int64_t batch) {
  const int64_t heads = g.size(0) / batch, T = g.size(1);
  return g.reshape({batch, heads, T, -1}).transpose(1, 2).reshape({batch, T, -1});
}
// Gate logits [B, T, H] -> [B*H, T].
at::Tensor GateGroups(const at::Tensor& z) {
  return z.transpose(1, 2).reshape({z.size(0) * z.size(2), z.size(1)});
}

// The rows of slice `s` in a tensor holding every slice's rows along time ([B, total, ...]).
at::Tensor RowsOf(const std::vector<StreamSlice>& slices, const StreamSlice& s,
                  const at::Tensor& t) {
  return slices.size() == 1 ? t : t.slice(1, s.begin, s.begin + s.length);
}

// Applies fn(slice, rows of x) to every slice and joins the results along time.
template <typename Fn>
at::Tensor PerSlice(const std::vector<StreamSlice>& slices, const at::Tensor& x, Fn fn) {
  if (slices.size() == 1) return fn(slices[0], x);
  std::vector<at::Tensor> parts;
  for (const StreamSlice& s : slices) parts.push_back(fn(s, RowsOf(slices, s, x)));
  return at::cat(parts, 1);
}

// Where the sequence kernels (kernels/sequence_kernels.h) run this call: float32 inference on
// the CPU, or on CUDA when this build has the CUDA kernels (and LibTorch has CUDA). Training
// (autograd), double precision and anything else take the LibTorch form (kNone).
enum class SequenceKernels { kNone, kCpu, kCuda };
SequenceKernels SequenceKernelsFor(const at::Tensor& x, const at::Tensor& weight) {
  if (!NoGradNeeded(x, weight) || x.scalar_type() != at::kFloat ||
      weight.scalar_type() != at::kFloat || x.device() != weight.device()) {
    return SequenceKernels::kNone;
  }
  if (x.device().is_cpu()) return SequenceKernels::kCpu;
#ifdef TITANS_WITH_CUDA
  if (x.device().is_cuda() && kernels::CudaKernelsBuilt()) return SequenceKernels::kCuda;
#endif
  return SequenceKernels::kNone;
}

// The CUDA stream of x's device, for the CUDA kernels.
void* CudaStreamOf(const at::Tensor& x) {
#ifdef TITANS_WITH_CUDA
  return c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
#else
  TORCH_CHECK(false, "no CUDA in this build (", x.device(), ")");
  return nullptr;
#endif
}

// Free rows a conv tail's ring keeps beyond the taps - 1 it holds, in tokens: a decode step
// and an append of up to this many tokens write the tail in place; a longer one a fresh ring.
constexpr int64_t kTailSpareTokens = 4;

// The causal conv, each slice with its own tail (`tail` selects which of the layer's tails):
// one kernel call for all slices (each tail then in ring form, session_state.h: written in place
// where its room allows, into a fresh ring otherwise), or LibTorch per slice (the tensor form).
at::Tensor ConvSlices(const std::vector<StreamSlice>& slices, const at::Tensor& x,
                      const at::Tensor& taps, at::Tensor LayerState::*tail) {
  const SequenceKernels where = SequenceKernelsFor(x, taps);
  if (where == SequenceKernels::kNone) {
    return PerSlice(slices, x, [&](const StreamSlice& s, const at::Tensor& rows) {
      MaterializeTails(s.state);
      return CausalConv(rows, taps, &(s.state->*tail));
    });
  }
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), K = taps.size(1);
  const at::Tensor xc = x.contiguous(), w = taps.contiguous();
  at::Tensor y = at::empty_like(xc);
  // Per slice: the tail read (kept alive through the call) and the fresh ring written, if any.
  std::vector<at::Tensor> old_tails(slices.size()), new_tails(slices.size());
  std::vector<kernels::ConvStream> streams;
  streams.reserve(slices.size());
  for (size_t i = 0; i < slices.size(); ++i) {
    const StreamSlice& s = slices[i];
    TailRing& ring = RingOf(*s.state, tail);
    const bool is_ring = ring.start >= 0;
    old_tails[i] = is_ring ? s.state->*tail : (s.state->*tail).contiguous();
    const int64_t rows = old_tails[i].size(1);  // a ring's rows, or the tail's K - 1
    const bool in_place = is_ring && s.length <= ring.room;
    const int64_t capacity = K - 1 + kTailSpareTokens;
    if (!in_place) new_tails[i] = at::empty({B, capacity, C}, xc.options());
    for (int64_t b = 0; b < B; ++b) {
      kernels::ConvStream stream{b * T + s.begin, s.length,
                                 old_tails[i].data_ptr<float>() + b * rows * C, nullptr};
      if (is_ring) {
        stream.tail_capacity = rows;
        stream.tail_start = ring.start;
      }
      if (in_place) {
        stream.in_place = true;
      } else {
        stream.tail_out = new_tails[i].data_ptr<float>() + b * capacity * C;
      }
      streams.push_back(stream);
    }
  }
  if (where == SequenceKernels::kCpu) {
    kernels::RaggedCausalConv(xc.data_ptr<float>(), C, w.data_ptr<float>(), static_cast<int>(K),
                              streams.data(), static_cast<int64_t>(streams.size()),
                              y.data_ptr<float>());
  } else {
    const std::string error = kernels::RaggedCausalConvCuda(
        xc.data_ptr<float>(), C, w.data_ptr<float>(), static_cast<int>(K), streams.data(),
        static_cast<int64_t>(streams.size()), y.data_ptr<float>(), CudaStreamOf(xc));
    TORCH_CHECK(error.empty(), error);
  }
  for (size_t i = 0; i < slices.size(); ++i) {
    LayerState* st = slices[i].state;
    TailRing& ring = RingOf(*st, tail);
    if (new_tails[i].defined()) {  // a fresh ring, the pass's own: its free rows are room
      st->*tail = std::move(new_tails[i]);
      ring.start = 0;
      ring.rows = K - 1;
      ring.room = kTailSpareTokens;
    } else {
      ring.start = (ring.start + slices[i].length) % (st->*tail).size(1);
      ring.room -= slices[i].length;
    }
  }
  return y;
}

at::Tensor L2Normalize(const at::Tensor& x) {
  return x * at::rsqrt(x.pow(2).sum(-1, /*keepdim=*/true).clamp_min(1e-12));
}

// A memory query or key: Linear -> causal conv -> SiLU (unless memory.qk_activation is "none")
// -> per-head L2 norm, [B, T, heads*dh]: the layer's memory heads (memory_heads(layer)) for its
// rows, the attention's for MAC's retrieval queries (the width of `proj` decides).
at::Tensor QueryRows(const ModelConfig& c, const std::vector<StreamSlice>& slices,
                     const at::Tensor& x, const at::Tensor& proj, const at::Tensor& taps,
                     at::Tensor LayerState::*tail) {
  at::Tensor h = ConvSlices(slices, Linear(x, proj), taps, tail);
  if (c.memory.qk_silu) h = at::silu(h);
  const int64_t B = h.size(0), T = h.size(1), heads = h.size(2) / c.head_dim;
  return L2Normalize(h.reshape({B, T, heads, c.head_dim})).reshape({B, T, -1});
}

at::Tensor Combine(const ModelConfig& c, const LayerParams& p, const at::Tensor& y,
                   const at::Tensor& m) {
  return RmsNorm(y, p.combine_y_norm, c.norm_eps) *
         at::sigmoid(RmsNorm(m, p.combine_m_norm, c.norm_eps));
}

// Keys and values of the persistent tokens, [B, H, N_p, dh] (position-free: no rotary);
// undefined when the model has none.
std::pair<at::Tensor, at::Tensor> PersistentKV(const ModelConfig& c, const AttentionParams& a,
                                               int64_t batch) {
  if (!a.persistent.defined()) return {};
  at::Tensor p = a.persistent.unsqueeze(0);  // [1, N_p, d]
  at::Tensor k = SplitHeads(Linear(p, a.wk), c.num_heads).expand({batch, -1, -1, -1});
  at::Tensor v = SplitHeads(Linear(p, a.wv), c.num_heads).expand({batch, -1, -1, -1});
  return {k, v};
}

// Sliding-window attention (MAG, MAL, SWA) of one stream's rows: token t sees the persistent
// tokens and the tokens s with t - w < s <= t. The cache keeps the last w-1 rotated keys and
// values. Takes the rows' projections (qx, kx, vx: [B, T, H*dh]) and the persistent keys and
// values, computed once for all streams; returns the merged heads [B, T, H*dh] (before wo).
at::Tensor SlidingWindowHeads(const ModelConfig& c, LayerState* st, const at::Tensor& qx,
                              const at::Tensor& kx, const at::Tensor& vx, int64_t position,
                              const at::Tensor& pk, const at::Tensor& pv) {
  const int64_t T = qx.size(1), H = c.num_heads, w = c.attention.window;
  const double rope = c.attention.rope_theta;
  at::Tensor q_plain = SplitHeads(qx, H);
  at::Tensor q = Rotary(q_plain, position, rope);
  at::Tensor k = Rotary(SplitHeads(kx, H), position, rope);
  at::Tensor v = SplitHeads(vx, H);
  MaterializeCache(st);  // a ring from the sequence kernels, read here in the tensor form
  const int64_t cached = st->attn_k.size(2);
  at::Tensor keys = at::cat({st->attn_k, k}, 2);  // positions position-cached .. position+T-1
  at::Tensor values = at::cat({st->attn_v, v}, 2);
  auto iopt = at::TensorOptions().dtype(at::kLong).device(qx.device());
  at::Tensor tq = at::arange(T, iopt).unsqueeze(1) + cached;  // query index into keys
  at::Tensor tk = at::arange(cached + T, iopt).unsqueeze(0);
  at::Tensor visible = (tk <= tq).logical_and(tq - tk < w);  // [T, cached+T]
  const int64_t keep = std::min<int64_t>(w - 1, cached + T);
  st->attn_k = keys.slice(2, cached + T - keep, cached + T);
  st->attn_v = values.slice(2, cached + T - keep, cached + T);
  return MergeHeads(Attend(q_plain, q, pk, pv, keys, values, visible));
}

// MAC attention over [P || h || segment]: x and the retrieved memory tokens h (both [B, T, d])
// share positions relative to the segment start; token t sees P, and h_j, x_j for j <= t of the
// segment. The cache holds this segment's earlier h and x keys/values (all visible). Takes x's
// projections (qx, kx, vx, computed once for all streams), h, and the persistent keys and values;
// returns the merged heads [B, T, H*dh] (before wo).
at::Tensor SegmentHeads(const ModelConfig& c, const AttentionParams& a, LayerState* st,
                        const at::Tensor& qx, const at::Tensor& kx_plain,
                        const at::Tensor& vx_plain, const at::Tensor& h, int64_t offset,
                        const at::Tensor& pk, const at::Tensor& pv) {
  const int64_t T = qx.size(1), H = c.num_heads;
  const double rope = c.attention.rope_theta;
  at::Tensor q_plain = SplitHeads(qx, H);
  at::Tensor q = Rotary(q_plain, offset, rope);
  at::Tensor kx = Rotary(SplitHeads(kx_plain, H), offset, rope);
  at::Tensor kh = Rotary(SplitHeads(Linear(h, a.wk), H), offset, rope);
  at::Tensor vx = SplitHeads(vx_plain, H);
  at::Tensor vh = SplitHeads(Linear(h, a.wv), H);
  // Cache entries interleave h_j, x_j per token so that the cache (and so the session state) is
  // the same however the segment was split into calls.
  auto interleave = [](const at::Tensor& a, const at::Tensor& b) {  // [B,H,T,dh] x2 -> [B,H,2T,dh]
    return at::stack({a, b}, 3).reshape({a.size(0), a.size(1), 2 * a.size(2), a.size(3)});
  };
  MaterializeCache(st);
  const int64_t cached = st->attn_k.size(2);
  st->attn_k = at::cat({st->attn_k, interleave(kh, kx)}, 2);
  st->attn_v = at::cat({st->attn_v, interleave(vh, vx)}, 2);
  at::Tensor keys = st->attn_k, values = st->attn_v;
  auto bopt = at::TensorOptions().dtype(at::kBool).device(qx.device());
  // New entry 2j (h_j) and 2j+1 (x_j) are visible to token t iff j <= t.
  at::Tensor causal = at::ones({T, T}, bopt).tril().repeat_interleave(2, 1);
  at::Tensor visible = at::cat({at::ones({T, cached}, bopt), causal}, 1);
  return MergeHeads(Attend(q_plain, q, pk, pv, keys, values, visible));
}

// Free slots a window attention ring keeps beyond its window, in tokens: a decode step (one
// token) and a short append of up to this many tokens write their entries in place; a longer
// one writes a fresh ring. Costs 16 / 63 more cache memory for the default model's window 64.
constexpr int64_t kRingSpareTokens = 16;

// AttendSlices' view of one slice's cache: the cache read (kept alive through the call), the
// cache written (undefined when written in place), and the ring start and entry count after it.
struct SliceCache {
  at::Tensor old_k, old_v, new_k, new_v;
  int64_t start = -1, count = 0;
};

// AttendSlices' kernel call: every stream's window attention in one pass, on the CPU or the GPU.
void RunWindowAttention(const kernels::WindowShape& shape, const at::Tensor& qx,
                        const at::Tensor& kx, const at::Tensor& vx, const at::Tensor& pkc,
                        const at::Tensor& pvc, const std::vector<kernels::AttentionStream>& streams,
                        SequenceKernels where, at::Tensor* heads) {
  const at::Tensor q = qx.contiguous(), k = kx.contiguous(), v = vx.contiguous();
  const float* pk_data = pkc.defined() ? pkc.data_ptr<float>() : nullptr;
  const float* pv_data = pvc.defined() ? pvc.data_ptr<float>() : nullptr;
  if (where == SequenceKernels::kCpu) {
    kernels::RaggedWindowAttention(shape, q.data_ptr<float>(), k.data_ptr<float>(),
                                   v.data_ptr<float>(), pk_data, pv_data, streams.data(),
                                   static_cast<int64_t>(streams.size()), heads->data_ptr<float>());
  } else {
    const std::string error = kernels::RaggedWindowAttentionCuda(
        shape, q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), pk_data, pv_data,
        streams.data(), static_cast<int64_t>(streams.size()), heads->data_ptr<float>(),
        CudaStreamOf(q));
    TORCH_CHECK(error.empty(), error);
  }
}

// After the kernel: each slice's cache is the one the kernel wrote (a fresh tensor or ring, or
// the old ring updated in place).
void CommitSliceCaches(const std::vector<StreamSlice>& slices, bool ring,
                       std::vector<SliceCache>* caches) {
  for (size_t i = 0; i < slices.size(); ++i) {
    LayerState* st = slices[i].state;
    SliceCache& cache = (*caches)[i];
    if (cache.new_k.defined()) {
      st->attn_k = std::move(cache.new_k);
      st->attn_v = std::move(cache.new_v);
      // A fresh ring is this pass's own: its free slots are room.
      st->attn_room = ring ? st->attn_k.size(2) - cache.count : 0;
    }
    st->attn_start = cache.start;
    st->attn_count = ring ? cache.count : 0;
  }
}

// The attention of every slice in one kernel call (kernels/sequence_kernels.h): each token's work
// in an order fixed by its position, so a session's bits do not depend on the batch or on how its
// stream was split. q, k, v: [B, T, H*dh] projections, except that k and v hold E rows per token
// (entry e of token t at row t * E + e); `position_of(slice)` is the rotary position of a slice's
// first token (the absolute one, or MAC's offset in its segment). Each slice's cache (attn_k /
// attn_v) is replaced by the cache after its tokens: in the tensor form ([B, H, entries, dh]),
// or with `ring` in ring form (session_state.h), written in place where the slice's attn_room
// allows and into a fresh ring otherwise.
// Returns the merged heads [B, T, H*dh] (before wo).
template <typename PositionOf>
at::Tensor AttendSlices(const ModelConfig& c, const std::vector<StreamSlice>& slices,
                        kernels::WindowShape shape, bool ring, const at::Tensor& qx,
                        const at::Tensor& kx, const at::Tensor& vx, const at::Tensor& pk,
                        const at::Tensor& pv, SequenceKernels where, PositionOf position_of) {
  const int64_t B = qx.size(0), T = qx.size(1), H = c.num_heads, dh = c.head_dim;
  const int64_t E = shape.entries_per_token;
  shape.heads = static_cast<int>(H);
  shape.head_dim = static_cast<int>(dh);
  shape.persistent = pk.defined() ? static_cast<int>(pk.size(2)) : 0;
  shape.rope_theta = c.attention.rope_theta;
  const at::Tensor pkc = pk.defined() ? pk.select(0, 0).contiguous() : at::Tensor();
  const at::Tensor pvc = pv.defined() ? pv.select(0, 0).contiguous() : at::Tensor();
  at::Tensor heads = at::empty_like(qx);
  std::vector<SliceCache> caches(slices.size());
  std::vector<kernels::AttentionStream> streams;
  streams.reserve(slices.size());
  const int64_t most = E * (shape.window - 1);
  for (size_t i = 0; i < slices.size(); ++i) {
    const StreamSlice& s = slices[i];
    LayerState* st = s.state;
    if (!ring) MaterializeCache(st);
    SliceCache& cache = caches[i];
    const bool is_ring = CacheIsRing(*st);
    const int64_t cached = CachedEntries(*st), added = E * s.length;
    const int64_t keep = std::min<int64_t>(most, cached + added);
    cache.old_k = is_ring ? st->attn_k : st->attn_k.contiguous();  // rings are contiguous
    cache.old_v = is_ring ? st->attn_v : st->attn_v.contiguous();
    const int64_t capacity = cache.old_k.size(2);  // a ring's slots, or the tensor form's entries
    const bool in_place = is_ring && added <= st->attn_room;
    int64_t out_capacity = 0;
    if (in_place) {
      st->attn_room -= added;
      cache.start = (st->attn_start + cached + added - keep) % capacity;
    } else {
      out_capacity = ring ? most + E * kRingSpareTokens : keep;
      cache.new_k = at::empty({B, H, out_capacity, dh}, qx.options());
      cache.new_v = at::empty({B, H, out_capacity, dh}, qx.options());
      cache.start = ring ? 0 : -1;
    }
    cache.count = keep;
    for (int64_t b = 0; b < B; ++b) {
      kernels::AttentionStream a_s;
      a_s.begin = b * T + s.begin;
      a_s.length = s.length;
      a_s.position = position_of(s);
      a_s.cache_k = cache.old_k.data_ptr<float>() + b * H * capacity * dh;
      a_s.cache_v = cache.old_v.data_ptr<float>() + b * H * capacity * dh;
      a_s.cached = cached;
      if (is_ring) {
        a_s.cache_capacity = capacity;
        a_s.cache_start = st->attn_start;
      }
      if (in_place) {
        a_s.in_place = true;
      } else {
        a_s.cache_k_out = cache.new_k.data_ptr<float>() + b * H * out_capacity * dh;
        a_s.cache_v_out = cache.new_v.data_ptr<float>() + b * H * out_capacity * dh;
        if (ring) a_s.out_capacity = out_capacity;
      }
      streams.push_back(a_s);
    }
  }
  RunWindowAttention(shape, qx, kx, vx, pkc, pvc, streams, where, &heads);
  CommitSliceCaches(slices, ring, &caches);
  return heads;
}

// Sliding-window attention over every slice (each with its own cache and positions). The
// projections and the persistent keys and values are token-wise or stream-free, so they run once
// over all slices' rows (Linear is row-invariant: the same bits as per slice); the attention
// itself runs in one kernel call, or per slice in LibTorch (kNone).
at::Tensor WindowAttention(const ModelConfig& c, const AttentionParams& a,
                           const std::vector<StreamSlice>& slices, const at::Tensor& x) {
  const at::Tensor qx = Linear(x, a.wq), kx = Linear(x, a.wk), vx = Linear(x, a.wv);
  const std::pair<at::Tensor, at::Tensor> persistent = PersistentKV(c, a, x.size(0));
  const at::Tensor &pk = persistent.first, &pv = persistent.second;  // the lambda captures these
  const SequenceKernels where = SequenceKernelsFor(x, a.wq);
  if (where == SequenceKernels::kNone) {
    at::Tensor heads = PerSlice(slices, x, [&](const StreamSlice& s, const at::Tensor&) {
      auto rows = [&](const at::Tensor& t) { return RowsOf(slices, s, t); };
      return SlidingWindowHeads(c, s.state, rows(qx), rows(kx), rows(vx), s.position, pk, pv);
    });
    return Linear(heads, a.wo);
  }
  kernels::WindowShape shape;
  shape.window = static_cast<int>(c.attention.window);
  shape.entries_per_token = 1;
  return Linear(AttendSlices(c, slices, shape, /*ring=*/true, qx, kx, vx, pk, pv, where,
                             [](const StreamSlice& s) { return s.position; }),
                a.wo);
}

at::Tensor Activate(Activation act, const at::Tensor& a) {
  return act == Activation::kSiLU ? at::silu(a) : at::gelu(a);
}

// h = M_{Phi}(q) for every slice with its own weights (weights[i]: per layer [B*H, out_l, in_l]),
// q [B, T, H*dh] -> [B, T, H*dh]: MAC's read of the memory as it was at the segment start. On the
// CPU each (slice, head) runs its matmuls as batch-invariant kernels over head-major rows and
// each activation is one op over all rows, so a row's bits depend only on its query and its
// slice's weights and the op count does not grow with the slices; elsewhere per slice in
// LibTorch (MemoryRead).
at::Tensor ReadSegmentMemory(const ModelConfig& c, const std::vector<StreamSlice>& slices,
                             const std::vector<const std::vector<at::Tensor>*>& weights,
                             const at::Tensor& q, SequenceKernels where) {
  const MemorySpec spec = MemorySpec::FromConfig(c.memory);
  const int64_t B = q.size(0), T = q.size(1), H = c.num_heads, dh = c.head_dim;
  if (where != SequenceKernels::kCpu) {
    size_t i = 0;
    return PerSlice(slices, q, [&](const StreamSlice&, const at::Tensor& rows) {
      return FromGroups(MemoryRead(spec, *weights[i++], ToGroups(rows, H)), B);
    });
  }
  const int64_t G = B * H;
  const at::Tensor x = q.reshape({B, T, H, dh}).permute({0, 2, 1, 3}).contiguous();  // [G, T, dh]
  at::Tensor h = x;
  for (int l = 0; l < spec.depth; ++l) {
    const int64_t in = h.size(3), out = (*weights[0])[l].size(1);
    at::Tensor a = at::empty({B, H, T, out}, q.options());
    const float* h_data = h.data_ptr<float>();
    float* a_data = a.data_ptr<float>();
    for (size_t i = 0; i < slices.size(); ++i) {
      const StreamSlice& s = slices[i];
      const at::Tensor w = (*weights[i])[l].contiguous();  // [G, out, in]
      const float* w_data = w.data_ptr<float>();
      for (int64_t g = 0; g < G; ++g) {
        kernels::InvariantLinear(h_data + (g * T + s.begin) * in, s.length, in,
                                 w_data + g * out * in, out, a_data + (g * T + s.begin) * out);
      }
    }
    h = l + 1 < spec.depth ? Activate(spec.activation, a) : a;
  }
  if (spec.residual) h = h + x;
  return h.permute({0, 2, 1, 3}).reshape({B, T, H * dh});
}

// Starts a segment in `st`: a chunk boundary (segment_size is a multiple of chunk_size), so the
// memory's chunk-start weights are Phi at the segment start. The attention cache resets.
void StartSegment(LayerState* st) {
  if (!st->segment_weights.empty()) st->segment_weights = st->memory.weights;
  MaterializeCache(st);
  st->attn_k = st->attn_k.slice(2, 0, 0);
  st->attn_v = st->attn_v.slice(2, 0, 0);
}

// MAC block mixer; each slice lies inside one segment of its stream.
at::Tensor MacMixer(const ModelConfig& c, const LayerParams& p,
                    const std::vector<StreamSlice>& slices, const at::Tensor& n) {
  const int64_t B = n.size(0), C = c.attention.segment_size;
  const MemorySpec spec = MemorySpec::FromConfig(c.memory);
  at::Tensor q =
      QueryRows(c, slices, n, p.retrieval.q_proj, p.retrieval.q_conv, &LayerState::retrieval_tail);
  // Token-wise projections of x and the persistent keys/values: once for all slices.
  const at::Tensor qx = Linear(n, p.attn.wq), kx = Linear(n, p.attn.wk), vx = Linear(n, p.attn.wv);
  const std::pair<at::Tensor, at::Tensor> persistent = PersistentKV(c, p.attn, B);
  const at::Tensor &pk = persistent.first, &pv = persistent.second;  // lambdas capture these
  for (const StreamSlice& s : slices) {
    if (s.position % C == 0) StartSegment(s.state);
  }
  const SequenceKernels where = SequenceKernelsFor(n, p.attn.wq);
  at::Tensor heads;
  if (where == SequenceKernels::kNone) {
    heads = PerSlice(slices, n, [&](const StreamSlice& s, const at::Tensor&) {
      LayerState* st = s.state;
      const std::vector<at::Tensor>& phi_segment =
          st->segment_weights.empty() ? st->memory.weights : st->segment_weights;
      auto rows = [&](const at::Tensor& t) { return RowsOf(slices, s, t); };
      // h_t = M_{Phi_segment}(q_t): a read of the memory as it was at the segment start.
      at::Tensor h =
          Linear(FromGroups(MemoryRead(spec, phi_segment, ToGroups(rows(q), c.num_heads)), B),
                 p.retrieval.out_proj);  // [B, T, d]
      return SegmentHeads(c, p.attn, st, rows(qx), rows(kx), rows(vx), h, s.position % C, pk, pv);
    });
  } else {
    std::vector<const std::vector<at::Tensor>*> phi_segment;
    for (const StreamSlice& s : slices) {
      const LayerState* st = s.state;
      phi_segment.push_back(st->segment_weights.empty() ? &st->memory.weights
                                                        : &st->segment_weights);
    }
    const at::Tensor h =
        Linear(ReadSegmentMemory(c, slices, phi_segment, q, where), p.retrieval.out_proj);
    // Keys and values of h_t and x_t interleaved per token (h first), as the cache holds them.
    const int64_t T = n.size(1);
    const at::Tensor k = at::stack({Linear(h, p.attn.wk), kx}, 2).reshape({B, 2 * T, -1});
    const at::Tensor v = at::stack({Linear(h, p.attn.wv), vx}, 2).reshape({B, 2 * T, -1});
    kernels::WindowShape shape;
    shape.window = static_cast<int>(C);  // a segment's tokens all see each other causally
    shape.entries_per_token = 2;
    heads = AttendSlices(c, slices, shape, /*ring=*/false, qx, k, v, pk, pv, where,
                         [C](const StreamSlice& s) { return s.position % C; });
  }
  at::Tensor y = Linear(heads, p.attn.wo);
  // The attention outputs update the memory; the output reads the updated memory
  // (o_t = y_t (x) M_t(y_t), read-after-write).
  at::Tensor m = NeuralMemoryForward(c, p.memory, slices, y);
  // A stream that ends exactly at a segment boundary starts the next segment now, so that its
  // state is canonical (empty cache, segment weights = memory at the boundary) and validates.
  for (const StreamSlice& s : slices) {
    if ((s.position + s.length) % C == 0) StartSegment(s.state);
  }
  return Combine(c, p, y, m);
}

}  // namespace

at::Tensor NeuralMemoryForward(const ModelConfig& c, const NeuralMemoryParams& p,
                               const std::vector<StreamSlice>& slices, const at::Tensor& x) {
  // This layer's memory heads (memory.num_heads, which may differ by layer), each head_dim wide:
  // one gate bias per head.
  const int64_t B = x.size(0), T = x.size(1), H = p.alpha_b.size(0);
  at::Tensor q = QueryRows(c, slices, x, p.q_proj, p.q_conv, &LayerState::q_tail);
  at::Tensor k = QueryRows(c, slices, x, p.k_proj, p.k_conv, &LayerState::k_tail);
  at::Tensor v = at::silu(ConvSlices(slices, Linear(x, p.v_proj), p.v_conv, &LayerState::v_tail));
  // Data-dependent gates per token and head: alpha = sigmoid(.), eta = sigmoid(.),
  // theta = theta_max * sigmoid(.); carried as log(1 - alpha) and log(eta). [B, T, H]
  at::Tensor log_keep = at::log_sigmoid(-(Linear(x, p.alpha_w) + p.alpha_b));
  at::Tensor log_eta = at::log_sigmoid(Linear(x, p.eta_w) + p.eta_b);
  at::Tensor theta = c.memory.theta_max * at::sigmoid(Linear(x, p.theta_w) + p.theta_b);
  // One memory update for all slices (one kernel call).
  std::vector<MemoryState*> states;
  states.reserve(slices.size());
  for (const StreamSlice& s : slices) states.push_back(&s.state->memory);
  const MemorySpec spec = MemorySpec::FromConfig(c.memory);
  at::Tensor y;
  if (MemoryKernelApplies(states, k)) {
    // The kernel reads every slice's heads in place from the packed rows.
    std::vector<PackedRows> rows;
    rows.reserve(slices.size());
    for (const StreamSlice& s : slices) rows.push_back(PackedRows{s.begin, s.length});
    y = MemoryWriteReadPacked(spec, H, states, rows, k, v, q,
                              MemoryGates{log_keep, log_eta, theta});
  } else {
    std::vector<MemoryInputs> inputs;
    for (const StreamSlice& s : slices) {
      auto rows = [&](const at::Tensor& t) { return RowsOf(slices, s, t); };
      inputs.push_back(
          MemoryInputs{ToGroups(rows(k), H), ToGroups(rows(v), H), ToGroups(rows(q), H),
                       MemoryGates{GateGroups(rows(log_keep)), GateGroups(rows(log_eta)),
                                   GateGroups(rows(theta))}});
    }
    std::vector<at::Tensor> ys = MemoryWriteReadMany(spec, states, inputs);
    for (at::Tensor& part : ys) part = FromGroups(part, B);
    y = ys.size() == 1 ? ys[0] : at::cat(ys, 1);
  }
  // Per-head RMSNorm, then o = W_o(norm(y) * SiLU(W_g x)).
  at::Tensor y_heads = y.reshape({B, T, H, c.head_dim});
  at::Tensor normed =
      (y_heads * at::rsqrt(y_heads.pow(2).mean(-1, true) + c.norm_eps)).reshape({B, T, -1});
  return Linear(normed * p.out_norm * at::silu(Linear(x, p.out_gate)), p.out_proj);
}

at::Tensor LayerForward(const ModelConfig& c, const LayerParams& p,
                        const std::vector<StreamSlice>& slices, const at::Tensor& x) {
  at::Tensor h = x;
  at::Tensor n = RmsNorm(h, p.mixer_norm, c.norm_eps);
  switch (c.variant) {
    case Variant::kMAC:
      h = h + MacMixer(c, p, slices, n);
      break;
    case Variant::kMAG: {
      at::Tensor y = WindowAttention(c, p.attn, slices, n);
      at::Tensor m = NeuralMemoryForward(c, p.memory, slices, n);
      h = h + Combine(c, p, y, m);
      break;
    }
    case Variant::kMAL:
      h = h + NeuralMemoryForward(c, p.memory, slices, n);
      h = h + WindowAttention(c, p.attn, slices, RmsNorm(h, p.attn_norm, c.norm_eps));
      break;
    case Variant::kLMM:
      h = h + NeuralMemoryForward(c, p.memory, slices, n);
      break;
    case Variant::kSWA:  // the baseline: attention only
      h = h + WindowAttention(c, p.attn, slices, n);
      break;
  }
  return h + SwiGlu(RmsNorm(h, p.ffn_norm, c.norm_eps), p.ffn_gate, p.ffn_up, p.ffn_down);
}

}  // namespace titans
