// Shared helpers for the model tests: tiny configs for every variant, double-precision copies,
// comparisons over whole session states.
#ifndef TITANS_TESTS_MODEL_MODEL_TEST_UTIL_H_
#define TITANS_TESTS_MODEL_MODEL_TEST_UTIL_H_

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>

#include "model/titans_model.h"

namespace titans::testing {

// A small config (d 32, 2 heads x 16, 2 layers, window 8, segment 8) that still crosses chunk,
// window and segment boundaries within a few dozen tokens.
// Every architecture the model implements.
inline constexpr Variant kAllVariants[] = {Variant::kMAC, Variant::kMAG, Variant::kMAL,
                                           Variant::kLMM, Variant::kSWA};

inline ModelConfig TinyConfig(Variant variant, int depth = 2, int chunk = 4) {
  ModelConfig c;
  c.name = "tiny";
  c.variant = variant;
  c.vocab_size = 260;
  c.d_model = 32;
  c.num_layers = 2;
  c.num_heads = 2;
  c.head_dim = 16;
  c.ffn_hidden = 64;
  c.memory.depth = depth;
  c.memory.expansion = 2;
  c.memory.chunk_size = chunk;
  c.attention.window = 8;
  c.attention.segment_size = 8;
  c.attention.num_persistent = 2;
  // Unbounded memory weights: the exactness tests compare plain mathematics (the bound has its
  // own tests).
  c.memory.max_weight_rms = 0;
  return c;
}

inline std::unique_ptr<TitansModel> MakeModel(const ModelConfig& c, uint64_t seed = 1,
                                              bool dbl = false) {
  auto model = TitansModel::CreateRandom(c, seed);
  if (!model.ok()) return nullptr;
  if (dbl) {
    for (ParamSlot& s : ParamSlots((*model)->config(), &(*model)->mutable_params())) {
      *s.tensor = s.tensor->to(at::kDouble);
    }
  }
  return std::move(*model);
}

inline at::Tensor RandomTokens(int64_t batch, int64_t length, uint64_t seed, int64_t vocab = 256) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randint(0, vocab, {batch, length}, gen, at::TensorOptions().dtype(at::kLong));
}

// Calls fn(name, a, b) for every tensor of two states of the same config.
inline void ForEachStateTensor(
    const SessionState& a, const SessionState& b,
    const std::function<void(const std::string&, const at::Tensor&, const at::Tensor&)>& fn) {
  for (size_t i = 0; i < a.layers.size(); ++i) {
    // The caches' entries and the tails' rows, whether in ring or tensor form.
    LayerState x = a.layers[i], y = b.layers[i];
    for (LayerState* l : {&x, &y}) {
      MaterializeCache(l);
      MaterializeTails(l);
    }
    const std::string pre = "layers." + std::to_string(i) + ".";
    for (size_t l = 0; l < x.memory.weights.size(); ++l) {
      fn(pre + "weights", x.memory.weights[l], y.memory.weights[l]);
      fn(pre + "momentum", x.memory.momentum[l], y.memory.momentum[l]);
      const int li = static_cast<int>(l);
      fn(pre + "pending_inputs", PendingInputs(x.memory, li), PendingInputs(y.memory, li));
      fn(pre + "pending_deltas", PendingDeltas(x.memory, li), PendingDeltas(y.memory, li));
    }
    for (size_t l = 0; l < x.segment_weights.size(); ++l) {
      fn(pre + "segment_weights", x.segment_weights[l], y.segment_weights[l]);
    }
    if (x.q_tail.defined()) {  // every variant but the memory-less baseline (SWA)
      const MemoryGates gx = PendingGates(x.memory), gy = PendingGates(y.memory);
      fn(pre + "log_keep", gx.log_keep, gy.log_keep);
      fn(pre + "log_eta", gx.log_eta, gy.log_eta);
      fn(pre + "theta", gx.theta, gy.theta);
      fn(pre + "q_tail", x.q_tail, y.q_tail);
      fn(pre + "k_tail", x.k_tail, y.k_tail);
      fn(pre + "v_tail", x.v_tail, y.v_tail);
    }
    if (x.retrieval_tail.defined()) fn(pre + "retrieval_tail", x.retrieval_tail, y.retrieval_tail);
    if (x.attn_k.defined()) {
      fn(pre + "attn_k", x.attn_k, y.attn_k);
      fn(pre + "attn_v", x.attn_v, y.attn_v);
    }
  }
  fn("last_logits", a.last_logits, b.last_logits);
}

// Largest absolute difference over all tensors of two states; infinity on a shape mismatch.
inline double MaxStateDiff(const SessionState& a, const SessionState& b) {
  double worst = 0;
  ForEachStateTensor(a, b, [&](const std::string&, const at::Tensor& x, const at::Tensor& y) {
    if (x.sizes() != y.sizes()) {
      worst = std::numeric_limits<double>::infinity();
    } else if (x.numel() > 0) {
      worst = std::max(worst, (x - y).abs().max().item<double>());
    }
  });
  return worst;
}

inline std::string Name(Variant v) { return std::string(VariantName(v)); }

}  // namespace titans::testing

#endif  // TITANS_TESTS_MODEL_MODEL_TEST_UTIL_H_
