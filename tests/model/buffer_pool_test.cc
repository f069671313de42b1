// BufferPool (model/buffer_pool.h): it keeps only buffers nothing else holds, hands them back by
// exact shape, and ForwardMany's reuse of them changes no result and no state a copy holds.
#include "model/buffer_pool.h"

#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "model/titans_model.h"
#include "tests/model/model_test_util.h"

namespace titans {
namespace {

using testing::MakeModel;
using testing::MaxStateDiff;
using testing::Name;
using testing::TinyConfig;

class BufferPoolTest : public ::testing::Test {
 protected:
  void SetUp() override { pool_.Clear(); }
  BufferPool pool_;
};

TEST_F(BufferPoolTest, KeepsAnUnsharedTensorAndReturnsItByShape) {
  at::Tensor t = at::empty({2, 3});
  const void* data = t.data_ptr();
  pool_.Give(t);
  EXPECT_FALSE(t.defined());
  EXPECT_EQ(pool_.bytes(), 24);
  EXPECT_FALSE(pool_.Take({3, 2}, at::TensorOptions()).defined()) << "another shape";
  EXPECT_FALSE(pool_.Take({2, 3}, at::TensorOptions().dtype(at::kDouble)).defined());
  at::Tensor back = pool_.Take({2, 3}, at::TensorOptions());
  ASSERT_TRUE(back.defined());
  EXPECT_EQ(back.data_ptr(), data);
  EXPECT_EQ(pool_.bytes(), 0);
  EXPECT_FALSE(pool_.Take({2, 3}, at::TensorOptions()).defined()) << "taken twice";
}

TEST_F(BufferPoolTest, DropsWhatAnythingElseHolds) {
  at::Tensor shared = at::empty({4});
  const at::Tensor other_owner = shared;
  pool_.Give(shared);  // the same TensorImpl is held twice
  at::Tensor base = at::empty({4});
  const at::Tensor view = base.slice(0, 0, 2);
  pool_.Give(base);  // a view holds its storage
  at::Tensor part = at::empty({8}).slice(0, 0, 4);
  pool_.Give(part);  // the only owner, but of a part of a larger storage
  EXPECT_FALSE(shared.defined());
  EXPECT_FALSE(base.defined());
  EXPECT_EQ(pool_.bytes(), 0);
  EXPECT_FALSE(pool_.Take({4}, at::TensorOptions()).defined());
}

TEST_F(BufferPoolTest, MatchesInferenceModeOfTheTaker) {
  at::Tensor normal = at::empty({5});
  pool_.Give(normal);
  {
    c10::InferenceMode inference;
    EXPECT_FALSE(pool_.Take({5}, at::TensorOptions()).defined());
  }
  EXPECT_TRUE(pool_.Take({5}, at::TensorOptions()).defined());
}

TEST_F(BufferPoolTest, RespectsItsByteBound) {
  at::Tensor big = at::empty({BufferPool::kMaxBytes / 4 + 1});
  pool_.Give(big);
  EXPECT_EQ(pool_.bytes(), 0);
  at::Tensor small = at::empty({16});
  pool_.Give(small);
  EXPECT_EQ(pool_.bytes(), 64);
  pool_.Clear();
  EXPECT_EQ(pool_.bytes(), 0);
  EXPECT_FALSE(pool_.Take({16}, at::TensorOptions()).defined());
}

std::shared_ptr<PendingChunk> NewChunk(int64_t groups, int64_t rows) {
  auto chunk = std::make_shared<PendingChunk>();
  chunk->inputs[0] = at::empty({groups, rows, 8});
  chunk->deltas[0] = at::empty({groups, rows, 16});
  chunk->inputs[1] = at::empty({groups, rows, 16});
  chunk->deltas[1] = at::empty({groups, rows, 8});
  chunk->gates = at::empty({groups, rows, 3});
  chunk->rows.store(5);
  return chunk;
}

TEST_F(BufferPoolTest, KeepsChunksNothingElseHolds) {
  const std::vector<std::pair<int64_t, int64_t>> widths = {{8, 16}, {16, 8}};
  std::shared_ptr<PendingChunk> held = NewChunk(2, 4);
  const std::shared_ptr<PendingChunk> other_owner = held;
  pool_.GiveChunk(held);
  std::shared_ptr<PendingChunk> viewed = NewChunk(2, 4);
  const at::Tensor rows_view = viewed->deltas[1].slice(1, 0, 2);  // e.g. MaterializePending's
  pool_.GiveChunk(viewed);
  EXPECT_EQ(held, nullptr);
  EXPECT_EQ(viewed, nullptr);
  EXPECT_EQ(pool_.TakeChunk(2, 4, widths, at::TensorOptions()), nullptr);

  std::shared_ptr<PendingChunk> free_chunk = NewChunk(2, 4);
  const PendingChunk* address = free_chunk.get();
  pool_.GiveChunk(free_chunk);
  EXPECT_EQ(pool_.TakeChunk(2, 4, {{8, 16}}, at::TensorOptions()), nullptr) << "another depth";
  EXPECT_EQ(pool_.TakeChunk(3, 4, widths, at::TensorOptions()), nullptr) << "other groups";
  std::shared_ptr<PendingChunk> back = pool_.TakeChunk(2, 4, widths, at::TensorOptions());
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back.get(), address);
  EXPECT_EQ(back->rows.load(), 0);
  EXPECT_EQ(pool_.bytes(), 0);
}

// Decode steps through ForwardMany reuse the buffers that the states they replaced gave up
// (weights, momentum and chunks at chunk closes, logits rows every step), with results
// bit-identical to steps that allocate everything anew, and a copy of a state taken between steps
// (a snapshot, a rewind point) keeps its values while the live states move on.
TEST(BufferPoolReuse, DecodeStepsReuseBuffersAndChangeNoResultOrCopy) {
  for (Variant v : {Variant::kMAC, Variant::kMAL, Variant::kLMM}) {
    auto model = MakeModel(TinyConfig(v, 2, 4), 41);
    ASSERT_NE(model, nullptr);
    c10::InferenceMode inference;  // as the runner runs its steps
    BufferPool pool;
    BufferPool::Use use(&pool);  // as ModelRunner::Step does with its own
    constexpr int kSessions = 3, kSteps = 40, kCopyAt = 13;
    // Runs kSteps single-token steps of kSessions sessions; with `reuse` false the pool is emptied
    // before every step (everything allocated anew). Returns the states, and in *copies the
    // states as they were after step kCopyAt (held while the rest runs).
    auto run = [&](bool reuse, std::vector<SessionState>* copies) {
      std::vector<SessionState> states(kSessions);
      std::vector<SessionState*> pointers;
      for (SessionState& s : states) {
        s = model->NewState();
        pointers.push_back(&s);
      }
      for (int step = 0; step < kSteps; ++step) {
        if (!reuse) pool.Clear();
        std::vector<std::vector<int64_t>> tokens;
        for (int i = 0; i < kSessions; ++i) tokens.push_back({(step * 7 + i * 31) % 256});
        std::vector<absl::Status> statuses;
        EXPECT_TRUE(model->ForwardMany(pointers, tokens, &statuses).ok());
        for (const absl::Status& st : statuses) EXPECT_TRUE(st.ok()) << st;
        if (step == kCopyAt) *copies = states;
      }
      return states;
    };
    std::vector<SessionState> fresh_copies, reused_copies;
    const int64_t taken_before = pool.taken();
    const std::vector<SessionState> fresh = run(false, &fresh_copies);
    EXPECT_EQ(pool.taken(), taken_before) << Name(v) << ": the run without reuse took buffers";
    const std::vector<SessionState> recycled = run(true, &reused_copies);
    // Every step replaces each session's logits row; every 4th its weights, momentum and chunk.
    EXPECT_GE(pool.taken() - taken_before, kSessions * (kSteps - 2)) << Name(v);
    for (int i = 0; i < kSessions; ++i) {
      EXPECT_EQ(MaxStateDiff(recycled[i], fresh[i]), 0.0) << Name(v) << " session " << i;
      EXPECT_EQ(MaxStateDiff(reused_copies[i], fresh_copies[i]), 0.0)
          << Name(v) << " session " << i << ": a held copy changed";
    }
  }
}

// Outside a BufferPool::Use nothing is pooled: a thread that runs the model outside a runner's
// step (training, recovery on another thread, tools) keeps no buffers.
TEST(BufferPoolReuse, NothingIsKeptOutsideAUse) {
  EXPECT_EQ(BufferPool::Current(), nullptr);
  auto model = MakeModel(TinyConfig(Variant::kMAL, 2, 4), 43);
  ASSERT_NE(model, nullptr);
  c10::InferenceMode inference;
  BufferPool pool;
  {
    BufferPool::Use use(&pool);
    EXPECT_EQ(BufferPool::Current(), &pool);
    {
      BufferPool::Use none(nullptr);
      EXPECT_EQ(BufferPool::Current(), nullptr);
      SessionState s = model->NewState();
      std::vector<SessionState*> states{&s};
      for (int step = 0; step < 9; ++step) {
        const std::vector<std::vector<int64_t>> tokens{{step + 65}};
        ASSERT_TRUE(model->ForwardMany(states, tokens, nullptr).ok());
      }
    }
    EXPECT_EQ(BufferPool::Current(), &pool);
  }
  EXPECT_EQ(BufferPool::Current(), nullptr);
  EXPECT_EQ(pool.bytes(), 0);
  EXPECT_EQ(pool.taken(), 0);
}

}  // namespace
}  // namespace titans
