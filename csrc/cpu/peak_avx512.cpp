// The CPU's float32 FMA ceiling, measured the way PERFORMANCE.md does it: a
// register-only AVX-512 loop of independent FMA chains on every thread
// (peak_loop.h). The benchmark reports each case's GFLOP/s as a share of this
// figure. Beside it the bfloat16 dot product's (AVX512-BF16 vdpbf16ps), the rate a
// bfloat16 kernel built on it could reach: the figure behind the bfloat16 layers'
// float32 arithmetic; and the AMX tiles' (tdpbf16ps), which the bfloat16 layers'
// forward loops (and float32 ones' under torch's "medium" matmul precision) run on.
// The standard headers come before the target pragma: GCC 13 fails to inline
// std::allocator's members into implicitly defined destructors declared after it
// ("target specific option mismatch", fixed in GCC 14.2).
#include <omp.h>

#include <chrono>
#include <cstdint>

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

namespace {

// The TMUL's: tdpbf16ps on 4 independent sum tiles (16 x 16 float32) from two row tiles
// and two weight tiles (16 x 32 bfloat16) held in tile registers, 16 x 16 x 32 x 2 FLOP
// an instruction. (A function of its own: in C++ a target attribute on the exported
// function would make it a version of it, GCC's multiversioning, with no default.)
__attribute__((target("amx-tile,amx-bf16"))) double tile_peak_gflops(double seconds,
                                                                    int threads) {
  constexpr double kFlopsPerInsn = 2.0 * kAmxRows * kAmxUnits * kAmxDepth;  // 16 x 16 x 32
  constexpr long kRound = 1 << 12;  // 4 instructions each
  double flops = 0.0;
  const auto begin = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : flops)
  {
    const TileConfig config;
    _tile_loadconfig(&config);
    // Operands of bfloat16 ones (0x3f80): the sums grow by 32 an instruction and stay
    // finite (the rate does not depend on the values).
    alignas(64) uint16_t operand[kAmxTileValues];
    for (uint16_t& v : operand) v = 0x3f80;
    _tile_loadd(4, operand, 64);
    _tile_loadd(5, operand, 64);
    _tile_loadd(6, operand, 64);
    _tile_loadd(7, operand, 64);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    long rounds = 0;
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count() <
           seconds) {
      for (long i = 0; i < kRound; ++i) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      ++rounds;
    }
    _tile_release();
    flops += static_cast<double>(rounds) * kRound * 4 * kFlopsPerInsn;
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  return flops / elapsed / 1e9;
}

}  // namespace

// The caller checks amx_tiles_enabled() (the tile state granted).
double amx_bf16_peak_gflops(double seconds, int threads) {
  return tile_peak_gflops(seconds, threads);
}

}  // namespace cpu
}  // namespace rnnfused
