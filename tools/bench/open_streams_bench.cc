// titans-bench-streams: many Generate calls open on one server at once, and what they cost it.
//
//   titans-bench-streams --streams 10000 --sessions 160      # most calls wait in session queues
//   titans-bench-streams --streams 1000 --sessions 1000      # every call generating
//
// Starts titans-server (or uses --address), creates the sessions, then opens --streams Generate
// calls spread round-robin over them, from one client process with gRPC's callback client (no
// thread per call here either). A session runs one generation at a time; the calls behind it
// wait in its queue, each an open stream. Once the server holds every call (the sessions'
// queued operations add up), it holds them --hold_seconds while the client reads every message,
// then cancels them all. Reported: the server's thread count and resident memory idle and with
// every call open (from /proc), tokens received, inter-token latency (p50 / p99 over the
// messages of the calls that generated, a message's gap divided by its tokens), and errors: any
// call that did not end CANCELLED (or OK, for a generation that finished). Exit status 1 on an
// error.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "titans/v1/titans.grpc.pb.h"
#include "tools/bench/server_process.h"

ABSL_FLAG(std::string, address, "", "a running server (host:port); default: start --server");
ABSL_FLAG(std::string, server, TITANS_SERVER_BINARY, "titans-server binary to start");
ABSL_FLAG(std::string, model_dir, TITANS_DEFAULT_MODEL_DIR, "model the started server loads");
ABSL_FLAG(std::vector<std::string>, server_flags, {}, "extra flags for the started server");
ABSL_FLAG(int, streams, 10000, "Generate calls open at once");
ABSL_FLAG(int, sessions, 160, "sessions the calls are spread over (at most 64 calls each)");
ABSL_FLAG(int, max_tokens, 4096, "max_tokens of every call");
ABSL_FLAG(double, hold_seconds, 5, "seconds every call is held open once all are");

namespace pb = ::titans::v1;
using Clock = std::chrono::steady_clock;

namespace {

int Fail(const std::string& why) {
  std::fprintf(stderr, "titans-bench-streams: %s\n", why.c_str());
  return 1;
}

// One Generate call; reads every message, keeping the gaps between them per token.
class Call final : public grpc::ClientReadReactor<pb::GenerateResponse> {
 public:
  Call(pb::Titans::Stub* stub, const pb::GenerateRequest& request, std::atomic<int>* done)
      : done_(done) {
    ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::hours(1));
    stub->async()->Generate(&ctx_, &request, this);
    StartRead(&message_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    const Clock::time_point now = Clock::now();
    const int tokens = std::max(1, message_.token_ids_size());
    if (messages_ > 0) {
      const double gap = std::chrono::duration<double>(now - last_).count() / tokens;
      gaps_.push_back(gap);
    }
    last_ = now;
    ++messages_;
    tokens_ += message_.token_ids_size();
    StartRead(&message_);
  }
  void OnDone(const grpc::Status& s) override {
    status_ = s;
    done_->fetch_add(1);
  }
  void Cancel() { ctx_.TryCancel(); }
  // Valid once OnDone has run.
  const grpc::Status& status() const { return status_; }
  int64_t tokens() const { return tokens_; }
  const std::vector<double>& gaps() const { return gaps_; }

 private:
  grpc::ClientContext ctx_;
  pb::GenerateResponse message_;
  std::atomic<int>* done_;
  grpc::Status status_;
  Clock::time_point last_;
  int64_t messages_ = 0, tokens_ = 0;
  std::vector<double> gaps_;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

struct ServerSample {
  int threads = -1;
  double rss_mib = -1;
};
ServerSample Sample(pid_t pid) {
  ServerSample s;
  if (pid <= 0) return s;
  auto status = titans::bench::ReadProcessStatus(pid);
  if (!status.ok()) return s;
  s.threads = status->threads;
  s.rss_mib = static_cast<double>(status->rss) / (1 << 20);
  return s;
}

// What the calls received, summed over all of them once they have ended.
struct CallTotals {
  int64_t tokens = 0, errors = 0, generating = 0;
  std::vector<double> gaps;  // every call's gaps between messages, per token
  std::string first_error;
};

// The flags of a started server: room for every session and every call queued behind one.
std::vector<std::string> ServerFlags(int sessions, int per_session) {
  std::vector<std::string> flags = {"--model_dir",
                                    absl::GetFlag(FLAGS_model_dir),
                                    "--max_sessions",
                                    std::to_string(std::max(sessions, 10000)),
                                    "--max_resident_sessions",
                                    std::to_string(std::max(sessions, 1000)),
                                    "--max_ops_per_session",
                                    std::to_string(std::max(per_session, 64)),
                                    "--max_queued_tokens",
                                    std::to_string(int64_t{1} << 40),
                                    "--max_generate_tokens",
                                    std::to_string(absl::GetFlag(FLAGS_max_tokens)),
                                    "--rewind_window_tokens",
                                    "0"};
  for (const std::string& f : absl::GetFlag(FLAGS_server_flags)) flags.push_back(f);
  return flags;
}

// Creates the sessions `prefix`0 to `prefix`(sessions - 1); the first failure ends it.
grpc::Status CreateSessions(pb::Titans::Stub* stub, const std::string& prefix, int sessions) {
  for (int s = 0; s < sessions; ++s) {
    pb::CreateSessionRequest req;
    req.set_session_id(prefix + std::to_string(s));
    pb::Session out;
    grpc::ClientContext ctx;
    grpc::Status st = stub->CreateSession(&ctx, req, &out);
    if (!st.ok()) return st;
  }
  return grpc::Status::OK;
}

// Opens `streams` Generate calls, round-robin over the sessions, into `calls`.
void OpenCalls(pb::Titans::Stub* stub, const std::string& prefix, int streams, int sessions,
               std::atomic<int>* done, std::vector<std::unique_ptr<Call>>* calls) {
  for (int i = 0; i < streams; ++i) {
    pb::GenerateRequest req;
    req.set_session_id(prefix + std::to_string(i % sessions));
    req.set_prompt_text("Once upon a time");
    req.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
    req.set_stop_at_eos(false);
    calls->push_back(std::make_unique<Call>(stub, req, done));
  }
}

// Polls the sessions until the server holds all `streams` calls; returns how many it held.
int64_t WaitUntilHeld(pb::Titans::Stub* stub, const std::string& prefix, int streams, int sessions,
                      const std::atomic<int>& done) {
  // Until the server holds every call: its sessions' queues add up to them.
  int64_t held = 0;
  for (int tries = 0; tries < 6000 && held < streams; ++tries) {
    held = 0;
    for (int s = 0; s < sessions; ++s) {
      pb::GetSessionRequest req;
      req.set_session_id(prefix + std::to_string(s));
      pb::Session out;
      grpc::ClientContext ctx;
      if (stub->GetSession(&ctx, req, &out).ok()) held += out.queued_operations();
    }
    held += done.load();  // finished ones were held too
    if (held < streams) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return held;
}

// Cancels every call and waits for all to end; false if some have not after ~2 minutes.
bool CancelAll(const std::vector<std::unique_ptr<Call>>& calls, const std::atomic<int>& done,
               int streams) {
  for (auto& c : calls) c->Cancel();
  for (int tries = 0; tries < 12000 && done.load() < streams; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done.load() >= streams;
}

// Sums up the ended calls.
CallTotals Total(const std::vector<std::unique_ptr<Call>>& calls) {
  CallTotals t;
  for (auto& c : calls) {
    t.tokens += c->tokens();
    t.generating += c->tokens() > 0;
    t.gaps.insert(t.gaps.end(), c->gaps().begin(), c->gaps().end());
    const auto code = c->status().error_code();
    if (code != grpc::StatusCode::CANCELLED && code != grpc::StatusCode::OK) {
      if (t.errors++ == 0) t.first_error = c->status().error_message();
    }
  }
  return t;
}

// Prints the server's cost idle, with every call open and after the hold, and the totals `t`.
void PrintReport(int streams, int sessions, double open_seconds, int64_t held,
                 const ServerSample& idle, const ServerSample& open,
                 const ServerSample& held_sample, const CallTotals& t) {
  std::printf("streams %d over %d sessions: all held by the server after %.2f s (%lld counted)\n",
              streams, sessions, open_seconds, static_cast<long long>(held));
  std::printf("server threads: %d idle, %d with every call open, %d after %.0f s\n", idle.threads,
              open.threads, held_sample.threads, absl::GetFlag(FLAGS_hold_seconds));
  std::printf("server RSS: %.1f MiB idle, %.1f MiB open, %.1f MiB held (%.1f KiB per call)\n",
              idle.rss_mib, open.rss_mib, held_sample.rss_mib,
              (held_sample.rss_mib - idle.rss_mib) * 1024 / streams);
  std::printf("tokens received: %lld by %lld generating calls; ITL p50 %.1f ms, p99 %.1f ms\n",
              static_cast<long long>(t.tokens), static_cast<long long>(t.generating),
              Percentile(t.gaps, 0.5) * 1e3, Percentile(t.gaps, 0.99) * 1e3);
  std::printf("errors: %lld%s\n", static_cast<long long>(t.errors),
              t.errors ? (" (first: " + t.first_error + ")").c_str() : "");
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Opens many Generate calls on one server at once (see the file).");
  absl::ParseCommandLine(argc, argv);
  const int streams = absl::GetFlag(FLAGS_streams);
  const int sessions = absl::GetFlag(FLAGS_sessions);
  if (streams < 1 || sessions < 1 || sessions > streams) {
    return Fail("--streams and --sessions must be positive, sessions <= streams");
  }
  const int per_session = (streams + sessions - 1) / sessions;
  std::string address = absl::GetFlag(FLAGS_address);
  std::unique_ptr<titans::bench::ServerProcess> server;
  if (address.empty()) {
    auto started = titans::bench::ServerProcess::Start(absl::GetFlag(FLAGS_server),
                                                       ServerFlags(sessions, per_session),
                                                       "/tmp/titans-bench-streams-server.log", 60);
    if (!started.ok()) return Fail(std::string(started.status().message()));
    server = std::make_unique<titans::bench::ServerProcess>(std::move(*started));
    address = server->address();
  }
  const pid_t pid = server ? server->pid() : -1;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  auto stub = pb::Titans::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));

  const std::string prefix = absl::StrCat("streams", ::getpid(), "-");
  if (grpc::Status st = CreateSessions(stub.get(), prefix, sessions); !st.ok()) {
    return Fail("CreateSession: " + st.error_message());
  }
  const ServerSample idle = Sample(pid);

  std::atomic<int> done{0};
  std::vector<std::unique_ptr<Call>> calls;
  calls.reserve(streams);
  const Clock::time_point open_start = Clock::now();
  OpenCalls(stub.get(), prefix, streams, sessions, &done, &calls);
  const int64_t held = WaitUntilHeld(stub.get(), prefix, streams, sessions, done);
  const double open_seconds = std::chrono::duration<double>(Clock::now() - open_start).count();
  const ServerSample open = Sample(pid);
  std::this_thread::sleep_for(std::chrono::duration<double>(absl::GetFlag(FLAGS_hold_seconds)));
  const ServerSample held_sample = Sample(pid);
  if (!CancelAll(calls, done, streams)) return Fail("calls did not finish after the cancel");

  const CallTotals totals = Total(calls);
  PrintReport(streams, sessions, open_seconds, held, idle, open, held_sample, totals);
  calls.clear();
  if (server) server->Stop();
  return totals.errors == 0 && held >= streams ? 0 : 1;
}
