// titans-eval: measures trained models (model/evaluation.h) and prints markdown tables.
//
//   titans-eval --model models/default [--baseline runs/baseline/model] --data data/kjv.txt
//               [--lengths 1024,4096,16384,65536,262144] [--trials 10] [--tsv results.tsv]
//
// Held-out text: the last --test_fraction of each data file (the part titans-train never trains
// on). Reports bits per byte on it (read as one stream), gzip -9 and xz -9 on the same bytes for
// scale, and passkey accuracy against haystack length for each --fillers haystack: "noise"
// (RULER's repeated sentences, the paper's S-NIAH-PK) and "text" (held-out text, harder).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "model/evaluation.h"
#include "model/file_util.h"
#include "model/program_flags.h"
#include "model/trainer.h"

ABSL_FLAG(std::string, model, TITANS_DEFAULT_MODEL_DIR, "model directory");
ABSL_FLAG(std::string, baseline, "", "a second model to compare (e.g. attention-only)");
ABSL_FLAG(std::vector<std::string>, data, {}, "the training data files (held-out part is used)");
ABSL_FLAG(double, test_fraction, 0.05, "held-out share at the end of each file (as titans-train)");
ABSL_FLAG(int64_t, bpb_bytes, 65536, "held-out bytes scored for bits per byte (0: all)");
ABSL_FLAG(std::vector<std::string>, bpb_ranges,
          std::vector<std::string>({"1024", "4096", "16384", "65536"}),
          "ends of the stream position ranges whose bits per byte are reported separately (how "
          "prediction changes as the session grows)");
ABSL_FLAG(std::vector<std::string>, lengths,
          (std::vector<std::string>{"1024", "4096", "16384", "65536", "262144"}),
          "passkey haystack lengths in bytes");
ABSL_FLAG(std::vector<std::string>, fillers, (std::vector<std::string>{"noise", "text"}),
          "passkey haystacks: noise (the paper's S-NIAH-PK) and/or text (held-out text)");
ABSL_FLAG(std::vector<std::string>, text_haystack, {},
          "files whose text is the 'text' haystack (default: the held-out part of --data); use "
          "text the model was not trained on, e.g. /usr/share/common-licenses/*");
ABSL_FLAG(int, trials, 10, "passkey tasks per length");
ABSL_FLAG(int, recall_pairs, 4, "multi-fact recall: facts per task (0: skip the recall section)");
ABSL_FLAG(std::vector<std::string>, recall_gaps, (std::vector<std::string>{"1024", "4096"}),
          "multi-fact recall: filler bytes between the facts and the questions");
ABSL_FLAG(int, recall_trials, 20, "multi-fact recall: tasks per gap and filler");
ABSL_FLAG(uint64_t, seed, 7, "seed for the passkey tasks");
ABSL_FLAG(std::string, tsv, "", "also write the results as TSV to this file");

namespace {

// Bits per byte of `text` compressed by `command` (reading stdin, writing stdout).
double CompressedBitsPerByte(const std::string& text, const std::string& command) {
  const std::string in = "/tmp/titans_eval_" + std::to_string(::getpid());
  if (!titans::WriteFileAtomic(in, text).ok()) return -1;
  FILE* pipe = ::popen((command + " < " + in + " | wc -c").c_str(), "r");
  long long bytes = -1;
  if (pipe) {
    if (std::fscanf(pipe, "%lld", &bytes) != 1) bytes = -1;
    ::pclose(pipe);
  }
  std::remove(in.c_str());
  return bytes < 0 ? -1 : 8.0 * static_cast<double>(bytes) / static_cast<double>(text.size());
}

// A failure whose message main prints as it is (no status code in front).
absl::Status Failure(const std::string& message) { return absl::UnknownError(message); }

// What the report is measured on, and the TSV rows it adds up to.
struct Evaluation {
  // (directory, model): --model, then --baseline if given.
  std::vector<std::pair<std::string, std::unique_ptr<titans::TitansModel>>> models;
  std::string held_out;                   // the stream scored for bits per byte
  std::vector<std::vector<double>> nats;  // per model, the loss of every prediction
  std::vector<int64_t> lengths;           // passkey haystack lengths
  int64_t longest = 0;                    // the largest of `lengths` (0: none)
  std::string natural;                    // the 'text' haystack
  std::string natural_name;               // how the tables name `natural`
  std::string tsv = "what\tsubject\tlength\tvalue\n";
};

// Loads --model and, if given, --baseline.
absl::Status LoadModels(Evaluation* eval) {
  for (const std::string& dir : {absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_baseline)}) {
    if (dir.empty()) continue;
    auto m = titans::TitansModel::Load(dir);
    if (!m.ok()) return Failure(dir + ": " + m.status().ToString());
    eval->models.emplace_back(dir, std::move(*m));
  }
  return absl::OkStatus();
}

// Parses --bpb_ranges.
absl::StatusOr<std::vector<int64_t>> ParseRangeEnds() {
  std::vector<int64_t> range_ends;
  for (const std::string& e : absl::GetFlag(FLAGS_bpb_ranges)) {
    int64_t end = 0;
    if (!absl::SimpleAtoi(e, &end) || end < 1 || (!range_ends.empty() && end <= range_ends.back()))
      return Failure("--bpb_ranges: increasing positive byte offsets, got " + e);
    range_ends.push_back(end);
  }
  return range_ends;
}

// Parses --lengths.
absl::StatusOr<std::vector<int64_t>> ParseLengths() {
  std::vector<int64_t> lengths;
  for (const std::string& l : absl::GetFlag(FLAGS_lengths)) {
    int64_t length = 0;
    if (!absl::SimpleAtoi(l, &length) || length < 128) return Failure("bad --lengths entry " + l);
    lengths.push_back(length);
  }
  return lengths;
}

// Sets the 'text' haystack: the files of --text_haystack, or else `held_out_text`.
absl::Status LoadTextHaystack(const std::string& held_out_text, Evaluation* eval) {
  eval->natural = held_out_text;
  eval->natural_name = "held-out text";
  if (absl::GetFlag(FLAGS_text_haystack).empty()) return absl::OkStatus();
  eval->natural.clear();
  eval->natural_name = "text";
  for (const std::string& path : absl::GetFlag(FLAGS_text_haystack)) {
    auto text = titans::ReadFileToString(path);
    if (!text.ok()) return Failure(path + ": " + text.status().ToString());
    absl::StrAppend(&eval->natural, *text, "\n");
    absl::StrAppend(&eval->natural_name, eval->natural_name == "text" ? " of " : ", ", path);
  }
  return absl::OkStatus();
}

// Prints the rest of a table's header after its first column's name: a column per model.
void PrintModelColumns(const Evaluation& eval) {
  for (auto& entry : eval.models) std::printf(" %s |", entry.first.c_str());
  std::printf("\n|---|");
  for (size_t i = 0; i < eval.models.size(); ++i) std::printf("---|");
  std::printf("\n");
}

// Prints bits per byte of each model, gzip and xz on the held-out stream; fills `eval->nats`.
absl::Status ReportBitsPerByte(Evaluation* eval) {
  const std::string& held_out = eval->held_out;
  std::printf("## Bits per byte on %zu held-out bytes (lower is better)\n\n", held_out.size());
  std::printf("| model | bits/byte |\n|---|---|\n");
  for (auto& [dir, model] : eval->models) {
    auto per_token = titans::StreamNatsPerToken(*model, held_out);
    if (!per_token.ok()) return Failure(per_token.status().ToString());
    const double bpb =
        titans::BitsPerByteOver(*per_token, 0, static_cast<int64_t>(per_token->size()));
    std::printf("| %s (%s) | %.4f |\n", model->config().name.c_str(), dir.c_str(), bpb);
    absl::StrAppend(&eval->tsv, "bpb\t", dir, "\t", held_out.size(), "\t", bpb, "\n");
    eval->nats.push_back(std::move(*per_token));
  }
  for (const char* tool : {"gzip -9", "xz -9e"}) {
    const double bpb = CompressedBitsPerByte(held_out, tool);
    std::printf("| `%s` | %.4f |\n", tool, bpb);
    absl::StrAppend(&eval->tsv, "bpb\t", tool, "\t", held_out.size(), "\t", bpb, "\n");
  }
  return absl::OkStatus();
}

// Prints each model's bits per byte over the held-out ranges `range_ends` marks, if any.
void ReportBitsPerByteByPosition(const std::vector<int64_t>& range_ends, Evaluation* eval) {
  if (range_ends.empty()) return;
  const std::string& held_out = eval->held_out;
  // Ranges of the one stream above, plus whatever follows the last given end.
  std::vector<std::pair<int64_t, int64_t>> ranges;
  int64_t begin = 0;
  for (int64_t end : range_ends) {
    if (begin < static_cast<int64_t>(held_out.size())) ranges.push_back({begin, end});
    begin = end;
  }
  if (begin < static_cast<int64_t>(held_out.size()) - 1) {
    ranges.push_back({begin, static_cast<int64_t>(held_out.size())});
  }
  std::printf("\n## Bits per byte by position in the same stream\n\n| bytes |");
  PrintModelColumns(*eval);
  for (auto [from, to] : ranges) {
    std::printf("| %lld-%lld |", static_cast<long long>(from),
                static_cast<long long>(std::min<int64_t>(to, held_out.size())));
    for (size_t m = 0; m < eval->models.size(); ++m) {
      // Prediction i is of byte i+1.
      const double bpb = titans::BitsPerByteOver(eval->nats[m], from - 1, to - 1);
      std::printf(" %.4f |", bpb);
      absl::StrAppend(&eval->tsv, "bpb-at\t", eval->models[m].first, "\t", to, "\t", bpb, "\n");
    }
    std::printf("\n");
  }
}

// Prints a passkey accuracy table per --fillers haystack.
absl::Status ReportPasskeys(Evaluation* eval) {
  for (const std::string& filler : absl::GetFlag(FLAGS_fillers)) {
    if (filler != "noise" && filler != "text")
      return Failure("--fillers: noise or text, got " + filler);
    const std::string haystack =
        filler == "noise" ? titans::PasskeyNoise(eval->longest + 256) : eval->natural;
    std::printf("\n## Passkey accuracy, %s haystack (%d tasks per length, 5-digit key)\n\n",
                filler == "noise" ? "noise (S-NIAH-PK)" : eval->natural_name.c_str(),
                absl::GetFlag(FLAGS_trials));
    std::printf(
        "Whole key right (chance 1e-5), and in parentheses digits right (chance ~0.1).\n\n");
    std::printf("| haystack bytes |");
    PrintModelColumns(*eval);
    for (const int64_t length : eval->lengths) {
      std::printf("| %lld |", static_cast<long long>(length));
      for (auto& [dir, model] : eval->models) {
        auto r = titans::PasskeyAccuracy(*model, haystack, length, absl::GetFlag(FLAGS_trials),
                                         absl::GetFlag(FLAGS_seed));
        if (!r.ok()) return Failure(r.status().ToString());
        std::printf(" %d/%d (%.2f) |", r->correct, r->trials, r->digit_accuracy());
        std::fflush(stdout);
        absl::StrAppend(&eval->tsv, "passkey-", filler, "\t", dir, "\t", length, "\t",
                        r->accuracy(), "\n");
        absl::StrAppend(&eval->tsv, "digits-", filler, "\t", dir, "\t", length, "\t",
                        r->digit_accuracy(), "\n");
      }
      std::printf("\n");
    }
  }
  return absl::OkStatus();
}

// Appends to `errors` where the wrong recalled values of `dir` at `gap` came from.
void DescribeRecallErrors(const std::string& dir, int64_t gap, const titans::RecallResult& r,
                          std::string* errors) {
  const int wrong = r.facts - r.first_digits_correct;
  absl::StrAppend(errors, "- ", dir, ", gap ", gap, ": first digit right ", r.first_digits_correct,
                  "/", r.facts, "; of the ", wrong, " wrong, another fact's first digit ",
                  r.first_digits_of_other_facts, " (",
                  absl::SixDigits(r.first_digits_of_other_facts_by_chance),
                  " if wrong digits were uniform)\n");
  const auto neighbour = [](const char* what, const titans::RecallResult::Neighbour& n) {
    return absl::StrCat(what, " ", n.hits, " (", absl::SixDigits(n.by_chance), ")");
  };
  absl::StrAppend(errors, "  of them the fact stated ", neighbour("before", r.stated_before), ", ",
                  neighbour("after", r.stated_after), "; the previous question's ",
                  neighbour("answer", r.last_answer), ", ",
                  neighbour("the fact stated after it", r.after_last_answer), "\n");
  absl::StrAppend(errors, "  first digits right by question:");
  for (size_t q = 0; q < r.asked_by_question.size(); ++q) {
    absl::StrAppend(errors, " ", r.first_digits_correct_by_question[q], "/",
                    r.asked_by_question[q]);
  }
  absl::StrAppend(errors, "\n");
}

// Prints a multi-fact recall table per --fillers haystack, then where its errors went.
absl::Status ReportRecall(Evaluation* eval) {
  const int pairs = absl::GetFlag(FLAGS_recall_pairs);
  for (const std::string& filler :
       pairs > 0 ? absl::GetFlag(FLAGS_fillers) : std::vector<std::string>{}) {
    const std::string haystack =
        filler == "noise" ? titans::PasskeyNoise(eval->longest + 256) : eval->natural;
    std::printf("\n## Multi-fact recall, %s filler (%d facts, %d tasks per gap)\n\n",
                filler == "noise" ? "noise" : eval->natural_name.c_str(), pairs,
                absl::GetFlag(FLAGS_recall_trials));
    std::printf("Facts whose two-digit value is recalled exactly (chance 0.01).\n\n");
    std::printf("| gap bytes |");
    PrintModelColumns(*eval);
    std::string errors;  // where the errors went, printed after the table
    for (const std::string& g : absl::GetFlag(FLAGS_recall_gaps)) {
      int64_t gap = 0;
      if (!absl::SimpleAtoi(g, &gap) || gap < 0) return Failure("bad --recall_gaps entry " + g);
      std::printf("| %lld |", static_cast<long long>(gap));
      for (auto& [dir, model] : eval->models) {
        auto r =
            titans::RecallAccuracy(*model, haystack, pairs, gap, absl::GetFlag(FLAGS_recall_trials),
                                   absl::GetFlag(FLAGS_seed));
        if (!r.ok()) return Failure(r.status().ToString());
        std::printf(" %d/%d (%.2f) |", r->facts_correct, r->facts, r->accuracy());
        std::fflush(stdout);
        absl::StrAppend(&eval->tsv, "recall-", filler, "\t", dir, "\t", gap, "\t", r->accuracy(),
                        "\n");
        DescribeRecallErrors(dir, gap, *r, &errors);
      }
      std::printf("\n");
    }
    std::printf("\nFirst digits of the values:\n%s", errors.c_str());
  }
  return absl::OkStatus();
}

// Loads what the flags name and prints every report section, then writes --tsv if given.
absl::Status RunEvaluation() {
  auto corpus =
      titans::TextCorpus::Load(absl::GetFlag(FLAGS_data), absl::GetFlag(FLAGS_test_fraction), 1024);
  if (!corpus.ok()) return Failure(corpus.status().ToString());
  Evaluation eval;
  eval.held_out = corpus->test();
  if (absl::GetFlag(FLAGS_bpb_bytes) > 0 &&
      static_cast<int64_t>(eval.held_out.size()) > absl::GetFlag(FLAGS_bpb_bytes)) {
    eval.held_out.resize(static_cast<size_t>(absl::GetFlag(FLAGS_bpb_bytes)));
  }
  if (absl::Status st = LoadModels(&eval); !st.ok()) return st;
  absl::StatusOr<std::vector<int64_t>> range_ends = ParseRangeEnds();
  if (!range_ends.ok()) return range_ends.status();
  if (absl::Status st = ReportBitsPerByte(&eval); !st.ok()) return st;
  ReportBitsPerByteByPosition(*range_ends, &eval);
  absl::StatusOr<std::vector<int64_t>> lengths = ParseLengths();
  if (!lengths.ok()) return lengths.status();
  eval.lengths = std::move(*lengths);
  if (absl::Status st = LoadTextHaystack(corpus->test(), &eval); !st.ok()) return st;
  eval.longest =
      eval.lengths.empty() ? 0 : *std::max_element(eval.lengths.begin(), eval.lengths.end());
  if (absl::Status st = ReportPasskeys(&eval); !st.ok()) return st;
  if (absl::Status st = ReportRecall(&eval); !st.ok()) return st;
  if (!absl::GetFlag(FLAGS_tsv).empty()) {
    absl::Status st = titans::WriteFileAtomic(absl::GetFlag(FLAGS_tsv), eval.tsv);
    if (!st.ok()) return Failure(st.ToString());
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  titans::ShowOwnFlagsInHelp("titans-eval");
  absl::SetProgramUsageMessage("Measures bits per byte and passkey retrieval of Titans models.");
  absl::ParseCommandLine(argc, argv);
  if (absl::Status st = RunEvaluation(); !st.ok()) {
    std::fprintf(stderr, "titans-eval: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  return 0;
}
