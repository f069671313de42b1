// Model configuration: the typed form of a model directory's config.json.
//
// Every key is documented in docs/model.md. ParseModelConfig validates all values and reports the
// first problem with the key's JSON path; a config that parses is safe to build a model from.
// Plain data: copyable, thread-compatible.
#ifndef TITANS_MODEL_CONFIG_H_
#define TITANS_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace titans {

// The four architectures of the paper (section 4): memory as context, as gate, as layer, and the
// long-term memory module alone; plus kSWA, the baseline without neural memory: a transformer of
// sliding-window attention (attention.window, persistent tokens) and SwiGLU blocks. With a window
// as long as the history it is a full-attention transformer (its cache grows with the session).
enum class Variant { kMAC, kMAG, kMAL, kLMM, kSWA };

enum class Activation { kSiLU, kGELU };

std::string_view VariantName(Variant v);
std::string_view ActivationName(Activation a);

struct MemoryConfig {
  int depth = 2;      // L_M, layers of the memory MLP, 1..4.
  int expansion = 4;  // hidden width = expansion * head_dim (depth >= 2).
  Activation activation = Activation::kSiLU;
  bool residual = false;  // M(z) = z + MLP(z).
  // SiLU on the memory's queries and keys before their L2 norm (the paper's choice). Without it
  // ("none") they are signed unit vectors; trained that way the default model recalled fact lists
  // worse (docs/evaluation.md, "Signed keys").
  bool qk_silu = true;
  int chunk_size = 16;  // b: gradients inside a chunk are taken at its start weights.
  // Inner learning rate theta_t in (0, theta_max). 0.01: with chunk 16 and eta ~0.88 a chunk adds
  // up to ~80 single steps along a consistent gradient, so theta ~0.005 keeps the per-chunk gain
  // ~0.4 (0.1 made the memory chaotic on ordinary text: docs/model.md, "Stability").
  double theta_max = 0.01;
  int conv_kernel = 4;  // causal depthwise conv on q, k, v.
  // Bound on each memory weight matrix when a chunk closes: if the RMS of its entries exceeds this,
  // the matrix is scaled down to it (0 = unbounded). Inside a chunk every gradient is taken at the
  // chunk-start weights, so a run of near-identical keys adds up to ~b / (1 - eta) times one step
  // and the memory can diverge (a few hundred repeated bytes did, with the default gates); the
  // bound turns that into saturation. Far above what real text reaches.
  double max_weight_rms = 1.0;
  // Gate bias initialisation (sigmoid space): alpha ~ sigmoid(alpha_bias) etc.
  double alpha_bias_init = -4.0;
  double eta_bias_init = 2.0;
  double theta_bias_init = 0.0;
  // Heads of the memory, each head_dim wide; 0 = the attention's num_heads (see
  // ModelConfig::memory_heads). Each head is an independent memory MLP, so the memory's
  // parameters and per-session state grow in proportion. MAC requires the attention's count (its
  // retrieval reads the memory with the attention's head layout).
  int num_heads = 0;
  // Heads of each layer's memory where the layers differ, one count per layer (config.json:
  // memory.num_heads given as an array). Empty = every layer has num_heads. When set, num_heads
  // must be 0. Why: a head added for one layer's job (the default model's fact head reads in
  // layer 1) would otherwise be carried, unused, by every layer's state.
  std::vector<int> layer_heads;
};

struct AttentionConfig {
  int window =
      64;  // w: sliding window of MAG, MAL and SWA (a token sees w tokens, itself included).
  int segment_size = 64;   // C: MAC segment length, a multiple of memory.chunk_size.
  int num_persistent = 4;  // N_p: learned persistent-memory tokens per layer.
  double rope_theta = 10000.0;
};

struct TokenizerSpec {
  std::string type = "byte";  // "byte" or "sentencepiece".
  std::string model_file;     // sentencepiece model, relative to the model directory.
};

struct ModelConfig {
  static constexpr int kFormatVersion = 1;

  int format_version = kFormatVersion;
  std::string name = "titans";
  Variant variant = Variant::kMAC;
  int vocab_size = 260;
  int d_model = 128;
  int num_layers = 2;
  int num_heads = 4;
  int head_dim = 32;
  int ffn_hidden = 384;  // SwiGLU hidden width.
  double norm_eps = 1e-6;
  MemoryConfig memory;
  AttentionConfig attention;
  TokenizerSpec tokenizer;
  // "random" (untrained, as made by titans-init-model) or "trained".
  std::string initialization = "random";
  std::string description;

  // Width of the memory MLP's hidden layers.
  int memory_hidden() const { return memory.expansion * head_dim; }
  // Heads of layer `layer`'s neural memory (0 <= layer < num_layers): memory.layer_heads[layer]
  // where per-layer counts are set, else memory.num_heads where set, else num_heads.
  int memory_heads(int layer) const {
    if (!memory.layer_heads.empty()) return memory.layer_heads[layer];
    return memory.num_heads > 0 ? memory.num_heads : num_heads;
  }
};

// Parses and validates config.json text. INVALID_ARGUMENT names the offending key, e.g.
// "config.json: memory.depth must be in [1, 4], got 7". Unknown keys are rejected so that typos
// do not silently fall back to defaults.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);

// Validates a config built in code (the same checks ParseModelConfig applies).
absl::Status ValidateModelConfig(const ModelConfig& config);

// Serialises to config.json text (pretty, keys in a stable order). ParseModelConfig(ToJson(c))
// reproduces c.
std::string ModelConfigToJson(const ModelConfig& config);

}  // namespace titans

#endif  // TITANS_MODEL_CONFIG_H_
