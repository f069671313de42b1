// titans-bench-state-memory: resident memory per resident session, against the bytes of its
// state (issue 20's target: RSS growth / sessions within 1.25x of state_bytes).
//
//   build/tools/titans-bench-state-memory [--model_dir DIR] [--sessions 400]
//                                         [--append_bytes 2048] [--rewind_window_tokens 0]
//
// One in-process engine (as titans-server runs it, without gRPC). A first batch of sessions
// warms the allocator up; then --sessions more are created and each appends --append_bytes of
// text, all concurrently (the engine batches them). Reported: the process's resident-set growth
// over those sessions divided by their number, the engine's mean state bytes per session, and
// the ratio of the two. Both readings are taken at rest, 2.5 s after the work ends: the engine
// hands freed memory back to the operating system when it falls idle (engine_step.cc).
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "model/determinism.h"
#include "model/session_state.h"
#include "model/titans_model.h"
#include "server/engine/engine.h"

ABSL_FLAG(std::string, model_dir, TITANS_DEFAULT_MODEL_DIR, "model directory");
ABSL_FLAG(int, sessions, 400, "measured sessions");
ABSL_FLAG(int, warmup_sessions, 64, "sessions created first and not counted");
ABSL_FLAG(int, append_bytes, 2048, "bytes each session appends");
ABSL_FLAG(int64_t, rewind_window_tokens, 0, "as titans-server's flag (0: rewinding off)");
ABSL_FLAG(bool, batch_invariant, true, "as titans-server --batch_invariant");
ABSL_FLAG(bool, engine, true,
          "false: no engine, only the model's states (TitansModel::ForwardMany in pieces of "
          "--piece tokens, 8 sessions a call), to tell the states' memory from the engine's");
ABSL_FLAG(int, piece, 512, "--engine=false: tokens per session and call");

namespace {

double ResidentMib() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 20);
}

// Creates `count` sessions named <prefix><i> and appends `text` to each, all at once.
void CreateAndAppend(titans::engine::Engine& engine, const std::string& prefix, int count,
                     const std::string& text) {
  std::mutex mu;
  std::condition_variable cv;
  int remaining = count;
  for (int i = 0; i < count; ++i) {
    titans::engine::CreateParams p;
    p.id = prefix + std::to_string(i);
    auto created = engine.CreateSession(p);
    if (!created.ok()) {
      std::fprintf(stderr, "create: %s\n", created.status().ToString().c_str());
      std::exit(1);
    }
    titans::engine::Input in;
    in.text = text;
    engine.Append("", p.id, in, std::make_shared<std::atomic<bool>>(false),
                  [&](absl::StatusOr<titans::engine::AppendResult> r) {
                    if (!r.ok()) {
                      std::fprintf(stderr, "append: %s\n", r.status().ToString().c_str());
                      std::exit(1);
                    }
                    std::lock_guard<std::mutex> lock(mu);
                    if (--remaining == 0) cv.notify_all();
                  });
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return remaining == 0; });
}

}  // namespace

// --engine=false: `count` states, each fed `bytes` tokens in pieces, 8 states per call, then
// settled.
std::vector<titans::SessionState> FeedStates(const titans::TitansModel& model, int count,
                                             const std::string& text) {
  std::vector<titans::SessionState> states(count);
  for (auto& s : states) s = model.NewState();
  const int piece = absl::GetFlag(FLAGS_piece);
  for (int first = 0; first < count; first += 8) {
    for (size_t begin = 0; begin < text.size(); begin += piece) {
      std::vector<titans::SessionState*> group;
      std::vector<std::vector<int64_t>> tokens;
      for (int i = first; i < std::min(count, first + 8); ++i) {
        group.push_back(&states[i]);
        const size_t end = std::min(text.size(), begin + piece);
        tokens.emplace_back(text.begin() + begin, text.begin() + end);
      }
      if (absl::Status st = model.ForwardMany(group, tokens); !st.ok()) {
        std::fprintf(stderr, "forward: %s\n", st.ToString().c_str());
        std::exit(1);
      }
    }
    // At rest, as the engine leaves a session whose work is done (ModelRunner::Settle).
    for (int i = first; i < std::min(count, first + 8); ++i) titans::SettleSessionState(&states[i]);
  }
  return states;
}

int ModelOnly(const std::string& text) {
  auto model = titans::TitansModel::Load(absl::GetFlag(FLAGS_model_dir));
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return 1;
  }
  c10::InferenceMode inference;
  const int sessions = absl::GetFlag(FLAGS_sessions);
  auto warm = FeedStates(**model, absl::GetFlag(FLAGS_warmup_sessions), text);
  const double rss_before = ResidentMib();
  auto states = FeedStates(**model, sessions, text);
  const double rss_after = ResidentMib();
  int64_t bytes = 0;
  for (const auto& s : states) bytes += titans::StateBytes(s);
  const double rss_per_session = (rss_after - rss_before) / sessions;
  const double state_per_session = static_cast<double>(bytes) / sessions / (1 << 20);
  std::printf("model only: %d states, %zu tokens each in pieces of %d\n", sessions, text.size(),
              absl::GetFlag(FLAGS_piece));
  std::printf("RSS %.1f -> %.1f MiB: %.3f MiB per state; state %.3f MiB; RSS / state %.2f\n",
              rss_before, rss_after, rss_per_session, state_per_session,
              rss_per_session / state_per_session);
  return 0;
}

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_batch_invariant)) titans::UseBatchInvariantCpuKernels();
  titans::engine::EngineOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model_dir);
  options.rewind_window_tokens = absl::GetFlag(FLAGS_rewind_window_tokens);
  const int sessions = absl::GetFlag(FLAGS_sessions);
  const int warmup = absl::GetFlag(FLAGS_warmup_sessions);
  options.max_resident_sessions = warmup + sessions + 1;
  options.max_sessions = warmup + sessions + 1;
  std::string text(absl::GetFlag(FLAGS_append_bytes), 'x');
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>('a' + (i * 7 + i / 13) % 26);
  if (!absl::GetFlag(FLAGS_engine)) return ModelOnly(text);
  auto engine = titans::engine::Engine::Create(options);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    return 1;
  }
  CreateAndAppend(**engine, "warmup", warmup, text);
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // at rest, as below
  const double rss_before = ResidentMib();
  const int64_t state_before = (*engine)->stats().resident_state_bytes;
  CreateAndAppend(**engine, "s", sessions, text);
  // At rest: the engine hands freed memory back once it falls idle (at most once a second).
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  const double rss_after = ResidentMib();
  const int64_t state_after = (*engine)->stats().resident_state_bytes;
  const double rss_per_session = (rss_after - rss_before) / sessions;
  const double state_per_session =
      static_cast<double>(state_after - state_before) / sessions / (1 << 20);
  std::printf("sessions %d, %d bytes each, rewind window %lld tokens\n", sessions,
              absl::GetFlag(FLAGS_append_bytes),
              static_cast<long long>(options.rewind_window_tokens));
  std::printf(
      "RSS %.1f -> %.1f MiB: %.3f MiB per session; state %.3f MiB per session; "
      "RSS / state %.2f\n",
      rss_before, rss_after, rss_per_session, state_per_session,
      rss_per_session / state_per_session);
  (*engine)->Shutdown(0);
  return 0;
}
