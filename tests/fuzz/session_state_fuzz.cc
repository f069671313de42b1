// The session-state / snapshot decoder: never crashes; whatever it accepts is a valid state.
#include <ATen/ATen.h>

#include <cstdlib>

#include "model/session_state.h"
#include "model/titans_model.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

struct Fixture {
  std::unique_ptr<titans::TitansModel> model;
  std::string blob;
};

const Fixture& Get() {
  static const Fixture* f = [] {
    titans::ModelConfig c;
    c.d_model = 16;
    c.num_layers = 1;
    c.num_heads = 2;
    c.head_dim = 8;
    c.ffn_hidden = 16;
    c.memory.chunk_size = 4;
    c.attention.segment_size = 8;
    auto* fx = new Fixture;
    fx->model = std::move(*titans::TitansModel::CreateRandom(c, 1));
    at::NoGradGuard no_grad;
    titans::SessionState s = fx->model->NewState();
    (void)fx->model->Forward(&s, at::arange(11, at::kLong).unsqueeze(0));
    fx->blob = *titans::SerializeSessionState(fx->model->config(), s, fx->model->fingerprint());
    return fx;
  }();
  return *f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Fixture& f = Get();
  const std::string input = titans::fuzz::InputFrom(data, size, f.blob);
  auto state = titans::DeserializeSessionState(input, f.model->config(), f.model->fingerprint());
  if (state.ok() && !titans::ValidateSessionState(f.model->config(), *state).ok()) std::abort();
  return 0;
}
