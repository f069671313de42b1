// titans-bench-durability: append throughput of each durability mode relative to none, measured
// in one run on the same model, sessions and inputs.
//
//   build/tools/titans-bench-durability [--model_dir DIR] [--sessions 8] [--appends 40]
//                                       [--tokens 64] [--repeats 3] [--redis HOST:PORT]
//
// Each session appends closed-loop (the next append when the previous is acknowledged); all
// sessions run concurrently through one engine. sync = write-ahead log with one fdatasync per
// scheduler step (group commit) before acknowledging.
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "model/determinism.h"
#include "server/engine/engine.h"

ABSL_FLAG(std::string, model_dir, TITANS_DEFAULT_MODEL_DIR, "model directory");
ABSL_FLAG(int, sessions, 8, "concurrent sessions");
ABSL_FLAG(int, appends, 40, "appends per session");
ABSL_FLAG(int, tokens, 64, "tokens per append");
ABSL_FLAG(int, repeats, 3, "runs per mode (the best is reported)");
ABSL_FLAG(bool, batch_invariant, true, "as titans-server --batch_invariant");
ABSL_FLAG(std::string, redis, "",
          "HOST:PORT of a Redis server: also measure sync durability through it (shared store)");

namespace {

using titans::engine::Durability;

double RunOnce(Durability mode, const std::string& dir, const std::string& store) {
  std::filesystem::remove_all(dir);
  static int run = 0;
  titans::engine::EngineOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model_dir);
  options.state_dir = dir;
  if (!store.empty()) {
    options.session_store = store + "/bench" + std::to_string(::getpid()) + "-" +
                            std::to_string(run++);  // fresh keys each run
    options.state_dir.clear();
  }
  options.durability = mode;
  options.checkpoint_interval_tokens = 2048;
  auto engine = titans::engine::Engine::Create(options);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    std::exit(1);
  }
  const int sessions = absl::GetFlag(FLAGS_sessions), appends = absl::GetFlag(FLAGS_appends);
  std::vector<std::string> ids;
  for (int i = 0; i < sessions; ++i) {
    titans::engine::CreateParams p;
    p.id = "s" + std::to_string(i);
    ids.push_back((*engine)->CreateSession(p)->id);
  }
  std::mutex mu;
  std::condition_variable cv;
  int remaining = sessions;
  std::vector<int> done(sessions, 0);
  std::string text(absl::GetFlag(FLAGS_tokens), 'x');
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>('a' + (i * 7) % 26);
  std::function<void(int)> next = [&](int i) {
    titans::engine::Input in;
    in.text = text;
    (*engine)->Append("", ids[i], in, std::make_shared<std::atomic<bool>>(false),
                      [&, i](absl::StatusOr<titans::engine::AppendResult> r) {
                        if (!r.ok()) {
                          std::fprintf(stderr, "append failed: %s\n",
                                       r.status().ToString().c_str());
                          std::exit(1);
                        }
                        if (++done[i] < appends) {
                          next(i);
                          return;
                        }
                        std::lock_guard<std::mutex> lock(mu);
                        if (--remaining == 0) cv.notify_all();
                      });
  };
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < sessions; ++i) next(i);
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return remaining == 0; });
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  (*engine)->Shutdown(1000);
  return double(sessions) * appends * text.size() / seconds;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_batch_invariant)) titans::UseBatchInvariantCpuKernels();
  const std::string dir =
      (std::filesystem::temp_directory_path() / "titans_bench_durability").string();
  struct Mode {
    const char* name;
    Durability mode;
    std::string store;
  };
  std::vector<Mode> modes = {{"none", Durability::kNone, ""},
                             {"periodic", Durability::kPeriodic, ""},
                             {"sync", Durability::kSync, ""}};
  if (!absl::GetFlag(FLAGS_redis).empty()) {
    modes.push_back({"sync-redis", Durability::kSync, "redis://" + absl::GetFlag(FLAGS_redis)});
  }
  double baseline = 0;
  std::printf("%-10s %14s %10s\n", "mode", "tokens/s", "vs none");
  for (const Mode& m : modes) {
    double best = 0;
    for (int r = 0; r < absl::GetFlag(FLAGS_repeats); ++r)
      best = std::max(best, RunOnce(m.mode, dir, m.store));
    if (m.mode == Durability::kNone) baseline = best;
    std::printf("%-10s %14.0f %9.2fx\n", m.name, best, best / baseline);
  }
  std::printf("(%d sessions x %d appends x %d tokens, closed loop, best of %d; state dir %s)\n",
              absl::GetFlag(FLAGS_sessions), absl::GetFlag(FLAGS_appends),
              absl::GetFlag(FLAGS_tokens), absl::GetFlag(FLAGS_repeats), dir.c_str());
  std::filesystem::remove_all(dir);
  return 0;
}
