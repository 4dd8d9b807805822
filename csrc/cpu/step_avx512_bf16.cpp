// The bfloat16 persistent loops on AVX512-BF16's dot product (run_fused_steps_dpbf16
// and run_fused_backward_dpbf16), called only where bf16_dot_loops() (the CPU has
// AVX512-BF16; AMD's Zen 4/5), and the forward loop on AMX tiles (amx_loop.h's
// run_fused_steps_amx, only where amx_tiles_enabled(): every CPU with AMX-BF16 has
// AVX512-BF16). Their own file, compiled with avx512bf16 added to step_avx512.cpp's
// target, so that vdpbf16ps is the compiler's intrinsic rather than inline assembly
// and the loops round to bfloat16 with vcvtneps2bf16 (bf16_avx512.h), while no code
// that runs on the AVX-512 CPUs without it (Skylake-X, Ice Lake) is compiled for it.
// The vector types are step_avx512.cpp's (simd_avx512.h), a copy of their own here
// (unnamed namespace). The tile loop moved here from step_avx512.cpp for the
// rounding: its functors store a bfloat16 layer's c' and h' and a float32 layer's
// bfloat16 operand (under "medium") with one instruction rather than bf16_avx512.h's
// integer form (~7); processes alternating, two Xeon vCPUs, bfloat16 forward: RNN
// 100, 128, 128, 128 18% faster, GRU 6.5%, LSTM H 128-512 3.4-4.8%, H 64 1.8%.
// The headers before the target pragma as in step_avx512.cpp (GCC 13 and
// std::allocator's members).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,prfchw,avx512bf16")
// GCC 12 warns about the deliberately undefined vectors inside its own AVX-512 headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

// This file's code runs only on AVX512-BF16 CPUs: bf16_avx512.h rounds to bfloat16
// with the instruction (vcvtneps2bf16) here.
#define RNNFUSED_TARGET_AVX512_BF16 1

#include "../step_functors.h"
#include "simd.h"
#include "simd_avx512.h"

namespace rnnfused {
namespace cpu {
namespace {

// Simd's loops with each step k of the reduction a pair of state units (the
// backward's: a pair of W_hh's rows). A float32 "value" of the state rows and of the
// packed weights is two bfloat16, the lower the even unit's (PackedRecurrent over
// W_hh's pairs), so the broadcast and loads stay Simd's and the multiply-add becomes
// vdpbf16ps: acc += a.odd * b.odd + a.even * b.even, lane by lane (exact products,
// float32 sums, denormals flushed). Half the instructions of the float32 loop on
// widened values, each at the FMA's rate on Zen 5 (bench.py's peaks: 1005 against
// 558 GFLOP/s on two cores).
// The intrinsic, not inline assembly ("+v"(acc)): around the asm GCC 12 copied
// a 4-row block's accumulators to other registers at every vdpbf16ps and kept
// one on the stack, a chain through memory (LSTM B 16 = 6 + 6 + 4 rows: the 4-row
// block took 1.5x the 6-row blocks' time a row; now the same).
// In-process A/B, two Zen 5 cores, forward, where a 4-row block is left (B % 6 == 4):
// LSTM H 512 B 16 11% faster, B 28 7%, B 64 2.6%; H 128-1024 B 16 4.5-11%, B 64 2-3%;
// B 8 (6 + 2 rows) 2%; other batches (whole or spread blocks, B 20-36, 128) within
// 1%; GRU and RNN (8- and 12-row blocks) and every backward within noise.
struct SimdDot : Simd {
  using State = c10::BFloat16;
  static constexpr int64_t kStatePerK = 2;
  // Two tiles' functors together at every depth: the products take half the float32
  // loop's instructions, the gate math as many. Paired against each tile's own,
  // in-process A/B, T 50: LSTM H 64 B 16-256 4-6% faster, H 128 1.5-4%, H 512 B 16-256
  // within 2%; GRU H 64 5-8%, H 512 within 0.5%.
  static constexpr int64_t kPairedFunctorDepth = INT64_MAX;
  static V fma(V a, V b, V c) {
    // GCC's vector casts: the same 64 bytes, read as 32 bfloat16.
    return _mm512_dpbf16_ps(c, (__m512bh)a, (__m512bh)b);
  }
};

}  // namespace
}  // namespace cpu
}  // namespace rnnfused

#include "simd_rows.h"
#include "fused_loop.h"
#include "amx_loop.h"

namespace rnnfused {
namespace cpu {

RNNFUSED_DEFINE_FUSED_LOOP_ENTRIES(SimdDot, run_fused_steps_dpbf16, run_fused_backward_dpbf16)
RNNFUSED_INSTANTIATE_FUSED_LOOPS(run_fused_steps_dpbf16, run_fused_backward_dpbf16, c10::BFloat16);
RNNFUSED_DEFINE_AMX_LOOP(run_fused_steps_amx);

}  // namespace cpu
}  // namespace rnnfused
