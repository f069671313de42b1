// An operation queued on a session: what a caller asked for (one struct per kind, each with the
// completion that answers it), plus what the engine thread tracks while it runs (progress, the
// state to roll back to, the write-ahead log record it builds). Plain data, no locking of its own:
// the engine creates an Op on a caller thread, queues it under the engine lock, and from then on
// only the engine thread changes it (except `queued_tokens`, see below). Not a public header.
#ifndef TITANS_SERVER_ENGINE_OPERATION_H_
#define TITANS_SERVER_ENGINE_OPERATION_H_

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/model_runner.h"
#include "model/text_stream.h"
#include "server/engine/engine.h"
#include "server/engine/rewind_history.h"

namespace titans::engine {

using Clock = std::chrono::steady_clock;

// How an operation answers its caller: exactly once, with its result or its error.
template <typename T>
using Completion = std::function<void(absl::StatusOr<T>)>;

struct AppendOp {
  Completion<AppendResult> done;
};

struct GenerateOp {
  GenerateParams params;
  SamplingParams sampling;           // the session's defaults with the request's overrides
  std::optional<TextStream> stream;  // once the prompt is consumed
  std::function<void(const GenerateEvent&)> on_event;
  Engine::Done done;  // after the last event: OK, or why the generation ended
  std::optional<Clock::time_point> first_token;
  Clock::time_point last_token;
};

struct ScoreOp {
  bool commit = false;  // the scored tokens stay in the session
  Completion<ScoreResult> done;
};

struct CloseOp {
  Engine::Done done;
};

struct ForkOp {
  std::string new_id;
  int64_t position = -1;  // the position to fork at (-1: the current one)
  Completion<SessionInfo> done;
};

struct RewindOp {
  int64_t position = 0;
  Completion<SessionInfo> done;
};

struct ExportOp {
  Completion<std::string> done;
};

// Where an operation is in its life. Ordered: an operation only moves forward.
enum class OpStatus {
  kWaiting,   // queued, has not changed the session
  kRunning,   // has started changing the session (its rollback point is taken)
  kFinished,  // answered (or its answer is queued); the step's update pops it
};

// For std::visit over an operation's kind with one lambda per kind.
template <typename... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};
template <typename... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

struct Op {
  using Kind = std::variant<AppendOp, GenerateOp, ScoreOp, CloseOp, ForkOp, ExportOp, RewindOp>;

  explicit Op(Kind k, std::vector<int32_t> input = {})
      : kind(std::move(k)), tokens(std::move(input)) {}

  template <typename T>
  T* as() {
    return std::get_if<T>(&kind);
  }
  template <typename T>
  const T* as() const {
    return std::get_if<T>(&kind);
  }
  template <typename T>
  bool is() const {
    return std::holds_alternative<T>(kind);
  }

  // The completion answering the caller with `error`, whatever the operation's kind (moved out:
  // call it once).
  std::function<void()> TakeFailure(absl::Status error) {
    return std::visit(
        [&error](auto& k) -> std::function<void()> {
          return [done = std::move(k.done), error] { done(error); };
        },
        kind);
  }

  Kind kind;
  std::vector<int32_t> tokens;  // append tokens, generate prompt, score tokens
  size_t consumed = 0;
  CancelFlag cancel;
  Clock::time_point arrival = Clock::now();
  OpStatus status = OpStatus::kWaiting;
  // Append, generate, committed score: the session before the operation, restored on failure
  // or cancellation (atomicity).
  std::shared_ptr<const SlotSnapshot> backup;
  // What the operation consumed, in the pieces it was consumed in (the write-ahead log record).
  int64_t position_before = -1;  // set when it starts running
  std::vector<int32_t> log_tokens, log_pieces;
  // Append: rewind points taken inside the operation (its pieces end on them), committed to the
  // session's history with its tokens when it completes, so that a rewind into a long append
  // replays at most the rewind interval. Only the ones the window needs are kept.
  std::vector<RewindPoint> inner_points;

  // Engine thread only (it changes `consumed` without holding the engine lock).
  int64_t remaining() const { return static_cast<int64_t>(tokens.size() - consumed); }
  // remaining() as of the end of the last step, for readers holding the engine lock on other
  // threads (admission control). Written under the lock.
  int64_t queued_tokens = 0;
};

}  // namespace titans::engine

#endif  // TITANS_SERVER_ENGINE_OPERATION_H_
