// The CUDA sequence kernels against the CPU ones on the same streams: the conv bit for bit (both
// round each product and sum), the attention within fp32 rounding (the GPU's exp / cos differ
// from libm's in the last bits); and on the GPU a stream alone gives the same bits as batched.
// Skips cleanly where the build has no CUDA kernels or the machine has no GPU.
#include "kernels/sequence_kernels_cuda.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "kernels/memory_kernel_cuda.h"
#include "kernels/sequence_kernels.h"

#ifdef TITANS_WITH_CUDA_KERNELS
#include <cuda_runtime_api.h>
#endif

namespace titans::kernels {
namespace {

#ifdef TITANS_WITH_CUDA_KERNELS
bool HaveGpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

// A device copy of a host vector, freed with the object.
struct DeviceBuffer {
  float* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(const std::vector<float>& host) : n(host.size()) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&ptr), sizeof(float) * (n ? n : 1)), cudaSuccess);
    if (n) cudaMemcpy(ptr, host.data(), sizeof(float) * n, cudaMemcpyHostToDevice);
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  std::vector<float> Host() const {
    std::vector<float> out(n);
    if (n) cudaMemcpy(out.data(), ptr, sizeof(float) * n, cudaMemcpyDeviceToHost);
    return out;
  }
};

std::vector<float> Random(size_t n, std::mt19937* rng) {
  std::normal_distribution<float> normal;
  std::vector<float> v(n);
  for (float& x : v) x = normal(*rng);
  return v;
}
#endif

TEST(SequenceKernelsCuda, ConvAndAttentionMatchTheCpuAndAreBatchInvariant) {
#ifndef TITANS_WITH_CUDA_KERNELS
  GTEST_SKIP() << "this build has no CUDA kernels";
#else
  if (!HaveGpu()) GTEST_SKIP() << "no GPU on this machine";
  std::mt19937 rng(17);
  // Conv: three streams, one shorter than the tail.
  {
    const int64_t C = 48;
    const int K = 4;
    const std::vector<int64_t> lengths = {1, 9, 130};
    int64_t rows = 0;
    for (int64_t n : lengths) rows += n;
    const std::vector<float> x = Random(rows * C, &rng), w = Random(C * K, &rng);
    const std::vector<float> tails = Random(lengths.size() * (K - 1) * C, &rng);
    std::vector<float> y_cpu(rows * C), tails_cpu(tails.size());
    std::vector<ConvStream> cpu;
    int64_t begin = 0;
    for (size_t i = 0; i < lengths.size(); ++i) {
      cpu.push_back(
          {begin, lengths[i], tails.data() + i * (K - 1) * C, tails_cpu.data() + i * (K - 1) * C});
      begin += lengths[i];
    }
    RaggedCausalConv(x.data(), C, w.data(), K, cpu.data(), static_cast<int64_t>(cpu.size()),
                     y_cpu.data());
    DeviceBuffer dx(x), dw(w), dtails(tails), dy(std::vector<float>(rows * C)),
        dtails_out(std::vector<float>(tails.size()));
    std::vector<ConvStream> gpu = cpu;
    for (size_t i = 0; i < gpu.size(); ++i) {
      gpu[i].tail = dtails.ptr + i * (K - 1) * C;
      gpu[i].tail_out = dtails_out.ptr + i * (K - 1) * C;
    }
    ASSERT_EQ(RaggedCausalConvCuda(dx.ptr, C, dw.ptr, K, gpu.data(),
                                   static_cast<int64_t>(gpu.size()), dy.ptr, nullptr),
              "");
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(dy.Host(), y_cpu);
    EXPECT_EQ(dtails_out.Host(), tails_cpu);
    // The same streams with ring tails updated in place (sequence_kernels.h): the same bits, and
    // the rows of the tails before the call untouched.
    for (size_t i = 0; i < lengths.size(); ++i) {
      const int64_t cap = K - 1 + lengths[i] + 1, start = cap / 2;
      std::vector<float> ring(cap * C, NAN);
      for (int64_t r = 0; r < K - 1; ++r) {
        std::copy_n(tails.begin() + (i * (K - 1) + r) * C, C,
                    ring.begin() + ((start + r) % cap) * C);
      }
      DeviceBuffer dring(ring), dy1(std::vector<float>(rows * C));
      ConvStream s = gpu[i];
      s.tail = dring.ptr;
      s.tail_out = nullptr;
      s.tail_capacity = cap;
      s.tail_start = start;
      s.in_place = true;
      ASSERT_EQ(RaggedCausalConvCuda(dx.ptr, C, dw.ptr, K, &s, 1, dy1.ptr, nullptr), "");
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const std::vector<float> y1 = dy1.Host(), got = dring.Host();
      for (int64_t e = s.begin * C; e < (s.begin + s.length) * C; ++e) EXPECT_EQ(y1[e], y_cpu[e]);
      for (int64_t r = 0; r < K - 1; ++r) {
        for (int64_t c = 0; c < C; ++c) {
          EXPECT_EQ(got[((start + lengths[i] + r) % cap) * C + c],
                    tails_cpu[(i * (K - 1) + r) * C + c]);
          EXPECT_EQ(got[((start + r) % cap) * C + c], ring[((start + r) % cap) * C + c]);
        }
      }
    }
  }
  // Attention: three streams at different positions and cache fill, batched and alone; one and
  // two (MAC's) entries per token.
  for (const int E : {1, 2}) {
    SCOPED_TRACE("entries per token " + std::to_string(E));
    WindowShape sh;
    sh.heads = 2;
    sh.head_dim = 16;
    sh.window = 8;
    sh.persistent = 2;
    sh.entries_per_token = E;
    const int64_t hd = sh.heads * sh.head_dim;
    struct Case {
      int64_t length, cached, position;
    };
    const std::vector<Case> cases = {{1, 0, 0}, {5, 7, 40}, {12, 7, 1000003}};
    int64_t rows = 0;
    for (const Case& c : cases) rows += c.length;
    const std::vector<float> q = Random(rows * hd, &rng), k = Random(rows * E * hd, &rng),
                             v = Random(rows * E * hd, &rng);
    const std::vector<float> pk = Random(sh.heads * sh.persistent * sh.head_dim, &rng),
                             pv = Random(sh.heads * sh.persistent * sh.head_dim, &rng);
    std::vector<std::vector<float> > ck, cv;
    for (const Case& c : cases) {
      ck.push_back(Random(sh.heads * c.cached * E * sh.head_dim, &rng));
      cv.push_back(Random(sh.heads * c.cached * E * sh.head_dim, &rng));
    }
    // CPU reference.
    std::vector<float> out_cpu(rows * hd);
    std::vector<std::vector<float> > ck_out, cv_out;
    std::vector<AttentionStream> cpu;
    int64_t begin = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
      const int64_t keep =
          std::min<int64_t>(E * (sh.window - 1), E * (cases[i].cached + cases[i].length));
      ck_out.emplace_back(sh.heads * keep * sh.head_dim);
      cv_out.emplace_back(sh.heads * keep * sh.head_dim);
      AttentionStream s;
      s.begin = begin;
      s.length = cases[i].length;
      s.position = cases[i].position;
      s.cache_k = ck[i].data();
      s.cache_v = cv[i].data();
      s.cached = cases[i].cached * E;
      s.cache_k_out = ck_out[i].data();
      s.cache_v_out = cv_out[i].data();
      cpu.push_back(s);
      begin += s.length;
    }
    RaggedWindowAttention(sh, q.data(), k.data(), v.data(), pk.data(), pv.data(), cpu.data(),
                          static_cast<int64_t>(cpu.size()), out_cpu.data());
    DeviceBuffer dq(q), dk(k), dv(v), dpk(pk), dpv(pv), dout(std::vector<float>(rows * hd));
    std::vector<std::unique_ptr<DeviceBuffer> > dck, dcv, dck_out, dcv_out;
    std::vector<AttentionStream> gpu = cpu;
    for (size_t i = 0; i < cases.size(); ++i) {
      dck.push_back(std::make_unique<DeviceBuffer>(ck[i]));
      dcv.push_back(std::make_unique<DeviceBuffer>(cv[i]));
      dck_out.push_back(std::make_unique<DeviceBuffer>(std::vector<float>(ck_out[i].size())));
      dcv_out.push_back(std::make_unique<DeviceBuffer>(std::vector<float>(cv_out[i].size())));
      gpu[i].cache_k = dck[i]->ptr;
      gpu[i].cache_v = dcv[i]->ptr;
      gpu[i].cache_k_out = dck_out[i]->ptr;
      gpu[i].cache_v_out = dcv_out[i]->ptr;
    }
    ASSERT_EQ(RaggedWindowAttentionCuda(sh, dq.ptr, dk.ptr, dv.ptr, dpk.ptr, dpv.ptr, gpu.data(),
                                        static_cast<int64_t>(gpu.size()), dout.ptr, nullptr),
              "");
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> out_gpu = dout.Host();
    double worst = 0;
    for (size_t i = 0; i < out_gpu.size(); ++i) {
      worst = std::max(worst, std::abs(static_cast<double>(out_gpu[i]) - out_cpu[i]));
    }
    EXPECT_LT(worst, 1e-5);
    for (size_t i = 0; i < cases.size(); ++i) {
      // Rotated keys: the GPU's cos / sin may differ in the last bits.
      const std::vector<float> got = dck_out[i]->Host();
      for (size_t j = 0; j < got.size(); ++j) EXPECT_NEAR(got[j], ck_out[i][j], 1e-5);
      EXPECT_EQ(dcv_out[i]->Host(), cv_out[i]);
    }
    // The last stream alone (rows shifted to 0) gives the batched bits.
    AttentionStream alone = gpu.back();
    const int64_t shift = alone.begin * hd;
    alone.begin = 0;
    DeviceBuffer dq1(std::vector<float>(q.begin() + shift, q.end())),
        dk1(std::vector<float>(k.begin() + shift * E, k.end())),
        dv1(std::vector<float>(v.begin() + shift * E, v.end())),
        dout1(std::vector<float>(alone.length * hd)),
        dck1(std::vector<float>(ck_out.back().size())),
        dcv1(std::vector<float>(cv_out.back().size()));
    alone.cache_k_out = dck1.ptr;
    alone.cache_v_out = dcv1.ptr;
    ASSERT_EQ(RaggedWindowAttentionCuda(sh, dq1.ptr, dk1.ptr, dv1.ptr, dpk.ptr, dpv.ptr, &alone, 1,
                                        dout1.ptr, nullptr),
              "");
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(dout1.Host(), std::vector<float>(out_gpu.begin() + shift, out_gpu.end()));
    EXPECT_EQ(dck1.Host(), dck_out.back()->Host());
    // The same streams with their caches in rings updated in place (sequence_kernels.h): the
    // packed call's bits, and the entries of the caches before the call untouched.
    std::vector<std::unique_ptr<DeviceBuffer> > rk, rv;
    std::vector<std::vector<float> > rk_before;
    std::vector<int64_t> capacity, start;
    std::vector<AttentionStream> rings = gpu;
    for (size_t i = 0; i < cases.size(); ++i) {
      const int64_t n = cases[i].cached * E, cap = n + cases[i].length * E + 1, from = cap / 2;
      std::vector<float> hk(sh.heads * cap * sh.head_dim, NAN), hv = hk;
      for (int64_t h = 0; h < sh.heads; ++h) {
        for (int64_t j = 0; j < n; ++j) {
          for (int64_t d = 0; d < sh.head_dim; ++d) {
            const int64_t at = (h * cap + (from + j) % cap) * sh.head_dim + d;
            hk[at] = ck[i][(h * n + j) * sh.head_dim + d];
            hv[at] = cv[i][(h * n + j) * sh.head_dim + d];
          }
        }
      }
      rk.push_back(std::make_unique<DeviceBuffer>(hk));
      rv.push_back(std::make_unique<DeviceBuffer>(hv));
      rk_before.push_back(hk);
      capacity.push_back(cap);
      start.push_back(from);
      rings[i].cache_k = rk[i]->ptr;
      rings[i].cache_v = rv[i]->ptr;
      rings[i].cache_capacity = cap;
      rings[i].cache_start = from;
      rings[i].cache_k_out = rings[i].cache_v_out = nullptr;
      rings[i].in_place = true;
    }
    DeviceBuffer dout_ring(std::vector<float>(rows * hd));
    ASSERT_EQ(RaggedWindowAttentionCuda(sh, dq.ptr, dk.ptr, dv.ptr, dpk.ptr, dpv.ptr, rings.data(),
                                        static_cast<int64_t>(rings.size()), dout_ring.ptr, nullptr),
              "");
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(dout_ring.Host(), out_gpu);
    for (size_t i = 0; i < cases.size(); ++i) {
      const int64_t n = cases[i].cached * E, cap = capacity[i];
      const int64_t total = n + cases[i].length * E;
      const int64_t keep = std::min<int64_t>(E * (sh.window - 1), total);
      const std::vector<float> got = rk[i]->Host(), packed = dck_out[i]->Host();
      for (int64_t h = 0; h < sh.heads; ++h) {
        for (int64_t d = 0; d < sh.head_dim; ++d) {
          for (int64_t e = 0; e < keep; ++e) {  // the cache after the call
            const int64_t at = (h * cap + (start[i] + total - keep + e) % cap) * sh.head_dim + d;
            EXPECT_EQ(got[at], packed[(h * keep + e) * sh.head_dim + d]);
          }
          for (int64_t j = 0; j < n; ++j) {  // the cache before the call
            const int64_t at = (h * cap + (start[i] + j) % cap) * sh.head_dim + d;
            EXPECT_EQ(got[at], rk_before[i][at]);
          }
        }
      }
    }
  }
#endif
}

TEST(SequenceKernelsCuda, StubReportsAbsence) {
  if (CudaKernelsBuilt()) GTEST_SKIP() << "CUDA kernels are built";
  float x = 0;
  ConvStream s{0, 1, &x, &x};
  EXPECT_NE(RaggedCausalConvCuda(&x, 1, &x, 1, &s, 1, &x, nullptr), "");
}

}  // namespace
}  // namespace titans::kernels
