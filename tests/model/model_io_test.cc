// Model directories: config.json + model.safetensors round trip, and every kind of damage gives
// a clear error naming the problem.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "model/file_util.h"
#include "model/safetensors.h"
#include "model/sentencepiece_loader.h"
#include "model/titans_model.h"
#include "tests/model/model_test_util.h"

namespace titans {
namespace {

using testing::MakeModel;
using testing::RandomTokens;
using testing::TinyConfig;

class ModelDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() /
            ("titans_model_io_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    std::filesystem::remove_all(dir_);
    model_ = MakeModel(TinyConfig(Variant::kMAL, 3), 21);
    ASSERT_TRUE(model_->Save(dir_).ok());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Read(const std::string& name) { return *ReadFileToString(dir_ + "/" + name); }
  void Write(const std::string& name, const std::string& data) {
    ASSERT_TRUE(WriteFileAtomic(dir_ + "/" + name, data).ok());
  }
  absl::Status LoadStatus() { return TitansModel::Load(dir_).status(); }

  std::string dir_;
  std::unique_ptr<TitansModel> model_;
};

TEST_F(ModelDir, SaveLoadRoundTripGivesIdenticalModel) {
  auto loaded = TitansModel::Load(dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->fingerprint(), model_->fingerprint());
  EXPECT_EQ(ModelConfigToJson((*loaded)->config()), ModelConfigToJson(model_->config()));
  at::NoGradGuard no_grad;
  SessionState a = model_->NewState(), b = (*loaded)->NewState();
  at::Tensor tokens = RandomTokens(1, 20, 1);
  auto la = model_->Forward(&a, tokens, LogitsMode::kAll);
  auto lb = (*loaded)->Forward(&b, tokens, LogitsMode::kAll);
  ASSERT_TRUE(la.ok() && lb.ok());
  EXPECT_TRUE(at::equal(*la, *lb));
}

// memory.num_heads survives a save and load (config.json and the weights' shapes); the same
// weights under a config without it (the attention's head count) are refused, naming a tensor.
TEST_F(ModelDir, MemoryHeadsSaveLoadRoundTrip) {
  ModelConfig c = TinyConfig(Variant::kMAL, 2);
  c.memory.num_heads = 3;
  auto model = MakeModel(c, 22);
  ASSERT_NE(model, nullptr);
  std::filesystem::remove_all(dir_);
  ASSERT_TRUE(model->Save(dir_).ok());
  EXPECT_NE(Read("config.json").find("\"num_heads\": 3"), std::string::npos);
  auto loaded = TitansModel::Load(dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->config().memory_heads(0), 3);
  EXPECT_EQ((*loaded)->fingerprint(), model->fingerprint());
  at::NoGradGuard no_grad;
  SessionState a = model->NewState(), b = (*loaded)->NewState();
  at::Tensor tokens = RandomTokens(1, 20, 1);
  auto la = model->Forward(&a, tokens, LogitsMode::kAll);
  auto lb = (*loaded)->Forward(&b, tokens, LogitsMode::kAll);
  ASSERT_TRUE(la.ok() && lb.ok());
  EXPECT_TRUE(at::equal(*la, *lb));

  std::string config = Read("config.json");
  const std::string key = "\"num_heads\": 3,";
  ASSERT_NE(config.find(key), std::string::npos) << config;
  config.erase(config.find(key), key.size());
  Write("config.json", config);
  absl::Status st = LoadStatus();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("layers.0.memory.q_proj.weight"), std::string::npos) << st;
}

TEST_F(ModelDir, MissingFilesAreNotFound) {
  std::filesystem::remove(dir_ + "/model.safetensors");
  EXPECT_EQ(LoadStatus().code(), absl::StatusCode::kNotFound);
  std::filesystem::remove(dir_ + "/config.json");
  EXPECT_EQ(LoadStatus().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(TitansModel::Load(dir_ + "/nope").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ModelDir, TruncatedWeightsAreErrorsNotCrashes) {
  const std::string weights = Read("model.safetensors");
  for (size_t len :
       {size_t{0}, size_t{7}, size_t{8}, size_t{100}, weights.size() / 2, weights.size() - 1}) {
    Write("model.safetensors", weights.substr(0, len));
    absl::Status st = LoadStatus();
    EXPECT_FALSE(st.ok()) << "length " << len;
  }
}

TEST_F(ModelDir, FlippedDataBitIsDataLoss) {
  std::string weights = Read("model.safetensors");
  weights[weights.size() - 1000] ^= 0x10;  // inside the tensor data, not the header
  Write("model.safetensors", weights);
  absl::Status st = LoadStatus();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_NE(st.message().find("checksum"), std::string::npos) << st;
}

TEST_F(ModelDir, NonFiniteWeightsAreRejected) {
  auto file = ReadSafetensors(dir_ + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  std::vector<std::pair<std::string, at::Tensor>> tensors(file->tensors.begin(),
                                                          file->tensors.end());
  for (auto& [name, t] : tensors) {
    if (name == "layers.1.memory.out_gate.weight") t[0][0] = std::nan("");
  }
  ASSERT_TRUE(WriteSafetensors(dir_ + "/model.safetensors", tensors, {}).ok());  // no checksum
  absl::Status st = LoadStatus();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("layers.1.memory.out_gate.weight"), std::string::npos) << st;
}

TEST_F(ModelDir, ConfigMismatchNamesTheTensor) {
  std::string config = Read("config.json");
  const std::string from = "\"ffn_hidden\": 64", to = "\"ffn_hidden\": 65";
  ASSERT_NE(config.find(from), std::string::npos);
  config.replace(config.find(from), from.size(), to);
  Write("config.json", config);
  absl::Status st = LoadStatus();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("layers.0.ffn.gate.weight"), std::string::npos) << st;
}

TEST_F(ModelDir, VariantMismatchReportsMissingOrUnexpectedTensor) {
  std::string config = Read("config.json");
  config.replace(config.find("\"mal\""), 5, "\"lmm\"");
  Write("config.json", config);
  absl::Status st = LoadStatus();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("unexpected tensor"), std::string::npos) << st;
}

TEST_F(ModelDir, WrongDtypeIsRejected) {
  auto file = ReadSafetensors(dir_ + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  std::vector<std::pair<std::string, at::Tensor>> tensors(file->tensors.begin(),
                                                          file->tensors.end());
  for (auto& [name, t] : tensors) {
    if (name == "final_norm.weight") t = t.to(at::kLong);
  }
  ASSERT_TRUE(WriteSafetensors(dir_ + "/model.safetensors", tensors, {}).ok());
  absl::Status st = LoadStatus();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("final_norm.weight"), std::string::npos) << st;
}

TEST_F(ModelDir, BadConfigValuesAreRejected) {
  std::string config = Read("config.json");
  config.replace(config.find("\"depth\": 3"), 10, "\"depth\": 7");
  Write("config.json", config);
  absl::Status st = LoadStatus();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("memory.depth"), std::string::npos) << st;
}

// config.json selects a SentencePiece tokenizer shipped inside the model directory.
TEST_F(ModelDir, SentencePieceTokenizerFromConfig) {
  {
    std::ofstream corpus(dir_ + "/corpus.txt");
    for (int i = 0; i < 300; ++i)
      corpus << "the memory remembers long context number " << i << "\n";
  }
  auto shim = LoadSentencePieceShim();
  ASSERT_TRUE(shim.ok()) << shim.status();
  const std::string args = "--input=" + dir_ + "/corpus.txt --model_prefix=" + dir_ +
                           "/tok --vocab_size=64 --model_type=bpe --minloglevel=2";
  char* error = nullptr;
  ASSERT_EQ((*shim)->train(args.c_str(), &error), 0) << (error ? error : "");
  (*shim)->free(error);

  std::string config = Read("config.json");
  const std::string from = "\"type\": \"byte\"";
  ASSERT_NE(config.find(from), std::string::npos);
  config.replace(config.find(from), from.size(), "\"type\": \"sentencepiece\"");
  const std::string empty_file = "\"model_file\": \"\"";
  ASSERT_NE(config.find(empty_file), std::string::npos);
  config.replace(config.find(empty_file), empty_file.size(), "\"model_file\": \"tok.model\"");
  Write("config.json", config);
  auto model = TitansModel::Load(dir_);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->tokenizer().type(), "sentencepiece");
  EXPECT_EQ((*model)->tokenizer().vocab_size(), 64);
  auto ids = (*model)->tokenizer().Encode("the memory remembers", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_LT(ids->size(), 20u);  // subwords, not bytes
  at::NoGradGuard no_grad;
  SessionState s = (*model)->NewState();
  at::Tensor t = at::tensor(std::vector<int64_t>(ids->begin(), ids->end())).unsqueeze(0);
  ASSERT_TRUE((*model)->Forward(&s, t).ok());

  std::filesystem::remove(dir_ + "/tok.model");
  EXPECT_EQ(LoadStatus().code(), absl::StatusCode::kNotFound);
}

TEST(DefaultModel, ShippedModelLoadsAndGenerates) {
  auto model = TitansModel::Load(TITANS_DEFAULT_MODEL_DIR);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_GT(CountParameters((*model)->config()), 100000);
  at::NoGradGuard no_grad;
  SessionState s = (*model)->NewState();
  auto tokens = (*model)->tokenizer().Encode("In the beginning", false);
  ASSERT_TRUE(tokens.ok());
  at::Tensor t = at::tensor(std::vector<int64_t>(tokens->begin(), tokens->end())).unsqueeze(0);
  auto logits = (*model)->Forward(&s, t);
  ASSERT_TRUE(logits.ok()) << logits.status();
  EXPECT_TRUE(at::isfinite(*logits).all().item<bool>());
}

}  // namespace
}  // namespace titans
