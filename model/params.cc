#include "model/params.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "model/memory_math.h"

namespace titans {

std::vector<ParamSlot> ParamSlots(const ModelConfig& c, ModelParams* p) {
  const int64_t d = c.d_model, hd = int64_t{c.num_heads} * c.head_dim;
  const int64_t K = c.memory.conv_kernel, f = c.ffn_hidden;
  std::vector<ParamSlot> s;
  s.push_back({"embedding.weight", &p->embedding, {c.vocab_size, d}, InitKind::kEmbedding});
  p->layers.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    LayerParams& L = p->layers[i];
    const std::string pre = absl::StrCat("layers.", i, ".");
    s.push_back({pre + "mixer_norm.weight", &L.mixer_norm, {d}, InitKind::kOnes});
    if (c.variant == Variant::kMAL) {
      s.push_back({pre + "attn_norm.weight", &L.attn_norm, {d}, InitKind::kOnes});
    }
    if (c.variant == Variant::kMAC || c.variant == Variant::kMAG) {
      s.push_back({pre + "combine.y_norm.weight", &L.combine_y_norm, {d}, InitKind::kOnes});
      s.push_back({pre + "combine.m_norm.weight", &L.combine_m_norm, {d}, InitKind::kOnes});
    }
    if (c.variant != Variant::kLMM) {
      const std::string a = pre + "attn.";
      s.push_back({a + "wq.weight", &L.attn.wq, {hd, d}, InitKind::kLinear});
      s.push_back({a + "wk.weight", &L.attn.wk, {hd, d}, InitKind::kLinear});
      s.push_back({a + "wv.weight", &L.attn.wv, {hd, d}, InitKind::kLinear});
      s.push_back({a + "wo.weight", &L.attn.wo, {d, hd}, InitKind::kOutput});
      if (c.attention.num_persistent > 0) {
        s.push_back({a + "persistent",
                     &L.attn.persistent,
                     {c.attention.num_persistent, d},
                     InitKind::kPersistent});
      }
    }
    if (c.variant == Variant::kMAC) {
      const std::string r = pre + "retrieval.";
      s.push_back({r + "q_proj.weight", &L.retrieval.q_proj, {hd, d}, InitKind::kLinear});
      s.push_back({r + "q_conv.weight", &L.retrieval.q_conv, {hd, K}, InitKind::kConv});
      s.push_back({r + "out_proj.weight", &L.retrieval.out_proj, {d, hd}, InitKind::kLinear});
    }
    if (c.variant != Variant::kSWA) {  // the baseline has no neural memory
      NeuralMemoryParams& M = L.memory;
      const std::string m = pre + "memory.";
      // The memory has its own head count (memory.num_heads, per layer), each head_dim wide.
      const int64_t Hm = c.memory_heads(i), mhd = Hm * c.head_dim;
      s.push_back({m + "q_proj.weight", &M.q_proj, {mhd, d}, InitKind::kLinear});
      s.push_back({m + "k_proj.weight", &M.k_proj, {mhd, d}, InitKind::kLinear});
      s.push_back({m + "v_proj.weight", &M.v_proj, {mhd, d}, InitKind::kLinear});
      s.push_back({m + "q_conv.weight", &M.q_conv, {mhd, K}, InitKind::kConv});
      s.push_back({m + "k_conv.weight", &M.k_conv, {mhd, K}, InitKind::kConv});
      s.push_back({m + "v_conv.weight", &M.v_conv, {mhd, K}, InitKind::kConv});
      s.push_back({m + "alpha_proj.weight", &M.alpha_w, {Hm, d}, InitKind::kGate});
      s.push_back(
          {m + "alpha_proj.bias", &M.alpha_b, {Hm}, InitKind::kConstant, c.memory.alpha_bias_init});
      s.push_back({m + "eta_proj.weight", &M.eta_w, {Hm, d}, InitKind::kGate});
      s.push_back(
          {m + "eta_proj.bias", &M.eta_b, {Hm}, InitKind::kConstant, c.memory.eta_bias_init});
      s.push_back({m + "theta_proj.weight", &M.theta_w, {Hm, d}, InitKind::kGate});
      s.push_back(
          {m + "theta_proj.bias", &M.theta_b, {Hm}, InitKind::kConstant, c.memory.theta_bias_init});
      const auto shapes = MemoryLayerShapes(c.memory.depth, c.head_dim, c.memory_hidden());
      M.initial_weights.resize(shapes.size());
      for (size_t l = 0; l < shapes.size(); ++l) {
        s.push_back({absl::StrCat(m, "initial_weights.", l),
                     &M.initial_weights[l],
                     {Hm, shapes[l].second, shapes[l].first},
                     InitKind::kMemory});
      }
      s.push_back({m + "out_norm.weight", &M.out_norm, {mhd}, InitKind::kOnes});
      s.push_back({m + "out_gate.weight", &M.out_gate, {mhd, d}, InitKind::kLinear});
      s.push_back({m + "out_proj.weight", &M.out_proj, {d, mhd}, InitKind::kOutput});
    }
    s.push_back({pre + "ffn_norm.weight", &L.ffn_norm, {d}, InitKind::kOnes});
    s.push_back({pre + "ffn.gate.weight", &L.ffn_gate, {f, d}, InitKind::kLinear});
    s.push_back({pre + "ffn.up.weight", &L.ffn_up, {f, d}, InitKind::kLinear});
    s.push_back({pre + "ffn.down.weight", &L.ffn_down, {d, f}, InitKind::kOutput});
  }
  // The output head is the embedding (tied, rows ~ N(0, 1), norm ~sqrt(d)); starting the final
  // norm's gain at 1/sqrt(d) makes the initial logits ~N(0, 1), so an untrained model starts near
  // the uniform loss ln(V) instead of ~100 nats per token.
  s.push_back({"final_norm.weight",
               &p->final_norm,
               {d},
               InitKind::kConstant,
               1.0 / std::sqrt(static_cast<double>(d))});
  return s;
}

ModelParams RandomParams(const ModelConfig& c, uint64_t seed) {
  ModelParams p;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  auto opt = at::TensorOptions().dtype(at::kFloat);
  for (ParamSlot& slot : ParamSlots(c, &p)) {
    const double fan_in = slot.shape.size() >= 2 ? static_cast<double>(slot.shape.back()) : 1.0;
    at::Tensor t;
    switch (slot.init) {
      case InitKind::kLinear:
        t = at::normal(0.0, 1.0 / std::sqrt(fan_in), slot.shape, gen, opt);
        break;
      case InitKind::kGate:
        // Data-dependent gates start close to their biases (alpha ~ 0.018, eta ~ 0.88,
        // theta ~ theta_max / 2): with N(0, 1/fan_in) weights an untrained model's effective
        // inner step theta / (1 - eta) reaches ~10 on some inputs and the memory diverges.
        t = at::normal(0.0, 0.02 / std::sqrt(fan_in), slot.shape, gen, opt);
        break;
      case InitKind::kOutput:
        t = at::normal(0.0, 1.0 / std::sqrt(fan_in * 2 * c.num_layers), slot.shape, gen, opt);
        break;
      case InitKind::kEmbedding:
      case InitKind::kPersistent:
        t = at::normal(0.0, 1.0, slot.shape, gen, opt);
        break;
      case InitKind::kOnes:
        t = at::ones(slot.shape, opt);
        break;
      case InitKind::kConstant:
        t = at::full(slot.shape, slot.value, opt);
        break;
      case InitKind::kConv: {
        // Pass the current token through, with a little of the previous ones.
        t = at::normal(0.0, 0.1, slot.shape, gen, opt);
        t.select(1, slot.shape[1] - 1).add_(1.0);
        break;
      }
      case InitKind::kMemory:
        t = at::normal(0.0, 1.0 / std::sqrt(fan_in), slot.shape, gen, opt);
        break;
    }
    *slot.tensor = t;
  }
  return p;
}

int64_t CountParameters(const ModelConfig& c) {
  ModelParams p;
  int64_t n = 0;
  for (const ParamSlot& slot : ParamSlots(c, &p)) {
    int64_t k = 1;
    for (int64_t dim : slot.shape) k *= dim;
    n += k;
  }
  return n;
}

}  // namespace titans
