// The CPU's float32 FMA ceiling, measured the way PERFORMANCE.md does it: a
// register-only AVX-512 loop of independent FMA chains on every thread. The
// benchmark reports each case's GFLOP/s as a share of this figure. Beside it the
// bfloat16 dot product's (AVX512-BF16 vdpbf16ps), the rate a bfloat16 kernel built
// on it could reach: the figure behind the bfloat16 layers' float32 arithmetic.
// The standard headers come before the target pragma: GCC 13 fails to inline
// std::allocator's members into implicitly defined destructors declared after it
// ("target specific option mismatch", fixed in GCC 14.2).
#include <omp.h>

#include <chrono>

#pragma GCC target("avx512f,fma")
// GCC 12 warns about the deliberately undefined vectors inside its own AVX-512 headers.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <immintrin.h>

#include "simd.h"

namespace rnnfused {
namespace cpu {

namespace {

// 12 independent chains of `insn` (AT&T operand order: a, b, c), in assembly.
#define RNNFUSED_PEAK_LOOP(insn)                                                            \
  asm volatile("1:\n\t" insn " %[a], %[b], %[c0]\n\t" insn " %[a], %[b], %[c1]\n\t" insn \
               " %[a], %[b], %[c2]\n\t" insn " %[a], %[b], %[c3]\n\t" insn                \
               " %[a], %[b], %[c4]\n\t" insn " %[a], %[b], %[c5]\n\t" insn                \
               " %[a], %[b], %[c6]\n\t" insn " %[a], %[b], %[c7]\n\t" insn                \
               " %[a], %[b], %[c8]\n\t" insn " %[a], %[b], %[c9]\n\t" insn                \
               " %[a], %[b], %[c10]\n\t" insn " %[a], %[b], %[c11]\n\t"                    \
               "dec %[i]\n\t"                                                               \
               "jnz 1b"                                                                     \
               : [c0] "+v"(c0), [c1] "+v"(c1), [c2] "+v"(c2), [c3] "+v"(c3), [c4] "+v"(c4), \
                 [c5] "+v"(c5), [c6] "+v"(c6), [c7] "+v"(c7), [c8] "+v"(c8), [c9] "+v"(c9), \
                 [c10] "+v"(c10), [c11] "+v"(c11), [i] "+r"(i)                              \
               : [a] "v"(a), [b] "v"(b)                                                     \
               : "cc")

// kBf16Dot: vdpbf16ps (c += a.even * b.even + a.odd * b.odd, 16 lanes: 64 FLOP), else
// vfmadd132ps (c = c * a + b: 32 FLOP).
template <bool kBf16Dot>
double peak_gflops(double seconds, int threads) {
  double flops = 0.0;
  const auto start = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : flops)
  {
    // 12 chains: more than the instruction's latency times its ports (FMA: 4 x 2).
    // The loop is written in assembly so that it is what runs whatever the
    // compiler does: from intrinsics GCC computed chains it could prove equal
    // once (the "peak" came out 1.5x too high: one chain per 4 cycles counted
    // as 12 FMAs), and an unoptimised (sanitizer) build kept them on the stack.
    __m512 c0 = _mm512_set1_ps(0.5f), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0,
           c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
    // For the dot product, a holds the bfloat16 pair (1e-4, 1e-4) and b (1, 1).
    const __m512 a = kBf16Dot ? _mm512_castsi512_ps(_mm512_set1_epi32(0x38d238d2))
                              : _mm512_set1_ps(0.999f);
    const __m512 b = kBf16Dot ? _mm512_castsi512_ps(_mm512_set1_epi32(0x3f803f80))
                              : _mm512_set1_ps(1e-4f);
    constexpr long kRound = 1 << 16;
    long rounds = 0;
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <
           seconds) {
      long i = kRound;
      if constexpr (kBf16Dot) {
        RNNFUSED_PEAK_LOOP("vdpbf16ps");
      } else {
        RNNFUSED_PEAK_LOOP("vfmadd132ps");
      }
      ++rounds;
    }
    flops += static_cast<double>(rounds) * kRound * 12 * (kBf16Dot ? 64 : 32);
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return flops / elapsed / 1e9;
}

#undef RNNFUSED_PEAK_LOOP

}  // namespace

double fma_peak_gflops_avx512(double seconds, int threads) {
  return peak_gflops<false>(seconds, threads);
}

double bf16_dot_peak_gflops_avx512(double seconds, int threads) {
  return peak_gflops<true>(seconds, threads);
}

}  // namespace cpu
}  // namespace rnnfused
