// The HTTP/1.1 endpoint for Prometheus scrapes and probes: GET /metrics answers with the text a
// callback produces; GET /healthz answers "ok" (or 503 while draining); other paths 404, other
// methods 405. Served by libmicrohttpd (Debian's libmicrohttpd12) rather than by hand: its event
// loop serves many connections at once, so a slow or silent client delays nobody else; each
// connection is closed after kIdleTimeoutSeconds without progress, and at most
// kMaxConnections are open at once (more are refused at accept).
//
// Start / Stop are not thread-safe (call them from one thread); the callbacks are called on the
// endpoint's threads, possibly concurrently, and must be thread-safe.
#ifndef TITANS_SERVER_HTTP_ENDPOINT_H_
#define TITANS_SERVER_HTTP_ENDPOINT_H_

#include <functional>
#include <string>

#include "absl/status/status.h"

struct MHD_Daemon;

namespace titans::server {

class HttpEndpoint {
 public:
  static constexpr int kIdleTimeoutSeconds = 5;
  static constexpr int kMaxConnections = 64;
  static constexpr int kThreads = 2;

  HttpEndpoint(std::function<std::string()> metrics, std::function<bool()> healthy)
      : metrics_(std::move(metrics)), healthy_(std::move(healthy)) {}
  ~HttpEndpoint() { Stop(); }
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  // Listens on host:port (an IPv4 address; port 0 = any free port, see port()).
  // INVALID_ARGUMENT for a bad host, UNAVAILABLE if it cannot listen.
  absl::Status Start(const std::string& host, int port);
  // Stops listening and closes every connection; idempotent.
  void Stop();
  int port() const { return port_; }

  // The response to one request (also used by the libmicrohttpd callback): status code,
  // content type, body.
  struct Response {
    int status;
    std::string type, body;
  };
  Response Answer(const std::string& method, const std::string& path) const;

 private:
  std::function<std::string()> metrics_;
  std::function<bool()> healthy_;
  MHD_Daemon* daemon_ = nullptr;
  int port_ = 0;
};

}  // namespace titans::server

#endif  // TITANS_SERVER_HTTP_ENDPOINT_H_
