#include "model/config.h"

#include <gtest/gtest.h>

namespace titans {
namespace {

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
