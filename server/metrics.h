// Prometheus metrics of the server (prometheus-cpp core + text serialisation; the civetweb
// exposer cannot start in a process that links LibTorch, so /metrics is served by
// http_endpoint.h). All names carry the titans_ prefix, base units and _total on counters
// (docs/metrics.md lists them). Thread-safe.
#ifndef TITANS_SERVER_METRICS_H_
#define TITANS_SERVER_METRICS_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "server/engine/engine.h"
#include "server/engine/observer.h"

namespace titans::server {

class ServerMetrics : public engine::EngineObserver {
 public:
  ServerMetrics();
  ~ServerMetrics() override;

  void SetModelInfo(const engine::ModelInfo& model);
  // Gauges read at scrape time (sessions, queue, state bytes).
  void SetStatsSource(std::function<engine::Engine::Stats()> source);
  // Bytes of request input held by calls in flight (ServiceOptions::inflight_request_bytes);
  // read at scrape time.
  void SetInflightSource(const std::atomic<int64_t>* inflight_request_bytes);
  void SetServing(bool serving);

  // One finished RPC: method name, gRPC status code (as its canonical name), seconds.
  void RecordRpc(std::string_view method, std::string_view code, double seconds);

  // The exposition text (Prometheus text format 0.0.4).
  std::string Scrape();

  void OnStep(int sessions, int64_t tokens, double seconds, double kernel_seconds) override;
  void OnSessionOpened() override;
  void OnSessionAcquired() override;
  void OnSessionClosed(std::string_view reason) override;
  void OnTokens(std::string_view kind, int64_t n) override;
  void OnQueueTime(double seconds) override;
  void OnTimeToFirstToken(double seconds) override;
  void OnInterTokenLatency(double seconds) override;
  void OnCheckpoint(int64_t bytes, double seconds, bool ok) override;
  void OnRestore(int64_t bytes, double seconds, bool ok) override;
  void OnLogCommit(int64_t bytes, double seconds, bool ok) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace titans::server

#endif  // TITANS_SERVER_METRICS_H_
