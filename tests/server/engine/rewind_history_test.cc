// RewindHistory bookkeeping: points every interval, the window, plans, truncation, restoring.
#include "server/engine/rewind_history.h"

#include <gtest/gtest.h>

#include <numeric>

namespace titans::engine {
namespace {

std::vector<int32_t> Range(int32_t from, int32_t to) {
  std::vector<int32_t> v(to - from);
  std::iota(v.begin(), v.end(), from);
  return v;
}

// Feeds tokens [end, end + n) in one operation, then takes a point if due (as the engine does
// between operations); returns the dropped point positions.
std::vector<int64_t> Feed(RewindHistory* h, int32_t n) {
  const int32_t from = static_cast<int32_t>(h->end());
  h->Record(Range(from, from + n));
  return h->PointDue() ? h->AddPoint(RewindPoint{}) : std::vector<int64_t>{};
}

std::vector<int64_t> Positions(const RewindHistory& h) {
  std::vector<int64_t> out;
  for (const RewindPoint& p : h.points()) out.push_back(p.position);
  return out;
}

TEST(RewindHistory, PointsEveryIntervalAndPlansReplayFromTheNearest) {
  RewindHistory h(/*window_tokens=*/1000, /*interval_tokens=*/10);
  h.Reset(RewindPoint{0, nullptr});
  for (int i = 0; i < 7; ++i) Feed(&h, 4);  // 28 tokens, a point once 10 have passed
  EXPECT_EQ(Positions(h), (std::vector<int64_t>{0, 12, 24}));
  EXPECT_EQ(h.end(), 28);
  for (int64_t target : {0, 5, 12, 13, 23, 24, 28}) {
    auto plan = h.PlanRewind(target);
    ASSERT_TRUE(plan.ok()) << target;
    const int64_t start = target >= 24 ? 24 : target >= 12 ? 12 : 0;
    EXPECT_EQ(plan->start.position, start);
    EXPECT_EQ(plan->replay, Range(static_cast<int32_t>(start), static_cast<int32_t>(target)));
  }
  EXPECT_EQ(h.PlanRewind(29).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(h.PlanRewind(-1).status().code(), absl::StatusCode::kOutOfRange);
}

TEST(RewindHistory, WindowDropsOldPointsButKeepsOneAtOrBeforeIt) {
  RewindHistory h(/*window_tokens=*/20, /*interval_tokens=*/10);
  h.Reset(RewindPoint{0, nullptr});
  std::vector<int64_t> dropped;
  for (int i = 0; i < 10; ++i) {
    for (int64_t d : Feed(&h, 5)) dropped.push_back(d);
  }
  // Points at 0, 10, ..., 50; at end 50 the floor is 30: 30 stays, 0..20 went.
  EXPECT_EQ(Positions(h), (std::vector<int64_t>{30, 40, 50}));
  EXPECT_EQ(dropped, (std::vector<int64_t>{0, 10, 20}));
  EXPECT_EQ(h.first_position(), 30);
  EXPECT_EQ(h.tokens(), Range(30, 50));
  EXPECT_TRUE(h.PlanRewind(30).ok());
  auto before = h.PlanRewind(29);
  EXPECT_EQ(before.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(before.status().message().find("oldest rewind point (30)"), std::string::npos);
}

TEST(RewindHistory, TruncateForgetsLaterTokensAndPoints) {
  RewindHistory h(1000, 10);
  h.Reset(RewindPoint{100, nullptr});
  for (int i = 0; i < 5; ++i) Feed(&h, 6);  // points at 100, 112, 124
  h.TruncateTo(115);
  EXPECT_EQ(h.end(), 115);
  EXPECT_EQ(Positions(h), (std::vector<int64_t>{100, 112}));
  EXPECT_EQ(h.tokens(), Range(100, 115));
  h.TruncateTo(200);  // beyond the end: nothing happens
  EXPECT_EQ(h.end(), 115);
  Feed(&h, 3);  // the new timeline continues from 115
  EXPECT_EQ(h.PlanRewind(118)->replay, (std::vector<int32_t>{112, 113, 114, 115, 116, 117}));
  RewindHistory fork = h.CopyUpTo(105);
  EXPECT_EQ(fork.end(), 105);
  EXPECT_EQ(Positions(fork), (std::vector<int64_t>{100}));
  EXPECT_EQ(h.end(), 118);  // the source is unchanged
}

TEST(RewindHistory, RestoreNeedsAPointAtTheStart) {
  RewindHistory h(1000, 10);
  EXPECT_FALSE(h.Restore(50, Range(50, 80), {RewindPoint{60, nullptr}}));
  EXPECT_TRUE(h.Restore(50, Range(50, 80),
                        {RewindPoint{70, nullptr}, RewindPoint{50, nullptr},
                         RewindPoint{95, nullptr} /* past the end: ignored */}));
  EXPECT_EQ(Positions(h), (std::vector<int64_t>{50, 70}));
  EXPECT_EQ(h.end(), 80);
  EXPECT_EQ(h.PlanRewind(75)->replay, Range(70, 75));
}

TEST(RewindHistory, DisabledKeepsNothing) {
  RewindHistory h(0, 10);
  h.Reset(RewindPoint{0, nullptr});
  Feed(&h, 50);
  EXPECT_FALSE(h.enabled());
  EXPECT_TRUE(h.points().empty());
  EXPECT_TRUE(h.tokens().empty());
  EXPECT_EQ(h.end(), 50);
  EXPECT_EQ(h.PlanRewind(10).status().code(), absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace titans::engine
