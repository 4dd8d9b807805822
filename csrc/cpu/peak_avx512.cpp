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
    __m512 c0 = _mm512_set1_ps(seed), c1 = _mm512_set1_ps(seed + 0.01f),
           c2 = _mm512_set1_ps(seed + 0.02f), c3 = _mm512_set1_ps(seed + 0.03f),
           c4 = _mm512_set1_ps(seed + 0.04f), c5 = _mm512_set1_ps(seed + 0.05f),
           c6 = _mm512_set1_ps(seed + 0.06f), c7 = _mm512_set1_ps(seed + 0.07f),
           c8 = _mm512_set1_ps(seed + 0.08f), c9 = _mm512_set1_ps(seed + 0.09f),
           c10 = _mm512_set1_ps(seed + 0.10f), c11 = _mm512_set1_ps(seed + 0.11f);
    const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-4f);
    constexpr long kRound = 1 << 16;
    long rounds = 0;
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <
           seconds) {
      for (long i = 0; i < kRound; ++i) {
        c0 = _mm512_fmadd_ps(c0, a, b);
        c1 = _mm512_fmadd_ps(c1, a, b);
        c2 = _mm512_fmadd_ps(c2, a, b);
        c3 = _mm512_fmadd_ps(c3, a, b);
        c4 = _mm512_fmadd_ps(c4, a, b);
        c5 = _mm512_fmadd_ps(c5, a, b);
        c6 = _mm512_fmadd_ps(c6, a, b);
        c7 = _mm512_fmadd_ps(c7, a, b);
        c8 = _mm512_fmadd_ps(c8, a, b);
        c9 = _mm512_fmadd_ps(c9, a, b);
        c10 = _mm512_fmadd_ps(c10, a, b);
        c11 = _mm512_fmadd_ps(c11, a, b);
      }
      ++rounds;
    }
    // Keep the chains alive: their sum is (nearly) never negative.
    const __m512 sum = _mm512_add_ps(
        _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)),
                      _mm512_add_ps(_mm512_add_ps(c4, c5), _mm512_add_ps(c6, c7))),
        _mm512_add_ps(_mm512_add_ps(c8, c9), _mm512_add_ps(c10, c11)));
    const bool kept = _mm512_reduce_add_ps(sum) >= -1.0f;
    flops += kept ? static_cast<double>(rounds) * kRound * 12 * 32 : 0.0;
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return flops / elapsed / 1e9;
}

}  // namespace cpu
}  // namespace rnnfused
