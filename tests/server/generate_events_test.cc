// MergeGenerateEvents: events merged while a write was under way leave as one, in order, with the
// newest position and the last event's finish and timings; nothing is lost or reordered.
#include "server/generate_events.h"

#include <gtest/gtest.h>

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

TEST(MergeGenerateEvents, MergedEventsLeaveAsOneInOrder) {
  engine::GenerateEvent e = Token(104, "h", 11);
  MergeGenerateEvents(&e, Token(105, "i", 12));
  engine::GenerateEvent last = Token(33, "!", 13);
  last.finish = engine::Finish::kLength;
  last.total_seconds = 1.5;
  last.time_to_first_token_seconds = 0.25;
  last.prompt_tokens = 7;
  MergeGenerateEvents(&e, last);
  EXPECT_EQ(e.tokens, (std::vector<int32_t>{104, 105, 33}));
  EXPECT_EQ(e.text, "hi!");
  EXPECT_EQ(e.position, 13);
  EXPECT_EQ(e.generated_tokens, 3);
  EXPECT_EQ(e.finish, engine::Finish::kLength);
  EXPECT_EQ(e.total_seconds, 1.5);
  EXPECT_EQ(e.time_to_first_token_seconds, 0.25);
  EXPECT_EQ(e.prompt_tokens, 7);
}

}  // namespace
}  // namespace titans
