// LoadTarget in-process: the engine's asynchronous calls, each waited for on a promise. This is
// the baseline the gRPC numbers are divided by (same scheduler, model and kernels; no network,
// serialisation or service layer).
#include <future>

#include "server/engine/engine.h"
#include "tools/bench/load_target.h"

namespace titans::bench {
namespace {

class EngineTarget : public LoadTarget {
 public:
  explicit EngineTarget(engine::Engine* engine) : engine_(engine) {}
  std::string name() const override { return "in-process"; }

  absl::Status CreateSession(const std::string& id) override {
    engine::CreateParams p;
    p.id = id;
    return engine_->CreateSession(p).status();
  }

  absl::StatusOr<int64_t> Append(const std::string& id, const std::string& text) override {
    std::promise<absl::StatusOr<engine::AppendResult>> done;
    engine::Input in;
    in.text = text;
    engine_->Append("", id, std::move(in), std::make_shared<std::atomic<bool>>(false),
                    [&done](absl::StatusOr<engine::AppendResult> r) { done.set_value(r); });
    absl::StatusOr<engine::AppendResult> r = done.get_future().get();
    if (!r.ok()) return r.status();
    return r->tokens_consumed;
  }

  absl::StatusOr<int64_t> Generate(
      const std::string& id, const std::string& prompt, int max_tokens,
      const std::function<void(int64_t, const std::string&)>& on_tokens) override {
    engine::GenerateParams p;
    p.prompt.text = prompt;
    p.max_tokens = max_tokens;
    p.sampling.temperature = 0.0f;
    p.stop_at_eos = false;
    std::promise<absl::Status> done;
    int64_t generated = 0;
    engine_->Generate(
        "", id, std::move(p), std::make_shared<std::atomic<bool>>(false),
        [&](const engine::GenerateEvent& e) {
          generated += static_cast<int64_t>(e.tokens.size());
          if (!e.tokens.empty() && on_tokens) {
            on_tokens(static_cast<int64_t>(e.tokens.size()), e.text);
          }
        },
        [&done](absl::Status st) { done.set_value(st); });
    absl::Status st = done.get_future().get();
    if (!st.ok()) return st;
    return generated;
  }

  absl::StatusOr<std::pair<int64_t, int64_t>> StateBytesAndPosition(
      const std::string& id) override {
    absl::StatusOr<engine::SessionInfo> info = engine_->GetSession("", id);
    if (!info.ok()) return info.status();
    return std::make_pair(info->state_bytes, info->position);
  }

  absl::Status CloseSession(const std::string& id) override {
    std::promise<absl::Status> done;
    engine_->CloseSession("", id, [&done](absl::Status st) { done.set_value(st); });
    return done.get_future().get();
  }

 private:
  engine::Engine* engine_;
};

}  // namespace

std::unique_ptr<LoadTarget> MakeEngineTarget(engine::Engine* engine) {
  return std::make_unique<EngineTarget>(engine);
}

}  // namespace titans::bench
