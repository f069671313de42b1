// titans-bench-runner: decode through the ModelRunner (model/model_runner.h) at several session
// counts, in-process, without the engine or gRPC (so it also runs where only LibTorch is).
//
//   build/tools/titans-bench-runner [--model_dir DIR] [--sessions 1,8,32,64] [--steps 32]
//                                   [--prompt_tokens 64] [--append_tokens 65536]
//
// Per session count: that many slots each take a prompt, then --steps decode steps run with
// every slot sampling (greedy) one token per step. Reported: aggregate decode tokens/s, the
// ratio to the first session count's, time per step and per session-token, the share of it in
// the memory kernel, heap allocations per step (malloc and friends, counted by this binary's
// own wrappers around glibc's allocator), whose growth with the session count is what issue 20
// asks to remove, and the bound the step is measured against in the same run: the memory
// kernel's own time plus every dense layer of the model as one GEMM over all sessions' tokens at
// the same shapes (the batch-invariant linear kernel, kernels/linear.h), per session-token.
// "ops/step" counts LibTorch operator calls per step (nested ones included), seen by a
// RecordFunction callback in two extra steps after the timed ones (the callback's own cost stays
// out of the timings): issue 20 asks that it not grow with the session count either.
//
// With --append_tokens N, first one long append: a single slot consumes N tokens of text-like
// bytes in one step (the runner splits it into sub-steps of TitansModel::kMaxStepTokens), against
// the same kind of bound: the memory kernel's time in that step plus every dense layer over the
// N rows in GEMMs of kMaxStepTokens rows (the shapes the model runs them at).
#include <ATen/record_function.h>
#include <cxxabi.h>
#include <dlfcn.h>
#include <execinfo.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/linear.h"
#include "model/determinism.h"
#include "model/model_runner.h"
#include "model/threading.h"
#include "model/titans_model.h"

ABSL_FLAG(std::string, model_dir, TITANS_DEFAULT_MODEL_DIR, "model directory");
ABSL_FLAG(std::vector<std::string>, sessions, (std::vector<std::string>{"1", "8", "32", "64"}),
          "session counts");
ABSL_FLAG(int, steps, 32, "timed decode steps per session count");
ABSL_FLAG(int, prompt_tokens, 64, "tokens each slot consumes before decoding");
ABSL_FLAG(int, append_tokens, 0, "if > 0, first time one slot's append of this many tokens");
ABSL_FLAG(bool, batch_invariant, true, "as titans-server --batch_invariant");
ABSL_FLAG(int32_t, compute_threads, 0, "as titans-server's flag");
ABSL_FLAG(int32_t, library_threads, 1, "as titans-server's flag");
ABSL_FLAG(bool, op_names, false,
          "also list the LibTorch operators called per decode step, most frequent first");
ABSL_FLAG(int32_t, max_step_growth, -1,
          "if >= 0: fail (exit 1) when a row's heap allocations or LibTorch operator calls per "
          "step exceed the first row's by more than this (issue 20: neither may grow with the "
          "number of sessions)");
ABSL_FLAG(int32_t, alloc_sites, 0,
          "if > 0, also list this many call stacks that allocate in a decode step, most "
          "frequent first, with their allocations per step (recorded in extra steps)");

// Counting wrappers: glibc exports its allocator as __libc_*, so this binary's definitions
// interpose malloc for every library it loads (LibTorch's CPU allocator included) and count
// calls. No hooks exist for this in glibc >= 2.34, and a counting allocator is what the
// measurement needs, nothing more.
extern "C" {
void* __libc_malloc(size_t);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);
}
namespace {
std::atomic<int64_t> allocations{0};

// --alloc_sites: while `record_sites` is set, every allocation also records its call stack
// (glibc's backtrace; the recording's own allocations are neither counted as sites nor recorded,
// through the thread-local guard).
using CallStack = std::vector<void*>;
constexpr int kSiteFrames = 32;
std::atomic<bool> record_sites{false};
thread_local bool in_site_hook = false;
std::mutex sites_mu;
std::map<CallStack, int64_t>* sites = nullptr;  // guarded by sites_mu; set while recording

void CountAllocation() {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (!record_sites.load(std::memory_order_relaxed) || in_site_hook) return;
  in_site_hook = true;
  void* frames[kSiteFrames];
  const int n = backtrace(frames, kSiteFrames);
  {
    std::lock_guard<std::mutex> lock(sites_mu);
    // Frame 0 is this function, frame 1 the wrapper; the caller of malloc is frame 2.
    if (sites != nullptr && n > 2) ++(*sites)[CallStack(frames + 2, frames + n)];
  }
  in_site_hook = false;
}
}  // namespace
extern "C" {
void* malloc(size_t n) {
  CountAllocation();
  return __libc_malloc(n);
}
void* calloc(size_t count, size_t n) {
  CountAllocation();
  return __libc_calloc(count, n);
}
void* realloc(void* p, size_t n) {
  CountAllocation();
  return __libc_realloc(p, n);
}
int posix_memalign(void** out, size_t alignment, size_t n) {
  CountAllocation();
  void* p = __libc_memalign(alignment, n);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
void* aligned_alloc(size_t alignment, size_t n) {
  CountAllocation();
  return __libc_memalign(alignment, n);
}
void* memalign(size_t alignment, size_t n) {
  CountAllocation();
  return __libc_memalign(alignment, n);
}
}

namespace {

int Fail(const std::string& what) {
  std::fprintf(stderr, "titans-bench-runner: %s\n", what.c_str());
  return 1;
}

// The model's dense layers: every weight a token's rows are multiplied by ([out, in]), the tied
// output head included.
std::vector<at::Tensor> DenseWeights(const titans::TitansModel& model) {
  titans::ModelParams params = model.params();  // shallow: ParamSlots wants a mutable struct
  std::vector<at::Tensor> weights = {params.embedding};
  for (const titans::ParamSlot& slot : titans::ParamSlots(model.config(), &params)) {
    const bool dense = slot.init == titans::InitKind::kLinear ||
                       slot.init == titans::InitKind::kGate ||
                       slot.init == titans::InitKind::kOutput;
    if (dense && slot.tensor->dim() == 2) weights.push_back(slot.tensor->contiguous());
  }
  return weights;
}

// Seconds for one pass of `rows` token rows through every dense weight, averaged over `reps`.
double DenseSeconds(const std::vector<at::Tensor>& weights, int64_t rows, int reps) {
  std::vector<at::Tensor> inputs, outputs;
  for (const at::Tensor& w : weights) {
    inputs.push_back(at::randn({rows, w.size(1)}));
    outputs.push_back(at::empty({rows, w.size(0)}));
  }
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) {
    for (size_t i = 0; i < weights.size(); ++i) {
      titans::kernels::InvariantLinear(inputs[i].data_ptr<float>(), rows, weights[i].size(1),
                                       weights[i].data_ptr<float>(), weights[i].size(0),
                                       outputs[i].data_ptr<float>());
    }
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / reps;
}

// One slot appends `tokens` tokens in one step; prints its tokens/s and the ratio to the bound.
int LongAppend(const titans::TitansModel& model, const std::vector<at::Tensor>& dense, int tokens) {
  auto runner = titans::ModelRunner::Create(model, 1);
  if (!runner.ok()) return Fail(runner.status().ToString());
  titans::StepPlan plan;
  titans::SlotWork w;
  w.slot = *(*runner)->NewSlot();
  // Lower-case words of varied length: bytes a byte-level model sees in ordinary text.
  for (int t = 0; t < tokens; ++t) w.tokens.push_back(t % 7 == 6 ? 32 : 97 + (t * 11 + t / 7) % 26);
  plan.work.push_back(std::move(w));
  const int64_t allocs_before = allocations.load();
  const auto start = std::chrono::steady_clock::now();
  auto r = (*runner)->Step(plan);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!r.ok()) return Fail(r.status().ToString());
  if (!r->slots[0].status.ok()) return Fail(r->slots[0].status.ToString());
  const int64_t rows = titans::TitansModel::kMaxStepTokens;
  const double dense_seconds =
      DenseSeconds(dense, rows, 4) * static_cast<double>(tokens) / static_cast<double>(rows);
  const double bound = r->kernel_seconds + dense_seconds;
  std::printf(
      "append of %d tokens by one slot: %.0f tokens/s, %.1f us/token; bound %.1f us/token "
      "(kernel %.1f, dense %.1f): %.0f%% of the bound's speed; %.0f allocations per 1K tokens\n",
      tokens, tokens / seconds, 1e6 * seconds / tokens, 1e6 * bound / tokens,
      1e6 * r->kernel_seconds / tokens, 1e6 * dense_seconds / tokens, 100 * bound / seconds,
      1e3 * static_cast<double>(allocations.load() - allocs_before) / tokens);
  return 0;
}

// Where this executable is loaded.
void* ExecutableBase() {
  static void* const base = [] {
    Dl_info info;
    return dladdr(reinterpret_cast<void*>(&ExecutableBase), &info) != 0 ? info.dli_fbase : nullptr;
  }();
  return base;
}

// A frame's name: the symbol dladdr finds in a shared library, or for this executable (whose
// functions are mostly not exported) the function and line addr2line reads from its debug
// information; raw addresses where neither knows.
std::string FrameName(void* address, std::map<void*, std::string>* cache) {
  if (auto it = cache->find(address); it != cache->end()) return it->second;
  std::string name;
  Dl_info info;
  if (dladdr(address, &info) != 0 && info.dli_fname != nullptr) {
    const std::string object = info.dli_fname;
    const bool in_self = info.dli_fbase == ExecutableBase();
    if (info.dli_sname != nullptr && !in_self) {
      int status = 0;
      char* demangled = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
      name = status == 0 && demangled != nullptr ? demangled : info.dli_sname;
      std::free(demangled);
    } else if (in_self) {
      // The return address points after the call; one byte back is inside it.
      const auto offset =
          reinterpret_cast<uintptr_t>(address) - reinterpret_cast<uintptr_t>(info.dli_fbase) - 1;
      const std::string command =
          absl::StrCat("addr2line -f -C -s -i -e /proc/", getpid(), "/exe ", absl::Hex(offset));
      if (FILE* pipe = popen(command.c_str(), "r")) {
        char line[1024];
        std::vector<std::string> lines;
        while (std::fgets(line, sizeof(line), pipe) != nullptr) {
          lines.emplace_back(line, strcspn(line, "\n"));
        }
        pclose(pipe);
        // With -i, pairs of (function, file:line) from the innermost inlined frame out.
        for (size_t i = 0; i + 1 < lines.size(); i += 2) {
          absl::StrAppend(&name, i == 0 ? "" : " <- ", lines[i], " (", lines[i + 1], ")");
        }
      }
    }
    if (name.empty()) {
      name = absl::StrCat(object.substr(object.rfind('/') + 1), "+0x",
                          absl::Hex(reinterpret_cast<uintptr_t>(address) -
                                    reinterpret_cast<uintptr_t>(info.dli_fbase)));
    }
  } else {
    name = absl::StrCat("0x", absl::Hex(reinterpret_cast<uintptr_t>(address)));
  }
  if (name.size() > 160) name = name.substr(0, 157) + "...";
  (*cache)[address] = name;
  return name;
}

// Runs `steps` more steps of `plan` recording every allocation's call stack, then prints the
// `top` most frequent stacks with their allocations per step. Allocator, LibTorch allocator and
// tensor-construction frames are shown too: the first frame in this project's code is usually
// the one to read.
bool PrintAllocationSites(titans::ModelRunner& runner, const titans::StepPlan& plan, int steps,
                          int top) {
  std::map<CallStack, int64_t> recorded;
  {
    void* warm[2];
    backtrace(warm, 2);  // loads the unwinder before recording starts
    std::lock_guard<std::mutex> lock(sites_mu);
    sites = &recorded;
  }
  record_sites = true;
  bool ok = true;
  for (int s = 0; s < steps && ok; ++s) ok = runner.Step(plan).ok();
  record_sites = false;
  {
    std::lock_guard<std::mutex> lock(sites_mu);
    sites = nullptr;
  }
  // Stacks are shown and merged as the allocating frame plus the frames in this executable (the
  // project's code): the library frames between them say how, not where.
  std::map<CallStack, int64_t> merged;
  for (const auto& [stack, count] : recorded) {
    CallStack shown = {stack.front()};
    for (size_t i = 1; i < stack.size(); ++i) {
      Dl_info info;
      if (dladdr(stack[i], &info) != 0 && info.dli_fbase == ExecutableBase()) {
        shown.push_back(stack[i]);
      }
    }
    merged[shown] += count;
  }
  std::vector<std::pair<int64_t, const CallStack*>> order;
  for (const auto& [stack, count] : merged) order.emplace_back(count, &stack);
  std::sort(order.begin(), order.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  std::map<void*, std::string> names;
  for (int i = 0; i < top && i < static_cast<int>(order.size()); ++i) {
    std::printf("    %9.1f allocations/step\n", static_cast<double>(order[i].first) / steps);
    for (void* frame : *order[i].second)
      std::printf("        %s\n", FrameName(frame, &names).c_str());
  }
  return ok;
}

// LibTorch operator calls per step over `steps` more steps of `plan` (-1 on a failed step).
// With `by_name`, also the calls per step of each operator, most frequent first (--op_names:
// which operators grow with the session count).
double OpsPerStep(titans::ModelRunner& runner, const titans::StepPlan& plan, int steps,
                  std::vector<std::pair<std::string, double>>* by_name) {
  static std::atomic<int64_t> ops{0};
  static std::mutex names_mu;
  static std::map<std::string, int64_t>* names = nullptr;  // guarded by names_mu
  std::map<std::string, int64_t> counted;
  ops = 0;
  {
    std::lock_guard<std::mutex> lock(names_mu);
    names = by_name != nullptr ? &counted : nullptr;
  }
  const at::CallbackHandle handle =
      at::addGlobalCallback(at::RecordFunctionCallback([](const at::RecordFunction& fn)
                                                           -> std::unique_ptr<at::ObserverContext> {
                              ops.fetch_add(1, std::memory_order_relaxed);
                              std::lock_guard<std::mutex> lock(names_mu);
                              if (names != nullptr) ++(*names)[fn.name()];
                              return nullptr;
                            }).scopes({at::RecordScope::FUNCTION}));
  bool ok = true;
  for (int s = 0; s < steps && ok; ++s) ok = runner.Step(plan).ok();
  at::removeCallback(handle);
  {
    std::lock_guard<std::mutex> lock(names_mu);
    names = nullptr;
  }
  if (by_name != nullptr) {
    by_name->clear();
    for (const auto& [name, count] : counted) {
      by_name->emplace_back(name, static_cast<double>(count) / steps);
    }
    std::sort(by_name->begin(), by_name->end(),
              [](const auto& a, const auto& b) { return a.second > b.second; });
  }
  return ok ? static_cast<double>(ops.load()) / steps : -1;
}

// Adds `n` new slots of `runner`: each with its prompt to `prompt`, sampling to `decode`.
void AddSlots(titans::ModelRunner& runner, int n, const titans::SamplingParams* sampling,
              titans::StepPlan* prompt, titans::StepPlan* decode) {
  for (int i = 0; i < n; ++i) {
    const titans::SlotId slot = *runner.NewSlot();
    titans::SlotWork w;
    w.slot = slot;
    for (int t = 0; t < absl::GetFlag(FLAGS_prompt_tokens); ++t)
      w.tokens.push_back(97 + (t * 7 + i) % 26);
    prompt->work.push_back(w);
    titans::SlotWork d;
    d.slot = slot;
    d.action = titans::SlotAction::kSample;
    d.sampling = sampling;
    decode->work.push_back(d);
  }
}

// Measures and prints the row for `n` sessions; `*first`: the first row's tokens/s (0: none yet).
// `*first_counts`: the first row's allocations and operator calls per step (set by it).
int SessionsRow(const titans::TitansModel& model, const std::vector<at::Tensor>& dense, int n,
                int steps, const titans::SamplingParams* sampling, double* first,
                std::pair<double, double>* first_counts) {
  auto runner = titans::ModelRunner::Create(model, n);
  if (!runner.ok()) return Fail(runner.status().ToString());
  titans::StepPlan prompt, decode;
  AddSlots(**runner, n, sampling, &prompt, &decode);
  if (auto r = (*runner)->Step(prompt); !r.ok()) return Fail(r.status().ToString());
  // Warm-up: one memory chunk of decode steps, so that every slot has closed a chunk once and
  // the rows below measure the steady state (the first close of a slot allocates its buffers;
  // later ones reuse those the slots gave up, model/buffer_pool.h).
  for (int s = 0; s <= model.config().memory.chunk_size; ++s) {
    if (auto r = (*runner)->Step(decode); !r.ok()) return Fail(r.status().ToString());
  }
  double kernel = 0;
  const int64_t allocs_before = allocations.load();
  const auto start = std::chrono::steady_clock::now();
  for (int s = 0; s < steps; ++s) {
    auto r = (*runner)->Step(decode);
    if (!r.ok()) return Fail(r.status().ToString());
    for (const titans::SlotOutcome& o : r->slots) {
      if (!o.status.ok()) return Fail(o.status.ToString());
    }
    kernel += r->kernel_seconds;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double allocs = static_cast<double>(allocations.load() - allocs_before) / steps;
  const double tokens_per_second = static_cast<double>(n) * steps / seconds;
  if (*first == 0) *first = tokens_per_second;
  // The bound: the kernel's time in these steps plus the dense layers at the same rows.
  const double bound = kernel / steps + DenseSeconds(dense, n, steps);
  const double per_token = seconds / steps / n;
  std::vector<std::pair<std::string, double>> op_names;
  const bool list_ops = absl::GetFlag(FLAGS_op_names);
  const double ops = OpsPerStep(**runner, decode, 2, list_ops ? &op_names : nullptr);
  if (ops < 0) return Fail("a step failed while counting operators");
  if (list_ops) {
    for (const auto& [name, count] : op_names) std::printf("    %9.1f %s\n", count, name.c_str());
  }
  if (const int top = absl::GetFlag(FLAGS_alloc_sites); top > 0) {
    if (!PrintAllocationSites(**runner, decode, steps, top)) {
      return Fail("a step failed while recording allocation sites");
    }
  }
  std::printf("%8d %12.0f %7.2fx %10.3f %14.1f %7.1f%% %10.1f %7.2fx %12.0f %9.0f\n", n,
              tokens_per_second, tokens_per_second / *first, 1e3 * seconds / steps, 1e6 * per_token,
              100 * kernel / seconds, 1e6 * bound / n, per_token / (bound / n), allocs, ops);
  if (first_counts->first < 0) *first_counts = {allocs, ops};
  if (const int limit = absl::GetFlag(FLAGS_max_step_growth); limit >= 0) {
    if (allocs > first_counts->first + limit || ops > first_counts->second + limit) {
      return Fail(absl::StrFormat(
          "%d sessions: %.1f allocations and %.1f operator calls per step, against %.1f and %.1f "
          "in the first row (--max_step_growth %d)",
          n, allocs, ops, first_counts->first, first_counts->second, limit));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_batch_invariant)) titans::UseBatchInvariantCpuKernels();
  if (absl::Status st = titans::ApplyThreadPolicy(
          {absl::GetFlag(FLAGS_compute_threads), absl::GetFlag(FLAGS_library_threads)});
      !st.ok()) {
    return Fail(st.ToString());
  }
  auto model = titans::TitansModel::Load(absl::GetFlag(FLAGS_model_dir));
  if (!model.ok()) return Fail(model.status().ToString());
  std::vector<int> counts;
  for (const std::string& s : absl::GetFlag(FLAGS_sessions)) {
    int n = 0;
    if (!absl::SimpleAtoi(s, &n) || n <= 0) return Fail("bad --sessions value " + s);
    counts.push_back(n);
  }
  const int steps = absl::GetFlag(FLAGS_steps);
  std::printf("model %s, %d decode steps per row, threads: %s\n", (*model)->config().name.c_str(),
              steps, titans::DescribeThreads().c_str());
  const std::vector<at::Tensor> dense = DenseWeights(**model);
  if (const int n = absl::GetFlag(FLAGS_append_tokens); n > 0) {
    if (int rc = LongAppend(**model, dense, n); rc != 0) return rc;
  }
  std::printf("%8s %12s %8s %10s %14s %8s %10s %8s %12s %9s\n", "sessions", "tokens/s", "vs first",
              "ms/step", "us/session-tok", "kernel", "bound us", "x bound", "allocs/step",
              "ops/step");
  double first = 0;
  titans::SamplingParams greedy;
  greedy.temperature = 0;
  std::pair<double, double> first_counts{-1, -1};
  for (int n : counts) {
    if (int rc = SessionsRow(**model, dense, n, steps, &greedy, &first, &first_counts); rc != 0) {
      return rc;
    }
  }
  return 0;
}
