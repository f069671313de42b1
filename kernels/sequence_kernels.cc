#include "kernels/sequence_kernels.h"

#include <cmath>
#include <vector>

#include "kernels/cpu_isa.h"
#include "kernels/thread_pool.h"

namespace titans::kernels {

#define TITANS_DECLARE_SEQUENCE(isa)                                                       \
  namespace isa {                                                                          \
  void ConvStreamRows(const float* x, int64_t channels, const float* w, int taps,          \
                      const ConvStream& s, float* y);                                      \
  void RotateStreamKeys(const WindowShape& sh, const double* inv_freq, const float* k,     \
                        const float* v, const AttentionStream& s, float* rotated_k,        \
                        float* angles);                                                    \
  void AttendRow(const WindowShape& sh, const float* angles, const float* q,               \
                 const float* rotated_k, const float* v, const float* pk, const float* pv, \
                 const AttentionStream& s, int64_t t, float* scores, float* out);          \
  }
TITANS_DECLARE_SEQUENCE(avx512)
TITANS_DECLARE_SEQUENCE(avx2)
TITANS_DECLARE_SEQUENCE(generic)
#undef TITANS_DECLARE_SEQUENCE

namespace {

struct Isa {
  decltype(&generic::ConvStreamRows) conv;
  decltype(&generic::RotateStreamKeys) rotate;
  decltype(&generic::AttendRow) attend;
};

// The build of `name`, or nullptr where this CPU lacks it (or the name is unknown).
const Isa* FindIsa(const std::string& name) {
  static const Isa avx512_fns{&avx512::ConvStreamRows, &avx512::RotateStreamKeys,
                              &avx512::AttendRow};
  static const Isa avx2_fns{&avx2::ConvStreamRows, &avx2::RotateStreamKeys, &avx2::AttendRow};
  static const Isa generic_fns{&generic::ConvStreamRows, &generic::RotateStreamKeys,
                               &generic::AttendRow};
  return PickIsaBuild<const Isa*>(name, &avx512_fns, &avx2_fns, &generic_fns);
}

const Isa& BestIsa() {
  static const Isa* const best = FindIsa(BestCpuIsa());
  return *best;
}

// Waking the pool costs tens of microseconds: small calls run on the calling thread.
constexpr int64_t kParallelWork = int64_t{1} << 20;

int Parts(int64_t work, bool parallel) {
  return parallel && work >= kParallelWork ? ThreadPool::Default().size() : 1;
}

void Conv(const Isa& isa, const float* x, int64_t channels, const float* w, int taps,
          const ConvStream* streams, int64_t count, float* y, bool parallel) {
  int64_t rows = 0;
  for (int64_t i = 0; i < count; ++i) rows += streams[i].length;
  const int parts = Parts(rows * channels * taps, parallel);
  auto run = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) isa.conv(x, channels, w, taps, streams[i], y);
  };
  if (parts == 1 || count == 1) {
    run(0, count);
  } else {
    ThreadPool::Default().ParallelFor(count, parts, run);
  }
}

// Scratch reused across calls (a step allocates nothing once the buffers have grown).
struct AttentionScratch {
  std::vector<float> rotated_k;  // [rows * entries_per_token, heads * head_dim]
  std::vector<float> angles;     // [rows, head_dim]: each row's rotary cos, then sin
};

void Attention(const Isa& isa, const WindowShape& sh, const float* q, const float* k,
               const float* v, const float* pk, const float* pv, const AttentionStream* streams,
               int64_t count, float* out, bool parallel) {
  thread_local AttentionScratch scratch;
  const int64_t hd = static_cast<int64_t>(sh.heads) * sh.head_dim;
  int64_t rows = 0;
  for (int64_t i = 0; i < count; ++i) rows = std::max(rows, streams[i].begin + streams[i].length);
  const int64_t entries = rows * sh.entries_per_token;
  if (static_cast<int64_t>(scratch.rotated_k.size()) < entries * hd) {
    scratch.rotated_k.resize(entries * hd);
  }
  if (static_cast<int64_t>(scratch.angles.size()) < rows * sh.head_dim) {
    scratch.angles.resize(rows * sh.head_dim);
  }
  int64_t active = 0;
  for (int64_t i = 0; i < count; ++i) active += streams[i].length;
  // inv_freq_i = theta^(-2i / head_dim), as the LibTorch form computes it (in double).
  double inv_freq[256];
  for (int i = 0; i < sh.head_dim / 2; ++i) {
    inv_freq[i] = std::pow(sh.rope_theta, -(static_cast<double>(i) * (2.0 / sh.head_dim)));
  }
  // Pointers, not the thread_local itself: in the pool's workers `scratch` names their own.
  float* const rotated_k = scratch.rotated_k.data();
  float* const angles = scratch.angles.data();
  for (int64_t i = 0; i < count; ++i) {
    isa.rotate(sh, inv_freq, k, v, streams[i], rotated_k, angles);
  }
  const int64_t window_entries = static_cast<int64_t>(sh.window) * sh.entries_per_token;
  const int64_t per_row = (sh.persistent + window_entries) * hd * 2;
  const int parts = Parts(active * per_row, parallel);
  auto run = [&](int64_t b, int64_t e) {
    thread_local std::vector<float> scores;  // one row's persistent + window scores
    if (static_cast<int64_t>(scores.size()) < sh.persistent + window_entries) {
      scores.resize(sh.persistent + window_entries);
    }
    for (int64_t i = 0; i < count; ++i) {
      const AttentionStream& s = streams[i];
      const int64_t lo = std::max(b, s.begin), hi = std::min(e, s.begin + s.length);
      for (int64_t r = lo; r < hi; ++r) {
        isa.attend(sh, angles, q, rotated_k, v, pk, pv, s, r - s.begin, scores.data(), out);
      }
    }
  };
  if (parts == 1) {
    run(0, rows);
  } else {
    ThreadPool::Default().ParallelFor(rows, parts, run);
  }
}

bool ShapeSupported(const WindowShape& sh) {
  return sh.head_dim > 0 && sh.head_dim % 2 == 0 && sh.head_dim <= 512 && sh.heads > 0 &&
         sh.window >= 1 && sh.persistent >= 0 && sh.entries_per_token >= 1;
}

}  // namespace

void RaggedCausalConv(const float* x, int64_t channels, const float* w, int taps,
                      const ConvStream* streams, int64_t count, float* y) {
  Conv(BestIsa(), x, channels, w, taps, streams, count, y, /*parallel=*/true);
}

void RaggedWindowAttention(const WindowShape& shape, const float* q, const float* k, const float* v,
                           const float* persistent_k, const float* persistent_v,
                           const AttentionStream* streams, int64_t count, float* out) {
  if (!ShapeSupported(shape)) return;
  Attention(BestIsa(), shape, q, k, v, persistent_k, persistent_v, streams, count, out,
            /*parallel=*/true);
}

bool RaggedCausalConvOnIsa(const std::string& isa, const float* x, int64_t channels, const float* w,
                           int taps, const ConvStream* streams, int64_t count, float* y) {
  const Isa* fns = FindIsa(isa);
  if (!fns) return false;
  Conv(*fns, x, channels, w, taps, streams, count, y, /*parallel=*/false);
  return true;
}

bool RaggedWindowAttentionOnIsa(const std::string& isa, const WindowShape& shape, const float* q,
                                const float* k, const float* v, const float* persistent_k,
                                const float* persistent_v, const AttentionStream* streams,
                                int64_t count, float* out) {
  const Isa* fns = FindIsa(isa);
  if (!fns || !ShapeSupported(shape)) return false;
  Attention(*fns, shape, q, k, v, persistent_k, persistent_v, streams, count, out,
            /*parallel=*/false);
  return true;
}

}  // namespace titans::kernels
