// The register-only FMA loop behind the benchmark's "% of peak", written once for
// the ISA files that instantiate it (peak_avx512.cpp, peak_avx2.cpp) under their
// target pragmas: `threads` threads run 12 independent chains of one instruction
// from registers for `seconds`.
// The loop is assembly so that it is what runs whatever the compiler does: from
// intrinsics GCC computed chains it could prove equal once (the "peak" came out
// 1.5x too high: one chain per 4 cycles counted as 12 FMAs), and an unoptimised
// (sanitizer) build kept them on the stack.
#pragma once

#include <omp.h>

#include <chrono>

namespace rnnfused {
namespace cpu {
namespace {

// 12 independent chains of `insn` (AT&T operand order: a, b, c) on c[0..11], i rounds.
#define RNNFUSED_PEAK_LOOP(insn, c, a, b, i)                                                   \
  asm volatile("1:\n\t" insn " %[a], %[b], %[c0]\n\t" insn " %[a], %[b], %[c1]\n\t" insn    \
               " %[a], %[b], %[c2]\n\t" insn " %[a], %[b], %[c3]\n\t" insn                   \
               " %[a], %[b], %[c4]\n\t" insn " %[a], %[b], %[c5]\n\t" insn                   \
               " %[a], %[b], %[c6]\n\t" insn " %[a], %[b], %[c7]\n\t" insn                   \
               " %[a], %[b], %[c8]\n\t" insn " %[a], %[b], %[c9]\n\t" insn                   \
               " %[a], %[b], %[c10]\n\t" insn " %[a], %[b], %[c11]\n\t"                       \
               "dec %[i]\n\t"                                                                  \
               "jnz 1b"                                                                        \
               : [c0] "+v"(c[0]), [c1] "+v"(c[1]), [c2] "+v"(c[2]), [c3] "+v"(c[3]),          \
                 [c4] "+v"(c[4]), [c5] "+v"(c[5]), [c6] "+v"(c[6]), [c7] "+v"(c[7]),          \
                 [c8] "+v"(c[8]), [c9] "+v"(c[9]), [c10] "+v"(c[10]), [c11] "+v"(c[11]),      \
                 [i] "+r"(i)                                                                   \
               : [a] "v"(a), [b] "v"(b)                                                        \
               : "cc")

// GFLOP/s of `threads` threads each running round(c) (kPeakRound iterations of
// the 12 chains on c[12], every chain from `start`) until `seconds` have passed;
// flops_per_insn: 2 x the lanes of an FMA, 4 x those of a pairwise dot product.
constexpr long kPeakRound = 1 << 16;

template <typename Vec, typename Round>
double peak_gflops(double seconds, int threads, Vec start, double flops_per_insn,
                   const Round& round) {
  double flops = 0.0;
  const auto begin = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : flops)
  {
    // 12 chains: more than the instruction's latency times its ports (FMA: 4-5 x 2).
    Vec c[12];
    for (Vec& chain : c) chain = start;
    long rounds = 0;
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count() <
           seconds) {
      round(c);
      ++rounds;
    }
    flops += static_cast<double>(rounds) * kPeakRound * 12 * flops_per_insn;
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  return flops / elapsed / 1e9;
}

}  // namespace
}  // namespace cpu
}  // namespace rnnfused
