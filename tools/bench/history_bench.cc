// titans-bench-history: what one more token costs a session with a long history, for the default
// Titans model (constant: its memory is a fixed-size state) against a same-size full-attention
// transformer run by the same code (variant swa with a window longer than any history: its cache
// and per-token cost grow with the history).
//
//   titans-bench-history [--model_dir models/default] [--histories 1024,16384,262144,2097152]
//                        [--append_tokens 32] [--decode_tokens 16] [--repeats 3] [--tsv out.tsv]
//
// For each history H, a session state at position H is prepared, then timed (best of --repeats,
// each from a copy of that state): appending --append_tokens tokens in one call, and decoding
// --decode_tokens tokens one at a time. Titans states are made by really streaming H tokens
// (which also measures ingest throughput); the full-attention state gets a synthesised cache of H
// random keys and values (its cost depends on the cache's size, not its contents; streaming 2M
// tokens through quadratic attention would take days here). Batch-invariant kernels as the
// server's default unless --batch_invariant=false.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "model/determinism.h"
#include "model/program_flags.h"
#include "model/session_state.h"
#include "model/titans_model.h"

ABSL_FLAG(std::string, model_dir, TITANS_DEFAULT_MODEL_DIR, "the Titans model");
ABSL_FLAG(std::vector<std::string>, histories,
          (std::vector<std::string>{"1024", "16384", "262144", "2097152"}),
          "session histories (tokens) to measure at");
ABSL_FLAG(int64_t, append_tokens, 32, "tokens per timed append");
ABSL_FLAG(int64_t, decode_tokens, 16, "tokens decoded one at a time per timing");
ABSL_FLAG(int, repeats, 3, "timings per case (the best is reported)");
ABSL_FLAG(int64_t, stream_piece, 4096, "tokens per call when streaming a Titans history");
ABSL_FLAG(bool, full_attention, true, "also measure the same-size full-attention transformer");
ABSL_FLAG(int64_t, full_attention_max_history, 2097152,
          "largest history measured for full attention (its cache is 4 KiB x layers per token)");
ABSL_FLAG(bool, batch_invariant, true, "as titans-server --batch_invariant");
ABSL_FLAG(std::string, tsv, "", "write the rows as TSV to this file");

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

at::Tensor Tokens(int64_t n, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return at::randint(32, 127, {1, n}, g, at::TensorOptions().dtype(at::kLong));
}

struct Timing {
  double append_us_per_token = 0, decode_ms_per_token = 0;
};

// Best-of-repeats append and decode cost from copies of `state`.
Timing TimeFrom(const titans::TitansModel& model, const titans::SessionState& state) {
  Timing best{1e30, 1e30};
  const int64_t A = absl::GetFlag(FLAGS_append_tokens), D = absl::GetFlag(FLAGS_decode_tokens);
  for (int r = 0; r < absl::GetFlag(FLAGS_repeats); ++r) {
    titans::SessionState s = state;  // tensors are replaced, never written in place
    at::Tensor append = Tokens(A, 100 + r);
    Clock::time_point t = Clock::now();
    if (!model.Forward(&s, append).ok()) std::abort();
    best.append_us_per_token = std::min(best.append_us_per_token, Since(t) / A * 1e6);
    t = Clock::now();
    for (int64_t i = 0; i < D; ++i) {
      const int64_t next = s.last_logits.argmax(-1).item<int64_t>();
      if (!model.Forward(&s, at::full({1, 1}, next, at::kLong)).ok()) std::abort();
    }
    best.decode_ms_per_token = std::min(best.decode_ms_per_token, Since(t) / D * 1e3);
  }
  return best;
}

// Parses --histories into `histories`; false (the bad entry printed) if one is not positive.
bool ParseHistories(std::vector<int64_t>* histories) {
  for (const std::string& h : absl::GetFlag(FLAGS_histories)) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(h, &v) || v < 1) {
      std::fprintf(stderr, "bad --histories entry %s\n", h.c_str());
      return false;
    }
    histories->push_back(v);
  }
  return true;
}

// `tc` made a full-attention transformer: same widths, depth, heads and feed-forward; no memory.
titans::ModelConfig FullAttentionConfig(const titans::ModelConfig& tc) {
  titans::ModelConfig fc = tc;
  fc.variant = titans::Variant::kSWA;
  fc.attention.window = 1 << 30;
  fc.name = "full-attention";
  return fc;
}

// Opens --tsv and writes its header; null if --tsv is empty or cannot be opened.
std::FILE* OpenTsv() {
  std::FILE* tsv = nullptr;
  if (!absl::GetFlag(FLAGS_tsv).empty()) {
    tsv = std::fopen(absl::GetFlag(FLAGS_tsv).c_str(), "w");
    if (tsv) {
      std::fprintf(tsv, "model\thistory\tappend_us_per_token\tdecode_ms_per_token\tstate_bytes\n");
    }
  }
  return tsv;
}

// Prints one row of the table, and writes it to `tsv` unless that is null.
void Row(std::FILE* tsv, const char* name, int64_t h, const Timing& t, int64_t bytes,
         const char* note) {
  std::printf("%-16s %10lld %18.1f %18.2f %14.2f %s\n", name, static_cast<long long>(h),
              t.append_us_per_token, t.decode_ms_per_token, bytes / 1048576.0, note);
  std::fflush(stdout);
  if (tsv) {
    std::fprintf(tsv, "%s\t%lld\t%.3f\t%.4f\t%lld\n", name, static_cast<long long>(h),
                 t.append_us_per_token, t.decode_ms_per_token, static_cast<long long>(bytes));
    std::fflush(tsv);
  }
}

// Prints the Titans model's rows; false if a step failed.
bool MeasureTitans(const titans::TitansModel& m, const std::vector<int64_t>& histories,
                   std::FILE* tsv) {
  // Titans: stream the history for real, measuring at each requested length on the way.
  titans::SessionState s = m.NewState();
  const int64_t piece = absl::GetFlag(FLAGS_stream_piece);
  double streaming_seconds = 0;  // time spent streaming, not timing
  for (int64_t h : histories) {
    const Clock::time_point start = Clock::now();
    while (s.position < h) {
      const int64_t n = std::min(piece, h - s.position);
      if (!m.Forward(&s, Tokens(n, static_cast<uint64_t>(s.position))).ok()) return false;
    }
    streaming_seconds += Since(start);
    char note[96];
    std::snprintf(note, sizeof(note), "streamed: %.0f tokens/s so far",
                  static_cast<double>(s.position) / streaming_seconds);
    Row(tsv, m.config().name.c_str(), h, TimeFrom(m, s), titans::StateBytes(s), note);
  }
  return true;
}

// Prints the rows of the full-attention model `m`, whose config is `fc`; false if a step failed.
bool MeasureFullAttention(const titans::TitansModel& m, const titans::ModelConfig& fc,
                          const std::vector<int64_t>& histories, std::FILE* tsv) {
  // Full attention: a cache of h synthesised keys and values per layer.
  for (int64_t h : histories) {
    if (h > absl::GetFlag(FLAGS_full_attention_max_history)) {
      std::printf("%-16s %10lld %18s %18s %14s skipped (over --full_attention_max_history)\n",
                  fc.name.c_str(), static_cast<long long>(h), "-", "-", "-");
      continue;
    }
    titans::SessionState s = m.NewState();
    if (!m.Forward(&s, Tokens(8, 1)).ok()) return false;  // real last logits
    for (titans::LayerState& L : s.layers) {
      L.attn_k = at::randn({1, fc.num_heads, h, fc.head_dim});
      L.attn_v = at::randn({1, fc.num_heads, h, fc.head_dim});
    }
    s.position = h;
    Row(tsv, fc.name.c_str(), h, TimeFrom(m, s), titans::StateBytes(s), "synthesised cache");
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  titans::ShowOwnFlagsInHelp("titans-bench-history");
  absl::SetProgramUsageMessage("Per-token cost against session history: Titans vs full attention.");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_batch_invariant)) titans::UseBatchInvariantCpuKernels();
  at::NoGradGuard no_grad;
  std::vector<int64_t> histories;
  if (!ParseHistories(&histories)) return 1;
  auto titans_model = titans::TitansModel::Load(absl::GetFlag(FLAGS_model_dir));
  if (!titans_model.ok()) {
    std::fprintf(stderr, "%s\n", titans_model.status().ToString().c_str());
    return 1;
  }
  const titans::ModelConfig fc = FullAttentionConfig((*titans_model)->config());
  auto full_model = titans::TitansModel::CreateRandom(fc, 1);
  if (!full_model.ok()) {
    std::fprintf(stderr, "%s\n", full_model.status().ToString().c_str());
    return 1;
  }
  std::FILE* tsv = OpenTsv();
  std::printf("%-16s %10s %18s %18s %14s %s\n", "model", "history", "append us/token",
              "decode ms/token", "state MiB", "notes");
  if (!MeasureTitans(**titans_model, histories, tsv)) return 1;
  if (absl::GetFlag(FLAGS_full_attention) &&
      !MeasureFullAttention(**full_model, fc, histories, tsv)) {
    return 1;
  }
  if (tsv) std::fclose(tsv);
  return 0;
}
