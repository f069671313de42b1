// The trainer: it learns (loss and held-out bits per byte fall on a tiny model), it resumes
// exactly, its schedule and synthetic tasks are what they claim.
#include "model/trainer.h"

#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
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

// A row of byte tokens as text.
std::string BytesOf(const at::Tensor& row) {
  std::string s;
  for (int64_t i = 0; i < row.size(0); ++i) s += static_cast<char>(row[i].item<int64_t>());
  return s;
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

// Stateful training: a row's segments continue one passage of the training text, each step
// starts from the state the previous one ended with, and a new stream starts from a fresh
// state. With a learning rate too small to move a float, each step's loss must equal the loss
// the model gives those tokens when it reads the whole stream in one pass.
TEST(Trainer, StreamSegmentsCarryTheStateAcrossSteps) {
  auto model = MakeModel(TinyConfig(Variant::kMAL), 7);
  std::string text;
  for (int i = 0; i < 2000; ++i) text += absl::StrCat(i * 7919 % 1000, " ");  // no short period
  TextCorpus corpus = TextCorpus::FromString(text, 0.1);
  TrainOptions o = TinyOptions(6);
  o.batch = 2;
  o.seq_len = 24;
  o.passkey_fraction = 0;
  o.stream_segments = 3;
  o.lr = 1e-30;  // Adam moves each weight by about lr: nothing changes in float
  o.min_lr = 0;
  o.weight_decay = 0;
  Trainer trainer(model.get(), &corpus, o, "");
  const int64_t T = o.seq_len;
  std::vector<at::Tensor> segments;
  std::vector<double> losses;
  for (int i = 0; i < 6; ++i) {
    auto loss = trainer.Step();
    ASSERT_TRUE(loss.ok()) << loss.status();
    segments.push_back(trainer.last_tokens().clone());
    losses.push_back(*loss);
  }
  for (int stream = 0; stream < 2; ++stream) {
    // Inputs of the stream's three segments, then the last target: one contiguous passage.
    std::vector<at::Tensor> parts;
    for (int k = 0; k < 3; ++k) {
      const at::Tensor& seg = segments[static_cast<size_t>(stream * 3 + k)];
      if (k > 0) {  // a segment's first input is the previous segment's last target
        EXPECT_TRUE(at::equal(seg.select(1, 0),
                              segments[static_cast<size_t>(stream * 3 + k - 1)].select(1, T)));
      }
      parts.push_back(seg.slice(1, 0, T));
    }
    parts.push_back(segments[static_cast<size_t>(stream * 3 + 2)].slice(1, T, T + 1));
    const at::Tensor whole = at::cat(parts, 1);  // [B, 3T + 1]
    for (int64_t b = 0; b < o.batch; ++b) {
      EXPECT_NE(corpus.train().find(BytesOf(whole[b])), std::string::npos)
          << "row " << b << " of stream " << stream << " is not one passage";
    }
    // The same stream read in one pass from a fresh state.
    at::NoGradGuard no_grad;
    SessionState state = model->NewState(o.batch);
    auto logits = model->Forward(&state, whole.slice(1, 0, 3 * T), LogitsMode::kAll);
    ASSERT_TRUE(logits.ok()) << logits.status();
    at::Tensor nats =
        at::cross_entropy_loss(logits->reshape({-1, logits->size(-1)}),
                               whole.slice(1, 1).reshape({-1}), {}, at::Reduction::None)
            .view({o.batch, 3 * T});
    for (int k = 0; k < 3; ++k) {
      const double expected = nats.slice(1, k * T, (k + 1) * T).mean().item<double>();
      EXPECT_NEAR(losses[static_cast<size_t>(stream * 3 + k)], expected, 2e-4)
          << "stream " << stream << " segment " << k;
    }
  }
  // The second stream does not continue the first.
  EXPECT_FALSE(at::equal(segments[3].select(1, 0), segments[2].select(1, T)));
}

// Long passkeys: each row of a stream carries one key, planted in its first segment; exactly one
// later segment ends with the question and that key, and only that step has an answer loss.
TEST(Trainer, LongPasskeysSpanStreamSegments) {
  auto model = MakeModel(TinyConfig(Variant::kLMM), 2);
  TextCorpus corpus = TextCorpus::FromString(RepetitiveText(), 0.1);
  TrainOptions o = TinyOptions(10);
  o.batch = 3;
  o.seq_len = 200;
  o.passkey_fraction = 0;
  o.stream_segments = 5;
  o.long_passkey_fraction = 1;
  o.passkey_noise_fraction = 0.5;
  Trainer trainer(model.get(), &corpus, o, "");
  for (int stream = 0; stream < 2; ++stream) {
    std::vector<std::string> rows(3);
    std::vector<std::vector<bool>> asked(3);
    std::vector<double> answer_losses;
    for (int k = 0; k < 5; ++k) {
      auto loss = trainer.Step();
      ASSERT_TRUE(loss.ok()) << loss.status();
      answer_losses.push_back(trainer.last_answer_loss());
      for (int64_t b = 0; b < 3; ++b) {
        // Segment k's new bytes (a later segment's first input repeats the previous target).
        const std::string seg = BytesOf(trainer.last_tokens()[b].slice(0, k == 0 ? 0 : 1));
        rows[b] += seg;
        asked[b].push_back(seg.find(kPasskeyQuestion) != std::string::npos);
      }
    }
    int steps_with_answers = 0;
    for (double a : answer_losses) steps_with_answers += a >= 0;
    EXPECT_GE(steps_with_answers, 1);
    for (int64_t b = 0; b < 3; ++b) {
      const std::string& r = rows[b];
      const size_t needle = r.find(" The pass key is ");
      ASSERT_NE(needle, std::string::npos) << "stream " << stream << " row " << b;
      EXPECT_LT(needle, 201u) << "the needle is in the first segment";
      const std::string key = r.substr(needle + 17, 5);
      const size_t question = r.find(kPasskeyQuestion);
      ASSERT_NE(question, std::string::npos);
      EXPECT_GE(question, 201u) << "the question is in a later segment";
      EXPECT_EQ(r.substr(question + std::string(kPasskeyQuestion).size(), 6), key + ".");
      EXPECT_FALSE(asked[b][0]);
      int asking = 0;
      for (bool a : asked[b]) asking += a;
      EXPECT_EQ(asking, 1);
      for (size_t k = 0; k < 5; ++k) {
        if (asked[b][k]) {
          EXPECT_GE(answer_losses[k], 0) << "segment " << k;
        }
      }
    }
  }
}

// Long recall: each row plants 2-8 facts in its first segment; exactly one later segment ends
// with " Recall: " and every key again, in another order, each followed by the value it was given.
TEST(Trainer, LongRecallFactsSpanStreamSegments) {
  auto model = MakeModel(TinyConfig(Variant::kLMM), 3);
  TextCorpus corpus = TextCorpus::FromString(RepetitiveText(), 0.1);
  TrainOptions o = TinyOptions(8);
  o.batch = 3;
  o.seq_len = 200;
  o.passkey_fraction = 0;
  o.stream_segments = 4;
  o.long_recall_fraction = 1;
  o.passkey_noise_fraction = 1;  // noise filler: no '=' of its own
  Trainer trainer(model.get(), &corpus, o, "");
  for (int stream = 0; stream < 2; ++stream) {
    std::vector<std::string> rows(3);
    for (int k = 0; k < 4; ++k) {
      ASSERT_TRUE(trainer.Step().ok());
      for (int64_t b = 0; b < 3; ++b) {
        rows[b] += BytesOf(trainer.last_tokens()[b].slice(0, k == 0 ? 0 : 1));
      }
    }
    for (int64_t b = 0; b < 3; ++b) {
      const std::string& r = rows[b];
      const size_t recall = r.find(" Recall: ");
      ASSERT_NE(recall, std::string::npos) << "stream " << stream << " row " << b;
      EXPECT_GE(recall, 201u) << "the questions are in a later segment";
      // The facts: every "xyz=NN" before the questions (all in the first segment).
      std::map<std::string, std::string> facts;
      for (size_t at = r.find('='); at < recall; at = r.find('=', at + 1)) {
        EXPECT_LT(at, 201u) << "facts are in the first segment";
        facts[r.substr(at - 3, 3)] = r.substr(at + 1, 2);
      }
      ASSERT_GE(facts.size(), 2u);
      ASSERT_LE(facts.size(), 8u);
      std::set<std::string> asked;
      for (size_t at = r.find('=', recall); at != std::string::npos; at = r.find('=', at + 1)) {
        const std::string key = r.substr(at - 3, 3);
        ASSERT_TRUE(facts.count(key)) << key;
        EXPECT_EQ(r.substr(at + 1, 2), facts[key]) << key;
        asked.insert(key);
      }
      EXPECT_EQ(asked.size(), facts.size()) << "every key is asked once";
    }
  }
}

TEST(Trainer, StreamSegmentsResumeExactlyAtAStreamBoundary) {
  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("titans_trainer_stream_" + std::to_string(::getpid())))
                              .string();
  std::filesystem::remove_all(dir);
  TextCorpus corpus = TextCorpus::FromString(RepetitiveText(), 0.1);
  TrainOptions o = TinyOptions(8);
  o.stream_segments = 2;
  o.recall_fraction = 0.25;
  auto straight = MakeModel(TinyConfig(Variant::kMAC), 5);
  Trainer a(straight.get(), &corpus, o, "");
  ASSERT_TRUE(a.Run(nullptr).ok());
  auto first = MakeModel(TinyConfig(Variant::kMAC), 5);
  Trainer b(first.get(), &corpus, o, dir);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(b.Step().ok());
  ASSERT_TRUE(b.Checkpoint().ok());
  auto second = MakeModel(TinyConfig(Variant::kMAC), 99);
  Trainer c(second.get(), &corpus, o, dir);
  ASSERT_TRUE(c.Resume().ok());
  ASSERT_TRUE(c.Run(nullptr).ok());
  std::vector<at::Tensor> x = Params(straight.get()), y = Params(second.get());
  ASSERT_EQ(x.size(), y.size());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_TRUE(at::equal(x[i], y[i])) << "parameter " << i;
  std::filesystem::remove_all(dir);
}

TEST(Trainer, OptionsAreValidated) {
  {
    TrainOptions o = TinyOptions(12);
    o.long_passkey_fraction = 0.5;  // needs streams
    EXPECT_EQ(ValidateTrainOptions(o).code(), absl::StatusCode::kInvalidArgument);
    o.stream_segments = 4;
    o.seq_len = 256;
    EXPECT_TRUE(ValidateTrainOptions(o).ok());
    o.long_passkey_fraction = 1.5;
    EXPECT_EQ(ValidateTrainOptions(o).code(), absl::StatusCode::kInvalidArgument);
  }
  TrainOptions o = TinyOptions(12);
  EXPECT_TRUE(ValidateTrainOptions(o).ok());
  o.stream_segments = 5;  // 12 steps are not whole streams
  EXPECT_EQ(ValidateTrainOptions(o).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(ValidateTrainOptions(o).message()).find("stream_segments"),
            std::string::npos);
  o.stream_segments = 4;
  o.checkpoint_every = 6;  // a checkpoint inside a stream would lose the carried state
  EXPECT_EQ(ValidateTrainOptions(o).code(), absl::StatusCode::kInvalidArgument);
  o.checkpoint_every = 8;
  EXPECT_TRUE(ValidateTrainOptions(o).ok());
  o.stream_segments = 0;
  EXPECT_FALSE(ValidateTrainOptions(o).ok());
  o = TinyOptions(12);
  o.passkey_fraction = 0.7;
  o.recall_fraction = 0.5;
  EXPECT_FALSE(ValidateTrainOptions(o).ok());
  auto model = MakeModel(TinyConfig(Variant::kLMM), 1);
  TextCorpus corpus = TextCorpus::FromString(RepetitiveText(), 0.1);
  Trainer t(model.get(), &corpus, o, "");
  EXPECT_EQ(t.Run(nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.step(), 0);
}

}  // namespace
}  // namespace titans::testing
