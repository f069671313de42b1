// The titans.v1 calls that stream or may run long, as gRPC callback reactors. A reactor hands its
// work to the engine and returns; the engine's completion callbacks (on the engine thread) write
// the answer and finish the call. No reactor blocks or polls: a cancelled call or a passed
// deadline reaches OnCancel, which raises the operation's cancel flag, and the engine answers
// between steps. Every reactor deletes itself in OnDone, which gRPC calls only after Finish, and
// a reactor finishes only after the engine's last callback for it: so no callback outlives it.
//
// Thread safety: gRPC calls a reactor's reactions and the engine calls its callbacks on their
// own threads; each reactor guards its shared state with its own mutex and starts gRPC
// operations outside it.
#ifndef TITANS_SERVER_STREAM_REACTORS_H_
#define TITANS_SERVER_STREAM_REACTORS_H_

#include <grpcpp/grpcpp.h>

#include <string>

#include "server/engine/engine.h"
#include "server/inflight_budget.h"
#include "titans/v1/titans.grpc.pb.h"

namespace titans::server {

// What the reactors share; every pointer outlives the calls.
struct ReactorContext {
  engine::Engine* engine = nullptr;
  InflightBudget* inflight = nullptr;
  int64_t max_stream_bytes = 0;  // ServiceOptions::max_stream_bytes
};

// A reactor of kind Base that only finishes with `status` (for calls refused before they start).
template <typename Base>
class RefusedCall final : public Base {
 public:
  explicit RefusedCall(grpc::Status status) { this->Finish(std::move(status)); }
  void OnDone() override { delete this; }
};

// Append with an already parsed input, whose bytes are held in the in-flight budget for the
// call's life (RESOURCE_EXHAUSTED at once if the budget cannot take them).
grpc::ServerUnaryReactor* StartAppend(const ReactorContext& rc, std::string principal,
                                      const std::string& session_id, engine::Input input,
                                      titans::v1::AppendResponse* response);
grpc::ServerReadReactor<titans::v1::AppendRequest>* StartAppendStream(
    grpc::CallbackServerContext* ctx, const ReactorContext& rc, std::string principal,
    titans::v1::AppendResponse* response);
// Events that arrive while a write is under way leave as one message (MergeGenerateEvents), so
// a slow reader costs memory for its unsent text, not a write per token.
grpc::ServerWriteReactor<titans::v1::GenerateResponse>* StartGenerate(
    const ReactorContext& rc, std::string principal, const titans::v1::GenerateRequest& request);
// Commands run one at a time in arrival order; the next is read once the previous one's answers
// are written (so a client that stops reading stops the stream, as with a blocking writer).
grpc::ServerBidiReactor<titans::v1::StreamRequest, titans::v1::StreamResponse>* StartStream(
    const ReactorContext& rc, std::string principal);

}  // namespace titans::server

#endif  // TITANS_SERVER_STREAM_REACTORS_H_
