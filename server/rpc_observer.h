// A gRPC server interceptor that records every RPC of the server: its method, final status code
// and latency (ServerMetrics) and one structured log line (request id from the client's
// x-request-id metadata or generated, the caller's principal, and the session id from the
// request's session_id field: ids are scoped per principal, so the two together name a session).
#ifndef TITANS_SERVER_RPC_OBSERVER_H_
#define TITANS_SERVER_RPC_OBSERVER_H_

#include <grpcpp/support/server_interceptor.h>

#include <memory>

#include "server/auth.h"
#include "server/metrics.h"

namespace titans::server {

// `metrics` and `auth` (may be null: no principal logged) must outlive the server. Pass to
// ServerBuilder::experimental().
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeRpcObserverFactory(
    ServerMetrics* metrics, const Authenticator* auth);

}  // namespace titans::server

#endif  // TITANS_SERVER_RPC_OBSERVER_H_
