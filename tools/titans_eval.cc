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
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "model/evaluation.h"
#include "model/file_util.h"
#include "model/trainer.h"
#include "model/program_flags.h"

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

}  // namespace

int main(int argc, char** argv) {
  titans::ShowOwnFlagsInHelp();
  absl::SetProgramUsageMessage("Measures bits per byte and passkey retrieval of Titans models.");
  absl::ParseCommandLine(argc, argv);
  auto fail = [](const std::string& m) {
    std::fprintf(stderr, "titans-eval: %s\n", m.c_str());
    return 1;
  };
  auto corpus =
      titans::TextCorpus::Load(absl::GetFlag(FLAGS_data), absl::GetFlag(FLAGS_test_fraction), 1024);
  if (!corpus.ok()) return fail(corpus.status().ToString());
  std::string held_out = corpus->test();
  if (absl::GetFlag(FLAGS_bpb_bytes) > 0 &&
      static_cast<int64_t>(held_out.size()) > absl::GetFlag(FLAGS_bpb_bytes)) {
    held_out.resize(static_cast<size_t>(absl::GetFlag(FLAGS_bpb_bytes)));
  }
  std::vector<std::pair<std::string, std::unique_ptr<titans::TitansModel>>> models;
  for (const std::string& dir : {absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_baseline)}) {
    if (dir.empty()) continue;
    auto m = titans::TitansModel::Load(dir);
    if (!m.ok()) return fail(dir + ": " + m.status().ToString());
    models.emplace_back(dir, std::move(*m));
  }
  std::vector<int64_t> range_ends;
  for (const std::string& e : absl::GetFlag(FLAGS_bpb_ranges)) {
    int64_t end = 0;
    if (!absl::SimpleAtoi(e, &end) || end < 1 || (!range_ends.empty() && end <= range_ends.back()))
      return fail("--bpb_ranges: increasing positive byte offsets, got " + e);
    range_ends.push_back(end);
  }
  std::string tsv = "what\tsubject\tlength\tvalue\n";
  std::printf("## Bits per byte on %zu held-out bytes (lower is better)\n\n", held_out.size());
  std::printf("| model | bits/byte |\n|---|---|\n");
  std::vector<std::vector<double>> nats;  // per model, the loss of every prediction
  for (auto& [dir, model] : models) {
    auto per_token = titans::StreamNatsPerToken(*model, held_out);
    if (!per_token.ok()) return fail(per_token.status().ToString());
    const double bpb =
        titans::BitsPerByteOver(*per_token, 0, static_cast<int64_t>(per_token->size()));
    std::printf("| %s (%s) | %.4f |\n", model->config().name.c_str(), dir.c_str(), bpb);
    absl::StrAppend(&tsv, "bpb\t", dir, "\t", held_out.size(), "\t", bpb, "\n");
    nats.push_back(std::move(*per_token));
  }
  for (const char* tool : {"gzip -9", "xz -9e"}) {
    const double bpb = CompressedBitsPerByte(held_out, tool);
    std::printf("| `%s` | %.4f |\n", tool, bpb);
    absl::StrAppend(&tsv, "bpb\t", tool, "\t", held_out.size(), "\t", bpb, "\n");
  }
  if (!range_ends.empty()) {
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
    for (auto& entry : models) std::printf(" %s |", entry.first.c_str());
    std::printf("\n|---|");
    for (size_t i = 0; i < models.size(); ++i) std::printf("---|");
    std::printf("\n");
    for (auto [from, to] : ranges) {
      std::printf("| %lld-%lld |", static_cast<long long>(from),
                  static_cast<long long>(std::min<int64_t>(to, held_out.size())));
      for (size_t m = 0; m < models.size(); ++m) {
        // Prediction i is of byte i+1.
        const double bpb = titans::BitsPerByteOver(nats[m], from - 1, to - 1);
        std::printf(" %.4f |", bpb);
        absl::StrAppend(&tsv, "bpb-at\t", models[m].first, "\t", to, "\t", bpb, "\n");
      }
      std::printf("\n");
    }
  }
  std::vector<int64_t> lengths;
  for (const std::string& l : absl::GetFlag(FLAGS_lengths)) {
    int64_t length = 0;
    if (!absl::SimpleAtoi(l, &length) || length < 128) return fail("bad --lengths entry " + l);
    lengths.push_back(length);
  }
  std::string natural = corpus->test();
  std::string natural_name = "held-out text";
  if (!absl::GetFlag(FLAGS_text_haystack).empty()) {
    natural.clear();
    natural_name = "text";
    for (const std::string& path : absl::GetFlag(FLAGS_text_haystack)) {
      auto text = titans::ReadFileToString(path);
      if (!text.ok()) return fail(path + ": " + text.status().ToString());
      absl::StrAppend(&natural, *text, "\n");
      absl::StrAppend(&natural_name, natural_name == "text" ? " of " : ", ", path);
    }
  }
  const int64_t longest = lengths.empty() ? 0 : *std::max_element(lengths.begin(), lengths.end());
  for (const std::string& filler : absl::GetFlag(FLAGS_fillers)) {
    if (filler != "noise" && filler != "text")
      return fail("--fillers: noise or text, got " + filler);
    const std::string haystack = filler == "noise" ? titans::PasskeyNoise(longest + 256) : natural;
    std::printf("\n## Passkey accuracy, %s haystack (%d tasks per length, 5-digit key)\n\n",
                filler == "noise" ? "noise (S-NIAH-PK)" : natural_name.c_str(),
                absl::GetFlag(FLAGS_trials));
    std::printf(
        "Whole key right (chance 1e-5), and in parentheses digits right (chance ~0.1).\n\n");
    std::printf("| haystack bytes |");
    for (auto& [dir, model] : models) std::printf(" %s |", dir.c_str());
    std::printf("\n|---|");
    for (size_t i = 0; i < models.size(); ++i) std::printf("---|");
    std::printf("\n");
    for (const int64_t length : lengths) {
      std::printf("| %lld |", static_cast<long long>(length));
      for (auto& [dir, model] : models) {
        auto r = titans::PasskeyAccuracy(*model, haystack, length, absl::GetFlag(FLAGS_trials),
                                         absl::GetFlag(FLAGS_seed));
        if (!r.ok()) return fail(r.status().ToString());
        std::printf(" %d/%d (%.2f) |", r->correct, r->trials, r->digit_accuracy());
        std::fflush(stdout);
        absl::StrAppend(&tsv, "passkey-", filler, "\t", dir, "\t", length, "\t", r->accuracy(),
                        "\n");
        absl::StrAppend(&tsv, "digits-", filler, "\t", dir, "\t", length, "\t", r->digit_accuracy(),
                        "\n");
      }
      std::printf("\n");
    }
  }
  const int pairs = absl::GetFlag(FLAGS_recall_pairs);
  for (const std::string& filler :
       pairs > 0 ? absl::GetFlag(FLAGS_fillers) : std::vector<std::string>{}) {
    const std::string haystack = filler == "noise" ? titans::PasskeyNoise(longest + 256) : natural;
    std::printf("\n## Multi-fact recall, %s filler (%d facts, %d tasks per gap)\n\n",
                filler == "noise" ? "noise" : natural_name.c_str(), pairs,
                absl::GetFlag(FLAGS_recall_trials));
    std::printf("Facts whose two-digit value is recalled exactly (chance 0.01).\n\n");
    std::printf("| gap bytes |");
    for (auto& [dir, model] : models) std::printf(" %s |", dir.c_str());
    std::printf("\n|---|");
    for (size_t i = 0; i < models.size(); ++i) std::printf("---|");
    std::printf("\n");
    std::string errors;  // where the errors went, printed after the table
    for (const std::string& g : absl::GetFlag(FLAGS_recall_gaps)) {
      int64_t gap = 0;
      if (!absl::SimpleAtoi(g, &gap) || gap < 0) return fail("bad --recall_gaps entry " + g);
      std::printf("| %lld |", static_cast<long long>(gap));
      for (auto& [dir, model] : models) {
        auto r =
            titans::RecallAccuracy(*model, haystack, pairs, gap, absl::GetFlag(FLAGS_recall_trials),
                                   absl::GetFlag(FLAGS_seed));
        if (!r.ok()) return fail(r.status().ToString());
        std::printf(" %d/%d (%.2f) |", r->facts_correct, r->facts, r->accuracy());
        std::fflush(stdout);
        absl::StrAppend(&tsv, "recall-", filler, "\t", dir, "\t", gap, "\t", r->accuracy(), "\n");
        const int wrong = r->facts - r->first_digits_correct;
        absl::StrAppend(&errors, "- ", dir, ", gap ", gap, ": first digit right ",
                        r->first_digits_correct, "/", r->facts, "; of the ", wrong,
                        " wrong, another fact's first digit ", r->first_digits_of_other_facts, " (",
                        absl::SixDigits(r->first_digits_of_other_facts_by_chance),
                        " if wrong digits were uniform)\n");
        const auto neighbour = [](const char* what, const titans::RecallResult::Neighbour& n) {
          return absl::StrCat(what, " ", n.hits, " (", absl::SixDigits(n.by_chance), ")");
        };
        absl::StrAppend(&errors, "  of them the fact stated ",
                        neighbour("before", r->stated_before), ", ",
                        neighbour("after", r->stated_after), "; the previous question's ",
                        neighbour("answer", r->last_answer), ", ",
                        neighbour("the fact stated after it", r->after_last_answer), "\n");
        absl::StrAppend(&errors, "  first digits right by question:");
        for (size_t q = 0; q < r->asked_by_question.size(); ++q) {
          absl::StrAppend(&errors, " ", r->first_digits_correct_by_question[q], "/",
                          r->asked_by_question[q]);
        }
        absl::StrAppend(&errors, "\n");
      }
      std::printf("\n");
    }
    std::printf("\nFirst digits of the values:\n%s", errors.c_str());
  }
  if (!absl::GetFlag(FLAGS_tsv).empty()) {
    absl::Status st = titans::WriteFileAtomic(absl::GetFlag(FLAGS_tsv), tsv);
    if (!st.ok()) return fail(st.ToString());
  }
  return 0;
}
