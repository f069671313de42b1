// Events the engine reports for metrics (server/metrics.h implements this with Prometheus).
// Called from the engine thread and from request threads; implementations must be thread-safe
// and must not call back into the engine.
#ifndef TITANS_SERVER_ENGINE_OBSERVER_H_
#define TITANS_SERVER_ENGINE_OBSERVER_H_

#include <cstdint>
#include <string_view>

namespace titans::engine {

class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  // One scheduler step: sessions served, tokens consumed, wall time, memory-kernel time.
  virtual void OnStep(int /*sessions*/, int64_t /*tokens*/, double /*seconds*/,
                      double /*kernel_seconds*/) {}
  virtual void OnSessionOpened() {}
  // A session this replica loaded from a shared store after another replica had held it (or
  // after a restart): a session migration.
  virtual void OnSessionAcquired() {}
  // reason: "closed", "expired".
  virtual void OnSessionClosed(std::string_view /*reason*/) {}
  // kind: "appended", "prompt", "generated", "scored".
  virtual void OnTokens(std::string_view /*kind*/, int64_t /*n*/) {}
  // An operation waited this long between arrival and its first step.
  virtual void OnQueueTime(double /*seconds*/) {}
  virtual void OnTimeToFirstToken(double /*seconds*/) {}
  virtual void OnInterTokenLatency(double /*seconds*/) {}
  // A session state written to disk (spill, persist, expiry); ok=false for a failed write.
  virtual void OnCheckpoint(int64_t /*bytes*/, double /*seconds*/, bool /*ok*/) {}
  // The write-ahead log committed `bytes` in one group commit taking `seconds` (ok=false: the
  // write or fsync failed and the step's operations were refused).
  virtual void OnLogCommit(int64_t /*bytes*/, double /*seconds*/, bool /*ok*/) {}
  // A spilled state was read back (ok=false: it could not be restored).
  virtual void OnRestore(int64_t /*bytes*/, double /*seconds*/, bool /*ok*/) {}
};

}  // namespace titans::engine

#endif  // TITANS_SERVER_ENGINE_OBSERVER_H_
