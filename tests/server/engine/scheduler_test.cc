#include "server/engine/scheduler.h"

#include <gtest/gtest.h>

namespace titans::engine {
namespace {

int64_t Granted(const std::vector<Assignment>& plan, int64_t session) {
  for (const Assignment& a : plan) {
    if (a.session == session) return a.tokens;
  }
  return -1;  // not scheduled
}

TEST(PlanStep, DecodesAndControlOpsGoFirstThenAppendsShareTheBudget) {
  // 0: long append, 1: decode, 2: close, 3: another long append, 4: decode.
  std::vector<Candidate> c = {
      {0, 1000, false}, {1, 1, false}, {2, 0, false}, {3, 1000, false}, {4, 1, false}};
  auto plan = PlanStep(c, 100);
  EXPECT_EQ(Granted(plan, 1), 1);
  EXPECT_EQ(Granted(plan, 4), 1);
  EXPECT_EQ(Granted(plan, 2), 0);
  EXPECT_EQ(Granted(plan, 0), 98);  // the first append in round-robin order takes what is left
  EXPECT_EQ(Granted(plan, 3), -1);  // and the next one waits for the next step
  int64_t total = 0;
  for (const Assignment& a : plan) total += a.tokens;
  EXPECT_EQ(total, 100);
}

TEST(PlanStep, SmallAppendsAllFit) {
  std::vector<Candidate> c = {{0, 10, false}, {1, 20, false}, {2, 30, false}};
  auto plan = PlanStep(c, 512);
  EXPECT_EQ(Granted(plan, 0), 10);
  EXPECT_EQ(Granted(plan, 1), 20);
  EXPECT_EQ(Granted(plan, 2), 30);
}

TEST(PlanStep, IndivisibleWorkWaitsUnlessAlone) {
  std::vector<Candidate> c = {{0, 50, false}, {1, 80, true}};
  auto plan = PlanStep(c, 100);
  EXPECT_EQ(Granted(plan, 0), 50);
  EXPECT_EQ(Granted(plan, 1), -1);  // does not fit in the 50 left
  plan = PlanStep({{1, 500, true}}, 100);
  EXPECT_EQ(Granted(plan, 1), 500);  // alone it runs whole
}

TEST(PlanStep, ExhaustedBudgetStillServesEveryDecode) {
  std::vector<Candidate> c;
  for (int i = 0; i < 10; ++i) c.push_back({i, 1, false});
  auto plan = PlanStep(c, 4);
  EXPECT_EQ(plan.size(), 4u);  // the budget caps decodes too; the rest go next step
  EXPECT_TRUE(PlanStep({}, 100).empty());
}

// More decoding sessions than the budget: a waiting prompt still gets a quarter of it.
TEST(PlanStep, ManyDecodesDoNotStarveAPrompt) {
  std::vector<Candidate> c;
  for (int i = 0; i < 1000; ++i) c.push_back({i, 1, false});
  c.push_back({1000, 17, false});
  auto plan = PlanStep(c, 512);
  EXPECT_EQ(Granted(plan, 1000), 17);
  int64_t decodes = 0;
  for (const Assignment& a : plan) decodes += a.session < 1000;
  EXPECT_EQ(decodes, 384);
  c.back().wanted_tokens = 4096;
  plan = PlanStep(c, 512);
  EXPECT_EQ(Granted(plan, 1000), 128);
  // With nothing else waiting, decodes use the whole budget.
  c.pop_back();
  EXPECT_EQ(PlanStep(c, 512).size(), 512u);
}

}  // namespace
}  // namespace titans::engine
