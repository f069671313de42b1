// GenerateEventQueue: events queued while the handler was busy leave as one, in order, with the
// newest position and the last event's finish and timings; nothing is lost or reordered.
#include "server/generate_events.h"

#include <gtest/gtest.h>

#include <thread>

namespace titans {
namespace {

engine::GenerateEvent Token(int32_t id, const std::string& text, int64_t position) {
  engine::GenerateEvent e;
  e.tokens = {id};
  e.text = text;
  e.position = position;
  e.generated_tokens = static_cast<int32_t>(position - 10);
  return e;
}

TEST(GenerateEventQueue, QueuedEventsLeaveAsOneInOrder) {
  GenerateEventQueue q;
  q.Push(Token(104, "h", 11));
  q.Push(Token(105, "i", 12));
  engine::GenerateEvent last = Token(33, "!", 13);
  last.finish = engine::Finish::kLength;
  last.total_seconds = 1.5;
  last.time_to_first_token_seconds = 0.25;
  last.prompt_tokens = 7;
  q.Push(last);
  q.Finish(absl::OkStatus());
  engine::GenerateEvent e;
  int checks = 0;
  ASSERT_TRUE(q.Next(&e, std::chrono::milliseconds(1), [&] { ++checks; }));
  EXPECT_EQ(e.tokens, (std::vector<int32_t>{104, 105, 33}));
  EXPECT_EQ(e.text, "hi!");
  EXPECT_EQ(e.position, 13);
  EXPECT_EQ(e.generated_tokens, 3);
  EXPECT_EQ(e.finish, engine::Finish::kLength);
  EXPECT_EQ(e.total_seconds, 1.5);
  EXPECT_EQ(e.time_to_first_token_seconds, 0.25);
  EXPECT_EQ(e.prompt_tokens, 7);
  EXPECT_EQ(checks, 0) << "nothing to wait for";
  EXPECT_FALSE(q.Next(&e, std::chrono::milliseconds(1), nullptr)) << "drained and finished";
  EXPECT_TRUE(q.status().ok());
}

// A producer on another thread: whatever the interleaving, the consumer sees every token once,
// in order, and the finish last.
TEST(GenerateEventQueue, ConcurrentProducerLosesNothing) {
  GenerateEventQueue q;
  constexpr int kTokens = 2000;
  std::thread producer([&] {
    for (int i = 0; i < kTokens; ++i) {
      engine::GenerateEvent e =
          Token(i % 250, std::string(1, static_cast<char>('a' + i % 26)), 11 + i);
      if (i + 1 == kTokens) e.finish = engine::Finish::kStop;
      q.Push(e);
    }
    q.Finish(absl::CancelledError("test"));
  });
  std::vector<int32_t> tokens;
  std::string text;
  engine::GenerateEvent e;
  engine::Finish finish = engine::Finish::kNone;
  while (q.Next(&e, std::chrono::milliseconds(1), nullptr)) {
    EXPECT_EQ(finish, engine::Finish::kNone) << "an event after the finish";
    tokens.insert(tokens.end(), e.tokens.begin(), e.tokens.end());
    text += e.text;
    finish = e.finish;
    EXPECT_EQ(e.position, 10 + static_cast<int64_t>(tokens.size()));
  }
  producer.join();
  ASSERT_EQ(tokens.size(), static_cast<size_t>(kTokens));
  for (int i = 0; i < kTokens; ++i) {
    ASSERT_EQ(tokens[i], i % 250) << i;
    ASSERT_EQ(text[i], static_cast<char>('a' + i % 26)) << i;
  }
  EXPECT_EQ(finish, engine::Finish::kStop);
  EXPECT_EQ(q.status().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace titans
