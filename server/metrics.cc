#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <mutex>

namespace titans::server {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using Buckets = prometheus::Histogram::BucketBoundaries;

// Latency buckets from 100 us to 60 s.
Buckets LatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30,    60};
}

Buckets CountBuckets() { return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384}; }

}  // namespace

struct ServerMetrics::Impl {
  prometheus::Registry registry;
  prometheus::Family<prometheus::Counter>& rpc_requests =
      BuildCounter()
          .Name("titans_rpc_requests_total")
          .Help("RPCs finished, by method and gRPC status code")
          .Register(registry);
  prometheus::Family<prometheus::Histogram>& rpc_duration =
      BuildHistogram()
          .Name("titans_rpc_duration_seconds")
          .Help("RPC latency from arrival to the final status")
          .Register(registry);
  prometheus::Family<prometheus::Gauge>& sessions =
      BuildGauge()
          .Name("titans_sessions")
          .Help("Open sessions, by where their state is")
          .Register(registry);
  prometheus::Family<prometheus::Counter>& opened =
      BuildCounter()
          .Name("titans_sessions_opened_total")
          .Help("Sessions created, forked or imported")
          .Register(registry);
  prometheus::Family<prometheus::Counter>& acquired =
      BuildCounter()
          .Name("titans_sessions_acquired_total")
          .Help("Sessions taken over from a shared session store (migrations between replicas)")
          .Register(registry);
  prometheus::Family<prometheus::Counter>& closed = BuildCounter()
                                                        .Name("titans_sessions_closed_total")
                                                        .Help("Sessions ended, by reason")
                                                        .Register(registry);
  prometheus::Family<prometheus::Gauge>& state_bytes =
      BuildGauge()
          .Name("titans_session_state_bytes")
          .Help("Bytes of session state, resident in RAM or spilled to disk")
          .Register(registry);
  prometheus::Family<prometheus::Gauge>& queue_tokens =
      BuildGauge()
          .Name("titans_queue_tokens")
          .Help("Tokens accepted and not yet processed")
          .Register(registry);
  prometheus::Family<prometheus::Gauge>& inflight_bytes =
      BuildGauge()
          .Name("titans_inflight_request_bytes")
          .Help(
              "Bytes of request input held by calls not yet handed to the engine "
              "(bounded by --max_inflight_request_bytes)")
          .Register(registry);
  prometheus::Family<prometheus::Gauge>& queue_ops = BuildGauge()
                                                         .Name("titans_queue_operations")
                                                         .Help("Operations queued or running")
                                                         .Register(registry);
  prometheus::Family<prometheus::Histogram>& queue_time =
      BuildHistogram()
          .Name("titans_queue_time_seconds")
          .Help("Time from an operation's arrival to its first scheduler step")
          .Register(registry);
  prometheus::Family<prometheus::Counter>& steps = BuildCounter()
                                                       .Name("titans_scheduler_steps_total")
                                                       .Help("Scheduler steps executed")
                                                       .Register(registry);
  prometheus::Family<prometheus::Histogram>& step_sessions =
      BuildHistogram()
          .Name("titans_step_sessions")
          .Help("Sessions served per scheduler step (the batch size)")
          .Register(registry);
  prometheus::Family<prometheus::Histogram>& step_tokens =
      BuildHistogram()
          .Name("titans_step_tokens")
          .Help("Tokens processed per scheduler step")
          .Register(registry);
  prometheus::Family<prometheus::Histogram>& step_duration =
      BuildHistogram()
          .Name("titans_step_duration_seconds")
          .Help("Wall time of a scheduler step")
          .Register(registry);
  prometheus::Family<prometheus::Histogram>& kernel_time =
      BuildHistogram()
          .Name("titans_memory_kernel_seconds")
          .Help("Time in the memory-update kernel per scheduler step")
          .Register(registry);
  prometheus::Family<prometheus::Counter>& tokens =
      BuildCounter()
          .Name("titans_tokens_total")
          .Help("Tokens processed, by kind (appended, prompt, generated, scored)")
          .Register(registry);
  prometheus::Family<prometheus::Histogram>& ttft =
      BuildHistogram()
          .Name("titans_time_to_first_token_seconds")
          .Help("Generate: time from arrival to the first generated token")
          .Register(registry);
  prometheus::Family<prometheus::Histogram>& itl =
      BuildHistogram()
          .Name("titans_inter_token_latency_seconds")
          .Help("Generate: time between consecutive generated tokens")
          .Register(registry);
  prometheus::Family<prometheus::Counter>& checkpoint_bytes =
      BuildCounter()
          .Name("titans_checkpoint_bytes_total")
          .Help("Bytes of session state written to disk (spill, persist, expiry)")
          .Register(registry);
  prometheus::Family<prometheus::Histogram>& checkpoint_duration =
      BuildHistogram()
          .Name("titans_checkpoint_duration_seconds")
          .Help("Time to serialise and write one session state")
          .Register(registry);
  prometheus::Family<prometheus::Counter>& checkpoint_failures =
      BuildCounter()
          .Name("titans_checkpoint_failures_total")
          .Help("Session states that could not be written")
          .Register(registry);
  prometheus::Family<prometheus::Histogram>& restore_duration =
      BuildHistogram()
          .Name("titans_restore_duration_seconds")
          .Help("Time to read back one spilled session state")
          .Register(registry);
  prometheus::Family<prometheus::Counter>& restore_failures =
      BuildCounter()
          .Name("titans_restore_failures_total")
          .Help("Spilled or persisted session states that could not be restored")
          .Register(registry);
  prometheus::Family<prometheus::Counter>& log_bytes =
      BuildCounter()
          .Name("titans_log_bytes_total")
          .Help("Bytes committed to the write-ahead log")
          .Register(registry);
  prometheus::Family<prometheus::Histogram>& log_commit =
      BuildHistogram()
          .Name("titans_log_commit_duration_seconds")
          .Help("Write + fdatasync of one group commit")
          .Register(registry);
  prometheus::Family<prometheus::Counter>& log_failures =
      BuildCounter()
          .Name("titans_log_commit_failures_total")
          .Help("Group commits that failed (their operations were refused)")
          .Register(registry);
  prometheus::Family<prometheus::Gauge>& recovery_seconds =
      BuildGauge()
          .Name("titans_recovery_duration_seconds")
          .Help("Time the start-up recovery (log replay) took")
          .Register(registry);
  prometheus::Family<prometheus::Gauge>& recovered_records =
      BuildGauge()
          .Name("titans_recovery_records")
          .Help("Log records replayed at start-up")
          .Register(registry);
  prometheus::Family<prometheus::Gauge>& unrecoverable =
      BuildGauge()
          .Name("titans_unrecoverable_sessions")
          .Help("Sessions whose log could not be replayed completely at start-up")
          .Register(registry);
  prometheus::Family<prometheus::Gauge>& durability_lag =
      BuildGauge()
          .Name("titans_durability_lag_tokens")
          .Help("Acknowledged tokens of open sessions not yet in a persisted state")
          .Register(registry);
  prometheus::Family<prometheus::Gauge>& model_info =
      BuildGauge().Name("titans_model_info").Help("The served model (value 1)").Register(registry);
  prometheus::Family<prometheus::Gauge>& serving =
      BuildGauge()
          .Name("titans_serving")
          .Help("1 while admitting work, 0 while draining")
          .Register(registry);
  prometheus::Family<prometheus::Counter>& cpu = BuildCounter()
                                                     .Name("titans_process_cpu_seconds_total")
                                                     .Help("CPU time used by the process")
                                                     .Register(registry);
  double cpu_reported = 0;
  prometheus::Family<prometheus::Gauge>& rss = BuildGauge()
                                                   .Name("titans_process_resident_memory_bytes")
                                                   .Help("Resident memory of the process")
                                                   .Register(registry);

  std::mutex mu;
  std::function<engine::Engine::Stats()> stats;
  const std::atomic<int64_t>* inflight = nullptr;
};

ServerMetrics::ServerMetrics() : impl_(std::make_unique<Impl>()) {
  // Make the always-present series visible from the first scrape.
  for (const char* where : {"resident", "spilled"}) {
    impl_->sessions.Add({{"state", where}});
    impl_->state_bytes.Add({{"state", where}});
  }
  for (const char* reason : {"closed", "expired"}) impl_->closed.Add({{"reason", reason}});
  for (const char* kind : {"appended", "prompt", "generated", "scored"}) {
    impl_->tokens.Add({{"kind", kind}});
  }
  impl_->opened.Add({});
  impl_->acquired.Add({});
  impl_->steps.Add({});
  impl_->checkpoint_bytes.Add({});
  impl_->checkpoint_failures.Add({});
  impl_->restore_failures.Add({});
  impl_->log_bytes.Add({});
  impl_->log_failures.Add({});
  impl_->serving.Add({}).Set(1);
}

ServerMetrics::~ServerMetrics() = default;

void ServerMetrics::SetModelInfo(const engine::ModelInfo& m) {
  impl_->model_info
      .Add({{"model", m.name},
            {"variant", m.variant},
            {"parameters", std::to_string(m.parameters)},
            {"initialization", m.initialization},
            {"fingerprint", m.fingerprint}})
      .Set(1);
}

void ServerMetrics::SetStatsSource(std::function<engine::Engine::Stats()> source) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->stats = std::move(source);
}

void ServerMetrics::SetInflightSource(const std::atomic<int64_t>* inflight_request_bytes) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->inflight = inflight_request_bytes;
}

void ServerMetrics::SetServing(bool serving) { impl_->serving.Add({}).Set(serving ? 1 : 0); }

void ServerMetrics::RecordRpc(std::string_view method, std::string_view code, double seconds) {
  const std::string m(method);
  impl_->rpc_requests.Add({{"method", m}, {"code", std::string(code)}}).Increment();
  impl_->rpc_duration.Add({{"method", m}}, LatencyBuckets()).Observe(seconds);
}

void ServerMetrics::OnStep(int sessions, int64_t tokens, double seconds, double kernel_seconds) {
  impl_->steps.Add({}).Increment();
  impl_->step_sessions.Add({}, CountBuckets()).Observe(sessions);
  impl_->step_tokens.Add({}, CountBuckets()).Observe(static_cast<double>(tokens));
  impl_->step_duration.Add({}, LatencyBuckets()).Observe(seconds);
  impl_->kernel_time.Add({}, LatencyBuckets()).Observe(kernel_seconds);
}

void ServerMetrics::OnSessionOpened() { impl_->opened.Add({}).Increment(); }
void ServerMetrics::OnSessionAcquired() { impl_->acquired.Add({}).Increment(); }

void ServerMetrics::OnSessionClosed(std::string_view reason) {
  impl_->closed.Add({{"reason", std::string(reason)}}).Increment();
}

void ServerMetrics::OnTokens(std::string_view kind, int64_t n) {
  impl_->tokens.Add({{"kind", std::string(kind)}}).Increment(static_cast<double>(n));
}

void ServerMetrics::OnQueueTime(double s) {
  impl_->queue_time.Add({}, LatencyBuckets()).Observe(s);
}

void ServerMetrics::OnTimeToFirstToken(double s) {
  impl_->ttft.Add({}, LatencyBuckets()).Observe(s);
}

void ServerMetrics::OnInterTokenLatency(double s) {
  impl_->itl.Add({}, LatencyBuckets()).Observe(s);
}

void ServerMetrics::OnCheckpoint(int64_t bytes, double seconds, bool ok) {
  if (!ok) {
    impl_->checkpoint_failures.Add({}).Increment();
    return;
  }
  impl_->checkpoint_bytes.Add({}).Increment(static_cast<double>(bytes));
  impl_->checkpoint_duration.Add({}, LatencyBuckets()).Observe(seconds);
}

void ServerMetrics::OnLogCommit(int64_t bytes, double seconds, bool ok) {
  if (!ok) {
    impl_->log_failures.Add({}).Increment();
    return;
  }
  impl_->log_bytes.Add({}).Increment(static_cast<double>(bytes));
  impl_->log_commit.Add({}, LatencyBuckets()).Observe(seconds);
}

void ServerMetrics::OnRestore(int64_t /*bytes*/, double seconds, bool ok) {
  if (!ok) impl_->restore_failures.Add({}).Increment();
  impl_->restore_duration.Add({}, LatencyBuckets()).Observe(seconds);
}

std::string ServerMetrics::Scrape() {
  std::function<engine::Engine::Stats()> source;
  const std::atomic<int64_t>* inflight;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    source = impl_->stats;
    inflight = impl_->inflight;
  }
  if (inflight) impl_->inflight_bytes.Add({}).Set(static_cast<double>(inflight->load()));
  if (source) {
    const engine::Engine::Stats st = source();
    impl_->sessions.Add({{"state", "resident"}}).Set(static_cast<double>(st.resident));
    impl_->sessions.Add({{"state", "spilled"}}).Set(static_cast<double>(st.spilled));
    impl_->state_bytes.Add({{"state", "resident"}})
        .Set(static_cast<double>(st.resident_state_bytes));
    impl_->state_bytes.Add({{"state", "spilled"}}).Set(static_cast<double>(st.spilled_state_bytes));
    impl_->queue_tokens.Add({}).Set(static_cast<double>(st.queued_tokens));
    impl_->queue_ops.Add({}).Set(static_cast<double>(st.queued_operations));
    impl_->durability_lag.Add({}).Set(static_cast<double>(st.unpersisted_tokens));
    impl_->recovery_seconds.Add({}).Set(st.recovery_seconds);
    impl_->recovered_records.Add({}).Set(static_cast<double>(st.recovered_records));
    impl_->unrecoverable.Add({}).Set(static_cast<double>(st.unrecoverable_sessions));
  }
  // Process CPU (utime + stime, fields 14 and 15 of /proc/self/stat) and resident memory.
  std::ifstream stat("/proc/self/stat");
  std::string field;
  double ticks = 0;
  for (int i = 1; i <= 15 && stat >> field; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(field);
  }
  const double cpu_seconds = ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (cpu_seconds > impl_->cpu_reported) {
      impl_->cpu.Add({}).Increment(cpu_seconds - impl_->cpu_reported);
      impl_->cpu_reported = cpu_seconds;
    }
  }
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  impl_->rss.Add({}).Set(static_cast<double>(resident) *
                         static_cast<double>(sysconf(_SC_PAGESIZE)));
  return prometheus::TextSerializer().Serialize(impl_->registry.Collect());
}

}  // namespace titans::server
