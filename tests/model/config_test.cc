#include "model/config.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace titans {
namespace {

// Occurrences of `needle` in `text`.
int Count(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

TEST(ModelConfig, JsonRoundTrip) {
  ModelConfig c;
  c.variant = Variant::kMAG;
  c.memory.depth = 3;
  c.memory.activation = Activation::kGELU;
  c.memory.residual = true;
  c.memory.qk_silu = false;
  c.attention.window = 33;
  c.description = "a \"quoted\" description";
  auto back = ParseModelConfig(ModelConfigToJson(c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(ModelConfigToJson(*back), ModelConfigToJson(c));
  EXPECT_EQ(back->variant, Variant::kMAG);
  EXPECT_EQ(back->memory.activation, Activation::kGELU);
  EXPECT_TRUE(back->memory.residual);
  EXPECT_FALSE(back->memory.qk_silu);
  // A config written before memory.qk_activation existed keeps the paper's SiLU.
  auto old = ParseModelConfig(R"({"format_version": 1, "memory": {"depth": 2}})");
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_TRUE(old->memory.qk_silu);
}

// memory.num_heads (optional): the memory's own head count; written back only where set, so a
// config without it (every model made before it existed) round-trips byte for byte.
TEST(ModelConfig, MemoryNumHeadsIsOptionalAndRoundTrips) {
  auto five = ParseModelConfig(
      R"({"format_version": 1, "variant": "mal", "num_heads": 4, "memory": {"num_heads": 5}})");
  ASSERT_TRUE(five.ok()) << five.status();
  EXPECT_EQ(five->num_heads, 4);
  EXPECT_EQ(five->memory.num_heads, 5);
  EXPECT_EQ(five->memory_heads(0), 5);
  const std::string json = ModelConfigToJson(*five);
  EXPECT_NE(json.find("\"num_heads\": 5"), std::string::npos) << json;
  EXPECT_EQ(Count(json, "\"num_heads\""), 2) << json;  // the attention's and the memory's
  auto back = ParseModelConfig(json);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->memory.num_heads, 5);
  EXPECT_EQ(back->memory_heads(0), 5);
  EXPECT_EQ(ModelConfigToJson(*back), json);

  // Absent: the attention's count, and not written back.
  auto plain = ParseModelConfig(R"({"format_version": 1, "variant": "mal", "num_heads": 4})");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->memory.num_heads, 0);
  EXPECT_EQ(plain->memory_heads(0), 4);
  const std::string plain_json = ModelConfigToJson(*plain);
  // The only "num_heads" is the top-level one.
  EXPECT_EQ(Count(plain_json, "\"num_heads\""), 1) << plain_json;
  auto plain_back = ParseModelConfig(plain_json);
  ASSERT_TRUE(plain_back.ok()) << plain_back.status();
  EXPECT_EQ(ModelConfigToJson(*plain_back), plain_json);
  // A default config (no key) round-trips byte-identically, too.
  EXPECT_EQ(ModelConfigToJson(*ParseModelConfig(ModelConfigToJson(ModelConfig{}))),
            ModelConfigToJson(ModelConfig{}));
  EXPECT_EQ(ModelConfigToJson(ModelConfig{}).find("\"num_heads\": 0"), std::string::npos);

  // 0 is the same as absent; MAC accepts the attention's count spelled out.
  auto zero = ParseModelConfig(
      R"({"format_version": 1, "variant": "lmm", "num_heads": 3, "memory": {"num_heads": 0}})");
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_EQ(zero->memory_heads(0), 3);
  auto mac_same = ParseModelConfig(
      R"({"format_version": 1, "variant": "mac", "num_heads": 4, "memory": {"num_heads": 4}})");
  ASSERT_TRUE(mac_same.ok()) << mac_same.status();
  EXPECT_EQ(mac_same->memory_heads(0), 4);
  // Fewer memory heads than attention heads are allowed, too (MAG).
  auto fewer = ParseModelConfig(
      R"({"format_version": 1, "variant": "mag", "num_heads": 4, "memory": {"num_heads": 1}})");
  ASSERT_TRUE(fewer.ok()) << fewer.status();
  EXPECT_EQ(fewer->memory_heads(0), 1);
}

// memory.num_heads as an array: one count per layer, written back as the same array.
TEST(ModelConfig, MemoryNumHeadsPerLayerRoundTrips) {
  auto per_layer = ParseModelConfig(
      R"({"format_version": 1, "variant": "mal", "num_heads": 4, "num_layers": 3,
          "memory": {"num_heads": [4, 5, 1]}})");
  ASSERT_TRUE(per_layer.ok()) << per_layer.status();
  EXPECT_EQ(per_layer->memory.num_heads, 0);
  EXPECT_EQ(per_layer->memory.layer_heads, (std::vector<int>{4, 5, 1}));
  EXPECT_EQ(per_layer->memory_heads(0), 4);
  EXPECT_EQ(per_layer->memory_heads(1), 5);
  EXPECT_EQ(per_layer->memory_heads(2), 1);
  const std::string json = ModelConfigToJson(*per_layer);
  auto back = ParseModelConfig(json);
  ASSERT_TRUE(back.ok()) << back.status() << json;
  EXPECT_EQ(back->memory.layer_heads, (std::vector<int>{4, 5, 1}));
  EXPECT_EQ(ModelConfigToJson(*back), json);
  // MAC accepts a list that gives every layer the attention's count.
  auto mac = ParseModelConfig(
      R"({"format_version": 1, "variant": "mac", "num_heads": 4, "memory": {"num_heads": [4, 4]}})");
  ASSERT_TRUE(mac.ok()) << mac.status();
  EXPECT_EQ(mac->memory_heads(1), 4);
}

TEST(ModelConfig, MemoryNumHeadsIsValidated) {
  for (const char* json : {
           // MAC's retrieval reads the memory with the attention's heads.
           R"({"format_version": 1, "variant": "mac", "num_heads": 4, "memory": {"num_heads": 5}})",
           R"({"format_version": 1, "variant": "mal", "memory": {"num_heads": -1}})",
           R"({"format_version": 1, "variant": "mal", "memory": {"num_heads": 1025}})",
           R"({"format_version": 1, "variant": "mal", "memory": {"num_heads": 2.5}})",
           // Per layer: one count per layer (2 here), each in [1, 1024], integers only.
           R"({"format_version": 1, "variant": "mal", "memory": {"num_heads": [4]}})",
           R"({"format_version": 1, "variant": "mal", "memory": {"num_heads": [4, 5, 6]}})",
           R"({"format_version": 1, "variant": "mal", "memory": {"num_heads": []}})",
           R"({"format_version": 1, "variant": "mal", "memory": {"num_heads": [4, 0]}})",
           R"({"format_version": 1, "variant": "mal", "memory": {"num_heads": [4, 1025]}})",
           R"({"format_version": 1, "variant": "mal", "memory": {"num_heads": [4, 2.5]}})",
           R"({"format_version": 1, "variant": "mal", "memory": {"num_heads": [4, "5"]}})",
           R"({"format_version": 1, "variant": "mac", "memory": {"num_heads": [4, 5]}})",
       }) {
    auto r = ParseModelConfig(json);
    ASSERT_FALSE(r.ok()) << json;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << json;
    EXPECT_NE(r.status().message().find("memory.num_heads"), std::string::npos)
        << json << " -> " << r.status();
  }
  // The same checks for a config built in code.
  ModelConfig mac;
  mac.variant = Variant::kMAC;
  mac.memory.num_heads = mac.num_heads + 1;
  absl::Status st = ValidateModelConfig(mac);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("memory.num_heads"), std::string::npos) << st;
  mac.variant = Variant::kMAL;
  EXPECT_TRUE(ValidateModelConfig(mac).ok());
  // Both forms at once, or a list of the wrong length, in code.
  ModelConfig both;
  both.variant = Variant::kMAL;
  both.memory.num_heads = 4;
  both.memory.layer_heads = {4, 5};
  st = ValidateModelConfig(both);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  both.memory.num_heads = 0;
  EXPECT_TRUE(ValidateModelConfig(both).ok());
  both.num_layers = 3;
  st = ValidateModelConfig(both);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("one count per layer"), std::string::npos) << st;
}

TEST(ModelConfig, ErrorsNameTheKey) {
  struct Case {
    const char* json;
    const char* key;
  } cases[] = {
      {"{}", "format_version"},
      {R"({"format_version": 2})", "format_version"},
      {R"({"format_version": 1, "variant": "xyz"})", "variant"},
      {R"({"format_version": 1, "memory": {"depth": 0}})", "memory.depth"},
      {R"({"format_version": 1, "memory": {"depth": "two"}})", "memory.depth"},
      {R"({"format_version": 1, "memory": {"chunk_size": 5}})", "attention.segment_size"},
      {R"({"format_version": 1, "memory": {"activation": "relu"}})", "memory.activation"},
      {R"({"format_version": 1, "memory": {"theta_max": -1}})", "memory.theta_max"},
      {R"({"format_version": 1, "memory": {"qk_activation": "relu"}})", "memory.qk_activation"},
      {R"({"format_version": 1, "head_dim": 31})", "head_dim"},
      {R"({"format_version": 1, "typo_key": 1})", "typo_key"},
      {R"({"format_version": 1, "attention": {"windw": 3}})", "attention.windw"},
      {R"({"format_version": 1, "tokenizer": {"type": "sentencepiece"}})", "tokenizer.model_file"},
      {R"({"format_version": 1, "initialization": "maybe"})", "initialization"},
      {R"([1, 2])", "object"},
      {R"({"format_version": 1, )", "JSON"},
  };
  for (const Case& c : cases) {
    auto r = ParseModelConfig(c.json);
    ASSERT_FALSE(r.ok()) << c.json;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.json;
    EXPECT_NE(r.status().message().find(c.key), std::string::npos)
        << c.json << " -> " << r.status();
  }
}

}  // namespace
}  // namespace titans
