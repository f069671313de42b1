#include "tools/bench/workload.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <mutex>
#include <random>
#include <thread>

namespace titans::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double rank = p * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(sorted.size() - 1, lo + 1);
  return sorted[lo] + (rank - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

// Everything one client thread measured; merged under a lock at the end.
struct ClientResult {
  int64_t requests = 0, errors = 0, appended = 0, generated = 0;
  std::map<std::string, std::vector<double>> latencies;
  std::vector<std::string> errors_seen;
};

std::string KindOf(const WorkloadOptions& o, int session) {
  if (o.mix != "mixed") return o.mix;
  static const char* kKinds[] = {"append", "chat", "stream"};
  return kKinds[session % 3];
}

void RunClient(LoadTarget* target, const WorkloadOptions& o, int session, Clock::time_point start,
               Clock::time_point end, ClientResult* out) {
  const std::string id = o.session_prefix + "-" + std::to_string(session);
  const std::string kind = KindOf(o, session);
  const int bytes = kind == "append" ? o.append_bytes
                    : kind == "chat" ? o.turn_bytes
                                     : o.stream_bytes;
  // Fixed rate: this client's share of the rate, phase-shifted so clients do not send in step.
  const double interval = o.rate > 0 ? o.sessions / o.rate : 0;
  Clock::time_point next =
      start + std::chrono::duration_cast<Clock::duration>(
                  std::chrono::duration<double>(interval * session / std::max(1, o.sessions)));
  auto record_error = [&](const absl::Status& st) {
    ++out->errors;
    if (out->errors_seen.size() < 3) out->errors_seen.push_back(st.ToString());
  };
  for (uint64_t n = 0;; ++n) {
    Clock::time_point sent = Clock::now();
    if (interval > 0) {
      if (next >= end) break;
      std::this_thread::sleep_until(next);
      sent = next;  // latency from the scheduled time (no coordinated omission)
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(interval));
    } else if (sent >= end) {
      break;
    }
    const std::string text = SyntheticText(bytes, o.seed * 1000003 + session * 7919 + n);
    if (kind == "chat") {
      absl::StatusOr<int64_t> appended = target->Append(id, text);
      if (!appended.ok()) {
        record_error(appended.status());
        continue;
      }
      out->appended += *appended;
      const Clock::time_point gen_start = Clock::now();
      Clock::time_point last = gen_start;
      bool first = true;
      absl::StatusOr<int64_t> generated =
          target->Generate(id, "", o.generate_tokens, [&](int64_t count, const std::string&) {
            const Clock::time_point now = Clock::now();
            if (first) {
              out->latencies["ttft"].push_back(Seconds(now - sent));
              first = false;
            } else {
              // Tokens that arrive together share the gap.
              for (int64_t i = 0; i < count; ++i) {
                out->latencies["itl"].push_back(Seconds(now - last) / static_cast<double>(count));
              }
            }
            last = now;
          });
      if (!generated.ok()) {
        record_error(generated.status());
        continue;
      }
      out->generated += *generated;
      out->latencies["generate"].push_back(Seconds(Clock::now() - gen_start));
      out->latencies["turn"].push_back(Seconds(Clock::now() - sent));
    } else {
      absl::StatusOr<int64_t> appended = target->Append(id, text);
      if (!appended.ok()) {
        record_error(appended.status());
        continue;
      }
      out->appended += *appended;
      out->latencies["append"].push_back(Seconds(Clock::now() - sent));
    }
    ++out->requests;
  }
}

}  // namespace

LatencySummary Summarize(std::vector<double> values) {
  LatencySummary s;
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  s.count = static_cast<int64_t>(values.size());
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / static_cast<double>(values.size());
  s.p50 = Percentile(values, 0.50);
  s.p95 = Percentile(values, 0.95);
  s.p99 = Percentile(values, 0.99);
  s.max = values.back();
  return s;
}

std::string SyntheticText(int64_t bytes, uint64_t seed) {
  static const char* kWords[] = {
      "the",    "memory", "of",      "a",     "session", "is",     "kept",   "on",
      "server", "and",    "every",   "call",  "adds",    "to",     "what",   "it",
      "knows",  "long",   "context", "river", "stone",   "window", "light",  "north",
      "garden", "number", "quiet",   "paper", "signal",  "train",  "second", "house"};
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, sizeof(kWords) / sizeof(kWords[0]) - 1);
  std::string out;
  out.reserve(static_cast<size_t>(bytes) + 16);
  while (static_cast<int64_t>(out.size()) < bytes) {
    out += kWords[pick(rng)];
    out += (rng() % 11 == 0) ? ". " : " ";
  }
  out.resize(static_cast<size_t>(bytes));
  return out;
}

WorkloadReport RunWorkload(LoadTarget* target, const WorkloadOptions& o) {
  WorkloadReport report;
  std::vector<ClientResult> results(static_cast<size_t>(o.sessions));
  for (int i = 0; i < o.sessions; ++i) {
    absl::Status st = target->CreateSession(o.session_prefix + "-" + std::to_string(i));
    if (!st.ok()) {
      ++report.errors;
      report.error_samples.push_back("create: " + st.ToString());
    }
  }
  const Clock::time_point start = Clock::now();
  const Clock::time_point end =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds));
  std::vector<std::thread> threads;
  for (int i = 0; i < o.sessions; ++i) {
    threads.emplace_back(RunClient, target, std::cref(o), i, start, end, &results[i]);
  }
  for (std::thread& t : threads) t.join();
  report.seconds = Seconds(Clock::now() - start);
  for (ClientResult& r : results) {
    report.requests += r.requests;
    report.errors += r.errors;
    report.appended_tokens += r.appended;
    report.generated_tokens += r.generated;
    for (auto& [name, v] : r.latencies) {
      auto& all = report.latencies[name];
      all.insert(all.end(), v.begin(), v.end());
    }
    for (std::string& e : r.errors_seen) {
      if (report.error_samples.size() < 5) report.error_samples.push_back(std::move(e));
    }
  }
  for (int i = 0; i < o.sessions; ++i) {
    absl::Status st = target->CloseSession(o.session_prefix + "-" + std::to_string(i));
    if (!st.ok()) {
      ++report.errors;
      if (report.error_samples.size() < 5)
        report.error_samples.push_back("close: " + st.ToString());
    }
  }
  return report;
}

}  // namespace titans::bench
