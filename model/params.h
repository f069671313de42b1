// The model's learned parameters, named as in model.safetensors (docs/model.md lists every name).
//
// ParamSlots() is the single source of truth for which tensors a config has, their names and
// shapes, and how they are initialised: allocation, random initialisation, loading (with shape
// validation) and saving all walk it. Thread safety: ModelParams is immutable after loading and
// may then be read from many threads; training mutates it from one thread.
#ifndef TITANS_MODEL_PARAMS_H_
#define TITANS_MODEL_PARAMS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace titans {

// The long-term memory module (section 1 of docs/model.md), one per layer. H here is the
// memory's head count in that layer, ModelConfig::memory_heads(layer) (memory.num_heads, default
// num_heads).
struct NeuralMemoryParams {
  at::Tensor q_proj, k_proj, v_proj;        // [H*dh, d]
  at::Tensor q_conv, k_conv, v_conv;        // [H*dh, K] depthwise causal conv taps
  at::Tensor alpha_w, eta_w, theta_w;       // [H, d] data-dependent gates
  at::Tensor alpha_b, eta_b, theta_b;       // [H]
  std::vector<at::Tensor> initial_weights;  // Phi_init per memory layer, [H, out_l, in_l]
  at::Tensor out_norm;                      // [H*dh] per-head RMSNorm weight
  at::Tensor out_gate;                      // [H*dh, d]
  at::Tensor out_proj;                      // [d, H*dh]
};

struct AttentionParams {
  at::Tensor wq, wk, wv;  // [H*dh, d]
  at::Tensor wo;          // [d, H*dh]
  at::Tensor persistent;  // [N_p, d] persistent-memory tokens (keys/values via wk, wv)
};

// MAC only: the query that reads the memory at the segment start, and the map from the retrieved
// per-head vectors back to model width (they become attention context tokens).
struct RetrievalParams {
  at::Tensor q_proj;    // [H*dh, d]
  at::Tensor q_conv;    // [H*dh, K]
  at::Tensor out_proj;  // [d, H*dh]
};

struct LayerParams {
  at::Tensor mixer_norm;      // [d]
  at::Tensor attn_norm;       // [d]  MAL: the attention sub-layer's pre-norm
  at::Tensor combine_y_norm;  // [d]  MAC/MAG: o = norm(y) * sigmoid(norm(m))
  at::Tensor combine_m_norm;  // [d]
  AttentionParams attn;       // absent for LMM
  NeuralMemoryParams memory;
  RetrievalParams retrieval;    // MAC only
  at::Tensor ffn_norm;          // [d]
  at::Tensor ffn_gate, ffn_up;  // [f, d] SwiGLU
  at::Tensor ffn_down;          // [d, f]
};

struct ModelParams {
  at::Tensor embedding;  // [V, d], tied with the output head
  std::vector<LayerParams> layers;
  at::Tensor final_norm;  // [d]
};

enum class InitKind {
  kLinear,      // normal(0, 1/sqrt(fan_in))
  kGate,        // normal(0, 0.02/sqrt(fan_in)): gates start near their bias values
  kOutput,      // normal(0, 1/sqrt(fan_in * 2 * num_layers)): residual-branch outputs
  kEmbedding,   // normal(0, 1)
  kOnes,        // norms
  kConstant,    // gate biases
  kConv,        // causal conv: identity on the current token plus small noise
  kPersistent,  // normal(0, 1)
  kMemory,      // Phi_init: normal(0, 1/sqrt(in))
};

struct ParamSlot {
  std::string name;
  at::Tensor* tensor;
  std::vector<int64_t> shape;
  InitKind init;
  double value = 0;  // kConstant
};

// Every parameter of `config`, in a stable order, pointing into *params (which it resizes).
std::vector<ParamSlot> ParamSlots(const ModelConfig& config, ModelParams* params);

// Allocates and randomly initialises all parameters (float32, CPU), deterministic in `seed`.
ModelParams RandomParams(const ModelConfig& config, uint64_t seed);

int64_t CountParameters(const ModelConfig& config);

}  // namespace titans

#endif  // TITANS_MODEL_PARAMS_H_
