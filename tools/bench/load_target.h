// What titans-bench drives: the session operations a client uses, behind one interface with two
// implementations, the gRPC server (MakeGrpcTarget) and the engine in-process without gRPC
// (MakeEngineTarget), so that the same workload measures the server's overhead as a ratio.
//
// Calls block until the operation completes. Thread safety: every method may be called from many
// threads at once (one thread per simulated client session).
#ifndef TITANS_TOOLS_BENCH_LOAD_TARGET_H_
#define TITANS_TOOLS_BENCH_LOAD_TARGET_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace titans::engine {
class Engine;
}

namespace titans::bench {

class LoadTarget {
 public:
  virtual ~LoadTarget() = default;
  virtual std::string name() const = 0;

  virtual absl::Status CreateSession(const std::string& id) = 0;
  // Returns the tokens the append consumed.
  virtual absl::StatusOr<int64_t> Append(const std::string& id, const std::string& text) = 0;
  // Appends `prompt` (may be empty) and generates up to `max_tokens` greedily; `on_tokens(n,
  // text)` runs as each batch of n new tokens arrives. Returns the tokens generated.
  virtual absl::StatusOr<int64_t> Generate(
      const std::string& id, const std::string& prompt, int max_tokens,
      const std::function<void(int64_t, const std::string&)>& on_tokens) = 0;
  // The session's state size in bytes and position.
  virtual absl::StatusOr<std::pair<int64_t, int64_t>> StateBytesAndPosition(
      const std::string& id) = 0;
  virtual absl::Status CloseSession(const std::string& id) = 0;
};

// A titans.v1 server at `address` (host:port); each call has `deadline_seconds`.
std::unique_ptr<LoadTarget> MakeGrpcTarget(const std::string& address, double deadline_seconds);
// `engine` in-process (not owned; must outlive the target).
std::unique_ptr<LoadTarget> MakeEngineTarget(engine::Engine* engine);

}  // namespace titans::bench

#endif  // TITANS_TOOLS_BENCH_LOAD_TARGET_H_
