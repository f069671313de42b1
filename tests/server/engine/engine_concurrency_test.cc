// The engine (scheduler + session manager + durable store) under concurrent clients, through its
// C++ API (no gRPC, so ThreadSanitizer sees every thread involved; scripts/tsan.sh runs it).
// Many threads issue random operations on shared sessions; every call must complete with OK or
// one of the statuses its contract allows, acknowledged appends must all be there, and a
// restarted engine (sync log recovery) must hold the same sessions at the same positions.
#include <gtest/gtest.h>

#include <future>
#include <mutex>
#include <random>
#include <thread>

#include "model/determinism.h"
#include "server/engine/engine.h"
#include "tests/model/model_test_util.h"
#include "tests/server/engine/fault_injection_env.h"
#include "tests/server/redis_fixture.h"
#include "tests/server/server_fixture.h"

namespace titans::testing {
namespace {

using engine::Engine;

class EngineConcurrencyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = TempDir("titans_engine_concurrency");
    auto model = MakeModel(TinyConfig(Variant::kMAG), 5);
    ASSERT_TRUE(model->Save(root_ + "/model").ok());
    options_.model_dir = root_ + "/model";
    options_.state_dir = root_ + "/state";
    options_.durability = engine::Durability::kSync;
    options_.max_resident_sessions = 3;  // constant spilling and restoring
    options_.checkpoint_interval_tokens = 200;
    options_.rewind_interval_tokens = 32;
    options_.step_token_budget = 48;
    auto e = Engine::Create(options_);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
  }
  void TearDown() override {
    if (engine_) engine_->Shutdown(0);
    engine_.reset();
    std::filesystem::remove_all(root_);
  }

  absl::Status Append(const std::string& id, const std::string& text) {
    std::promise<absl::Status> done;
    engine::Input in;
    in.text = text;
    engine_->Append("", id, in, nullptr,
                    [&](absl::StatusOr<engine::AppendResult> r) { done.set_value(r.status()); });
    return done.get_future().get();
  }

  std::string Export(const std::string& id) {
    std::promise<std::string> done;
    engine_->Export("", id, [&](absl::StatusOr<std::string> r) {
      done.set_value(r.ok() ? *r : "export failed: " + r.status().ToString());
    });
    return done.get_future().get();
  }

  std::string root_;
  engine::EngineOptions options_;
  std::unique_ptr<Engine> engine_;
};

// Statuses an operation may legitimately end with while other clients rewind, fork and close.
bool Allowed(const absl::Status& st) {
  switch (st.code()) {
    case absl::StatusCode::kOk:
    case absl::StatusCode::kCancelled:          // we cancelled it
    case absl::StatusCode::kOutOfRange:         // rewind past a position another client changed
    case absl::StatusCode::kNotFound:           // a fork another thread closed
    case absl::StatusCode::kAlreadyExists:      // two threads forking to the same name
    case absl::StatusCode::kResourceExhausted:  // per-session queue limit
      return true;
    default:
      return false;
  }
}

TEST_F(EngineConcurrencyTest, RandomOperationsFromManyThreads) {
  const int kSessions = 6, kThreads = 6, kOpsPerThread = 40;
  for (int i = 0; i < kSessions; ++i) {
    engine::CreateParams p;
    p.id = "s" + std::to_string(i);
    ASSERT_TRUE(engine_->CreateSession(p).ok());
  }
  // Session "s0" only ever gets appends: its final position is the sum of acknowledged bytes.
  std::atomic<int64_t> s0_acknowledged{0};
  std::mutex errors_mu;
  std::vector<std::string> errors;
  auto client = [&](int seed) {
    std::mt19937 rng(seed);
    auto pick = [&](int n) { return static_cast<int>(rng() % n); };
    for (int op = 0; op < kOpsPerThread; ++op) {
      const std::string id = "s" + std::to_string(pick(kSessions));
      absl::Status st;
      const int kind = id == "s0" ? 0 : pick(8);
      // Varied text (long runs of one character make the random test model's memory diverge,
      // which is a model property, not what this test is about).
      std::string text(1 + pick(40), ' ');
      for (char& c : text) c = static_cast<char>('a' + pick(26));
      switch (kind) {
        case 0:
        case 1:
          st = Append(id, text);
          if (st.ok() && id == "s0") s0_acknowledged += static_cast<int64_t>(text.size());
          break;
        case 2: {
          engine::GenerateParams g;
          g.max_tokens = 1 + pick(4);
          g.sampling.temperature = 0.7f;
          g.stop_at_eos = false;
          auto cancel = std::make_shared<std::atomic<bool>>(pick(4) == 0);
          std::promise<absl::Status> done;
          int events = 0;
          engine_->Generate(
              "", id, g, cancel, [&](const engine::GenerateEvent&) { ++events; },
              [&](absl::Status s) { done.set_value(s); });
          st = done.get_future().get();
          break;
        }
        case 3: {
          std::promise<absl::Status> done;
          engine_->Score(
              "", id, {104, 105}, pick(2) == 0,
              [&](absl::StatusOr<engine::ScoreResult> r) { done.set_value(r.status()); });
          st = done.get_future().get();
          break;
        }
        case 4: {
          auto info = engine_->GetSession("", id);
          st = info.status();
          if (!st.ok()) break;
          std::promise<absl::Status> done;
          const int64_t target = info->position - pick(60);
          engine_->Rewind(
              "", id, std::max<int64_t>(0, target),
              [&](absl::StatusOr<engine::SessionInfo> r) { done.set_value(r.status()); });
          st = done.get_future().get();
          break;
        }
        case 5: {
          const std::string fork = id + "-fork" + std::to_string(seed);
          std::promise<absl::Status> forked;
          engine_->ForkSession("", id, fork, -1, [&](absl::StatusOr<engine::SessionInfo> r) {
            forked.set_value(r.status());
          });
          st = forked.get_future().get();
          if (st.ok()) {
            st = Append(fork, text);
            std::promise<absl::Status> closed;
            engine_->CloseSession("", fork, [&](absl::Status s) { closed.set_value(s); });
            const absl::Status close_status = closed.get_future().get();
            if (st.ok()) st = close_status;
          }
          break;
        }
        case 6: {
          bool more = false;
          st = engine_->ListSessions("", {}, "", 100, &more).size() >= 1
                   ? absl::OkStatus()
                   : absl::InternalError("no sessions listed");
          break;
        }
        default: {
          std::promise<absl::Status> done;
          engine_->Export("", id,
                          [&](absl::StatusOr<std::string> r) { done.set_value(r.status()); });
          st = done.get_future().get();
        }
      }
      if (!Allowed(st)) {
        std::lock_guard<std::mutex> lock(errors_mu);
        errors.push_back(id + " op " + std::to_string(kind) + ": " + st.ToString());
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(client, 100 + t);
  for (auto& t : threads) t.join();
  for (const std::string& e : errors) ADD_FAILURE() << e;

  auto s0 = engine_->GetSession("", "s0");
  ASSERT_TRUE(s0.ok());
  EXPECT_EQ(s0->position, s0_acknowledged.load());
  Engine::Stats stats = engine_->stats();
  EXPECT_EQ(stats.queued_operations, 0);
  EXPECT_EQ(stats.sessions, kSessions);  // every fork was closed
  std::map<std::string, int64_t> positions;
  std::map<std::string, std::string> snapshots;
  for (int i = 0; i < kSessions; ++i) {
    const std::string id = "s" + std::to_string(i);
    positions[id] = engine_->GetSession("", id)->position;
    snapshots[id] = Export(id);
  }
  // A crash image of the state directory recovers to the same positions.
  const std::string image = root_ + "/image";
  std::filesystem::copy(options_.state_dir, image, std::filesystem::copy_options::recursive);
  engine_->Shutdown(0);
  engine_.reset();
  options_.state_dir = image;
  auto recovered = Engine::Create(options_);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  engine_ = std::move(*recovered);
  EXPECT_EQ(engine_->stats().unrecoverable_sessions, 0);
  for (const auto& [id, position] : positions) {
    auto info = engine_->GetSession("", id);
    ASSERT_TRUE(info.ok()) << id;
    EXPECT_EQ(info->position, position) << id;
    if (BatchInvariantCpuKernels()) {
      // Replayed alone, logged in batches: the same bits (model/determinism.h).
      EXPECT_TRUE(Export(id) == snapshots[id]) << id << ": recovered state is not bit-identical";
    }
    absl::Status appended = Append(id, "still works");
    EXPECT_TRUE(appended.ok()) << id << ": " << appended;
  }
}

// Reading a spilled session back is timed and reported to the observer (the
// titans_restore_duration_seconds metric), with the bytes read.
class RestoreCounter : public engine::EngineObserver {
 public:
  void OnRestore(int64_t bytes, double seconds, bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++restores_;
    if (ok && bytes > 0 && seconds > 0) ++timed_;
  }
  int restores() {
    std::lock_guard<std::mutex> lock(mu_);
    return restores_;
  }
  int timed() {
    std::lock_guard<std::mutex> lock(mu_);
    return timed_;
  }

 private:
  std::mutex mu_;
  int restores_ = 0, timed_ = 0;
};

TEST_F(EngineConcurrencyTest, RestoresOfSpilledSessionsAreTimed) {
  engine_->Shutdown(0);
  engine_.reset();
  RestoreCounter counter;
  options_.observer = &counter;
  options_.max_resident_sessions = 1;
  auto e = Engine::Create(options_);
  ASSERT_TRUE(e.ok()) << e.status();
  engine_ = std::move(*e);
  for (const char* id : {"a", "b"}) {
    engine::CreateParams p;
    p.id = id;
    ASSERT_TRUE(engine_->CreateSession(p).ok());
  }
  ASSERT_TRUE(Append("a", "the first fact").ok());
  ASSERT_TRUE(Append("b", "another session").ok());  // one resident slot: spills "a"
  ASSERT_TRUE(Append("a", "and more").ok());         // reads "a" back
  engine_->Shutdown(0);
  engine_.reset();  // no more events once the counter goes
  EXPECT_GE(counter.timed(), 1);
  EXPECT_EQ(counter.restores(), counter.timed());
}

// The log's byte count grows on the engine thread as steps commit while stats() (the metrics
// scrape) reads it on another: both under the engine's lock (a race TSan reported before).
TEST_F(EngineConcurrencyTest, StatsReadWhileTheLogCommits) {
  engine::CreateParams p;
  p.id = "s";
  ASSERT_TRUE(engine_->CreateSession(p).ok());
  std::atomic<bool> done{false};
  std::vector<int64_t> seen;
  std::thread scraper([&] {
    while (!done) seen.push_back(engine_->stats().log_bytes);
  });
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(Append("s", "another acknowledged line ").ok());
  done = true;
  scraper.join();
  EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
  EXPECT_GT(engine_->stats().log_bytes, 0);
}

// A replica loading a session from a shared store replays the log records another replica wrote
// after the last checkpoint, on its engine thread, while GetSession reads the session's position
// on others (a race TSan reported before): every position read is one the session really had.
TEST_F(EngineConcurrencyTest, GetSessionWhileALoadReplaysTheSharedLog) {
  engine_->Shutdown(0);
  engine_.reset();
  RedisServer redis(root_);
  ASSERT_NE(redis.port(), 0) << "redis-server did not start (scripts/setup.sh installs it)";
  engine::EngineOptions shared = options_;
  shared.state_dir.clear();
  shared.session_store = redis.spec();
  shared.checkpoint_interval_tokens = int64_t{1} << 40;  // only the log holds the appends
  shared.ownership_check_seconds = 0;
  auto a = Engine::Create(shared);
  ASSERT_TRUE(a.ok()) << a.status();
  engine_ = std::move(*a);
  engine::CreateParams p;
  p.id = "s";
  ASSERT_TRUE(engine_->CreateSession(p).ok());
  for (int i = 0; i < 30; ++i) ASSERT_TRUE(Append("s", "a line for the log ").ok());
  auto info = engine_->GetSession("", "s");
  ASSERT_TRUE(info.ok());
  const int64_t logged_position = info->position;
  auto b = Engine::Create(shared);  // the second replica
  ASSERT_TRUE(b.ok()) << b.status();
  std::unique_ptr<Engine> replica = std::move(*b);
  std::atomic<bool> done{false};
  std::vector<int64_t> seen;
  std::thread reader([&] {
    while (!done) {
      auto s = replica->GetSession("", "s");
      if (s.ok()) seen.push_back(s->position);
    }
  });
  std::promise<absl::Status> appended;
  engine::Input in;
  in.text = "x";
  replica->Append("", "s", in, nullptr,
                  [&](absl::StatusOr<engine::AppendResult> r) { appended.set_value(r.status()); });
  ASSERT_TRUE(appended.get_future().get().ok());
  done = true;
  reader.join();
  auto after = replica->GetSession("", "s");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->position, logged_position + 1);  // the whole log, then the new byte
  EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
  replica->Shutdown(0);
  replica.reset();
  engine_->Shutdown(0);
  engine_.reset();
}

}  // namespace
}  // namespace titans::testing

namespace titans::testing {
namespace {

// Log fsyncs failing and recovering while clients append from several threads, with spilling and
// checkpoints going on (no gRPC: TSan sees every thread). Every append is answered, an
// acknowledged one is in the session, a failed one is not, and a crash image holds exactly the
// acknowledged appends.
TEST_F(EngineConcurrencyTest, FsyncFailuresWhileClientsAppend) {
  engine_->Shutdown(0);
  engine_.reset();
  FaultInjectionEnv env;
  env.SetPathFilter(".wal");
  options_.env = &env;
  auto e = Engine::Create(options_);
  ASSERT_TRUE(e.ok()) << e.status();
  engine_ = std::move(*e);
  constexpr int kThreads = 4, kAppends = 25;
  for (int t = 0; t < kThreads; ++t) {
    engine::CreateParams p;
    p.id = "s" + std::to_string(t);
    ASSERT_TRUE(engine_->CreateSession(p).ok());
  }
  std::atomic<bool> done{false};
  std::thread flipper([&] {
    for (int i = 0; !done; ++i) {
      env.FailSyncs(i % 2 == 0);
      std::this_thread::yield();
    }
    env.FailSyncs(false);
  });
  std::vector<int64_t> acknowledged(kThreads, 0);
  std::vector<std::thread> clients;
  for (int t = 0; t < kThreads; ++t) {
    clients.emplace_back([&, t] {
      for (int i = 0; i < kAppends; ++i) {
        const std::string text = "line " + std::to_string(i) + " ";
        absl::Status st = Append("s" + std::to_string(t), text);
        if (st.ok()) {
          acknowledged[t] += static_cast<int64_t>(text.size());
        } else {
          EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
        }
      }
    });
  }
  for (std::thread& c : clients) c.join();
  done = true;
  flipper.join();
  EXPECT_GT(env.failed_calls(), 0);
  for (int t = 0; t < kThreads; ++t) {
    auto info = engine_->GetSession("", "s" + std::to_string(t));
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->position, acknowledged[t]) << t;
  }
  const std::string image = root_ + "/image";
  env.CrashImage(options_.state_dir, image, 0);
  engine_->Shutdown(0);
  engine_.reset();
  options_.state_dir = image;
  options_.env = nullptr;
  auto recovered = Engine::Create(options_);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  engine_ = std::move(*recovered);
  for (int t = 0; t < kThreads; ++t) {
    auto info = engine_->GetSession("", "s" + std::to_string(t));
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->position, acknowledged[t]) << t;
  }
}

}  // namespace
}  // namespace titans::testing
