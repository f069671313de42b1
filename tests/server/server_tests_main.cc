// server_tests' main: the process runs under titans-server's default thread policy
// (model/threading.h: the compute pool owns the CPUs, LibTorch and OpenBLAS one thread each), so
// the engines these tests start compute with the threads they would have in the server, not
// with each library's own default.
#include <gtest/gtest.h>

#include <cstdio>

#include "model/threading.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (absl::Status st = titans::ApplyThreadPolicy(titans::ThreadPolicy{}); !st.ok()) {
    std::fprintf(stderr, "thread policy: %s\n", st.ToString().c_str());
    return 1;
  }
  return RUN_ALL_TESTS();
}
