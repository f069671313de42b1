// titans-generate: loads a model directory, feeds a prompt into a fresh session and streams a
// continuation to stdout, then reports throughput. The README's run command uses it until the
// gRPC server exists.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "model/file_util.h"
#include "model/generator.h"
#include "model/program_flags.h"
#include "model/session_state.h"
#include "model/titans_model.h"

ABSL_FLAG(std::string, model_dir, TITANS_DEFAULT_MODEL_DIR, "model directory");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda[:N]");
ABSL_FLAG(std::string, prompt, "In the beginning", "prompt text");
ABSL_FLAG(std::string, prompt_file, "", "read the prompt from this file instead");
ABSL_FLAG(int32_t, max_tokens, 200, "tokens to generate");
ABSL_FLAG(double, temperature, 0.8, "sampling temperature (0 = greedy)");
ABSL_FLAG(int32_t, top_k, 0, "top-k filter (0 = off)");
ABSL_FLAG(double, top_p, 0.95, "nucleus filter (1 = off)");
ABSL_FLAG(uint64_t, seed, 0, "sampling seed");
ABSL_FLAG(std::vector<std::string>, stop, {}, "comma-separated stop strings");

int main(int argc, char** argv) {
  titans::ShowOwnFlagsInHelp("titans-generate");
  absl::SetProgramUsageMessage("Generates text from a Titans model directory.");
  absl::ParseCommandLine(argc, argv);
  titans::LoadOptions options;
  options.device = absl::GetFlag(FLAGS_device);
  auto model = titans::TitansModel::Load(absl::GetFlag(FLAGS_model_dir), options);
  if (!model.ok()) {
    std::fprintf(stderr, "titans-generate: %s\n", model.status().ToString().c_str());
    return 1;
  }
  const titans::ModelConfig& config = (*model)->config();
  std::fprintf(stderr, "model %s (%s, %lld parameters, %s)\n", config.name.c_str(),
               std::string(titans::VariantName(config.variant)).c_str(),
               static_cast<long long>(titans::CountParameters(config)),
               config.initialization.c_str());
  std::string prompt = absl::GetFlag(FLAGS_prompt);
  if (!absl::GetFlag(FLAGS_prompt_file).empty()) {
    auto text = titans::ReadFileToString(absl::GetFlag(FLAGS_prompt_file));
    if (!text.ok()) {
      std::fprintf(stderr, "titans-generate: %s\n", text.status().ToString().c_str());
      return 1;
    }
    prompt = *text;
  }
  auto ids = (*model)->tokenizer().Encode(prompt, /*parse_special=*/false);
  if (!ids.ok()) {
    std::fprintf(stderr, "titans-generate: %s\n", ids.status().ToString().c_str());
    return 1;
  }
  at::NoGradGuard no_grad;
  titans::SessionState state = (*model)->NewState();
  std::vector<int64_t> tokens = {(*model)->tokenizer().bos_id()};
  tokens.insert(tokens.end(), ids->begin(), ids->end());
  auto t0 = std::chrono::steady_clock::now();
  auto fed = (*model)->Forward(&state, at::tensor(tokens).unsqueeze(0));
  if (!fed.ok()) {
    std::fprintf(stderr, "titans-generate: %s\n", fed.status().ToString().c_str());
    return 1;
  }
  auto t1 = std::chrono::steady_clock::now();
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  std::fflush(stdout);

  titans::SamplingParams params;
  params.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
  params.top_k = absl::GetFlag(FLAGS_top_k);
  params.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
  params.seed = absl::GetFlag(FLAGS_seed);
  params.has_seed = true;
  params.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  params.stop = absl::GetFlag(FLAGS_stop);
  auto result = titans::Generate(**model, &state, params, [](int32_t, std::string_view delta) {
    std::fwrite(delta.data(), 1, delta.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  auto t2 = std::chrono::steady_clock::now();
  if (!result.ok()) {
    std::fprintf(stderr, "\ntitans-generate: %s\n", result.status().ToString().c_str());
    return 1;
  }
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  std::fprintf(stderr,
               "\n[%zu prompt tokens in %.3f s (%.0f tok/s); %zu generated in %.3f s (%.1f tok/s); "
               "finish: %s; session state %.2f MiB]\n",
               tokens.size(), prefill_s, tokens.size() / prefill_s, result->tokens.size(), decode_s,
               result->tokens.size() / decode_s,
               std::string(titans::FinishReasonName(result->finish_reason)).c_str(),
               titans::StateBytes(state) / 1048576.0);
  return 0;
}
