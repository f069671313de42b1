// The load titans-bench generates: N concurrent client sessions, each a thread running one kind
// of traffic until a deadline, closed loop (the next request when the previous one completes) or
// at a fixed rate (requests scheduled on a clock; latency counts from the scheduled time, so a
// slow server is not hidden by delayed sending).
//
// Kinds of traffic (WorkloadOptions::mix):
//   append  long appends (context ingestion: documents, transcripts)
//   chat    interactive turns: a short append of user text, then a streamed generation
//   stream  continuous small appends (live feeds: a transcript arriving in pieces)
//   mixed   sessions cycle through the three
#ifndef TITANS_TOOLS_BENCH_WORKLOAD_H_
#define TITANS_TOOLS_BENCH_WORKLOAD_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tools/bench/load_target.h"

namespace titans::bench {

struct WorkloadOptions {
  int sessions = 8;
  std::string mix = "mixed";
  double seconds = 10;
  double rate = 0;           // requests per second over all sessions; 0 = closed loop
  int append_bytes = 2048;   // "append" requests
  int turn_bytes = 256;      // "chat": the user's text per turn
  int generate_tokens = 32;  // "chat": tokens generated per turn
  int stream_bytes = 64;     // "stream" requests
  std::string session_prefix = "bench";
  uint64_t seed = 1;
};

// Percentiles of a set of latencies (seconds).
struct LatencySummary {
  int64_t count = 0;
  double mean = 0, p50 = 0, p95 = 0, p99 = 0, max = 0;
};
LatencySummary Summarize(std::vector<double> values);

struct WorkloadReport {
  double seconds = 0;           // wall time of the measured phase
  int64_t requests = 0;         // completed requests (append or generate)
  int64_t errors = 0;           // failed requests
  int64_t appended_tokens = 0;  // consumed by appends and prompts
  int64_t generated_tokens = 0;
  // Latencies in seconds: "append", "generate" (whole request), "ttft" (request to first token),
  // "itl" (between tokens of one generation).
  std::map<std::string, std::vector<double>> latencies;
  std::vector<std::string> error_samples;  // the first few error messages

  double tokens_per_second() const {
    return seconds > 0 ? static_cast<double>(appended_tokens + generated_tokens) / seconds : 0;
  }
};

// Creates the sessions (not timed), runs the traffic for options.seconds, closes the sessions.
WorkloadReport RunWorkload(LoadTarget* target, const WorkloadOptions& options);

// Deterministic English-like text of `bytes` bytes (words from a fixed list).
std::string SyntheticText(int64_t bytes, uint64_t seed);

}  // namespace titans::bench

#endif  // TITANS_TOOLS_BENCH_WORKLOAD_H_
