// The process's thread policy for model arithmetic: one pool owns the cores.
//
// Three pools can run the model's parallel work: the kernels' ThreadPool (the memory kernel and
// the batch-invariant GEMMs, kernels/thread_pool.h), LibTorch's intra-op pool, and OpenBLAS's
// own threads (under at::matmul). Each sizes itself to the cores by default, so together they
// oversubscribe them and spin against each other: a profile of one long append on 2 cores spent
// ~42% of its CPU in the kernel scheduler (sched_yield), issue 20. The policy gives the cores to
// the kernels' pool and one thread (the caller's) to each library pool.
//
// Thread safety: call ApplyThreadPolicy once, early in main (before the first model operation
// and before other threads run model work).
#ifndef TITANS_MODEL_THREADING_H_
#define TITANS_MODEL_THREADING_H_

#include <string>

#include "absl/status/status.h"

namespace titans {

struct ThreadPolicy {
  int compute_threads = 0;  // the kernels' pool; 0: kernels::UsableCpuCount()
  int library_threads = 1;  // LibTorch intra-op and OpenBLAS; 0: leave the libraries' defaults
};

// INVALID_ARGUMENT for negative counts; FAILED_PRECONDITION if the kernels' pool already runs
// with another size (the policy was applied too late).
absl::Status ApplyThreadPolicy(const ThreadPolicy& policy);

// What runs now, e.g. "compute 2, LibTorch intra-op 1, OpenBLAS 1" (OpenBLAS "n/a" when the
// process has no OpenBLAS).
std::string DescribeThreads();

}  // namespace titans

#endif  // TITANS_MODEL_THREADING_H_
