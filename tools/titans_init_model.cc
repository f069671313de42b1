// titans-init-model: writes a randomly initialised model directory (config.json +
// model.safetensors). Used to (re)make the shipped default model until a trained one exists:
//   titans-init-model --out models/default --variant mac --seed 20261129
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "model/config.h"
#include "model/file_util.h"
#include "model/params.h"
#include "model/program_flags.h"
#include "model/titans_model.h"

ABSL_FLAG(std::string, out, "", "output model directory (required)");
ABSL_FLAG(std::string, config, "", "config.json to start from (default: built-in defaults)");
ABSL_FLAG(std::string, variant, "",
          "override the variant: mac, mag, mal, lmm or swa (the attention-only baseline)");
ABSL_FLAG(uint64_t, seed, 20261129, "initialisation seed");

int main(int argc, char** argv) {
  titans::ShowOwnFlagsInHelp("titans-init-model");
  absl::SetProgramUsageMessage("Writes a randomly initialised Titans model directory.");
  absl::ParseCommandLine(argc, argv);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) {
    std::fprintf(stderr, "titans-init-model: --out is required\n");
    return 2;
  }
  titans::ModelConfig config;
  config.name = "titans-default";
  if (!absl::GetFlag(FLAGS_config).empty()) {
    auto text = titans::ReadFileToString(absl::GetFlag(FLAGS_config));
    if (!text.ok()) {
      std::fprintf(stderr, "titans-init-model: %s\n", text.status().ToString().c_str());
      return 1;
    }
    auto parsed = titans::ParseModelConfig(*text);
    if (!parsed.ok()) {
      std::fprintf(stderr, "titans-init-model: %s\n", parsed.status().ToString().c_str());
      return 1;
    }
    config = *parsed;
  }
  const std::string variant = absl::GetFlag(FLAGS_variant);
  if (!variant.empty()) {
    auto parsed = titans::ParseModelConfig(std::string(R"({"format_version": 1, "variant": ")") +
                                           variant + "\"}");
    if (!parsed.ok()) {
      std::fprintf(stderr, "titans-init-model: %s\n", parsed.status().ToString().c_str());
      return 2;
    }
    config.variant = parsed->variant;
  }
  config.initialization = "random";
  config.description =
      "Randomly initialised (untrained) Titans model, made by titans-init-model --seed " +
      std::to_string(absl::GetFlag(FLAGS_seed)) +
      ". Its outputs are noise until a trained model replaces it.";
  auto model = titans::TitansModel::CreateRandom(config, absl::GetFlag(FLAGS_seed));
  if (!model.ok()) {
    std::fprintf(stderr, "titans-init-model: %s\n", model.status().ToString().c_str());
    return 1;
  }
  if (absl::Status st = (*model)->Save(out); !st.ok()) {
    std::fprintf(stderr, "titans-init-model: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s: %s, %lld parameters, fingerprint %s\n", out.c_str(),
              std::string(titans::VariantName(config.variant)).c_str(),
              static_cast<long long>(titans::CountParameters(config)),
              (*model)->fingerprint().c_str());
  return 0;
}
