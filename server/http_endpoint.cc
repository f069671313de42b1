#include "server/http_endpoint.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace titans::server {
namespace {

MHD_Result OnRequest(void* cls, MHD_Connection* connection, const char* url, const char* method,
                     const char* /*version*/, const char* /*upload_data*/, size_t* upload_data_size,
                     void** /*con_cls*/) {
  const auto* endpoint = static_cast<const HttpEndpoint*>(cls);
  // A request body (there should be none) is drained without being kept.
  if (*upload_data_size != 0) {
    *upload_data_size = 0;
    return MHD_YES;
  }
  HttpEndpoint::Response r = endpoint->Answer(method, url);
  MHD_Response* response = MHD_create_response_from_buffer(
      r.body.size(), const_cast<char*>(r.body.data()), MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;
  MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, r.type.c_str());
  if (r.status == MHD_HTTP_METHOD_NOT_ALLOWED) {
    MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
  }
  const MHD_Result queued =
      MHD_queue_response(connection, static_cast<unsigned int>(r.status), response);
  MHD_destroy_response(response);
  return queued;
}

}  // namespace

HttpEndpoint::Response HttpEndpoint::Answer(const std::string& method,
                                            const std::string& path) const {
  if (method != "GET" && method != "HEAD") {
    return {MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", "only GET\n"};
  }
  if (path == "/metrics")
    return {MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", metrics_()};
  if (path == "/healthz") {
    const bool ok = healthy_();
    return {ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain",
            ok ? "ok\n" : "draining\n"};
  }
  return {MHD_HTTP_NOT_FOUND, "text/plain", "not found\n"};
}

absl::Status HttpEndpoint::Start(const std::string& host, int port) {
  if (daemon_ != nullptr) return absl::FailedPreconditionError("metrics endpoint: started twice");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError("metrics endpoint: host must be an IPv4 address: " + host);
  }
  // Event loop (epoll) on a small pool of threads: connections are served concurrently and
  // never one at a time behind a slow client.
  daemon_ = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, static_cast<uint16_t>(port), nullptr,
      nullptr, &OnRequest, this, MHD_OPTION_SOCK_ADDR, reinterpret_cast<sockaddr*>(&addr),
      MHD_OPTION_THREAD_POOL_SIZE, static_cast<unsigned int>(kThreads),
      MHD_OPTION_CONNECTION_TIMEOUT, static_cast<unsigned int>(kIdleTimeoutSeconds),
      MHD_OPTION_CONNECTION_LIMIT, static_cast<unsigned int>(kMaxConnections),
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, static_cast<size_t>(64 << 10), MHD_OPTION_END);
  if (daemon_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("metrics endpoint: cannot listen on ", host, ":",
                                               port, ": ", std::strerror(errno)));
  }
  const MHD_DaemonInfo* info = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
  port_ = info != nullptr ? info->port : port;
  return absl::OkStatus();
}

void HttpEndpoint::Stop() {
  if (daemon_ == nullptr) return;
  MHD_stop_daemon(daemon_);
  daemon_ = nullptr;
}

}  // namespace titans::server
