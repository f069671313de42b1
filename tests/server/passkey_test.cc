// The shipped default model's memory carries a passkey across calls through the server. The
// haystack arrives in many Append calls of uneven sizes: the paper's S-NIAH-PK noise, or English
// the model never trained on (licence texts every Debian system has), 4 KiB with the key planted
// in its first half, far outside the 64-byte attention window. Then a greedy Generate after the
// question must give back the whole five-digit key on most of a fixed set of seeds, and give the
// same answer as the same text read in-process in one piece (splitting a session's input over
// calls changes nothing). Score compares the probability of the true key with that of another
// random key, the session unchanged: the memory must make the true one clearly more likely (an
// attention-only model cannot tell them apart, docs/evaluation.md). Likewise four facts told
// before 4 KiB of appends are read back by name.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "model/trainer.h"
#include "tests/server/server_fixture.h"

namespace titans::testing {
namespace {

class PasskeyAcrossCallsTest : public ServerTest {
 protected:
  void SetUp() override {
    ServerTest::SetUp();
    options_.model_dir = TITANS_DEFAULT_MODEL_DIR;
    options_.step_token_budget = 512;
  }

  // Appends `text` to session `id` in pieces of 1-255 bytes drawn from `rng`, as a client
  // streaming a document would; *calls counts the Append calls. The first failure's status.
  grpc::Status AppendInPieces(const std::string& id, const std::string& text, std::mt19937_64* rng,
                              int* calls) {
    std::uniform_int_distribution<int> piece(1, 255);
    *calls = 0;
    for (size_t at = 0; at < text.size(); ++*calls) {
      const size_t n = std::min(text.size() - at, static_cast<size_t>(piece(*rng)));
      grpc::Status st = AppendText(id, text.substr(at, n));
      if (!st.ok()) return st;
      at += n;
    }
    return grpc::Status::OK;
  }
};

// Greedy five-digit answer of `model` to `prompt` read in one piece, in-process.
std::string InProcessAnswer(const TitansModel& model, const std::string& prompt) {
  at::NoGradGuard no_grad;
  auto tokens = model.tokenizer().Encode(prompt, false);
  EXPECT_TRUE(tokens.ok());
  SessionState state = model.NewState();
  std::vector<int64_t> ids(tokens->begin(), tokens->end());
  EXPECT_TRUE(model.Forward(&state, at::tensor(ids).unsqueeze(0)).ok());
  std::string answer;
  for (int d = 0; d < 5; ++d) {
    const int64_t next = state.last_logits.argmax(-1).item<int64_t>();
    answer += model.tokenizer().Decode({static_cast<int32_t>(next)}).value_or("?");
    EXPECT_TRUE(model.Forward(&state, at::full({1, 1}, next, at::kLong)).ok());
  }
  return answer;
}

// English text the model was not trained on: licence texts from base-files.
std::string LicenceText() {
  std::string text;
  for (const char* name : {"Apache-2.0", "MPL-2.0", "Artistic", "GPL-3", "BSD"}) {
    std::ifstream in(std::string("/usr/share/common-licenses/") + name);
    std::stringstream buffer;
    buffer << in.rdbuf();
    text += buffer.str();
  }
  for (char& c : text) {
    if (c == '\n') c = ' ';
  }
  return text;
}

struct HaystackCase {
  const char* name;
  // Of kTrials whole keys, greedy. Issue 19's target is 9 for both; the shipped model gives
  // 10 in the noise and 10 in text on these seeds (docs/evaluation.md); one key of slack for
  // float rounding on other CPUs (another ISA's kernels).
  int min_recalled;
};

void PrintTo(const HaystackCase& c, std::ostream* os) { *os << c.name; }

class PasskeyHaystackTest : public PasskeyAcrossCallsTest,
                            public ::testing::WithParamInterface<HaystackCase> {};

TEST_P(PasskeyHaystackTest, KeyPlantedFarOutsideTheWindowIsRecalledAfterManyAppends) {
  const HaystackCase haystack = GetParam();
  Start();
  auto model = TitansModel::Load(TITANS_DEFAULT_MODEL_DIR);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& config = (*model)->config();
  const int64_t span =
      config.variant == Variant::kMAC ? config.attention.segment_size : config.attention.window;
  const int64_t length = 4096;
  const std::string filler =
      std::string(haystack.name) == "noise" ? PasskeyNoise(4 * length) : LicenceText();
  ASSERT_GT(filler.size(), 2u * length) << "licence texts missing?";
  const std::string question = kPasskeyQuestion;
  std::mt19937_64 rng(2026);
  constexpr int kTrials = 10;
  // Measured in docs/evaluation.md: the true key is tens of nats more likely for the shipped
  // model, ~0 for the attention-only baseline in its place.
  constexpr double kMinAdvantageNats = 3.0;
  int recalled = 0;
  double advantage = 0;  // sum over trials of log p(true key) - log p(other key)
  for (int trial = 0; trial < kTrials; ++trial) {
    // Needle in the first half: at least 32 spans before the question.
    PasskeyTask task = MakePasskeyTask(filler, length, 5, 0.5 * trial / kTrials, &rng);
    const std::string key = task.answer.substr(0, 5);
    const std::string prompt = task.text.substr(0, task.answer_begin);
    ASSERT_EQ(prompt.substr(prompt.size() - question.size()), question);
    const std::string context = prompt.substr(0, prompt.size() - question.size());
    ASSERT_GT(static_cast<int64_t>(context.size() - context.find(key)), 32 * span);

    std::string other = key;
    while (other == key) {
      other.clear();
      for (int d = 0; d < 5; ++d)
        other += static_cast<char>('0' + (d == 0 ? 1 + rng() % 9 : rng() % 10));
    }
    const std::string id = Create().session_id();
    int calls = 0;
    grpc::Status appended = AppendInPieces(id, context, &rng, &calls);
    ASSERT_TRUE(appended.ok()) << appended.error_message();
    ASSERT_GT(calls, 16);
    // log p(question + candidate's digits), digits only, the session unchanged.
    auto key_logprob = [&](const std::string& candidate) {
      auto tokens = (*model)->tokenizer().Encode(question + candidate, false);
      EXPECT_TRUE(tokens.ok());
      pb::ScoreRequest score;
      score.set_session_id(id);
      for (int32_t t : *tokens) score.mutable_tokens()->add_ids(t);
      pb::ScoreResponse resp;
      EXPECT_TRUE(stub_->Score(Ctx().get(), score, &resp).ok());
      double sum = 0;
      for (int i = resp.logprobs_size() - 5; i < resp.logprobs_size(); ++i) sum += resp.logprobs(i);
      return sum;
    };
    advantage += key_logprob(key) - key_logprob(other);
    grpc::Status generated;
    const std::string answer = GenerateText(id, 5, &generated, nullptr, "", question);
    ASSERT_TRUE(generated.ok()) << generated.error_message();
    EXPECT_EQ(answer, InProcessAnswer(**model, prompt)) << "trial " << trial;
    recalled += answer == key;
    // One line per trial, flushed: if a run is ever cut off by CTest's timeout, its log shows how
    // far it got (CI once timed out here with nothing after [ RUN ]).
    std::printf("trial %d: key %s, answer %s, %d appends\n", trial, key.c_str(), answer.c_str(),
                calls);
    std::fflush(stdout);
  }
  std::printf(
      "passkey across calls, %s haystack: %d/%d whole keys recalled, true key %.2f nats "
      "more likely\n",
      haystack.name, recalled, kTrials, advantage / kTrials);
  EXPECT_GE(recalled, haystack.min_recalled) << haystack.name;
  EXPECT_GT(advantage / kTrials, kMinAdvantageNats) << recalled << "/" << kTrials << " recalled";
}

INSTANTIATE_TEST_SUITE_P(Haystacks, PasskeyHaystackTest,
                         ::testing::Values(HaystackCase{"noise", 9}, HaystackCase{"text", 9}),
                         [](const auto& info) { return std::string(info.param.name); });

// Four facts ("kqz=41, ") told first, then 4 KiB of the noise in many appends of uneven sizes,
// then every name asked in a random order in the trained format (" Recall: kqz=" and then
// ", bwa=" ...), each answer two greedy tokens from Generate (the session keeps the model's own
// answers, as a client's session would). The shipped model's fact heads in layer 1 (stages
// 12-18 of scripts/train-default.sh) are what read fact lists: these seeds give 28 of 40 with
// both (stage 18), 23 before the second one's own write gates trained (stage 17), 21 with the
// first alone (stage 14) and 11 with stage 11's model (before them; guessing gives 0.4). At
// least 16: slack for
// float rounding on other CPUs, and still far above what the model without the head reads.
TEST_F(PasskeyAcrossCallsTest, FourFactsToldEarlyAreRecalledAfterManyAppends) {
  Start();
  std::mt19937_64 rng(2027);
  std::uniform_int_distribution<int> letter(0, 25), digit(0, 9);
  constexpr int kTrials = 10, kFacts = 4;
  const std::string noise = PasskeyNoise(16384);
  int recalled = 0;
  for (int trial = 0; trial < kTrials; ++trial) {
    std::vector<std::string> names, values;
    while (static_cast<int>(names.size()) < kFacts) {
      std::string name;
      for (int i = 0; i < 3; ++i) name += static_cast<char>('a' + letter(rng));
      if (std::find(names.begin(), names.end(), name) != names.end()) continue;
      names.push_back(name);
      values.push_back(std::to_string(digit(rng)) + std::to_string(digit(rng)));
    }
    std::string context;
    for (int i = 0; i < kFacts; ++i) context += names[i] + "=" + values[i] + ", ";
    const size_t start = rng() % (noise.size() - 4096);
    context += noise.substr(start, 4096);
    const std::string id = Create().session_id();
    int calls = 0;
    grpc::Status appended = AppendInPieces(id, context, &rng, &calls);
    ASSERT_TRUE(appended.ok()) << appended.error_message();
    ASSERT_GT(calls, 16);
    std::vector<int> order(kFacts);
    for (int i = 0; i < kFacts; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    std::string answers;
    for (int q = 0; q < kFacts; ++q) {
      const int i = order[q];
      grpc::Status generated;
      const std::string answer = GenerateText(id, 2, &generated, nullptr, "",
                                              (q == 0 ? " Recall: " : ", ") + names[i] + "=");
      ASSERT_TRUE(generated.ok()) << generated.error_message();
      recalled += answer == values[i];
      answers += names[i] + "=" + answer + " (" + values[i] + ") ";
    }
    std::printf("trial %d: %s, %d appends\n", trial, answers.c_str(), calls);
    std::fflush(stdout);
  }
  std::printf("four facts across calls: %d/%d recalled\n", recalled, kTrials * kFacts);
  EXPECT_GE(recalled, 16) << "the fact head (layer 1, memory head 4) no longer reads fact lists?";
}

}  // namespace
}  // namespace titans::testing
