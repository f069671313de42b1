// The thread policy: bad counts are refused, a late change of the compute pool is refused, and
// the library pools are set to what was asked.
#include "model/threading.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <string>

#include "kernels/thread_pool.h"

namespace titans {
namespace {

TEST(ThreadPolicy, AppliesLibraryThreadsAndRefusesLateOrBadPoolSizes) {
  EXPECT_EQ(ApplyThreadPolicy({-1, 1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplyThreadPolicy({0, -1}).code(), absl::StatusCode::kInvalidArgument);
  const int size = kernels::ThreadPool::Default().size();  // the pool runs from here on
  EXPECT_EQ(ApplyThreadPolicy({size + 1, 1}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(kernels::ThreadPool::SetDefaultSize(size + 1));
  EXPECT_EQ(kernels::ThreadPool::Default().size(), size);
  ASSERT_TRUE(ApplyThreadPolicy({size, 1}).ok());  // the size it already has is fine
  EXPECT_EQ(at::get_num_threads(), 1);
  const std::string described = DescribeThreads();
  EXPECT_NE(described.find("compute " + std::to_string(size)), std::string::npos) << described;
  EXPECT_NE(described.find("LibTorch intra-op 1"), std::string::npos) << described;
  // Where LibTorch computes with OpenBLAS (Debian's does), it must have been found and set.
  std::ifstream maps("/proc/self/maps");
  const std::string mapped((std::istreambuf_iterator<char>(maps)),
                           std::istreambuf_iterator<char>());
  if (mapped.find("libopenblas") != std::string::npos) {
    EXPECT_NE(described.find("OpenBLAS 1"), std::string::npos) << described;
  } else {
    EXPECT_NE(described.find("OpenBLAS n/a"), std::string::npos) << described;
  }
}

}  // namespace
}  // namespace titans
