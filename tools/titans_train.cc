// titans-train: trains a Titans model on text files plus synthetic passkey tasks (model/trainer.h).
//
//   titans-train --data data/kjv.txt --out runs/default [--init models/default | --config c.json]
//                [--steps 3000 --batch 8 --seq_len 512 --lr 3e-3 --seed 1] [--resume]
//
// Writes checkpoints to --out (model/ and trainer.pt; --resume continues one exactly) and the
// final model to --out/model. A progress line per step: loss, bits per byte, learning rate,
// tokens/s, and the held-out bits per byte every --eval_every steps. `scripts/prepare-data.sh`
// makes data/kjv.txt from Debian's bible-kjv packages.
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_split.h"
#include "model/config.h"
#include "model/file_util.h"
#include "model/program_flags.h"
#include "model/trainer.h"

ABSL_FLAG(std::vector<std::string>, data, {}, "training text files (comma-separated)");
ABSL_FLAG(std::string, out, "", "checkpoint and output directory (required)");
ABSL_FLAG(std::string, init, "", "model directory to start from (default: a random model)");
ABSL_FLAG(std::string, config, "", "config.json for a random start (default: built-in defaults)");
ABSL_FLAG(std::string, name, "titans-default", "the trained model's name");
ABSL_FLAG(bool, resume, false, "continue from the checkpoint in --out");
ABSL_FLAG(int64_t, steps, 3000, "optimizer steps");
ABSL_FLAG(int64_t, batch, 8, "sequences per step");
ABSL_FLAG(int64_t, seq_len, 512, "bytes per sequence");
ABSL_FLAG(int64_t, warmup, 100, "linear warm-up steps");
ABSL_FLAG(double, lr, 3e-3, "peak learning rate");
ABSL_FLAG(double, min_lr, 3e-4, "final learning rate (cosine decay)");
ABSL_FLAG(double, weight_decay, 0.1, "AdamW weight decay (matrices only)");
ABSL_FLAG(double, clip, 1.0, "gradient-norm clip (0: none)");
ABSL_FLAG(double, passkey_fraction, 0.25, "share of sequences that are synthetic passkey tasks");
ABSL_FLAG(double, passkey_noise_fraction, 0.5,
          "share of passkey tasks hidden in RULER's repeated noise (the rest: in training text)");
ABSL_FLAG(double, recall_fraction, 0.0,
          "share of sequences that are multi-query associative recall tasks");
ABSL_FLAG(double, answer_weight, 1.0,
          "extra weight of the passkey answer digits in the objective (0: plain LM loss)");
ABSL_FLAG(int64_t, stream_segments, 1,
          "stateful training: each row is a stream of this many seq_len segments, the state "
          "carried from step to step (1: every step starts from a fresh state)");
ABSL_FLAG(double, long_passkey_fraction, 0.0,
          "with --stream_segments: share of stream rows that are one passkey task whose needle "
          "is in the first segment and whose question ends a later one");
ABSL_FLAG(double, long_recall_fraction, 0.0,
          "with --stream_segments: share of stream rows that are one multi-fact recall task "
          "(2-8 key=value facts in the first segment, every key asked at the end of a later one)");
ABSL_FLAG(double, test_fraction, 0.05, "held-out share at the end of each file");
ABSL_FLAG(int64_t, eval_every, 100, "steps between held-out evaluations");
ABSL_FLAG(int64_t, eval_sequences, 16, "held-out windows per evaluation");
ABSL_FLAG(int64_t, checkpoint_every, 200, "steps between checkpoints");
ABSL_FLAG(uint64_t, seed, 1, "seed for initialisation, data order and synthetic tasks");

namespace {

// The training options the flags set.
titans::TrainOptions OptionsFromFlags() {
  titans::TrainOptions options;
  options.batch = absl::GetFlag(FLAGS_batch);
  options.seq_len = absl::GetFlag(FLAGS_seq_len);
  options.steps = absl::GetFlag(FLAGS_steps);
  options.warmup = absl::GetFlag(FLAGS_warmup);
  options.lr = absl::GetFlag(FLAGS_lr);
  options.min_lr = absl::GetFlag(FLAGS_min_lr);
  options.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  options.clip = absl::GetFlag(FLAGS_clip);
  options.passkey_fraction = absl::GetFlag(FLAGS_passkey_fraction);
  options.passkey_noise_fraction = absl::GetFlag(FLAGS_passkey_noise_fraction);
  options.recall_fraction = absl::GetFlag(FLAGS_recall_fraction);
  options.answer_weight = absl::GetFlag(FLAGS_answer_weight);
  options.eval_every = absl::GetFlag(FLAGS_eval_every);
  options.eval_sequences = absl::GetFlag(FLAGS_eval_sequences);
  options.checkpoint_every = absl::GetFlag(FLAGS_checkpoint_every);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.stream_segments = absl::GetFlag(FLAGS_stream_segments);
  options.long_passkey_fraction = absl::GetFlag(FLAGS_long_passkey_fraction);
  options.long_recall_fraction = absl::GetFlag(FLAGS_long_recall_fraction);
  return options;
}

// The model training starts from: --init, or else a random one (--config's, named --name).
absl::StatusOr<std::unique_ptr<titans::TitansModel>> StartingModel(uint64_t seed) {
  if (!absl::GetFlag(FLAGS_init).empty())
    return titans::TitansModel::Load(absl::GetFlag(FLAGS_init));
  titans::ModelConfig config;
  if (!absl::GetFlag(FLAGS_config).empty()) {
    auto text = titans::ReadFileToString(absl::GetFlag(FLAGS_config));
    if (!text.ok()) return text.status();
    auto parsed = titans::ParseModelConfig(*text);
    if (!parsed.ok()) return parsed.status();
    config = *parsed;
  }
  config.name = absl::GetFlag(FLAGS_name);
  return titans::TitansModel::CreateRandom(config, seed);
}

// The trained model's provenance: this command line, and how an --init model came to be.
std::string Provenance(int argc, char** argv, const titans::TitansModel& model) {
  std::string command = "titans-train";
  for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];
  std::string provenance = "Trained by: " + command;
  // Fine-tuning: keep how the starting model came to be, so the recipe stays complete.
  if (!absl::GetFlag(FLAGS_init).empty() && !model.config().description.empty()) {
    provenance += ". Started from a model described as: " + model.config().description;
  }
  return provenance;
}

// Prints the progress line of one step.
void PrintProgress(const titans::TrainProgress& p) {
  if (std::isnan(p.loss)) {
    std::printf("step %6lld  skipped (non-finite logits or gradients)\n",
                static_cast<long long>(p.step));
    return;
  }
  std::printf("step %6lld  loss %.4f  (%.3f bits/byte)  lr %.2e  %7.0f tok/s",
              static_cast<long long>(p.step), p.loss, p.loss / std::log(2.0), p.lr,
              p.tokens_per_second);
  if (p.answer_loss >= 0) std::printf("  answers %.3f", p.answer_loss);
  if (p.eval_bits_per_byte >= 0) std::printf("  | held-out %.4f bits/byte", p.eval_bits_per_byte);
  std::printf("\n");
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  titans::ShowOwnFlagsInHelp("titans-train");
  absl::SetProgramUsageMessage("Trains a Titans model on text and synthetic passkey tasks.");
  absl::ParseCommandLine(argc, argv);
  auto fail = [](const std::string& message) {
    std::fprintf(stderr, "titans-train: %s\n", message.c_str());
    return 1;
  };
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) return fail("--out is required");
  const titans::TrainOptions options = OptionsFromFlags();
  if (absl::Status valid = titans::ValidateTrainOptions(options); !valid.ok()) {
    return fail("bad options: " + std::string(valid.message()));
  }

  auto corpus = titans::TextCorpus::Load(absl::GetFlag(FLAGS_data),
                                         absl::GetFlag(FLAGS_test_fraction), options.seq_len);
  if (!corpus.ok()) return fail(corpus.status().ToString());

  absl::StatusOr<std::unique_ptr<titans::TitansModel>> model = StartingModel(options.seed);
  if (!model.ok()) return fail(model.status().ToString());
  (*model)->SetProvenance("trained", Provenance(argc, argv, **model));

  titans::Trainer trainer(model->get(), &*corpus, options, out);
  if (absl::GetFlag(FLAGS_resume)) {
    absl::Status st = trainer.Resume();
    if (!st.ok()) return fail(st.ToString());
    std::fprintf(stderr, "titans-train: resumed at step %lld\n",
                 static_cast<long long>(trainer.step()));
  }
  std::fprintf(stderr,
               "titans-train: %zu training / %zu held-out bytes, %lld steps of %lld x %lld\n",
               corpus->train().size(), corpus->test().size(), static_cast<long long>(options.steps),
               static_cast<long long>(options.batch), static_cast<long long>(options.seq_len));
  absl::Status st = trainer.Run(PrintProgress);
  if (!st.ok()) return fail(st.ToString());
  std::fprintf(stderr, "titans-train: final model in %s/model\n", out.c_str());
  return 0;
}
