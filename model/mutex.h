// A mutex, scoped lock and condition variable that both checkers this project runs can see:
// clang's thread-safety analysis (-Wthread-safety: the ABSL_* capability annotations below) and
// ThreadSanitizer (scripts/tsan.sh).
//
// Why not absl::Mutex: Debian's Abseil is built without ThreadSanitizer, so TSan cannot see its
// locking and reports every access it orders as a race. Why not std::mutex alone: libstdc++
// does not annotate it as a capability, so -Wthread-safety cannot check ABSL_GUARDED_BY against
// it. This wrapper is std::mutex with absl::Mutex's annotations and the subset of its interface
// this project uses, so that switching to absl::Mutex later is a rename.
//
// Thread safety: as std::mutex / std::condition_variable.
#ifndef TITANS_MODEL_MUTEX_H_
#define TITANS_MODEL_MUTEX_H_

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace titans {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }

 private:
  friend class CondVar;
  std::mutex mu_;
};

// Holds `mu` from construction to destruction.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

class CondVar {
 public:
  // Releases `mu` while waiting, until signalled, `timeout` passes, or a spurious wake-up;
  // `mu` is held again on return (callers re-check their condition).
  // Releases `mu` while waiting until signalled (or a spurious wake-up); `mu` is held again on
  // return.
  void Wait(Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    cv_.wait(lock);
    lock.release();
  }
  void WaitWithTimeout(Mutex* mu, std::chrono::steady_clock::duration timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    cv_.wait_for(lock, timeout);
    lock.release();  // still held: the caller's lock owns it
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace titans

#endif  // TITANS_MODEL_MUTEX_H_
