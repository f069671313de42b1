// The sequence kernels (sequence_kernels.h), written once and compiled per instruction set:
// each sequence_kernels_<isa>.cc defines TITANS_KERNEL_ISA and includes this file. Plain loops
// that the compiler vectorises where it can without reassociating (reductions stay in order),
// built with -ffp-contract=off. Not a public header.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/sequence_kernels.h"

namespace titans::kernels::TITANS_KERNEL_ISA {

// One stream's conv, channels [c0, c1) of its rows.
void ConvStreamRows(const float* x, int64_t channels, const float* w, int taps, const ConvStream& s,
                    float* y) {
  const int64_t before = taps - 1;
  // Input i of x' = tail ++ rows: tail row i for i < before, else row begin + i - before.
  auto input = [&](int64_t i) {
    if (i >= before) return x + (s.begin + i - before) * channels;
    return s.tail + (s.tail_capacity > 0 ? (s.tail_start + i) % s.tail_capacity : i) * channels;
  };
  for (int64_t t = 0; t < s.length; ++t) {
    float* out = y + (s.begin + t) * channels;
    const float* first = input(t);
    for (int64_t c = 0; c < channels; ++c) out[c] = first[c] * w[c * taps];
    for (int i = 1; i < taps; ++i) {
      const float* in = input(t + i);
      for (int64_t c = 0; c < channels; ++c) out[c] = out[c] + in[c] * w[c * taps + i];
    }
  }
  if (s.in_place) {  // the stream's last rows into the ring's free rows after the old tail
    for (int64_t t = std::max<int64_t>(0, s.length - before); t < s.length; ++t) {
      float* to =
          const_cast<float*>(s.tail) + ((s.tail_start + before + t) % s.tail_capacity) * channels;
      std::memcpy(to, x + (s.begin + t) * channels, channels * sizeof(float));
    }
    return;
  }
  for (int64_t i = 0; i < before; ++i) {  // the new tail: inputs length .. length + before - 1
    std::memcpy(s.tail_out + i * channels, input(s.length + i), channels * sizeof(float));
  }
}

// Rotates one head's row (head_dim floats) by the angles whose cos / sin are given (half each):
// out = [x1 cos - x2 sin, x2 cos + x1 sin].
inline void Rotate(const float* x, const float* cos, const float* sin, int half, float* out) {
  for (int i = 0; i < half; ++i) {
    const float x1 = x[i], x2 = x[half + i];
    out[i] = x1 * cos[i] - x2 * sin[i];
    out[half + i] = x2 * cos[i] + x1 * sin[i];
  }
}

// cos / sin (half each, rounded from double) of the rotary angles at `position`.
inline void RotaryAngles(const double* inv_freq, int half, int64_t position, float* cos,
                         float* sin) {
  for (int i = 0; i < half; ++i) {
    const double angle = static_cast<double>(position) * inv_freq[i];
    cos[i] = static_cast<float>(std::cos(angle));
    sin[i] = static_cast<float>(std::sin(angle));
  }
}

inline float Dot(const float* a, const float* b, int n) {
  float acc = 0;
  for (int i = 0; i < n; ++i) acc = acc + a[i] * b[i];
  return acc;
}

// Where entry j of a stream's cache before the call lies, head h's first float.
inline const float* CacheEntry(const float* base, const AttentionStream& s, int h, int64_t j,
                               int dh) {
  if (s.cache_capacity == 0) return base + (h * s.cached + j) * dh;
  return base + (h * s.cache_capacity + (s.cache_start + j) % s.cache_capacity) * dh;
}

// Phase 1 of the attention for one stream: each new row's rotary cos / sin (into angles, head_dim
// floats per row: cos then sin), its keys rotated (into rotated_k, rows of heads * head_dim, at
// the stream's rows), and the stream's cache after the call.
void RotateStreamKeys(const WindowShape& sh, const double* inv_freq, const float* k, const float* v,
                      const AttentionStream& s, float* rotated_k, float* angles) {
  const int H = sh.heads, dh = sh.head_dim, half = dh / 2, E = sh.entries_per_token;
  const int64_t hd = static_cast<int64_t>(H) * dh;
  for (int64_t t = 0; t < s.length; ++t) {
    float* cos = angles + (s.begin + t) * dh;
    float* sin = cos + half;
    RotaryAngles(inv_freq, half, s.position + t, cos, sin);
    for (int e = 0; e < E; ++e) {  // every entry of a token shares its position
      const int64_t row = ((s.begin + t) * E + e) * hd;
      for (int h = 0; h < H; ++h) {
        Rotate(k + row + h * dh, cos, sin, half, rotated_k + row + h * dh);
      }
    }
  }
  // Cache and new entries, in order: entry j < cached is cache row j, else new entry j - cached.
  const int64_t total = s.cached + E * s.length;
  const int64_t keep = std::min<int64_t>(static_cast<int64_t>(E) * (sh.window - 1), total);
  for (int h = 0; h < H; ++h) {
    for (int64_t i = 0; i < keep; ++i) {
      const int64_t j = total - keep + i;
      if (s.in_place && j < s.cached) continue;  // a kept entry stays in its ring slot
      float *kd, *vd;
      if (s.in_place) {
        const int64_t at = h * s.cache_capacity + (s.cache_start + j) % s.cache_capacity;
        kd = const_cast<float*>(s.cache_k) + at * dh;
        vd = const_cast<float*>(s.cache_v) + at * dh;
      } else {
        const int64_t at = h * (s.out_capacity > 0 ? s.out_capacity : keep) + i;
        kd = s.cache_k_out + at * dh;
        vd = s.cache_v_out + at * dh;
      }
      if (j < s.cached) {
        std::memcpy(kd, CacheEntry(s.cache_k, s, h, j, dh), dh * sizeof(float));
        std::memcpy(vd, CacheEntry(s.cache_v, s, h, j, dh), dh * sizeof(float));
      } else {
        const int64_t row = (s.begin * E + j - s.cached) * hd + h * dh;
        std::memcpy(kd, rotated_k + row, dh * sizeof(float));
        std::memcpy(vd, v + row, dh * sizeof(float));
      }
    }
  }
}

// Phase 2: the attention of token t of stream s, all heads, into out's row.
void AttendRow(const WindowShape& sh, const float* angles, const float* q, const float* rotated_k,
               const float* v, const float* pk, const float* pv, const AttentionStream& s,
               int64_t t, float* scores, float* out) {
  const int H = sh.heads, dh = sh.head_dim, half = dh / 2, P = sh.persistent;
  const int E = sh.entries_per_token;
  const int64_t hd = static_cast<int64_t>(H) * dh;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dh)));
  // Entries of cache ++ new: this token's are the last E it sees; the window spans the entries
  // of the last `window` tokens.
  const int64_t end = s.cached + E * (t + 1);
  const int64_t first = std::max<int64_t>(0, end - static_cast<int64_t>(E) * sh.window);
  const int64_t visible = end - first;
  float q_rot[512];
  const float* cos = angles + (s.begin + t) * dh;  // phase 1's, for this row's position
  const float* sin = cos + half;
  const int64_t row = (s.begin + t) * hd;  // the query's and the output's row
  for (int h = 0; h < H; ++h) {
    const float* q_plain = q + row + h * dh;
    Rotate(q_plain, cos, sin, half, q_rot);
    auto key = [&](int64_t j) {
      return j < s.cached ? CacheEntry(s.cache_k, s, h, j, dh)
                          : rotated_k + (s.begin * E + j - s.cached) * hd + h * dh;
    };
    auto value = [&](int64_t j) {
      return j < s.cached ? CacheEntry(s.cache_v, s, h, j, dh)
                          : v + (s.begin * E + j - s.cached) * hd + h * dh;
    };
    float max = -std::numeric_limits<float>::infinity();
    for (int p = 0; p < P; ++p) {
      scores[p] = Dot(q_plain, pk + (static_cast<int64_t>(h) * P + p) * dh, dh) * scale;
      max = std::max(max, scores[p]);
    }
    for (int64_t i = 0; i < visible; ++i) {
      scores[P + i] = Dot(q_rot, key(first + i), dh) * scale;
      max = std::max(max, scores[P + i]);
    }
    const int64_t n = P + visible;
    float sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      scores[i] = std::exp(scores[i] - max);
      sum = sum + scores[i];
    }
    float* o = out + row + h * dh;
    for (int d = 0; d < dh; ++d) o[d] = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float weight = scores[i] / sum;
      const float* val = i < P ? pv + (static_cast<int64_t>(h) * P + i) * dh : value(first + i - P);
      for (int d = 0; d < dh; ++d) o[d] = o[d] + weight * val[d];
    }
  }
}

}  // namespace titans::kernels::TITANS_KERNEL_ISA
