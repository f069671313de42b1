// titans-server: serves a Titans model over gRPC (titans.v1.Titans, grpc.health.v1, reflection).
// Flags can also come from a file: --flagfile=server.flags (one --flag=value per line).
// SIGTERM / SIGINT: health turns NOT_SERVING, new work is refused (UNAVAILABLE), queued work gets
// --shutdown_grace_seconds to finish, resident sessions are persisted to --state_dir, then exit.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <malloc.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "model/determinism.h"
#include "model/file_util.h"
#include "model/program_flags.h"
#include "model/threading.h"
#include "server/auth.h"
#include "server/engine/engine.h"
#include "server/http_endpoint.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/rpc_observer.h"
#include "server/service.h"

ABSL_FLAG(std::string, host, "0.0.0.0", "address to listen on");
ABSL_FLAG(int32_t, port, 50051, "gRPC port");
ABSL_FLAG(std::string, model_dir, TITANS_DEFAULT_MODEL_DIR, "model directory");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda[:N]");
ABSL_FLAG(std::string, state_dir, "",
          "directory for spilled and persisted session states (empty: memory only)");
ABSL_FLAG(std::string, session_store, "",
          "where session states live: empty = <state_dir>/sessions, or redis://HOST:PORT[/PREFIX] "
          "to share sessions between replicas (run Redis with appendfsync always for sync "
          "durability)");
ABSL_FLAG(double, ownership_check_seconds, 2,
          "with a shared --session_store: how often to check which held sessions another replica "
          "took over (their copies are dropped from memory and gauges); 0 = on request only");
ABSL_FLAG(std::string, snapshot_dir, "",
          "directory for ExportSession / ImportSession snapshot files (empty: bytes only)");
ABSL_FLAG(bool, batch_invariant, true,
          "run LibTorch's portable CPU kernels so that a session computes the same bits alone or "
          "batched with any others (exact crash recovery, reproducible outputs under load); "
          "false: vectorised kernels, about 20% more CPU throughput, recovery exact only to "
          "float rounding");
ABSL_FLAG(
    int32_t, compute_threads, 0,
    "threads of the pool that runs the model's parallel work (memory kernel, GEMMs); "
    "0 = one per CPU this process may use (its affinity mask, capped by its cgroup CPU quota)");
ABSL_FLAG(
    int32_t, library_threads, 1,
    "threads LibTorch's intra-op pool and OpenBLAS may use besides; 1 keeps them from "
    "oversubscribing the cores the compute pool owns (model/threading.h); 0 = their defaults");
ABSL_FLAG(std::string, durability, "none",
          "none | periodic (checkpoints every --checkpoint_interval_*) | sync (write-ahead log, "
          "fsync'd before every acknowledgement); periodic and sync need --state_dir");
ABSL_FLAG(int64_t, checkpoint_interval_tokens, 65536,
          "checkpoint a session after this many tokens");
ABSL_FLAG(double, checkpoint_interval_seconds, 300, "or after this many seconds");
ABSL_FLAG(int64_t, wal_max_bytes, int64_t{256} << 20,
          "log size that triggers a checkpoint of every session and deletes the old log");
ABSL_FLAG(int64_t, rewind_window_tokens, 32768,
          "RewindSession / ForkSession(position) reach this many tokens back; 0 disables");
ABSL_FLAG(int64_t, rewind_interval_tokens, 8192,
          "a rewind point (one state copy, on --state_dir or else in RAM) every this many tokens; "
          "bounds the replay of a rewind");
ABSL_FLAG(int64_t, max_sessions, 10000, "sessions the server holds at most");
ABSL_FLAG(int64_t, max_resident_sessions, 1000,
          "session states kept in RAM; the least recently used beyond it spill to --state_dir");
ABSL_FLAG(int64_t, default_idle_ttl_seconds, 6 * 3600, "idle TTL of sessions that set none");
ABSL_FLAG(int64_t, max_idle_ttl_seconds, 30 * 24 * 3600, "largest idle TTL a session may ask");
ABSL_FLAG(int64_t, max_queued_tokens, 1 << 22,
          "tokens accepted but not yet processed, over all sessions; beyond: RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_inflight_request_bytes, int64_t{1} << 30,
          "bytes of Append / AppendStream input held at once before reaching the engine, over "
          "all calls; beyond it a call gets RESOURCE_EXHAUSTED (0: no bound)");
ABSL_FLAG(int64_t, max_tokens_per_request, 1 << 20, "tokens one Append / prompt may carry");
ABSL_FLAG(int32_t, max_generate_tokens, 4096, "largest max_tokens of a Generate");
ABSL_FLAG(int32_t, max_ops_per_session, 64, "operations queued on one session at most");
ABSL_FLAG(int64_t, step_token_budget, 512, "tokens per scheduler step over all sessions");
ABSL_FLAG(int32_t, max_message_bytes, 16 << 20, "largest gRPC message received");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "file of '<token> <principal>' lines; with it (or TITANS_AUTH_TOKENS) bearer tokens are "
          "required");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM server private key");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA for client certificates (enables mTLS)");
ABSL_FLAG(double, shutdown_grace_seconds, 25, "time queued work gets to finish on SIGTERM");
ABSL_FLAG(int32_t, metrics_port, 9464,
          "HTTP port for Prometheus (/metrics) and /healthz; -1 disables it");
ABSL_FLAG(std::string, metrics_host, "0.0.0.0", "IPv4 address the metrics endpoint listens on");
ABSL_FLAG(int32_t, malloc_arena_max, 2,
          "glibc malloc arenas at most (0: glibc's default, 8 per core). Few arenas keep resident "
          "memory flat as gRPC threads come and go; MALLOC_ARENA_MAX in the environment wins");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");
ABSL_FLAG(std::string, log_format, "text", "text or json (one JSON object per line)");

namespace {

int Fail(const std::string& what) {
  std::fprintf(stderr, "titans-server: %s\n", what.c_str());
  return 1;
}

// Before any other thread allocates. Measured (docs/benchmarks.md, soak): with glibc's default
// arenas resident memory rose ~25 MiB over the first minutes of load, with 2 it stayed flat, at
// the same throughput. Returns the arena setting in use, for the start-up log line.
absl::StatusOr<std::string> ConfigureMallocArenas() {
  const int32_t arenas = absl::GetFlag(FLAGS_malloc_arena_max);
  if (arenas < 0) return absl::InvalidArgumentError("--malloc_arena_max must be >= 0");
  const char* arenas_env = std::getenv("MALLOC_ARENA_MAX");
  if (arenas > 0 && arenas_env == nullptr) mallopt(M_ARENA_MAX, arenas);
  if (arenas_env != nullptr) return std::string(arenas_env) + " (MALLOC_ARENA_MAX)";
  return arenas > 0 ? std::to_string(arenas) : "glibc default";
}

absl::Status ConfigureLoggingFromFlags() {
  auto level = titans::server::ParseLogLevel(absl::GetFlag(FLAGS_log_level));
  if (!level.ok()) return level.status();
  const std::string format = absl::GetFlag(FLAGS_log_format);
  if (format != "text" && format != "json") {
    return absl::InvalidArgumentError("--log_format must be text or json");
  }
  titans::server::ConfigureLogging(*level, format == "json");
  return absl::OkStatus();
}

// The engine's options from the flags (the observer is the caller's).
absl::StatusOr<titans::engine::EngineOptions> EngineOptionsFromFlags() {
  titans::engine::EngineOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model_dir);
  options.device = absl::GetFlag(FLAGS_device);
  options.state_dir = absl::GetFlag(FLAGS_state_dir);
  options.session_store = absl::GetFlag(FLAGS_session_store);
  options.ownership_check_seconds = absl::GetFlag(FLAGS_ownership_check_seconds);
  if (options.ownership_check_seconds < 0) {
    return absl::InvalidArgumentError("--ownership_check_seconds must not be negative");
  }
  options.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  options.max_resident_sessions = absl::GetFlag(FLAGS_max_resident_sessions);
  options.default_idle_ttl_seconds = absl::GetFlag(FLAGS_default_idle_ttl_seconds);
  options.max_idle_ttl_seconds = absl::GetFlag(FLAGS_max_idle_ttl_seconds);
  options.max_queued_tokens = absl::GetFlag(FLAGS_max_queued_tokens);
  options.max_tokens_per_request = absl::GetFlag(FLAGS_max_tokens_per_request);
  options.max_generate_tokens = absl::GetFlag(FLAGS_max_generate_tokens);
  options.max_ops_per_session = absl::GetFlag(FLAGS_max_ops_per_session);
  options.step_token_budget = absl::GetFlag(FLAGS_step_token_budget);
  const std::string durability = absl::GetFlag(FLAGS_durability);
  if (durability == "none") {
    options.durability = titans::engine::Durability::kNone;
  } else if (durability == "periodic") {
    options.durability = titans::engine::Durability::kPeriodic;
  } else if (durability == "sync") {
    options.durability = titans::engine::Durability::kSync;
  } else {
    return absl::InvalidArgumentError("--durability must be none, periodic or sync");
  }
  options.checkpoint_interval_tokens = absl::GetFlag(FLAGS_checkpoint_interval_tokens);
  options.checkpoint_interval_seconds = absl::GetFlag(FLAGS_checkpoint_interval_seconds);
  options.wal_max_bytes = absl::GetFlag(FLAGS_wal_max_bytes);
  options.rewind_window_tokens = absl::GetFlag(FLAGS_rewind_window_tokens);
  options.rewind_interval_tokens = absl::GetFlag(FLAGS_rewind_interval_tokens);
  return options;
}

// TLS from --tls_cert / --tls_key (and client certificates with --tls_client_ca), else insecure.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> CredentialsFromFlags() {
  if (!absl::GetFlag(FLAGS_tls_cert).empty()) {
    auto cert = titans::ReadFileToString(absl::GetFlag(FLAGS_tls_cert));
    auto key = titans::ReadFileToString(absl::GetFlag(FLAGS_tls_key));
    if (!cert.ok() || !key.ok()) {
      return absl::InvalidArgumentError("cannot read --tls_cert / --tls_key");
    }
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    if (!absl::GetFlag(FLAGS_tls_client_ca).empty()) {
      auto ca = titans::ReadFileToString(absl::GetFlag(FLAGS_tls_client_ca));
      if (!ca.ok()) return absl::InvalidArgumentError("cannot read --tls_client_ca");
      ssl.pem_root_certs = *ca;
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    return grpc::SslServerCredentials(ssl);
  }
  return grpc::InsecureServerCredentials();
}

absl::StatusOr<titans::server::ServiceOptions> ServiceOptionsFromFlags() {
  titans::server::ServiceOptions options;
  options.snapshot_dir = absl::GetFlag(FLAGS_snapshot_dir);
  options.max_inflight_request_bytes = absl::GetFlag(FLAGS_max_inflight_request_bytes);
  if (options.max_inflight_request_bytes < 0) {
    return absl::InvalidArgumentError("--max_inflight_request_bytes must not be negative");
  }
  if (!options.snapshot_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(options.snapshot_dir, ec);
    if (ec) return absl::InvalidArgumentError("cannot create --snapshot_dir: " + ec.message());
  }
  return options;
}

// The gRPC server on --host:--port with the service, the per-RPC observer (metrics, logs),
// health checking and reflection; null if it cannot listen.
std::unique_ptr<grpc::Server> StartGrpcServer(grpc::Service* service,
                                              std::shared_ptr<grpc::ServerCredentials> credentials,
                                              titans::server::ServerMetrics* metrics,
                                              const titans::server::Authenticator* auth,
                                              int* bound_port) {
  grpc::ServerBuilder builder;
  const std::string address =
      absl::GetFlag(FLAGS_host) + ":" + std::to_string(absl::GetFlag(FLAGS_port));
  builder.AddListeningPort(address, std::move(credentials), bound_port);
  builder.SetMaxReceiveMessageSize(absl::GetFlag(FLAGS_max_message_bytes));
  builder.RegisterService(service);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> observers;
  observers.push_back(titans::server::MakeRpcObserverFactory(metrics, auth));
  builder.experimental().SetInterceptorCreators(std::move(observers));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (*bound_port == 0) return nullptr;
  return server;
}

// After SIGTERM / SIGINT: not ready any more, the engine finishes (or, past the grace period,
// fails) queued work and checkpoints, then the server and the metrics endpoint stop.
void Drain(int sig, titans::engine::Engine* engine, grpc::Server* server,
           titans::server::HttpEndpoint* http, titans::server::ServerMetrics* metrics,
           std::atomic<bool>* serving) {
  titans::server::Log(titans::server::LogLevel::kInfo, "draining",
                      {{"signal", std::to_string(sig)}});
  *serving = false;
  metrics->SetServing(false);
  server->GetHealthCheckService()->SetServingStatus(false);
  const double grace = absl::GetFlag(FLAGS_shutdown_grace_seconds);
  engine->Shutdown(static_cast<int64_t>(grace * 1000));
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  http->Stop();
  titans::server::Log(titans::server::LogLevel::kInfo, "stopped");
}

}  // namespace

int main(int argc, char** argv) {
  titans::ShowOwnFlagsInHelp("titans-server");
  absl::SetProgramUsageMessage(
      "Serves a Titans model with server-side session memory over gRPC.\n"
      "  titans-server --port 50051 --model_dir models/default --state_dir /var/lib/titans");
  absl::ParseCommandLine(argc, argv);
  absl::StatusOr<std::string> arenas_in_use = ConfigureMallocArenas();
  if (!arenas_in_use.ok()) return Fail(std::string(arenas_in_use.status().message()));
  // Before anything touches LibTorch (see model/determinism.h).
  if (absl::GetFlag(FLAGS_batch_invariant)) titans::UseBatchInvariantCpuKernels();
  if (absl::Status threads = titans::ApplyThreadPolicy(
          {absl::GetFlag(FLAGS_compute_threads), absl::GetFlag(FLAGS_library_threads)});
      !threads.ok()) {
    return Fail("--compute_threads / --library_threads: " + std::string(threads.message()));
  }

  // Signals are taken by a dedicated thread (sigwait): block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  if (absl::Status logging = ConfigureLoggingFromFlags(); !logging.ok()) {
    return Fail(std::string(logging.message()));
  }
  titans::server::ServerMetrics metrics;

  auto auth = titans::server::Authenticator::Load(absl::GetFlag(FLAGS_auth_tokens_file),
                                                  std::getenv("TITANS_AUTH_TOKENS"));
  if (!auth.ok()) return Fail(auth.status().ToString());

  absl::StatusOr<titans::engine::EngineOptions> options = EngineOptionsFromFlags();
  if (!options.ok()) return Fail(std::string(options.status().message()));
  options->observer = &metrics;
  auto engine = titans::engine::Engine::Create(*options);
  if (!engine.ok()) return Fail(engine.status().ToString());
  const titans::engine::ModelInfo& model = (*engine)->model_info();
  metrics.SetModelInfo(model);
  metrics.SetStatsSource([e = engine->get()] { return e->stats(); });
  std::atomic<bool> serving{false};
  titans::server::HttpEndpoint http([&metrics] { return metrics.Scrape(); },
                                    [&serving] { return serving.load(); });
  if (absl::GetFlag(FLAGS_metrics_port) >= 0) {
    absl::Status st =
        http.Start(absl::GetFlag(FLAGS_metrics_host), absl::GetFlag(FLAGS_metrics_port));
    if (!st.ok()) return Fail(st.ToString());
  }

  auto credentials = CredentialsFromFlags();
  if (!credentials.ok()) return Fail(std::string(credentials.status().message()));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  auto service_options = ServiceOptionsFromFlags();
  if (!service_options.ok()) return Fail(std::string(service_options.status().message()));
  static std::atomic<int64_t> inflight_request_bytes{0};  // outlives the service and metrics
  service_options->inflight_request_bytes = &inflight_request_bytes;
  metrics.SetInflightSource(&inflight_request_bytes);
  auto service = titans::server::MakeTitansService(engine->get(), &*auth, *service_options);
  int bound_port = 0;
  std::unique_ptr<grpc::Server> server =
      StartGrpcServer(service.get(), *credentials, &metrics, &*auth, &bound_port);
  if (!server)
    return Fail("cannot listen on " + absl::GetFlag(FLAGS_host) + ":" +
                std::to_string(absl::GetFlag(FLAGS_port)));
  server->GetHealthCheckService()->SetServingStatus(true);
  serving = true;
  titans::server::Log(titans::server::LogLevel::kInfo, "listening",
                      {{"address", absl::GetFlag(FLAGS_host) + ":" + std::to_string(bound_port)},
                       {"metrics_port", std::to_string(http.port())},
                       {"model", model.name},
                       {"variant", model.variant},
                       {"initialization", model.initialization},
                       {"auth", auth->enabled() ? "bearer" : "off"},
                       {"malloc_arenas", *arenas_in_use},
                       {"threads", titans::DescribeThreads()},
                       {"state_dir", options->state_dir}});

  int sig = 0;
  sigwait(&signals, &sig);
  Drain(sig, engine->get(), server.get(), &http, &metrics, &serving);
  return 0;
}
