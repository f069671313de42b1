// The trainer: it learns (loss and held-out bits per byte fall on a tiny model), it resumes
// exactly, its schedule and synthetic tasks are what they claim.
#include "model/trainer.h"

#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
#include <random>

#include "model/params.h"
#include "tests/model/model_test_util.h"

namespace titans::testing {
namespace {

std::string RepetitiveText() {
  std::string text;
  for (int i = 0; i < 300; ++i) {
    text += "the quick brown fox jumps over the lazy dog ";
    text += std::to_string(i % 7);
    text += ". ";
  }
  return text;
}

TrainOptions TinyOptions(int64_t steps) {
  TrainOptions o;
  o.batch = 4;
  o.seq_len = 32;
  o.steps = steps;
  o.warmup = 4;
  o.lr = 1e-2;
  o.min_lr = 1e-3;
  o.passkey_fraction = 0.25;
  o.eval_every = 0;
  o.checkpoint_every = 0;
  o.seed = 11;
  return o;
}

std::vector<at::Tensor> Params(TitansModel* m) {
  std::vector<at::Tensor> out;
  for (ParamSlot& s : ParamSlots(m->config(), &m->mutable_params())) {
    out.push_back(s.tensor->detach().clone());
  }
  return out;
}

TEST(Trainer, LossAndHeldOutBitsPerByteFall) {
  auto model = MakeModel(TinyConfig(Variant::kMAC), 3);
  TextCorpus corpus = TextCorpus::FromString(RepetitiveText(), 0.1);
  Trainer trainer(model.get(), &corpus, TinyOptions(60), "");
  auto before = trainer.EvaluateBitsPerByte(8);
  ASSERT_TRUE(before.ok()) << before.status();
  double first = 0, last = 0;
  ASSERT_TRUE(trainer
                  .Run([&](const TrainProgress& p) {
                    if (p.step == 1) first = p.loss;
                    last = p.loss;
                    EXPECT_GT(p.tokens_per_second, 0);
                  })
                  .ok());
  auto after = trainer.EvaluateBitsPerByte(8);
  ASSERT_TRUE(after.ok());
  EXPECT_LT(last, 0.6 * first) << "first " << first << " last " << last;
  EXPECT_LT(*after, 0.7 * *before) << "bits per byte " << *before << " -> " << *after;
}

TEST(Trainer, ResumeContinuesExactly) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("titans_trainer_" + std::to_string(::getpid())))
          .string();
  std::filesystem::remove_all(dir);
  TextCorpus corpus = TextCorpus::FromString(RepetitiveText(), 0.1);
  // Straight through: 12 steps.
  auto straight = MakeModel(TinyConfig(Variant::kMAG), 5);
  Trainer a(straight.get(), &corpus, TinyOptions(12), "");
  ASSERT_TRUE(a.Run(nullptr).ok());
  // Interrupted after 5 steps, resumed by a new trainer on a fresh model.
  auto first = MakeModel(TinyConfig(Variant::kMAG), 5);
  Trainer b(first.get(), &corpus, TinyOptions(12), dir);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(b.Step().ok());
  ASSERT_TRUE(b.Checkpoint().ok());
  auto second = MakeModel(TinyConfig(Variant::kMAG), 99);  // different weights: all must come back
  second->SetProvenance("trained", "resumed with other flags");  // provenance may differ
  Trainer c(second.get(), &corpus, TinyOptions(12), dir);
  ASSERT_TRUE(c.Resume().ok());
  EXPECT_EQ(c.step(), 5);
  ASSERT_TRUE(c.Run(nullptr).ok());
  std::vector<at::Tensor> x = Params(straight.get()), y = Params(second.get());
  ASSERT_EQ(x.size(), y.size());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_TRUE(at::equal(x[i], y[i])) << "parameter " << i;
  Trainer missing(second.get(), &corpus, TinyOptions(12), dir + "/nothing");
  EXPECT_EQ(missing.Resume().code(), absl::StatusCode::kNotFound);
  std::filesystem::remove_all(dir);
}

TEST(Trainer, WarmupThenCosineSchedule) {
  TrainOptions o = TinyOptions(110);
  o.warmup = 10;
  o.lr = 1.0;
  o.min_lr = 0.1;
  auto model = MakeModel(TinyConfig(Variant::kLMM), 1);
  TextCorpus corpus = TextCorpus::FromString(RepetitiveText(), 0.1);
  Trainer t(model.get(), &corpus, o, "");
  EXPECT_DOUBLE_EQ(t.LearningRate(0), 0.1);
  EXPECT_DOUBLE_EQ(t.LearningRate(9), 1.0);
  EXPECT_NEAR(t.LearningRate(60), 0.55, 1e-9);  // half way: the midpoint of peak and floor
  EXPECT_NEAR(t.LearningRate(110), 0.1, 1e-9);
}

TEST(PasskeyTask, NeedleQuestionAndAnswerAreWhereTheySayTheyAre) {
  std::mt19937_64 rng(4);
  const std::string filler = RepetitiveText();
  for (double depth : {0.0, 0.3, 0.9}) {
    PasskeyTask t = MakePasskeyTask(filler, 1000, 5, depth, &rng);
    EXPECT_EQ(t.text.size(), 1000u);
    EXPECT_EQ(t.answer.size(), 6u);
    EXPECT_EQ(t.text.substr(static_cast<size_t>(t.answer_begin)), t.answer);
    const std::string key = t.answer.substr(0, 5);
    const size_t needle = t.text.find("The pass key is " + key);
    ASSERT_NE(needle, std::string::npos);
    EXPECT_NEAR(static_cast<double>(needle) / 1000.0, depth * 0.9, 0.06);
    EXPECT_EQ(t.text.rfind("What is the pass key? The pass key is "),
              static_cast<size_t>(t.answer_begin) - 38);
  }
}

TEST(RecallTask, EveryQueriedValueIsTheOneItsKeyWasGivenFarEarlier) {
  std::mt19937_64 rng(9);
  const std::string filler = PasskeyNoise(2000);
  RecallTask t = MakeRecallTask(filler, 512, 128, &rng);
  ASSERT_EQ(t.text.size(), 512u);
  const size_t recall = t.text.find(" Recall: ");
  ASSERT_NE(recall, std::string::npos);
  ASSERT_FALSE(t.answers.empty());
  ASSERT_EQ(t.answers.size() % 2, 0u);
  for (size_t i = 0; i < t.answers.size(); i += 2) {
    const size_t at = static_cast<size_t>(t.answers[i]);
    EXPECT_GT(at, recall);
    EXPECT_EQ(static_cast<size_t>(t.answers[i + 1]), at + 1);
    ASSERT_EQ(t.text[at - 1], '=');
    const std::string key = t.text.substr(at - 4, 3);
    const std::string value = t.text.substr(at, 2);
    EXPECT_TRUE(std::isdigit(value[0]) && std::isdigit(value[1])) << value;
    // The pair appears exactly once before the filler, at least the filler's length earlier.
    const size_t given = t.text.find(key + "=" + value);
    ASSERT_LT(given, recall) << key;
    EXPECT_EQ(t.text.find(key + "="), given) << "key defined twice: " << key;
    EXPECT_GE(at - given, 128u);
  }
  // Deterministic for a seed; different across seeds.
  std::mt19937_64 a(3), b(3), c(4);
  EXPECT_EQ(MakeRecallTask(filler, 300, 64, &a).text, MakeRecallTask(filler, 300, 64, &b).text);
  EXPECT_NE(MakeRecallTask(filler, 300, 64, &a).text, MakeRecallTask(filler, 300, 64, &c).text);
}

TEST(PasskeyNoise, RepeatsRulersSentencesToTheLength) {
  const std::string noise = PasskeyNoise(1000);
  EXPECT_GE(noise.size(), 1000u);
  EXPECT_EQ(noise.rfind("The grass is green. The sky is blue. The sun is yellow.", 0), 0u);
  EXPECT_EQ(noise.substr(0, 90), noise.substr(90, 90));  // a 90-byte cycle
}

// The objective's answer term: with a batch of passkey tasks only, the trainer reports the
// answer loss (near ln 10 for an untrained model), and a batch of plain text reports none.
TEST(Trainer, ReportsTheAnswerLossOfPasskeyBatches) {
  auto model = MakeModel(TinyConfig(Variant::kLMM), 1);
  TextCorpus corpus = TextCorpus::FromString(RepetitiveText(), 0.1);
  TrainOptions o;
  o.batch = 2;
  o.seq_len = 160;
  o.steps = 1;
  o.lr = 1e-4;
  o.passkey_fraction = 1.0;
  Trainer with_tasks(model.get(), &corpus, o, "");
  ASSERT_TRUE(with_tasks.Step().ok());
  EXPECT_GT(with_tasks.last_answer_loss(), 0.5);
  EXPECT_LT(with_tasks.last_answer_loss(), 20);
  o.passkey_fraction = 0.0;
  Trainer text_only(model.get(), &corpus, o, "");
  ASSERT_TRUE(text_only.Step().ok());
  EXPECT_EQ(text_only.last_answer_loss(), -1);
}

}  // namespace
}  // namespace titans::testing
