// The CPU's float32 FMA ceiling on AVX2 and FMA (CPUs without AVX-512): the loop
// of peak_avx512.cpp (peak_loop.h) on 8-lane vectors.
// The standard headers come before the target pragma (see peak_avx512.cpp).
#include <omp.h>

#include <chrono>

#pragma GCC target("avx2,fma")

#include <immintrin.h>

#include "peak_loop.h"
#include "simd.h"

namespace rnnfused {
namespace cpu {

double fma_peak_gflops_avx2(double seconds, int threads) {
  // c = c * a + b: 8 lanes, 16 FLOP an instruction.
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-4f);
  return peak_gflops(seconds, threads, _mm256_set1_ps(0.5f), 16.0, [&](__m256(&c)[12]) {
    long i = kPeakRound;
    RNNFUSED_PEAK_LOOP("vfmadd132ps", c, a, b, i);
  });
}

}  // namespace cpu
}  // namespace rnnfused
