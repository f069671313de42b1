// The ragged sequence kernels (kernels/sequence_kernels.h) against plain LibTorch references
// (model/ops.h): the conv bit for bit (both round each product and sum), the attention in double
// precision within fp32 rounding. Then the properties the server relies on, on every ISA this
// CPU has: a stream's results are bit-identical alone or among others (batch invariance) and
// however it is split into calls (split invariance), and they are the same on every ISA for the
// conv.
#include "kernels/sequence_kernels.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <vector>

#include "model/ops.h"

namespace titans::kernels {
namespace {

std::vector<std::string> Isas() {
  std::vector<std::string> out;
  for (const char* isa : {"avx512", "avx2", "generic"}) {
    float one = 1, y = 0, tail = 0;
    ConvStream s{0, 1, &tail, nullptr};
    float tail_out = 0;
    s.tail_out = &tail_out;
    if (RaggedCausalConvOnIsa(isa, &one, 1, &one, 1, &s, 1, &y)) out.push_back(isa);
  }
  return out;
}

bool SameBits(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  return ac.sizes() == bc.sizes() &&
         (ac.numel() == 0 ||  // empty tensors may have no data pointer (memcmp needs one)
          std::memcmp(ac.data_ptr<float>(), bc.data_ptr<float>(), ac.numel() * sizeof(float)) == 0);
}

// One stream's conv state and rows for the tests: x [T, C], tail [K-1, C].
struct ConvCase {
  at::Tensor x, tail;
};

// Runs streams (each: rows of one x, its tail) packed into one call; returns each stream's y
// and new tail.
std::vector<std::pair<at::Tensor, at::Tensor>> RunConv(const std::string& isa,
                                                       const std::vector<ConvCase>& cases,
                                                       const at::Tensor& taps) {
  const int64_t C = taps.size(0), K = taps.size(1);
  std::vector<at::Tensor> parts;
  for (const ConvCase& c : cases) parts.push_back(c.x);
  const at::Tensor x = at::cat(parts, 0).contiguous();
  at::Tensor y = at::full_like(x, std::nanf(""));
  std::vector<at::Tensor> tails;
  std::vector<ConvStream> streams;
  int64_t begin = 0;
  for (const ConvCase& c : cases) {
    tails.push_back(at::full({K - 1, C}, std::nanf("")));
    streams.push_back(
        ConvStream{begin, c.x.size(0), c.tail.data_ptr<float>(), tails.back().data_ptr<float>()});
    begin += c.x.size(0);
  }
  EXPECT_TRUE(RaggedCausalConvOnIsa(isa, x.data_ptr<float>(), C, taps.data_ptr<float>(),
                                    static_cast<int>(K), streams.data(),
                                    static_cast<int64_t>(streams.size()), y.data_ptr<float>()));
  std::vector<std::pair<at::Tensor, at::Tensor>> out;
  for (size_t i = 0; i < cases.size(); ++i) {
    out.emplace_back(y.slice(0, streams[i].begin, streams[i].begin + streams[i].length), tails[i]);
  }
  return out;
}

TEST(RaggedCausalConv, SameBitsAsLibTorchAloneBatchedSplitAndOnEveryIsa) {
  at::manual_seed(5);
  ASSERT_FALSE(Isas().empty());
  const int64_t C = 24, K = 4;
  const at::Tensor taps = at::randn({C, K});
  std::vector<ConvCase> cases;
  for (int64_t T : {1, 2, 3, 7, 40}) cases.push_back({at::randn({T, C}), at::randn({K - 1, C})});
  std::vector<at::Tensor> first_isa;
  for (const std::string& isa : Isas()) {
    SCOPED_TRACE(isa);
    const auto batched = RunConv(isa, cases, taps);
    for (size_t i = 0; i < cases.size(); ++i) {
      SCOPED_TRACE("stream " + std::to_string(i));
      // LibTorch's form (model/ops.h): multiply, then add tap by tap.
      at::Tensor tail = cases[i].tail.unsqueeze(0);
      const at::Tensor ref = CausalConv(cases[i].x.unsqueeze(0), taps, &tail).squeeze(0);
      EXPECT_TRUE(SameBits(batched[i].first, ref));
      EXPECT_TRUE(SameBits(batched[i].second, tail.squeeze(0)));
      // Alone.
      const auto alone = RunConv(isa, {cases[i]}, taps);
      EXPECT_TRUE(SameBits(alone[0].first, batched[i].first));
      // Split into two calls at every point: the first call's tail carries over.
      const int64_t T = cases[i].x.size(0);
      for (int64_t cut = 1; cut < T; ++cut) {
        const auto a =
            RunConv(isa, {{cases[i].x.slice(0, 0, cut).contiguous(), cases[i].tail}}, taps);
        const auto b = RunConv(isa, {{cases[i].x.slice(0, cut).contiguous(), a[0].second}}, taps);
        EXPECT_TRUE(SameBits(at::cat({a[0].first, b[0].first}, 0), batched[i].first))
            << "cut " << cut;
        EXPECT_TRUE(SameBits(b[0].second, batched[i].second));
      }
    }
    if (first_isa.empty()) {
      for (const auto& r : batched) first_isa.push_back(r.first);
    } else {
      for (size_t i = 0; i < cases.size(); ++i)
        EXPECT_TRUE(SameBits(batched[i].first, first_isa[i]));
    }
  }
}

// A ring tail (sequence_kernels.h) read in place of a packed one, or updated in place, gives the
// packed call's bits on every ISA; an in-place update leaves the rows of the tail before the call
// untouched.
TEST(RaggedCausalConv, RingTailsGiveThePackedBitsOnEveryIsa) {
  at::manual_seed(22);
  const int64_t C = 5, K = 4, before = K - 1;
  const at::Tensor taps = at::randn({C, K});
  for (const int64_t T : {1, 2, 3, 7}) {
    const ConvCase c{at::randn({T, C}), at::randn({before, C})};
    for (const std::string& isa : Isas()) {
      const auto packed = RunConv(isa, {c}, taps)[0];
      for (const int64_t capacity : {before + T, before + T + 2}) {
        for (const int64_t start : {int64_t{0}, capacity - 1, capacity / 2}) {
          SCOPED_TRACE(isa + " T " + std::to_string(T) + " capacity " + std::to_string(capacity) +
                       " start " + std::to_string(start));
          at::Tensor ring = at::full({capacity, C}, std::nanf(""));
          for (int64_t i = 0; i < before; ++i) ring[(start + i) % capacity].copy_(c.tail[i]);
          const at::Tensor ring_before = ring.clone();
          at::Tensor y = at::full_like(c.x, std::nanf(""));
          at::Tensor tail_out = at::full({before, C}, std::nanf(""));
          ConvStream s{0, T, ring.data_ptr<float>(), tail_out.data_ptr<float>()};
          s.tail_capacity = capacity;
          s.tail_start = start;
          ASSERT_TRUE(RaggedCausalConvOnIsa(isa, c.x.data_ptr<float>(), C, taps.data_ptr<float>(),
                                            K, &s, 1, y.data_ptr<float>()));
          EXPECT_TRUE(SameBits(y, packed.first));
          EXPECT_TRUE(SameBits(tail_out, packed.second));
          y.fill_(std::nanf(""));
          s.tail_out = nullptr;
          s.in_place = true;
          ASSERT_TRUE(RaggedCausalConvOnIsa(isa, c.x.data_ptr<float>(), C, taps.data_ptr<float>(),
                                            K, &s, 1, y.data_ptr<float>()));
          EXPECT_TRUE(SameBits(y, packed.first));
          for (int64_t i = 0; i < before; ++i) {
            EXPECT_TRUE(SameBits(ring[(start + T + i) % capacity], packed.second[i])) << i;
            EXPECT_TRUE(
                SameBits(ring[(start + i) % capacity], ring_before[(start + i) % capacity]));
          }
        }
      }
    }
  }
}

// One attention stream: projections q [T, H*dh] and k, v [T*E, H*dh] (E entries per token) at
// `position`, with a cache of `cached` entries ([H, cached, dh], rotated keys).
struct AttentionCase {
  at::Tensor q, k, v, cache_k, cache_v;
  int64_t position;
};

struct AttentionOut {
  at::Tensor out, cache_k, cache_v;
};

std::vector<AttentionOut> RunAttention(const std::string& isa, const WindowShape& sh,
                                       const std::vector<AttentionCase>& cases,
                                       const at::Tensor& pk, const at::Tensor& pv) {
  std::vector<at::Tensor> qs, ks, vs;
  for (const AttentionCase& c : cases) {
    qs.push_back(c.q);
    ks.push_back(c.k);
    vs.push_back(c.v);
  }
  const at::Tensor q = at::cat(qs, 0).contiguous(), k = at::cat(ks, 0).contiguous(),
                   v = at::cat(vs, 0).contiguous();
  at::Tensor out = at::full_like(q, std::nanf(""));
  std::vector<AttentionStream> streams;
  std::vector<AttentionOut> result;
  int64_t begin = 0;
  for (const AttentionCase& c : cases) {
    const int64_t T = c.q.size(0), cached = c.cache_k.size(1), E = sh.entries_per_token;
    const int64_t keep = std::min<int64_t>(E * (sh.window - 1), cached + E * T);
    AttentionOut r;
    r.cache_k = at::full({sh.heads, keep, sh.head_dim}, std::nanf(""));
    r.cache_v = at::full({sh.heads, keep, sh.head_dim}, std::nanf(""));
    AttentionStream s;
    s.begin = begin;
    s.length = T;
    s.position = c.position;
    s.cache_k = c.cache_k.data_ptr<float>();
    s.cache_v = c.cache_v.data_ptr<float>();
    s.cached = cached;
    s.cache_k_out = r.cache_k.data_ptr<float>();
    s.cache_v_out = r.cache_v.data_ptr<float>();
    streams.push_back(s);
    result.push_back(r);
    begin += T;
  }
  EXPECT_TRUE(RaggedWindowAttentionOnIsa(
      isa, sh, q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
      sh.persistent ? pk.data_ptr<float>() : nullptr,
      sh.persistent ? pv.data_ptr<float>() : nullptr, streams.data(),
      static_cast<int64_t>(streams.size()), out.data_ptr<float>()));
  for (size_t i = 0; i < cases.size(); ++i) {
    result[i].out = out.slice(0, streams[i].begin, streams[i].begin + streams[i].length);
  }
  return result;
}

// The model's LibTorch form (rotary, masked softmax over persistent ++ cache ++ new) in double.
// Entry j of cache ++ new belongs to token j / E (cache tokens first), at that token's position.
at::Tensor ReferenceAttention(const WindowShape& sh, const AttentionCase& c, const at::Tensor& pk,
                              const at::Tensor& pv) {
  auto dbl = [](const at::Tensor& t) { return t.to(at::kDouble); };
  const int64_t T = c.q.size(0), H = sh.heads, cached = c.cache_k.size(1);
  const int64_t E = sh.entries_per_token, hd = c.q.size(1);
  at::Tensor q_plain = SplitHeads(dbl(c.q).unsqueeze(0), H);
  at::Tensor q = Rotary(q_plain, c.position, sh.rope_theta);
  // Rotate each entry index e's rows [T, H*dh] at the tokens' positions, then interleave back.
  at::Tensor k_tokens = dbl(c.k).reshape({T, E, hd});
  std::vector<at::Tensor> rotated;
  for (int64_t e = 0; e < E; ++e) {
    rotated.push_back(
        Rotary(SplitHeads(k_tokens.select(1, e).unsqueeze(0), H), c.position, sh.rope_theta));
  }
  at::Tensor k = at::stack(rotated, 3).reshape({1, H, T * E, sh.head_dim});  // [1,H,T,E,dh]
  at::Tensor v = SplitHeads(dbl(c.v).unsqueeze(0), H);
  at::Tensor keys = at::cat({dbl(c.cache_k).unsqueeze(0), k}, 2);
  at::Tensor values = at::cat({dbl(c.cache_v).unsqueeze(0), v}, 2);
  at::Tensor tq = at::arange(T).unsqueeze(1) + cached / E;
  at::Tensor tk = at::floor_divide(at::arange(cached + E * T), E).unsqueeze(0);
  at::Tensor visible = (tk <= tq).logical_and(tq - tk < sh.window);
  at::Tensor p_k, p_v;
  if (sh.persistent > 0) {
    p_k = dbl(pk).unsqueeze(0);
    p_v = dbl(pv).unsqueeze(0);
  }
  return MergeHeads(Attend(q_plain, q, p_k, p_v, keys, values, visible)).squeeze(0);
}

TEST(RaggedWindowAttention, MatchesReferenceAndIsBatchAndSplitInvariantOnEveryIsa) {
  at::manual_seed(9);
  // (persistent tokens, entries per token): plain and MAC-shaped attention.
  for (const std::pair<int, int>& config :
       std::vector<std::pair<int, int>>{{0, 1}, {3, 1}, {0, 2}, {3, 2}}) {
    const int persistent = config.first, E = config.second;
    WindowShape sh;
    sh.heads = 2;
    sh.head_dim = 8;
    sh.window = 6;
    sh.persistent = persistent;
    sh.entries_per_token = E;
    sh.rope_theta = 10000;
    const int64_t hd = sh.heads * sh.head_dim;
    const at::Tensor pk = at::randn({sh.heads, std::max(persistent, 1), sh.head_dim});
    const at::Tensor pv = at::randn({sh.heads, std::max(persistent, 1), sh.head_dim});
    // Streams at the start, mid-window, past the window and far along (angles in double).
    std::vector<AttentionCase> cases;
    for (auto [T, cached, position] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 0, 0}, {4, 2, 2}, {9, 5, 40}, {1, 5, 1000003}, {3, 5, 123456789}}) {
      cases.push_back({at::randn({T, hd}), at::randn({T * E, hd}), at::randn({T * E, hd}),
                       at::randn({sh.heads, cached * E, sh.head_dim}),
                       at::randn({sh.heads, cached * E, sh.head_dim}), position});
    }
    for (const std::string& isa : Isas()) {
      SCOPED_TRACE(isa + " persistent " + std::to_string(persistent) + " entries " +
                   std::to_string(E));
      const auto batched = RunAttention(isa, sh, cases, pk, pv);
      for (size_t i = 0; i < cases.size(); ++i) {
        SCOPED_TRACE("stream " + std::to_string(i));
        const at::Tensor ref = ReferenceAttention(sh, cases[i], pk, pv);
        // Softmax weights in fp32 over at most 9 keys of O(1) values: 1e-5 is ~100 ulps.
        EXPECT_LT((batched[i].out.to(at::kDouble) - ref).abs().max().item<double>(), 1e-5);
        const auto alone = RunAttention(isa, sh, {cases[i]}, pk, pv);
        EXPECT_TRUE(SameBits(alone[0].out, batched[i].out));
        EXPECT_TRUE(SameBits(alone[0].cache_k, batched[i].cache_k));
        EXPECT_TRUE(SameBits(alone[0].cache_v, batched[i].cache_v));
        // Split: the first part's cache carries over to the second.
        const int64_t T = cases[i].q.size(0);
        for (int64_t cut = 1; cut < T; ++cut) {
          auto part = [&](int64_t b, int64_t e) {
            AttentionCase c = cases[i];
            c.q = c.q.slice(0, b, e).contiguous();
            c.k = c.k.slice(0, E * b, E * e).contiguous();
            c.v = c.v.slice(0, E * b, E * e).contiguous();
            c.position += b;
            return c;
          };
          const auto a = RunAttention(isa, sh, {part(0, cut)}, pk, pv);
          AttentionCase second = part(cut, T);
          second.cache_k = a[0].cache_k;
          second.cache_v = a[0].cache_v;
          const auto b = RunAttention(isa, sh, {second}, pk, pv);
          EXPECT_TRUE(SameBits(at::cat({a[0].out, b[0].out}, 0), batched[i].out)) << "cut " << cut;
          EXPECT_TRUE(SameBits(b[0].cache_k, batched[i].cache_k));
          EXPECT_TRUE(SameBits(b[0].cache_v, batched[i].cache_v));
        }
      }
    }
  }
}

// A cache [H, n, dh] laid into a ring of `capacity` entries from index `start` (other slots NaN),
// and the packed cache of `count` entries read back from a ring at `start`.
at::Tensor ToRing(const at::Tensor& packed, int64_t capacity, int64_t start) {
  at::Tensor ring = at::full({packed.size(0), capacity, packed.size(2)}, std::nanf(""));
  for (int64_t j = 0; j < packed.size(1); ++j)
    ring.select(1, (start + j) % capacity).copy_(packed.select(1, j));
  return ring;
}
at::Tensor FromRing(const at::Tensor& ring, int64_t start, int64_t count) {
  std::vector<at::Tensor> entries;
  for (int64_t j = 0; j < count; ++j) entries.push_back(ring.select(1, (start + j) % ring.size(1)));
  return count == 0 ? ring.slice(1, 0, 0).clone() : at::stack(entries, 1);
}

// A ring cache read in place of a packed one, written to a ring, or updated in place, gives the
// packed call's bits, on every ISA; an in-place update leaves the entries of the cache before the
// call untouched (a shallow copy of the old state stays valid).
TEST(RaggedWindowAttention, RingCachesGiveThePackedBitsOnEveryIsa) {
  at::manual_seed(21);
  for (const int E : {1, 2}) {
    WindowShape sh;
    sh.heads = 2;
    sh.head_dim = 8;
    sh.window = 6;
    sh.persistent = 2;
    sh.entries_per_token = E;
    const int64_t hd = sh.heads * sh.head_dim;
    const at::Tensor pk = at::randn({sh.heads, 2, sh.head_dim});
    const at::Tensor pv = at::randn({sh.heads, 2, sh.head_dim});
    for (auto [T, cached, position] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 0, 0}, {1, 3, 3}, {1, 5, 77}, {2, 5, 90}, {4, 2, 2}, {9, 5, 40}}) {
      const AttentionCase c{at::randn({T, hd}),
                            at::randn({T * E, hd}),
                            at::randn({T * E, hd}),
                            at::randn({sh.heads, cached * E, sh.head_dim}),
                            at::randn({sh.heads, cached * E, sh.head_dim}),
                            position};
      const int64_t n = cached * E, total = n + E * T;
      const int64_t keep = std::min<int64_t>(E * (sh.window - 1), total);
      for (const std::string& isa : Isas()) {
        SCOPED_TRACE(isa + " E " + std::to_string(E) + " T " + std::to_string(T) + " cached " +
                     std::to_string(cached));
        const AttentionOut packed = RunAttention(isa, sh, {c}, pk, pv)[0];
        // Rings just large enough for in place, and larger; starts that wrap.
        for (const int64_t capacity : {total, total + 3}) {
          for (const int64_t start : {int64_t{0}, capacity - 1, capacity / 2}) {
            at::Tensor ring_k = ToRing(c.cache_k, capacity, start);
            at::Tensor ring_v = ToRing(c.cache_v, capacity, start);
            const at::Tensor before_k = ring_k.clone(), before_v = ring_v.clone();
            AttentionStream s;
            s.length = T;
            s.position = position;
            s.cache_k = ring_k.data_ptr<float>();
            s.cache_v = ring_v.data_ptr<float>();
            s.cached = n;
            s.cache_capacity = capacity;
            s.cache_start = start;
            at::Tensor out = at::full_like(c.q, std::nanf(""));
            auto run = [&]() {
              out.fill_(std::nanf(""));
              ASSERT_TRUE(RaggedWindowAttentionOnIsa(
                  isa, sh, c.q.data_ptr<float>(), c.k.data_ptr<float>(), c.v.data_ptr<float>(),
                  pk.data_ptr<float>(), pv.data_ptr<float>(), &s, 1, out.data_ptr<float>()));
            };
            // Ring in, packed out.
            at::Tensor ok = at::full({sh.heads, keep, sh.head_dim}, std::nanf(""));
            at::Tensor ov = at::full({sh.heads, keep, sh.head_dim}, std::nanf(""));
            s.cache_k_out = ok.data_ptr<float>();
            s.cache_v_out = ov.data_ptr<float>();
            run();
            EXPECT_TRUE(SameBits(out, packed.out));
            EXPECT_TRUE(SameBits(ok, packed.cache_k));
            EXPECT_TRUE(SameBits(ov, packed.cache_v));
            // Ring in, ring out (from index 0).
            const int64_t out_capacity = keep + 2;
            at::Tensor rk = at::full({sh.heads, out_capacity, sh.head_dim}, std::nanf(""));
            at::Tensor rv = at::full({sh.heads, out_capacity, sh.head_dim}, std::nanf(""));
            s.cache_k_out = rk.data_ptr<float>();
            s.cache_v_out = rv.data_ptr<float>();
            s.out_capacity = out_capacity;
            run();
            EXPECT_TRUE(SameBits(out, packed.out));
            EXPECT_TRUE(SameBits(FromRing(rk, 0, keep), packed.cache_k));
            EXPECT_TRUE(SameBits(FromRing(rv, 0, keep), packed.cache_v));
            // In place.
            s.cache_k_out = s.cache_v_out = nullptr;
            s.out_capacity = 0;
            s.in_place = true;
            run();
            EXPECT_TRUE(SameBits(out, packed.out));
            const int64_t new_start = (start + total - keep) % capacity;
            EXPECT_TRUE(SameBits(FromRing(ring_k, new_start, keep), packed.cache_k));
            EXPECT_TRUE(SameBits(FromRing(ring_v, new_start, keep), packed.cache_v));
            EXPECT_TRUE(SameBits(FromRing(ring_k, start, n), FromRing(before_k, start, n)));
            EXPECT_TRUE(SameBits(FromRing(ring_v, start, n), FromRing(before_v, start, n)));
          }
        }
      }
    }
  }
}

// Calls large enough to run on the thread pool give the same bits as one thread on the ISA the
// public entry points choose (the first this CPU has of avx512, avx2, generic).
TEST(SequenceKernels, ThreadedCallsMatchOneThread) {
  at::manual_seed(13);
  const std::string best = Isas().at(0);
  {
    const int64_t C = 64, K = 4;
    const at::Tensor taps = at::randn({C, K});
    std::vector<ConvCase> cases;
    for (int i = 0; i < 6; ++i) cases.push_back({at::randn({1500, C}), at::randn({K - 1, C})});
    const auto serial = RunConv(best, cases, taps);
    std::vector<at::Tensor> xs;
    for (const ConvCase& c : cases) xs.push_back(c.x);
    const at::Tensor x = at::cat(xs, 0).contiguous();
    at::Tensor y = at::empty_like(x);
    std::vector<at::Tensor> tails;
    std::vector<ConvStream> streams;
    for (size_t i = 0; i < cases.size(); ++i) {
      tails.push_back(at::empty({K - 1, C}));
      streams.push_back(ConvStream{static_cast<int64_t>(i) * 1500, 1500,
                                   cases[i].tail.data_ptr<float>(), tails[i].data_ptr<float>()});
    }
    RaggedCausalConv(x.data_ptr<float>(), C, taps.data_ptr<float>(), K, streams.data(),
                     static_cast<int64_t>(streams.size()), y.data_ptr<float>());
    for (size_t i = 0; i < cases.size(); ++i) {
      EXPECT_TRUE(SameBits(y.slice(0, i * 1500, (i + 1) * 1500), serial[i].first));
      EXPECT_TRUE(SameBits(tails[i], serial[i].second));
    }
  }
  {
    WindowShape sh;
    sh.heads = 4;
    sh.head_dim = 32;
    sh.window = 64;
    sh.persistent = 4;
    const int64_t hd = sh.heads * sh.head_dim;
    const at::Tensor pk = at::randn({sh.heads, sh.persistent, sh.head_dim});
    const at::Tensor pv = at::randn({sh.heads, sh.persistent, sh.head_dim});
    std::vector<AttentionCase> cases;
    for (int64_t T : {700, 1, 300}) {
      cases.push_back({at::randn({T, hd}), at::randn({T, hd}), at::randn({T, hd}),
                       at::randn({sh.heads, 63, sh.head_dim}),
                       at::randn({sh.heads, 63, sh.head_dim}), 5000 + T});
    }
    const auto serial = RunAttention(best, sh, cases, pk, pv);
    std::vector<at::Tensor> qs, ks, vs;
    for (const AttentionCase& c : cases) {
      qs.push_back(c.q);
      ks.push_back(c.k);
      vs.push_back(c.v);
    }
    const at::Tensor q = at::cat(qs, 0), k = at::cat(ks, 0), v = at::cat(vs, 0);
    at::Tensor out = at::empty_like(q);
    std::vector<at::Tensor> ck, cv;
    std::vector<AttentionStream> streams;
    int64_t begin = 0;
    for (const AttentionCase& c : cases) {
      ck.push_back(at::empty({sh.heads, 63, sh.head_dim}));
      cv.push_back(at::empty({sh.heads, 63, sh.head_dim}));
      AttentionStream s;
      s.begin = begin;
      s.length = c.q.size(0);
      s.position = c.position;
      s.cache_k = c.cache_k.data_ptr<float>();
      s.cache_v = c.cache_v.data_ptr<float>();
      s.cached = 63;
      s.cache_k_out = ck.back().data_ptr<float>();
      s.cache_v_out = cv.back().data_ptr<float>();
      streams.push_back(s);
      begin += s.length;
    }
    RaggedWindowAttention(sh, q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                          pk.data_ptr<float>(), pv.data_ptr<float>(), streams.data(),
                          static_cast<int64_t>(streams.size()), out.data_ptr<float>());
    for (size_t i = 0; i < cases.size(); ++i) {
      EXPECT_TRUE(SameBits(out.slice(0, streams[i].begin, streams[i].begin + streams[i].length),
                           serial[i].out));
      EXPECT_TRUE(SameBits(ck[i], serial[i].cache_k));
      EXPECT_TRUE(SameBits(cv[i], serial[i].cache_v));
    }
  }
}

}  // namespace
}  // namespace titans::kernels
