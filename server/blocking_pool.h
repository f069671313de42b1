// BlockingPool: a few threads for the handlers' work that may block (the engine's synchronous
// calls, which can read or write the session store, and snapshot files), so that gRPC's callback
// threads never wait on a disk or on Redis. Work starts in submission order, on whichever thread is
// free.
//
// Thread safety: Run may be called from any thread. The destructor finishes the work already
// submitted, then joins the threads; nothing may be submitted after it has begun.
//
// Written here rather than taken from a library: Abseil's thread pool is internal, and the
// kernels' pool (model/threading.h) is a fork-join pool for compute, not a work queue.
#ifndef TITANS_SERVER_BLOCKING_POOL_H_
#define TITANS_SERVER_BLOCKING_POOL_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "model/mutex.h"

namespace titans::server {

class BlockingPool {
 public:
  explicit BlockingPool(int threads);
  ~BlockingPool();
  BlockingPool(const BlockingPool&) = delete;
  BlockingPool& operator=(const BlockingPool&) = delete;

  void Run(std::function<void()> work);

 private:
  void Loop();
  Mutex mu_;
  CondVar cv_;  // work arrived or stopping
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace titans::server

#endif  // TITANS_SERVER_BLOCKING_POOL_H_
