#include "model/config.h"

#include <cmath>
#include <initializer_list>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/status_macros.h"

namespace titans {
namespace {

using json = nlohmann::json;

absl::Status Invalid(absl::string_view key, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: ", key, " ", what));
}

// Rejects keys of `object` that are not in `allowed`, so that a typo is an error, not a default.
absl::Status CheckKeys(const json& object, absl::string_view where,
                       std::initializer_list<absl::string_view> allowed) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    bool known = false;
    for (absl::string_view a : allowed) known = known || it.key() == a;
    if (!known) {
      return Invalid(absl::StrCat(where.empty() ? "" : absl::StrCat(where, "."), it.key()),
                     "is not a known key");
    }
  }
  return absl::OkStatus();
}

absl::Status ReadInt(const json& o, const char* key, absl::string_view path, int* out) {
  if (!o.contains(key)) return absl::OkStatus();
  const json& v = o.at(key);
  if (!v.is_number_integer()) return Invalid(path, "must be an integer");
  int64_t x = v.get<int64_t>();
  if (x < INT32_MIN || x > INT32_MAX) return Invalid(path, "is out of range");
  *out = static_cast<int>(x);
  return absl::OkStatus();
}

absl::Status ReadDouble(const json& o, const char* key, absl::string_view path, double* out) {
  if (!o.contains(key)) return absl::OkStatus();
  const json& v = o.at(key);
  if (!v.is_number()) return Invalid(path, "must be a number");
  *out = v.get<double>();
  return absl::OkStatus();
}

absl::Status ReadBool(const json& o, const char* key, absl::string_view path, bool* out) {
  if (!o.contains(key)) return absl::OkStatus();
  const json& v = o.at(key);
  if (!v.is_boolean()) return Invalid(path, "must be true or false");
  *out = v.get<bool>();
  return absl::OkStatus();
}

absl::Status ReadString(const json& o, const char* key, absl::string_view path, std::string* out) {
  if (!o.contains(key)) return absl::OkStatus();
  const json& v = o.at(key);
  if (!v.is_string()) return Invalid(path, "must be a string");
  *out = v.get<std::string>();
  return absl::OkStatus();
}

absl::Status CheckRange(absl::string_view key, double v, double lo, double hi) {
  if (!(v >= lo && v <= hi)) {
    return Invalid(key, absl::StrCat("must be in [", lo, ", ", hi, "], got ", v));
  }
  return absl::OkStatus();
}

absl::Status ParseMemory(const json& m, MemoryConfig* out) {
  if (!m.is_object()) return Invalid("memory", "must be an object");
  TITANS_RETURN_IF_ERROR(
      CheckKeys(m, "memory",
                {"depth", "expansion", "activation", "qk_activation", "residual", "chunk_size",
                 "theta_max", "max_weight_rms", "conv_kernel", "alpha_bias_init", "eta_bias_init",
                 "theta_bias_init", "num_heads"}));
  TITANS_RETURN_IF_ERROR(ReadInt(m, "depth", "memory.depth", &out->depth));
  TITANS_RETURN_IF_ERROR(ReadInt(m, "expansion", "memory.expansion", &out->expansion));
  std::string act = std::string(ActivationName(out->activation));
  TITANS_RETURN_IF_ERROR(ReadString(m, "activation", "memory.activation", &act));
  if (act == "silu") {
    out->activation = Activation::kSiLU;
  } else if (act == "gelu") {
    out->activation = Activation::kGELU;
  } else {
    return Invalid("memory.activation",
                   absl::StrCat("must be \"silu\" or \"gelu\", got \"", act, "\""));
  }
  std::string qk_act = out->qk_silu ? "silu" : "none";
  TITANS_RETURN_IF_ERROR(ReadString(m, "qk_activation", "memory.qk_activation", &qk_act));
  if (qk_act != "silu" && qk_act != "none") {
    return Invalid("memory.qk_activation",
                   absl::StrCat("must be \"silu\" or \"none\", got \"", qk_act, "\""));
  }
  out->qk_silu = qk_act == "silu";
  TITANS_RETURN_IF_ERROR(ReadBool(m, "residual", "memory.residual", &out->residual));
  TITANS_RETURN_IF_ERROR(ReadInt(m, "chunk_size", "memory.chunk_size", &out->chunk_size));
  TITANS_RETURN_IF_ERROR(ReadDouble(m, "theta_max", "memory.theta_max", &out->theta_max));
  TITANS_RETURN_IF_ERROR(
      ReadDouble(m, "max_weight_rms", "memory.max_weight_rms", &out->max_weight_rms));
  TITANS_RETURN_IF_ERROR(ReadInt(m, "conv_kernel", "memory.conv_kernel", &out->conv_kernel));
  TITANS_RETURN_IF_ERROR(
      ReadDouble(m, "alpha_bias_init", "memory.alpha_bias_init", &out->alpha_bias_init));
  TITANS_RETURN_IF_ERROR(
      ReadDouble(m, "eta_bias_init", "memory.eta_bias_init", &out->eta_bias_init));
  TITANS_RETURN_IF_ERROR(
      ReadDouble(m, "theta_bias_init", "memory.theta_bias_init", &out->theta_bias_init));
  if (m.contains("num_heads") && m.at("num_heads").is_array()) {
    // One count per layer (range and length are checked by ValidateModelConfig).
    for (const json& v : m.at("num_heads")) {
      if (!v.is_number_integer()) return Invalid("memory.num_heads", "must list integers");
      const int64_t n = v.get<int64_t>();
      if (n < 0 || n > 1024) {
        return Invalid("memory.num_heads", absl::StrCat("must list counts in [1, 1024], got ", n));
      }
      out->layer_heads.push_back(static_cast<int>(n));
    }
    if (out->layer_heads.empty()) {
      return Invalid("memory.num_heads", "must list one count per layer, got an empty list");
    }
    return absl::OkStatus();
  }
  TITANS_RETURN_IF_ERROR(ReadInt(m, "num_heads", "memory.num_heads", &out->num_heads));
  return absl::OkStatus();
}

absl::Status ParseAttention(const json& a, AttentionConfig* out) {
  if (!a.is_object()) return Invalid("attention", "must be an object");
  TITANS_RETURN_IF_ERROR(
      CheckKeys(a, "attention", {"window", "segment_size", "num_persistent", "rope_theta"}));
  TITANS_RETURN_IF_ERROR(ReadInt(a, "window", "attention.window", &out->window));
  TITANS_RETURN_IF_ERROR(ReadInt(a, "segment_size", "attention.segment_size", &out->segment_size));
  TITANS_RETURN_IF_ERROR(
      ReadInt(a, "num_persistent", "attention.num_persistent", &out->num_persistent));
  TITANS_RETURN_IF_ERROR(ReadDouble(a, "rope_theta", "attention.rope_theta", &out->rope_theta));
  return absl::OkStatus();
}

absl::Status ParseTokenizer(const json& t, TokenizerSpec* out) {
  if (!t.is_object()) return Invalid("tokenizer", "must be an object");
  TITANS_RETURN_IF_ERROR(CheckKeys(t, "tokenizer", {"type", "model_file"}));
  TITANS_RETURN_IF_ERROR(ReadString(t, "type", "tokenizer.type", &out->type));
  TITANS_RETURN_IF_ERROR(ReadString(t, "model_file", "tokenizer.model_file", &out->model_file));
  return absl::OkStatus();
}

}  // namespace

std::string_view VariantName(Variant v) {
  switch (v) {
    case Variant::kMAC:
      return "mac";
    case Variant::kMAG:
      return "mag";
    case Variant::kMAL:
      return "mal";
    case Variant::kLMM:
      return "lmm";
    case Variant::kSWA:
      return "swa";
  }
  return "unknown";
}

std::string_view ActivationName(Activation a) { return a == Activation::kSiLU ? "silu" : "gelu"; }

absl::Status ValidateModelConfig(const ModelConfig& c) {
  if (c.format_version != ModelConfig::kFormatVersion) {
    return Invalid("format_version",
                   absl::StrCat("must be ", ModelConfig::kFormatVersion,
                                " (this build's format), got ", c.format_version));
  }
  TITANS_RETURN_IF_ERROR(CheckRange("vocab_size", c.vocab_size, 2, 1 << 20));
  TITANS_RETURN_IF_ERROR(CheckRange("d_model", c.d_model, 1, 1 << 16));
  TITANS_RETURN_IF_ERROR(CheckRange("num_layers", c.num_layers, 1, 1024));
  TITANS_RETURN_IF_ERROR(CheckRange("num_heads", c.num_heads, 1, 1024));
  TITANS_RETURN_IF_ERROR(CheckRange("head_dim", c.head_dim, 2, 1024));
  if (c.head_dim % 2 != 0) return Invalid("head_dim", "must be even (rotary pairs dimensions)");
  TITANS_RETURN_IF_ERROR(CheckRange("ffn_hidden", c.ffn_hidden, 1, 1 << 18));
  TITANS_RETURN_IF_ERROR(CheckRange("norm_eps", c.norm_eps, 1e-12, 1e-2));
  const MemoryConfig& m = c.memory;
  TITANS_RETURN_IF_ERROR(CheckRange("memory.depth", m.depth, 1, 4));
  TITANS_RETURN_IF_ERROR(CheckRange("memory.expansion", m.expansion, 1, 64));
  TITANS_RETURN_IF_ERROR(CheckRange("memory.chunk_size", m.chunk_size, 1, 256));
  if (!(m.theta_max > 0 && m.theta_max <= 100)) {
    return Invalid("memory.theta_max", absl::StrCat("must be in (0, 100], got ", m.theta_max));
  }
  if (!(m.max_weight_rms >= 0 && m.max_weight_rms <= 1e6)) {
    return Invalid("memory.max_weight_rms",
                   absl::StrCat("must be in [0, 1e6] (0 = unbounded), got ", m.max_weight_rms));
  }
  TITANS_RETURN_IF_ERROR(CheckRange("memory.conv_kernel", m.conv_kernel, 1, 16));
  for (auto [key, v] : {std::pair<const char*, double>{"memory.alpha_bias_init", m.alpha_bias_init},
                        {"memory.eta_bias_init", m.eta_bias_init},
                        {"memory.theta_bias_init", m.theta_bias_init}}) {
    TITANS_RETURN_IF_ERROR(CheckRange(key, v, -30, 30));
  }
  TITANS_RETURN_IF_ERROR(CheckRange("memory.num_heads", m.num_heads, 0, 1024));
  if (!m.layer_heads.empty()) {
    if (m.num_heads != 0) {
      return Invalid("memory.num_heads", "cannot be both one count and a count per layer");
    }
    if (m.layer_heads.size() != static_cast<size_t>(c.num_layers)) {
      return Invalid("memory.num_heads",
                     absl::StrCat("must list one count per layer (", c.num_layers, "), got ",
                                  m.layer_heads.size()));
    }
    for (int n : m.layer_heads) TITANS_RETURN_IF_ERROR(CheckRange("memory.num_heads", n, 1, 1024));
  }
  for (int i = 0; i < c.num_layers; ++i) {
    if (c.variant == Variant::kMAC && c.memory_heads(i) != c.num_heads) {
      return Invalid("memory.num_heads",
                     absl::StrCat("must equal num_heads (", c.num_heads,
                                  ") for MAC (its retrieval reads the memory with the attention's "
                                  "heads), got ",
                                  c.memory_heads(i)));
    }
  }
  const AttentionConfig& a = c.attention;
  TITANS_RETURN_IF_ERROR(CheckRange("attention.window", a.window, 1, 1 << 30));
  TITANS_RETURN_IF_ERROR(CheckRange("attention.segment_size", a.segment_size, 1, 1 << 16));
  if (c.variant == Variant::kMAC && a.segment_size % m.chunk_size != 0) {
    return Invalid("attention.segment_size",
                   absl::StrCat("must be a multiple of memory.chunk_size (", m.chunk_size,
                                ") for MAC, got ", a.segment_size));
  }
  TITANS_RETURN_IF_ERROR(CheckRange("attention.num_persistent", a.num_persistent, 0, 4096));
  TITANS_RETURN_IF_ERROR(CheckRange("attention.rope_theta", a.rope_theta, 1, 1e9));
  if (c.tokenizer.type != "byte" && c.tokenizer.type != "sentencepiece") {
    return Invalid("tokenizer.type", absl::StrCat("must be \"byte\" or \"sentencepiece\", got \"",
                                                  c.tokenizer.type, "\""));
  }
  if (c.tokenizer.type == "sentencepiece" && c.tokenizer.model_file.empty()) {
    return Invalid("tokenizer.model_file", "is required for a sentencepiece tokenizer");
  }
  if (c.initialization != "random" && c.initialization != "trained") {
    return Invalid("initialization", absl::StrCat("must be \"random\" or \"trained\", got \"",
                                                  c.initialization, "\""));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("config.json: not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("config.json: must be a JSON object");
  TITANS_RETURN_IF_ERROR(
      CheckKeys(j, "",
                {"format_version", "name", "variant", "vocab_size", "d_model", "num_layers",
                 "num_heads", "head_dim", "ffn_hidden", "norm_eps", "memory", "attention",
                 "tokenizer", "initialization", "description"}));
  ModelConfig c;
  if (!j.contains("format_version")) return Invalid("format_version", "is required");
  TITANS_RETURN_IF_ERROR(ReadInt(j, "format_version", "format_version", &c.format_version));
  TITANS_RETURN_IF_ERROR(ReadString(j, "name", "name", &c.name));
  std::string variant = "mac";
  TITANS_RETURN_IF_ERROR(ReadString(j, "variant", "variant", &variant));
  if (variant == "mac") {
    c.variant = Variant::kMAC;
  } else if (variant == "mag") {
    c.variant = Variant::kMAG;
  } else if (variant == "mal") {
    c.variant = Variant::kMAL;
  } else if (variant == "lmm") {
    c.variant = Variant::kLMM;
  } else if (variant == "swa") {
    c.variant = Variant::kSWA;
  } else {
    return Invalid("variant",
                   absl::StrCat("must be one of mac, mag, mal, lmm, swa, got \"", variant, "\""));
  }
  TITANS_RETURN_IF_ERROR(ReadInt(j, "vocab_size", "vocab_size", &c.vocab_size));
  TITANS_RETURN_IF_ERROR(ReadInt(j, "d_model", "d_model", &c.d_model));
  TITANS_RETURN_IF_ERROR(ReadInt(j, "num_layers", "num_layers", &c.num_layers));
  TITANS_RETURN_IF_ERROR(ReadInt(j, "num_heads", "num_heads", &c.num_heads));
  TITANS_RETURN_IF_ERROR(ReadInt(j, "head_dim", "head_dim", &c.head_dim));
  TITANS_RETURN_IF_ERROR(ReadInt(j, "ffn_hidden", "ffn_hidden", &c.ffn_hidden));
  TITANS_RETURN_IF_ERROR(ReadDouble(j, "norm_eps", "norm_eps", &c.norm_eps));
  if (j.contains("memory")) TITANS_RETURN_IF_ERROR(ParseMemory(j.at("memory"), &c.memory));
  if (j.contains("attention")) {
    TITANS_RETURN_IF_ERROR(ParseAttention(j.at("attention"), &c.attention));
  }
  if (j.contains("tokenizer")) {
    TITANS_RETURN_IF_ERROR(ParseTokenizer(j.at("tokenizer"), &c.tokenizer));
  }
  TITANS_RETURN_IF_ERROR(ReadString(j, "initialization", "initialization", &c.initialization));
  TITANS_RETURN_IF_ERROR(ReadString(j, "description", "description", &c.description));
  TITANS_RETURN_IF_ERROR(ValidateModelConfig(c));
  return c;
}

std::string ModelConfigToJson(const ModelConfig& c) {
  json j = json::object();
  j["format_version"] = c.format_version;
  j["name"] = c.name;
  j["description"] = c.description;
  j["initialization"] = c.initialization;
  j["variant"] = std::string(VariantName(c.variant));
  j["vocab_size"] = c.vocab_size;
  j["d_model"] = c.d_model;
  j["num_layers"] = c.num_layers;
  j["num_heads"] = c.num_heads;
  j["head_dim"] = c.head_dim;
  j["ffn_hidden"] = c.ffn_hidden;
  j["norm_eps"] = c.norm_eps;
  j["memory"] = {{"depth", c.memory.depth},
                 {"expansion", c.memory.expansion},
                 {"activation", std::string(ActivationName(c.memory.activation))},
                 {"qk_activation", c.memory.qk_silu ? "silu" : "none"},
                 {"residual", c.memory.residual},
                 {"chunk_size", c.memory.chunk_size},
                 {"theta_max", c.memory.theta_max},
                 {"max_weight_rms", c.memory.max_weight_rms},
                 {"conv_kernel", c.memory.conv_kernel},
                 {"alpha_bias_init", c.memory.alpha_bias_init},
                 {"eta_bias_init", c.memory.eta_bias_init},
                 {"theta_bias_init", c.memory.theta_bias_init}};
  // Optional: written only where set, so configs without it round-trip unchanged.
  if (!c.memory.layer_heads.empty()) {
    j["memory"]["num_heads"] = c.memory.layer_heads;
  } else if (c.memory.num_heads > 0) {
    j["memory"]["num_heads"] = c.memory.num_heads;
  }
  j["attention"] = {{"window", c.attention.window},
                    {"segment_size", c.attention.segment_size},
                    {"num_persistent", c.attention.num_persistent},
                    {"rope_theta", c.attention.rope_theta}};
  j["tokenizer"] = {{"type", c.tokenizer.type}, {"model_file", c.tokenizer.model_file}};
  return j.dump(2) + "\n";
}

}  // namespace titans
