// A minimal HTTP/1.1 endpoint for Prometheus scrapes: GET /metrics answers with the text a
// callback produces; GET /healthz answers "ok" (or 503 while draining). One connection at a
// time on one thread; every response closes its connection. Start / Stop are not thread-safe;
// the handlers are called on the endpoint thread.
#ifndef TITANS_SERVER_HTTP_ENDPOINT_H_
#define TITANS_SERVER_HTTP_ENDPOINT_H_

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "absl/status/status.h"

namespace titans::server {

class HttpEndpoint {
 public:
  HttpEndpoint(std::function<std::string()> metrics, std::function<bool()> healthy)
      : metrics_(std::move(metrics)), healthy_(std::move(healthy)) {}
  ~HttpEndpoint() { Stop(); }

  // Listens on host:port (port 0 = any free port; see port()). UNAVAILABLE if it cannot bind.
  absl::Status Start(const std::string& host, int port);
  void Stop();
  int port() const { return port_; }

 private:
  void Serve();
  void Handle(int fd);

  std::function<std::string()> metrics_;
  std::function<bool()> healthy_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace titans::server

#endif  // TITANS_SERVER_HTTP_ENDPOINT_H_
