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
    // 12 chains c = c * a + b: more than the FMA latency times the FMA ports (4 x 2).
    // The loop is written in assembly so that it is what runs whatever the
    // compiler does: from intrinsics GCC computed chains it could prove equal
    // once (the "peak" came out 1.5x too high: one chain per 4 cycles counted
    // as 12 FMAs), and an unoptimised (sanitizer) build kept them on the stack.
    __m512 c0 = _mm512_set1_ps(0.5f), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0,
           c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
    const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-4f);
    constexpr long kRound = 1 << 16;
    long rounds = 0;
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <
           seconds) {
      long i = kRound;
      asm volatile(
          "1:\n\t"
          "vfmadd132ps %[a], %[b], %[c0]\n\t"
          "vfmadd132ps %[a], %[b], %[c1]\n\t"
          "vfmadd132ps %[a], %[b], %[c2]\n\t"
          "vfmadd132ps %[a], %[b], %[c3]\n\t"
          "vfmadd132ps %[a], %[b], %[c4]\n\t"
          "vfmadd132ps %[a], %[b], %[c5]\n\t"
          "vfmadd132ps %[a], %[b], %[c6]\n\t"
          "vfmadd132ps %[a], %[b], %[c7]\n\t"
          "vfmadd132ps %[a], %[b], %[c8]\n\t"
          "vfmadd132ps %[a], %[b], %[c9]\n\t"
          "vfmadd132ps %[a], %[b], %[c10]\n\t"
          "vfmadd132ps %[a], %[b], %[c11]\n\t"
          "dec %[i]\n\t"
          "jnz 1b"
          : [c0] "+v"(c0), [c1] "+v"(c1), [c2] "+v"(c2), [c3] "+v"(c3), [c4] "+v"(c4),
            [c5] "+v"(c5), [c6] "+v"(c6), [c7] "+v"(c7), [c8] "+v"(c8), [c9] "+v"(c9),
            [c10] "+v"(c10), [c11] "+v"(c11), [i] "+r"(i)
          : [a] "v"(a), [b] "v"(b)
          : "cc");
      ++rounds;
    }
    flops += static_cast<double>(rounds) * kRound * 12 * 32;
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return flops / elapsed / 1e9;
}

}  // namespace cpu
}  // namespace rnnfused
