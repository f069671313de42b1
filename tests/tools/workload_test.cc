// titans-bench's workload driver against a scripted target: what it counts, how it paces fixed
// rates, how it records errors and token timings; and its percentile arithmetic.
#include "tools/bench/workload.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

namespace titans::bench {
namespace {

// Appends consume one token per byte; generations stream `max_tokens` tokens two at a time with a
// small pause; every `fail_every`-th append fails (0: never).
class ScriptedTarget : public LoadTarget {
 public:
  explicit ScriptedTarget(int fail_every = 0) : fail_every_(fail_every) {}
  std::string name() const override { return "scripted"; }
  absl::Status CreateSession(const std::string& id) override {
    std::lock_guard<std::mutex> lock(mu_);
    created_.insert(id);
    return absl::OkStatus();
  }
  absl::StatusOr<int64_t> Append(const std::string&, const std::string& text) override {
    const int n = ++appends_;
    if (fail_every_ > 0 && n % fail_every_ == 0) return absl::UnavailableError("scripted failure");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return static_cast<int64_t>(text.size());
  }
  absl::StatusOr<int64_t> Generate(
      const std::string&, const std::string&, int max_tokens,
      const std::function<void(int64_t, const std::string&)>& on_tokens) override {
    ++generates_;
    for (int i = 0; i < max_tokens; i += 2) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      on_tokens(std::min(2, max_tokens - i), "ab");
    }
    return max_tokens;
  }
  absl::StatusOr<std::pair<int64_t, int64_t>> StateBytesAndPosition(const std::string&) override {
    return std::make_pair(int64_t{0}, int64_t{0});
  }
  absl::Status CloseSession(const std::string& id) override {
    std::lock_guard<std::mutex> lock(mu_);
    closed_.insert(id);
    return absl::OkStatus();
  }

  std::atomic<int> appends_{0}, generates_{0};
  std::mutex mu_;
  std::set<std::string> created_, closed_;

 private:
  int fail_every_;
};

TEST(Summarize, PercentilesInterpolateBetweenSortedValues) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);  // 1..100, unsorted
  LatencySummary s = Summarize(v);
  EXPECT_EQ(s.count, 100);
  EXPECT_DOUBLE_EQ(s.mean, 50.5);
  EXPECT_DOUBLE_EQ(s.p50, 50.5);
  EXPECT_NEAR(s.p95, 95.05, 1e-9);
  EXPECT_NEAR(s.p99, 99.01, 1e-9);
  EXPECT_DOUBLE_EQ(s.max, 100);
  EXPECT_EQ(Summarize({}).count, 0);
  EXPECT_DOUBLE_EQ(Summarize({7}).p99, 7);
}

TEST(SyntheticText, ExactLengthAndDeterministic) {
  EXPECT_EQ(SyntheticText(1000, 3).size(), 1000u);
  EXPECT_EQ(SyntheticText(1000, 3), SyntheticText(1000, 3));
  EXPECT_NE(SyntheticText(1000, 3), SyntheticText(1000, 4));
  EXPECT_EQ(SyntheticText(0, 1), "");
}

TEST(RunWorkload, ChatTurnsCountTokensAndRecordTokenTimings) {
  ScriptedTarget target;
  WorkloadOptions o;
  o.sessions = 3;
  o.mix = "chat";
  o.seconds = 0.3;
  o.turn_bytes = 10;
  o.generate_tokens = 6;
  WorkloadReport r = RunWorkload(&target, o);
  EXPECT_EQ(r.errors, 0);
  EXPECT_GT(r.requests, 3);
  EXPECT_EQ(r.requests, target.generates_.load());
  EXPECT_EQ(r.generated_tokens, 6 * r.requests);
  EXPECT_EQ(r.appended_tokens, 10 * r.requests);
  EXPECT_EQ(static_cast<int64_t>(r.latencies["ttft"].size()), r.requests);
  // 6 tokens in 3 messages: the 4 tokens after the first message each get an ITL sample.
  EXPECT_EQ(static_cast<int64_t>(r.latencies["itl"].size()), 4 * r.requests);
  EXPECT_GT(Summarize(r.latencies["itl"]).p50, 0.0005);  // ~2 ms per message, shared by 2 tokens
  EXPECT_EQ(target.created_.size(), 3u);
  EXPECT_EQ(target.closed_, target.created_);
  EXPECT_GT(r.tokens_per_second(), 0);
}

TEST(RunWorkload, FixedRateIssuesTheScheduledNumberOfRequests) {
  ScriptedTarget target;
  WorkloadOptions o;
  o.sessions = 4;
  o.mix = "stream";
  o.seconds = 1.0;
  o.rate = 40;  // 10 per session per second
  WorkloadReport r = RunWorkload(&target, o);
  EXPECT_EQ(r.errors, 0);
  // Each session sends at t = phase + k * 0.1 s for t < 1 s: 10 requests each.
  EXPECT_GE(r.requests, 36);
  EXPECT_LE(r.requests, 40);
  EXPECT_EQ(static_cast<int64_t>(r.latencies["append"].size()), r.requests);
}

TEST(RunWorkload, FailuresAreCountedNotTimed) {
  ScriptedTarget target(/*fail_every=*/3);
  WorkloadOptions o;
  o.sessions = 2;
  o.mix = "append";
  o.seconds = 0.2;
  o.append_bytes = 5;
  WorkloadReport r = RunWorkload(&target, o);
  EXPECT_GT(r.errors, 0);
  EXPECT_EQ(r.errors + r.requests, target.appends_.load());
  EXPECT_EQ(static_cast<int64_t>(r.latencies["append"].size()), r.requests);
  ASSERT_FALSE(r.error_samples.empty());
  EXPECT_NE(r.error_samples[0].find("scripted failure"), std::string::npos);
}

TEST(RunWorkload, MixedSessionsCycleThroughTheThreeKinds) {
  ScriptedTarget target;
  WorkloadOptions o;
  o.sessions = 3;
  o.mix = "mixed";
  o.seconds = 0.2;
  WorkloadReport r = RunWorkload(&target, o);
  EXPECT_EQ(r.errors, 0);
  EXPECT_GT(r.latencies["append"].size(), 0u);  // sessions 0 (append) and 2 (stream)
  EXPECT_GT(r.latencies["turn"].size(), 0u);    // session 1 (chat)
}

}  // namespace
}  // namespace titans::bench
