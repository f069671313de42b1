// A gRPC server interceptor that records every RPC of the server: its method, final status code
// and latency (ServerMetrics) and one structured log line (request id from the client's
// x-request-id metadata or generated, session id from the request's session_id field).
#ifndef TITANS_SERVER_RPC_OBSERVER_H_
#define TITANS_SERVER_RPC_OBSERVER_H_

#include <grpcpp/support/server_interceptor.h>

#include <memory>

#include "server/metrics.h"

namespace titans::server {

// `metrics` must outlive the server. Pass to ServerBuilder::experimental().
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeRpcObserverFactory(
    ServerMetrics* metrics);

}  // namespace titans::server

#endif  // TITANS_SERVER_RPC_OBSERVER_H_
