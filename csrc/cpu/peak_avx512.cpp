// The CPU's float32 FMA ceiling, measured the way PERFORMANCE.md does it: a
// register-only AVX-512 loop of independent FMA chains on every thread. The
// benchmark reports each case's GFLOP/s as a share of this figure.
#pragma GCC target("avx512f,fma")
// GCC 12 warns about the deliberately undefined vectors inside its own AVX-512 headers.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <immintrin.h>
#include <omp.h>

#include <chrono>

#include "simd.h"

namespace rnnfused {
namespace cpu {

double fma_peak_gflops_avx512(double seconds, int threads) {
  double flops = 0.0;
  const auto start = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : flops)
  {
    // 12 chains: more than the FMA latency times the FMA ports (4 x 2). They
    // start from different values known only at run time: chains the compiler
    // can prove equal it computes once (GCC did, and the "peak" came out 1.5x
    // too high on a 2.9 GHz core: one chain per 4 cycles counted as 12 FMAs).
    const float seed = 0.5f + 1e-3f * static_cast<float>(omp_get_thread_num());
    __m512 c[12];
    for (int i = 0; i < 12; ++i) c[i] = _mm512_set1_ps(seed + 0.01f * static_cast<float>(i));
    const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-4f);
    constexpr long kRound = 1 << 16;
    long rounds = 0;
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <
           seconds) {
      for (long i = 0; i < kRound; ++i) {
        for (int j = 0; j < 12; ++j) c[j] = _mm512_fmadd_ps(c[j], a, b);
      }
      ++rounds;
    }
    // Keep the chains alive: their sum is (nearly) never negative.
    __m512 sum = c[0];
    for (int i = 1; i < 12; ++i) sum = _mm512_add_ps(sum, c[i]);
    const bool kept = _mm512_reduce_add_ps(sum) >= -1.0f;
    flops += kept ? static_cast<double>(rounds) * kRound * 12 * 32 : 0.0;
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return flops / elapsed / 1e9;
}

}  // namespace cpu
}  // namespace rnnfused
