// The CPU's float32 FMA ceiling, measured the way PERFORMANCE.md does it: a
// register-only AVX-512 loop of independent FMA chains on every thread
// (peak_loop.h). The benchmark reports each case's GFLOP/s as a share of this
// figure. Beside it the bfloat16 dot product's (AVX512-BF16 vdpbf16ps), the rate a
// bfloat16 kernel built on it could reach: the figure behind the bfloat16 layers'
// float32 arithmetic.
// The standard headers come before the target pragma: GCC 13 fails to inline
// std::allocator's members into implicitly defined destructors declared after it
// ("target specific option mismatch", fixed in GCC 14.2).
#include <omp.h>

#include <chrono>

#pragma GCC target("avx512f,fma")
// GCC 12 warns about the deliberately undefined vectors inside its own AVX-512 headers.
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <immintrin.h>

#include "peak_loop.h"
#include "simd.h"

namespace rnnfused {
namespace cpu {

double fma_peak_gflops_avx512(double seconds, int threads) {
  // c = c * a + b: 16 lanes, 32 FLOP an instruction.
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-4f);
  return peak_gflops(seconds, threads, _mm512_set1_ps(0.5f), 32.0, [&](__m512(&c)[12]) {
    long i = kPeakRound;
    RNNFUSED_PEAK_LOOP("vfmadd132ps", c, a, b, i);
  });
}

double bf16_dot_peak_gflops_avx512(double seconds, int threads) {
  // c += a.even * b.even + a.odd * b.odd, 16 lanes: 64 FLOP an instruction; a holds
  // the bfloat16 pair (1e-4, 1e-4), b (1, 1).
  const __m512 a = _mm512_castsi512_ps(_mm512_set1_epi32(0x38d238d2));
  const __m512 b = _mm512_castsi512_ps(_mm512_set1_epi32(0x3f803f80));
  return peak_gflops(seconds, threads, _mm512_set1_ps(0.5f), 64.0, [&](__m512(&c)[12]) {
    long i = kPeakRound;
    RNNFUSED_PEAK_LOOP("vdpbf16ps", c, a, b, i);
  });
}

}  // namespace cpu
}  // namespace rnnfused
