// The thread pool's size follows the CPUs a process may use: its affinity mask and its cgroup's
// CPU quota (read from fake cgroup trees here), not the machine's hardware thread count.
#include "kernels/thread_pool.h"

#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>

namespace titans::kernels {
namespace {

class CgroupTree {
 public:
  CgroupTree() {
    root_ = (std::filesystem::temp_directory_path() /
             ("titans_cgroup_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++)))
                .string();
    std::filesystem::remove_all(root_);
    std::filesystem::create_directories(root_ + "/cpu");
  }
  ~CgroupTree() { std::filesystem::remove_all(root_); }
  void Write(const std::string& file, const std::string& text) {
    std::ofstream(root_ + "/" + file) << text;
  }
  const std::string& root() const { return root_; }

 private:
  static inline int counter_ = 0;
  std::string root_;
};

TEST(CgroupCpuLimit, ReadsTheQuotaOfCgroupV2) {
  CgroupTree tree;
  EXPECT_EQ(CgroupCpuLimit(tree.root()), 0) << "no files: no limit";
  tree.Write("cpu.max", "max 100000\n");
  EXPECT_EQ(CgroupCpuLimit(tree.root()), 0);
  tree.Write("cpu.max", "200000 100000\n");
  EXPECT_EQ(CgroupCpuLimit(tree.root()), 2);
  tree.Write("cpu.max", "150000 100000\n");  // 1.5 CPUs: two threads, one of them half busy
  EXPECT_EQ(CgroupCpuLimit(tree.root()), 2);
  tree.Write("cpu.max", "50000 100000\n");
  EXPECT_EQ(CgroupCpuLimit(tree.root()), 1);
}

TEST(CgroupCpuLimit, TheTightestLimitOfTheCgroupAndItsAncestorsBinds) {
  CgroupTree tree;
  std::filesystem::create_directories(tree.root() + "/system.slice/titans.service");
  tree.Write("cpu.max", "max 100000\n");
  tree.Write("system.slice/cpu.max", "300000 100000\n");
  tree.Write("system.slice/titans.service/cpu.max", "max 100000\n");
  EXPECT_EQ(CgroupCpuLimit(tree.root(), "/system.slice/titans.service"), 3);
  tree.Write("system.slice/titans.service/cpu.max", "100000 100000\n");
  EXPECT_EQ(CgroupCpuLimit(tree.root(), "/system.slice/titans.service/"), 1);
  EXPECT_EQ(CgroupCpuLimit(tree.root(), "/system.slice"), 3);
  EXPECT_EQ(CgroupCpuLimit(tree.root(), "/"), 0);
  EXPECT_EQ(CgroupCpuLimit(tree.root(), "/elsewhere"), 0) << "a missing directory is no limit";
}

TEST(CgroupCpuLimit, ReadsTheQuotaOfCgroupV1) {
  CgroupTree tree;
  tree.Write("cpu/cpu.cfs_quota_us", "-1\n");
  tree.Write("cpu/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(CgroupCpuLimit(tree.root()), 0);
  tree.Write("cpu/cpu.cfs_quota_us", "400000\n");
  EXPECT_EQ(CgroupCpuLimit(tree.root()), 4);
  tree.Write("cpu/cpu.cfs_period_us", "garbage\n");
  EXPECT_EQ(CgroupCpuLimit(tree.root()), 0);
}

TEST(UsableCpuCount, FollowsTheAffinityMask) {
  cpu_set_t all;
  ASSERT_EQ(sched_getaffinity(0, sizeof(all), &all), 0);
  const int allowed = CPU_COUNT(&all);
  EXPECT_GE(UsableCpuCount(), 1);
  EXPECT_LE(UsableCpuCount(), allowed);
  EXPECT_LE(UsableCpuCount(), static_cast<int>(std::thread::hardware_concurrency()));
  // On a thread pinned to one CPU the answer is 1, whatever the machine has.
  int pinned = 0;
  std::thread([&] {
    cpu_set_t one;
    CPU_ZERO(&one);
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &all)) {
        CPU_SET(cpu, &one);
        break;
      }
    }
    if (sched_setaffinity(0, sizeof(one), &one) == 0) pinned = UsableCpuCount();
  }).join();
  EXPECT_EQ(pinned, 1);
}

TEST(ThreadPool, EveryItemRunsOnceWhateverTheSplit) {
  ThreadPool pool(3);
  for (int64_t count : {1, 2, 3, 7, 100}) {
    std::vector<std::atomic<int>> hits(count);
    pool.ParallelFor(count, 8, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) ++hits[i];
    });
    for (int64_t i = 0; i < count; ++i) EXPECT_EQ(hits[i].load(), 1) << count << " " << i;
  }
}

// A thread held up in its chunk (preempted, or given a costly item) does not hold the others up:
// they take every chunk left. Here the worker's first chunk waits until the calling thread has
// run all the others; with ranges fixed per thread that never happens and the wait runs out.
TEST(ThreadPool, AStalledThreadLeavesItsChunksToTheOthers) {
  ThreadPool pool(2);
  constexpr int64_t kCount = 2 * ThreadPool::kChunksPerPart;  // chunks of one item
  const std::thread::id caller = std::this_thread::get_id();
  std::mutex mu;
  std::condition_variable cv;
  int64_t by_caller = 0, by_worker = 0;
  pool.ParallelFor(kCount, 2, [&](int64_t begin, int64_t end) {
    std::unique_lock<std::mutex> lock(mu);
    if (std::this_thread::get_id() == caller) {
      by_caller += end - begin;
      cv.notify_all();
      return;
    }
    // At most a minute, so that a regression fails instead of hanging.
    cv.wait_for(lock, std::chrono::minutes(1), [&] { return by_caller + end - begin >= kCount; });
    by_worker += end - begin;
  });
  EXPECT_EQ(by_caller + by_worker, kCount);
  EXPECT_GE(by_caller, kCount - 1) << "the caller waited for a stalled worker's chunks";
}

}  // namespace
}  // namespace titans::kernels
