#include "model/threading.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

#include "absl/strings/str_cat.h"
#include "kernels/thread_pool.h"

namespace titans {
namespace {

// OpenBLAS is LibTorch's BLAS on Debian, reached through libblas.so.3; it is looked up at run
// time so that a process with another BLAS (or none) still works.
using SetThreads = void (*)(int);
using GetThreads = int (*)();

SetThreads OpenBlasSetThreads() {
  return reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
}
GetThreads OpenBlasGetThreads() {
  return reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
}

}  // namespace

absl::Status ApplyThreadPolicy(const ThreadPolicy& policy) {
  if (policy.compute_threads < 0 || policy.library_threads < 0) {
    return absl::InvalidArgumentError("thread counts must be >= 0");
  }
  if (!kernels::ThreadPool::SetDefaultSize(policy.compute_threads) && policy.compute_threads > 0 &&
      kernels::ThreadPool::Default().size() != policy.compute_threads) {
    return absl::FailedPreconditionError(
        "the compute thread pool already runs; apply the thread policy before any model work");
  }
  if (policy.library_threads > 0) {
    at::set_num_threads(policy.library_threads);
    if (SetThreads set = OpenBlasSetThreads()) set(policy.library_threads);
  }
  return absl::OkStatus();
}

std::string DescribeThreads() {
  GetThreads get = OpenBlasGetThreads();
  return absl::StrCat("compute ", kernels::ThreadPool::Default().size(), ", LibTorch intra-op ",
                      at::get_num_threads(), ", OpenBLAS ",
                      get ? absl::StrCat(get()) : std::string("n/a"));
}

}  // namespace titans
