// The titans.v1.Titans gRPC service over an Engine, on gRPC's callback API: no thread per call
// and no polling. Handlers are thin: check the request parsed, authenticate, translate it, hand
// it to the engine and return; the engine's completion finishes the call, and a cancelled call
// or a passed deadline raises the operation's cancel flag (server/stream_reactors.h). Generated
// protobuf headers stay out of this header.
#ifndef TITANS_SERVER_SERVICE_H_
#define TITANS_SERVER_SERVICE_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/service_type.h>

#include <atomic>
#include <memory>

#include "server/auth.h"
#include "server/engine/engine.h"

namespace titans::server {

struct ServiceOptions {
  // Upper bound on the bytes of text one AppendStream may accumulate.
  int64_t max_stream_bytes = int64_t{256} << 20;
  // Server-wide bound on the bytes of request input held at once by Append and AppendStream
  // calls that have not reached the engine yet; a call that would pass it gets
  // RESOURCE_EXHAUSTED (retry later). 0 = no bound.
  int64_t max_inflight_request_bytes = int64_t{1} << 30;
  // If set, the service counts the bytes it holds (as above) here, for a gauge; owned by the
  // caller, must outlive the service.
  std::atomic<int64_t>* inflight_request_bytes = nullptr;
  // Where ExportSession / ImportSession read and write snapshot files; empty disables files.
  std::string snapshot_dir;
  // Threads for the handlers' work that may block: the engine's synchronous calls (create, get,
  // list, import; they can read or write the session store) and snapshot files.
  int blocking_threads = 4;
};

// The engine and authenticator must outlive the service, and the service the server it is
// registered with (its destructor waits for the blocking work submitted). Thread-safe.
std::unique_ptr<grpc::Service> MakeTitansService(engine::Engine* engine, const Authenticator* auth,
                                                 ServiceOptions options = {});

}  // namespace titans::server

#endif  // TITANS_SERVER_SERVICE_H_
