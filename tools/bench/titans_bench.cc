// titans-bench: end-to-end load generator for titans-server (docs/benchmarks.md).
//
//   titans-bench [--address HOST:PORT | --server build/server/titans-server]
//                [--model_dir models/default] [--sessions 1,4,16] [--mix mixed]
//                [--seconds 10] [--rate 0] [--baseline] [--tsv out.tsv]
//   titans-bench --soak --seconds 300 --sample_seconds 10 --max_rss_growth_mib 64
//   titans-bench --long_tokens 2000000 --sessions 1
//
// Load: N concurrent client sessions (workload.h) against the server over gRPC and, in the same
// run, the same work against the engine in-process (no gRPC), so the server's overhead is the
// ratio of the two. Reports tokens/s, request latency percentiles, time to first token,
// inter-token latency, errors and the server's resident memory. With several --sessions values it
// is a concurrency sweep.
//
// --soak: one long run in slices; after each slice the server's resident memory is sampled. Exits
// 1 if any request failed or memory grew more than --max_rss_growth_mib after the first slice.
//
// --long_tokens N: one session receives a passkey, then N tokens of filler in appends, then the
// question; reports time, throughput, the state size along the way (constant for Titans) and
// whether the key came back.
//
// Without --address, the server is started as a child (--server, default the built one) on a free
// loopback port with --server_flags, and stopped at the end.
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "model/determinism.h"
#include "model/program_flags.h"
#include "model/threading.h"
#include "model/trainer.h"
#include "server/engine/engine.h"
#include "tools/bench/load_target.h"
#include "tools/bench/server_process.h"
#include "tools/bench/workload.h"

ABSL_FLAG(std::string, address, "", "a running server (host:port); default: start --server");
ABSL_FLAG(std::string, server, TITANS_SERVER_BINARY, "titans-server binary to start");
ABSL_FLAG(std::vector<std::string>, server_flags, {}, "extra flags for the started server");
ABSL_FLAG(std::string, model_dir, TITANS_DEFAULT_MODEL_DIR,
          "model for the started server and the in-process baseline");
ABSL_FLAG(std::vector<std::string>, sessions, (std::vector<std::string>{"8"}),
          "concurrent sessions; several values = a concurrency sweep");
ABSL_FLAG(std::string, mix, "mixed", "append, chat, stream or mixed (workload.h)");
ABSL_FLAG(double, seconds, 10, "measured seconds per run");
ABSL_FLAG(double, rate, 0, "requests per second over all sessions (0: closed loop)");
ABSL_FLAG(int, append_bytes, 2048, "bytes per long append");
ABSL_FLAG(int, turn_bytes, 256, "bytes of user text per chat turn");
ABSL_FLAG(int, generate_tokens, 32, "tokens generated per chat turn");
ABSL_FLAG(int, stream_bytes, 64, "bytes per streaming append");
ABSL_FLAG(bool, baseline, true, "also run the same work in-process (no gRPC) for the ratio");
ABSL_FLAG(bool, batch_invariant, true, "in-process baseline as titans-server --batch_invariant");
ABSL_FLAG(int64_t, step_token_budget, 512, "in-process baseline: as the server's flag");
ABSL_FLAG(std::string, tsv, "", "append result rows to this TSV file");
ABSL_FLAG(int32_t, compute_threads, 0, "as titans-server's flag, for both targets");
ABSL_FLAG(int32_t, library_threads, 1, "as titans-server's flag, for both targets");
ABSL_FLAG(bool, soak, false, "soak test: sample resident memory, fail on errors or growth");
ABSL_FLAG(double, sample_seconds, 10, "soak: seconds per slice");
ABSL_FLAG(double, max_rss_growth_mib, 64, "soak: allowed growth after the first slice");
ABSL_FLAG(int64_t, long_tokens, 0, "stream one session this many tokens (passkey at the start)");
ABSL_FLAG(int, long_append_bytes, 65536, "--long_tokens: bytes per append");
ABSL_FLAG(std::string, long_filler, "noise", "--long_tokens filler: noise or text");

namespace {

using titans::bench::LatencySummary;
using titans::bench::LoadTarget;
using titans::bench::Summarize;
using titans::bench::WorkloadOptions;
using titans::bench::WorkloadReport;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double Mib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

std::string Ms(const LatencySummary& s) {
  if (s.count == 0) return "-";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.1f/%.1f/%.1f", s.p50 * 1e3, s.p95 * 1e3, s.p99 * 1e3);
  return buf;
}

// The server under test: either given by address or a child process.
struct Server {
  std::optional<titans::bench::ServerProcess> child;
  std::string address;
  pid_t pid = -1;  // -1 when the server is not ours to measure
  int64_t rss() const {
    if (pid <= 0) return -1;
    auto m = titans::bench::ReadProcessStatus(pid);
    return m.ok() ? m->rss : -1;
  }
};

int Fail(const std::string& what) {
  std::fprintf(stderr, "titans-bench: %s\n", what.c_str());
  return 1;
}

WorkloadOptions BaseOptions(int sessions, const std::string& prefix) {
  WorkloadOptions o;
  o.sessions = sessions;
  o.mix = absl::GetFlag(FLAGS_mix);
  o.seconds = absl::GetFlag(FLAGS_seconds);
  o.rate = absl::GetFlag(FLAGS_rate);
  o.append_bytes = absl::GetFlag(FLAGS_append_bytes);
  o.turn_bytes = absl::GetFlag(FLAGS_turn_bytes);
  o.generate_tokens = absl::GetFlag(FLAGS_generate_tokens);
  o.stream_bytes = absl::GetFlag(FLAGS_stream_bytes);
  o.session_prefix = prefix;
  return o;
}

void PrintHeader() {
  std::printf("%-9s %-10s %10s %7s %8s %7s %20s %20s %20s %20s %10s\n", "sessions", "target",
              "tokens/s", "vs base", "requests", "errors", "append p50/95/99 ms",
              "turn p50/95/99 ms", "ttft p50/95/99 ms", "itl p50/95/99 ms", "RSS MiB");
}

void PrintRow(const WorkloadOptions& o, const std::string& target, const WorkloadReport& r,
              double baseline_tps, int64_t rss, FILE* tsv) {
  const LatencySummary append =
      Summarize(r.latencies.count("append") ? r.latencies.at("append") : std::vector<double>());
  auto get = [&](const char* k) {
    return Summarize(r.latencies.count(k) ? r.latencies.at(k) : std::vector<double>());
  };
  const LatencySummary turn = get("turn"), ttft = get("ttft"), itl = get("itl");
  const double ratio = baseline_tps > 0 ? r.tokens_per_second() / baseline_tps : 1.0;
  std::printf("%-9d %-10s %10.0f %6.2fx %8lld %7lld %20s %20s %20s %20s %10s\n", o.sessions,
              target.c_str(), r.tokens_per_second(), ratio, static_cast<long long>(r.requests),
              static_cast<long long>(r.errors), Ms(append).c_str(), Ms(turn).c_str(),
              Ms(ttft).c_str(), Ms(itl).c_str(),
              rss >= 0 ? absl::StrCat(static_cast<int64_t>(Mib(rss))).c_str() : "-");
  for (const std::string& e : r.error_samples) std::printf("    error: %s\n", e.c_str());
  std::fflush(stdout);
  if (tsv != nullptr) {
    std::fprintf(tsv,
                 "%s\t%d\t%s\t%.1f\t%.1f\t%.3f\t%lld\t%lld\t%lld\t%lld\t%.6f\t%.6f\t%.6f\t%.6f\t%."
                 "6f\t%.6f\t%.6f\t%.6f\t%.6f\t%.6f\t%.6f\t%.6f\t%lld\n",
                 o.mix.c_str(), o.sessions, target.c_str(), o.rate, r.tokens_per_second(), ratio,
                 static_cast<long long>(r.requests), static_cast<long long>(r.errors),
                 static_cast<long long>(r.appended_tokens),
                 static_cast<long long>(r.generated_tokens), append.p50, append.p95, append.p99,
                 turn.p50, turn.p95, turn.p99, ttft.p50, ttft.p95, ttft.p99, itl.p50, itl.p95,
                 itl.p99, static_cast<long long>(rss));
    std::fflush(tsv);
  }
}

// CPU used over one run, from /proc, by this process (the load generator, and the engine of the
// in-process baseline) and by the server when it is ours (pid > 0): on a shared machine the
// gRPC run's client takes cores the server could use, so its tokens per server CPU-second show
// the server's own cost beside the wall-clock ratio.
class CpuMeter {
 public:
  explicit CpuMeter(pid_t server) : server_(server), start_(Now()) {
    self_ = Read(0);
    if (server_ > 0) server_seconds_ = Read(server_);
  }
  void Stop() {
    wall_ = Now() - start_;
    self_ = Read(0) - self_;
    if (server_ > 0) server_seconds_ = Read(server_) - server_seconds_;
  }
  bool has_server() const { return server_ > 0; }
  double self_seconds() const { return self_; }
  double server_seconds() const { return server_seconds_; }
  double self_cores() const { return self_ / std::max(1e-9, wall_); }
  double server_cores() const { return server_seconds_ / std::max(1e-9, wall_); }

 private:
  static double Read(pid_t pid) { return titans::bench::ReadCpuSeconds(pid).value_or(0); }
  pid_t server_;
  double start_, wall_ = 0, self_ = 0, server_seconds_ = 0;
};

void PrintCpu(const WorkloadReport& grpc, const CpuMeter& grpc_cpu, const WorkloadReport* base,
              const CpuMeter* base_cpu) {
  std::printf("    cpu, grpc: client %.2f cores", grpc_cpu.self_cores());
  if (grpc_cpu.has_server()) {
    const double share = grpc_cpu.self_seconds() /
                         std::max(1e-9, grpc_cpu.self_seconds() + grpc_cpu.server_seconds());
    std::printf(
        " (%.0f%% of the CPU used), server %.2f cores, %.0f tokens per server CPU-second",
        100 * share, grpc_cpu.server_cores(),
        grpc.tokens_per_second() * grpc.seconds / std::max(1e-9, grpc_cpu.server_seconds()));
  }
  std::printf("\n");
  if (base != nullptr) {
    std::printf(
        "    cpu, in-process: %.2f cores (engine and load generator), %.0f tokens per "
        "CPU-second\n",
        base_cpu->self_cores(),
        base->tokens_per_second() * base->seconds / std::max(1e-9, base_cpu->self_seconds()));
  }
  std::fflush(stdout);
}

// Load and concurrency sweep: gRPC, then the in-process baseline, per sessions value.
int RunLoad(Server& server, titans::engine::Engine* engine, FILE* tsv) {
  auto grpc_target = titans::bench::MakeGrpcTarget(server.address, 600);
  std::unique_ptr<LoadTarget> local;
  if (engine != nullptr) local = titans::bench::MakeEngineTarget(engine);
  std::printf(
      "mix %s, %s, %.0f s per run; latencies p50/p95/p99 in ms\n", absl::GetFlag(FLAGS_mix).c_str(),
      absl::GetFlag(FLAGS_rate) > 0 ? absl::StrCat(absl::GetFlag(FLAGS_rate), " requests/s").c_str()
                                    : "closed loop",
      absl::GetFlag(FLAGS_seconds));
  PrintHeader();
  int run = 0;
  int64_t errors = 0;
  for (const std::string& s : absl::GetFlag(FLAGS_sessions)) {
    int sessions = 0;
    if (!absl::SimpleAtoi(s, &sessions) || sessions < 1) return Fail("bad --sessions " + s);
    double baseline_tps = 0;
    WorkloadReport base;
    WorkloadOptions o = BaseOptions(sessions, absl::StrCat("b", ::getpid(), "-", run++));
    std::optional<CpuMeter> base_cpu;
    if (local) {
      base_cpu.emplace(/*server=*/-1);  // the engine runs in this process
      base = titans::bench::RunWorkload(local.get(), o);
      base_cpu->Stop();
      baseline_tps = base.tokens_per_second();
      errors += base.errors;
    }
    o.session_prefix = absl::StrCat("g", ::getpid(), "-", run++);
    CpuMeter grpc_cpu(server.pid);
    WorkloadReport r = titans::bench::RunWorkload(grpc_target.get(), o);
    grpc_cpu.Stop();
    errors += r.errors;
    PrintRow(o, "grpc", r, baseline_tps, server.rss(), tsv);
    if (local) PrintRow(o, "in-process", base, baseline_tps, -1, tsv);
    PrintCpu(r, grpc_cpu, local ? &base : nullptr, base_cpu ? &*base_cpu : nullptr);
  }
  return errors == 0 ? 0 : 1;
}

int RunSoak(Server& server) {
  if (server.pid <= 0) return Fail("--soak measures the server's memory: start it (no --address)");
  auto target = titans::bench::MakeGrpcTarget(server.address, 600);
  const double total = absl::GetFlag(FLAGS_seconds);
  const double slice = absl::GetFlag(FLAGS_sample_seconds);
  int sessions = 8;
  if (!absl::GetFlag(FLAGS_sessions).empty()) {
    (void)absl::SimpleAtoi(absl::GetFlag(FLAGS_sessions)[0], &sessions);
  }
  std::printf("soak: %d sessions, mix %s, %.0f s in slices of %.0f s\n", sessions,
              absl::GetFlag(FLAGS_mix).c_str(), total, slice);
  std::printf("%8s %10s %8s %7s %10s\n", "t (s)", "tokens/s", "requests", "errors", "RSS MiB");
  int64_t errors = 0, first_rss = -1, last_rss = -1, peak_rss = 0;
  const double start = Now();
  for (int i = 0; Now() - start < total - 0.5; ++i) {
    // Fresh sessions per slice: sessions come and go, as in production.
    WorkloadOptions o = BaseOptions(sessions, absl::StrCat("soak", ::getpid(), "-", i));
    o.seconds = std::min(slice, total - (Now() - start));
    WorkloadReport r = titans::bench::RunWorkload(target.get(), o);
    errors += r.errors;
    last_rss = server.rss();
    if (i == 0) first_rss = last_rss;
    peak_rss = std::max(peak_rss, last_rss);
    std::printf("%8.0f %10.0f %8lld %7lld %10.1f\n", Now() - start, r.tokens_per_second(),
                static_cast<long long>(r.requests), static_cast<long long>(r.errors),
                Mib(last_rss));
    for (const std::string& e : r.error_samples) std::printf("    error: %s\n", e.c_str());
    std::fflush(stdout);
  }
  const double growth = Mib(last_rss - first_rss);
  std::printf(
      "soak: %lld errors; RSS after the first slice %.1f MiB, at the end %.1f MiB "
      "(growth %.1f MiB, limit %.1f), peak sample %.1f MiB\n",
      static_cast<long long>(errors), Mib(first_rss), Mib(last_rss), growth,
      absl::GetFlag(FLAGS_max_rss_growth_mib), Mib(peak_rss));
  const bool ok = errors == 0 && growth <= absl::GetFlag(FLAGS_max_rss_growth_mib);
  std::printf("soak: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

// One session, a passkey at the start, --long_tokens of filler, then the question.
int RunLong(Server& server) {
  auto target = titans::bench::MakeGrpcTarget(server.address, 3600);
  const int64_t total = absl::GetFlag(FLAGS_long_tokens);
  const int64_t piece = absl::GetFlag(FLAGS_long_append_bytes);
  const std::string id = absl::StrCat("long", ::getpid());
  if (absl::Status st = target->CreateSession(id); !st.ok()) return Fail(st.ToString());
  const std::string key = "71825";
  const std::string needle = titans::PasskeyNeedle(key);
  const std::string question = titans::kPasskeyQuestion;
  std::string filler;
  if (absl::GetFlag(FLAGS_long_filler) == "noise") {
    filler = titans::PasskeyNoise(piece + 128);
  } else {
    filler = titans::bench::SyntheticText(piece + 128, 5);
  }
  std::printf("long session: passkey, then %lld filler tokens (%s) in appends of %lld bytes\n",
              static_cast<long long>(total), absl::GetFlag(FLAGS_long_filler).c_str(),
              static_cast<long long>(piece));
  std::printf("%12s %10s %12s %14s %10s\n", "position", "seconds", "tokens/s", "state bytes",
              "RSS MiB");
  const double start = Now();
  auto appended = target->Append(id, needle);
  if (!appended.ok()) return Fail(appended.status().ToString());
  int64_t position = *appended, report_at = 1;
  double last_t = start;
  int64_t last_pos = position;
  size_t phase = 0;
  while (position < total) {
    const int64_t n = std::min<int64_t>(piece, total - position);
    // Rotate through the filler so appends do not all start at the same phase.
    phase = (phase + 37) % 91;
    auto r = target->Append(id, filler.substr(phase, static_cast<size_t>(n)));
    if (!r.ok()) return Fail(absl::StrCat("append at ", position, ": ", r.status().ToString()));
    position += *r;
    if (position >= report_at || position >= total) {
      auto info = target->StateBytesAndPosition(id);
      const double t = Now();
      std::printf("%12lld %10.1f %12.0f %14lld %10.1f\n", static_cast<long long>(position),
                  t - start, static_cast<double>(position - last_pos) / (t - last_t),
                  static_cast<long long>(info.ok() ? info->first : -1), Mib(server.rss()));
      std::fflush(stdout);
      last_t = t;
      last_pos = position;
      report_at = std::max<int64_t>(report_at * 4, position + 1);
    }
  }
  std::string answer;
  auto generated =
      target->Generate(id, question, 5, [&](int64_t, const std::string& text) { answer += text; });
  if (!generated.ok()) return Fail(generated.status().ToString());
  const double seconds = Now() - start;
  std::printf("long session: %lld tokens in %.1f s (%.0f tokens/s); key %s, answer \"%s\": %s\n",
              static_cast<long long>(position), seconds, static_cast<double>(position) / seconds,
              key.c_str(), answer.c_str(), answer == key ? "RECALLED" : "not recalled");
  (void)target->CloseSession(id);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  titans::ShowOwnFlagsInHelp("titans-bench");
  absl::SetProgramUsageMessage("Load generator and benchmarks for titans-server.");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_batch_invariant)) titans::UseBatchInvariantCpuKernels();
  const int32_t compute_threads = absl::GetFlag(FLAGS_compute_threads);
  const int32_t library_threads = absl::GetFlag(FLAGS_library_threads);
  if (absl::Status st = titans::ApplyThreadPolicy({compute_threads, library_threads}); !st.ok()) {
    return Fail(st.ToString());
  }
  std::printf("threads (in-process): %s\n", titans::DescribeThreads().c_str());

  Server server;
  if (!absl::GetFlag(FLAGS_address).empty()) {
    server.address = absl::GetFlag(FLAGS_address);
  } else {
    std::vector<std::string> flags = {"--model_dir", absl::GetFlag(FLAGS_model_dir),
                                      absl::StrCat("--compute_threads=", compute_threads),
                                      absl::StrCat("--library_threads=", library_threads)};
    for (const std::string& f : absl::GetFlag(FLAGS_server_flags)) flags.push_back(f);
    const std::string log = absl::StrCat("/tmp/titans-bench-server-", ::getpid(), ".log");
    auto child = titans::bench::ServerProcess::Start(absl::GetFlag(FLAGS_server), flags, log, 120);
    if (!child.ok()) return Fail(child.status().ToString());
    server.child.emplace(std::move(*child));
    server.address = server.child->address();
    server.pid = server.child->pid();
    std::printf("server: %s (pid %d, log %s), RSS at start %.1f MiB\n", server.address.c_str(),
                static_cast<int>(server.pid), log.c_str(), Mib(server.rss()));
  }

  int rc = 0;
  if (absl::GetFlag(FLAGS_soak)) {
    rc = RunSoak(server);
  } else if (absl::GetFlag(FLAGS_long_tokens) > 0) {
    rc = RunLong(server);
  } else {
    std::unique_ptr<titans::engine::Engine> engine;
    if (absl::GetFlag(FLAGS_baseline)) {
      titans::engine::EngineOptions options;
      options.model_dir = absl::GetFlag(FLAGS_model_dir);
      options.step_token_budget = absl::GetFlag(FLAGS_step_token_budget);
      auto created = titans::engine::Engine::Create(options);
      if (!created.ok()) return Fail(created.status().ToString());
      engine = std::move(*created);
    }
    FILE* tsv = nullptr;
    if (!absl::GetFlag(FLAGS_tsv).empty()) {
      const bool fresh = !std::filesystem::exists(absl::GetFlag(FLAGS_tsv));
      tsv = std::fopen(absl::GetFlag(FLAGS_tsv).c_str(), "a");
      if (tsv == nullptr) return Fail("cannot write " + absl::GetFlag(FLAGS_tsv));
      if (fresh) {
        std::fprintf(tsv,
                     "mix\tsessions\ttarget\trate\ttokens_per_s\tvs_baseline\trequests\terrors\t"
                     "appended\tgenerated\tappend_p50\tappend_p95\tappend_p99\tturn_p50\tturn_"
                     "p95\tturn_p99\tttft_p50\tttft_p95\tttft_p99\titl_p50\titl_p95\titl_p99\t"
                     "server_rss\n");
      }
    }
    rc = RunLoad(server, engine.get(), tsv);
    if (engine) engine->Shutdown(1000);
    if (tsv) std::fclose(tsv);
  }
  if (server.child) {
    const int status = server.child->Stop();
    if (status != 0) {
      std::fprintf(stderr, "titans-bench: the server exited with status %d\n", status);
      rc = rc ? rc : 1;
    }
  }
  return rc;
}
