// CompletionQueue (server/engine/completion_queue.h): completions run on its own thread, in
// posting order; Flush waits for them; Post blocks while the queue is full; a completion that
// posts runs that batch at once; destruction runs everything posted.
#include "server/engine/completion_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace titans::engine {
namespace {

// The order completions ran in, and the threads they ran on.
struct Record {
  std::mutex mu;
  std::vector<int> order;
  std::vector<std::thread::id> threads;
  std::function<void()> Add(int value) {
    return [this, value] {
      std::lock_guard<std::mutex> lock(mu);
      order.push_back(value);
      threads.push_back(std::this_thread::get_id());
    };
  }
};

TEST(CompletionQueue, RunsBatchesInPostingOrderOnItsOwnThread) {
  Record record;
  CompletionQueue queue;
  for (int b = 0; b < 50; ++b) {
    CompletionQueue::Batch batch;
    for (int i = 0; i < 3; ++i) batch.push_back(record.Add(3 * b + i));
    queue.Post(std::move(batch));
  }
  queue.Post({});  // ignored
  queue.Flush();
  std::lock_guard<std::mutex> lock(record.mu);
  ASSERT_EQ(record.order.size(), 150u);
  for (int i = 0; i < 150; ++i) EXPECT_EQ(record.order[i], i);
  for (const std::thread::id& id : record.threads) {
    EXPECT_NE(id, std::this_thread::get_id());
    EXPECT_EQ(id, record.threads[0]);
  }
}

TEST(CompletionQueue, PostBlocksWhileFullUntilACompletionFinishes) {
  Record record;
  CompletionQueue queue;
  std::mutex mu;
  std::condition_variable cv;
  bool started = false, release = false;
  queue.Post({[&] {
    std::unique_lock<std::mutex> lock(mu);
    started = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
  }});
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return started; });  // the first batch runs and holds the thread
  }
  for (size_t b = 0; b < CompletionQueue::kMaxPendingBatches; ++b) {
    queue.Post({record.Add(static_cast<int>(b))});  // fills the queue without blocking
  }
  std::atomic<bool> posted{false};
  std::thread poster([&] {
    queue.Post({record.Add(100)});
    posted = true;
  });
  // Blocked as long as the first batch holds the thread: however long this waits, a correct
  // queue never sets the flag here.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(posted.load()) << "Post returned while the queue was full";
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  poster.join();
  EXPECT_TRUE(posted.load());
  queue.Flush();
  std::lock_guard<std::mutex> lock(record.mu);
  EXPECT_EQ(record.order, (std::vector<int>{0, 1, 2, 3, 100}));
}

TEST(CompletionQueue, ACompletionThatPostsRunsThatBatchAtOnce) {
  Record record;
  CompletionQueue queue;
  CompletionQueue::Batch outer;
  outer.push_back(record.Add(1));
  outer.push_back([&] {
    CompletionQueue::Batch inner;
    inner.push_back(record.Add(2));
    queue.Post(std::move(inner));  // from the queue's thread: would wait behind itself
    queue.Flush();                 // likewise: returns at once
  });
  outer.push_back(record.Add(3));
  queue.Post(std::move(outer));
  queue.Flush();
  std::lock_guard<std::mutex> lock(record.mu);
  EXPECT_EQ(record.order, (std::vector<int>{1, 2, 3}));
}

TEST(CompletionQueue, DestructionRunsEverythingPosted) {
  Record record;
  {
    CompletionQueue queue;
    for (int b = 0; b < 20; ++b) queue.Post({record.Add(b)});
  }
  std::lock_guard<std::mutex> lock(record.mu);
  EXPECT_EQ(record.order.size(), 20u);
}

}  // namespace
}  // namespace titans::engine
