// SessionTable: lookups by phase and principal, and the running totals kept with the queues.
#include "server/engine/session_table.h"

#include <gtest/gtest.h>

#include "server/engine/engine.h"

namespace titans::testing {
namespace {

using engine::AppendOp;
using engine::Op;
using engine::Session;
using engine::SessionPhase;
using engine::SessionTable;

std::unique_ptr<Session> NewSession(const std::string& principal, const std::string& id) {
  auto s = std::make_unique<Session>(0, 1);
  s->record.principal = principal;
  s->record.id = engine::StorageName(principal, id);
  return s;
}

std::unique_ptr<Op> Append(int tokens) {
  return std::make_unique<Op>(AppendOp{}, std::vector<int32_t>(static_cast<size_t>(tokens), 65));
}

TEST(SessionTable, OnlyOpenSessionsOfTheSamePrincipalAreFound) {
  SessionTable table;
  MutexLock lock(table.mu());
  Session* open = table.Insert(NewSession("alice", "a"));
  Session* creating = table.Insert(NewSession("alice", "b"));
  creating->phase = SessionPhase::kCreating;
  Session* closing = table.Insert(NewSession("alice", "c"));
  closing->phase = SessionPhase::kClosing;
  ASSERT_TRUE(table.Find("alice", "a").ok());
  EXPECT_EQ(*table.Find("alice", "a"), open);
  EXPECT_EQ(table.Find("alice", "b").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(table.Find("alice", "c").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(table.FindAnyPhase("alice", "b"), creating);  // the id is taken all the same
  EXPECT_EQ(table.Find("bob", "a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(table.FindAnyPhase("bob", "a"), nullptr);
  const std::string name = open->record.id;
  EXPECT_EQ(table.Get(name), open);
  table.Remove(name);
  EXPECT_EQ(table.Get(name), nullptr);
  EXPECT_EQ(table.Find("alice", "a").status().code(), absl::StatusCode::kNotFound);
}

TEST(SessionTable, QueueTotalsFollowEveryChange) {
  SessionTable table;
  MutexLock lock(table.mu());
  Session* a = table.Insert(NewSession("", "a"));
  Session* b = table.Insert(NewSession("", "b"));
  EXPECT_FALSE(table.HasRunnable());
  table.PushOp(b, Append(5));
  table.PushOp(a, Append(7));
  table.PushOp(a, Append(3));
  EXPECT_EQ(table.QueuedTokens(), 15);
  EXPECT_EQ(table.Runnable(), (std::vector<Session*>{a, b}));  // id order
  table.SetQueuedTokens(a->ops.front().get(), 2);              // five of a's seven consumed
  EXPECT_EQ(table.QueuedTokens(), 10);
  std::unique_ptr<Op> done = table.PopOp(a);
  EXPECT_EQ(table.QueuedTokens(), 8);
  EXPECT_EQ(table.Runnable().size(), 2u);
  table.PopOp(a);
  EXPECT_EQ(table.Runnable(), std::vector<Session*>{b});
  const std::string name = b->record.id;
  table.Remove(name);  // drops its queued operation with it
  EXPECT_EQ(table.QueuedTokens(), 0);
  EXPECT_FALSE(table.HasRunnable());
}

}  // namespace
}  // namespace titans::testing
