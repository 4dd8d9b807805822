// The step functors on 16 units at a time with AVX-512 (F, BW, VL, DQ), for
// float32 and bfloat16 storage (math in float32), and the persistent loops on
// them (fused_loop.h; the vector types in simd_avx512.h, the bfloat16 loops on
// vdpbf16ps and the forward loop on AMX tiles in step_avx512_bf16.cpp). Compiled
// for AVX-512 from the target pragma on, and run only where active_isa() says so.
// Everything defined here is internal or unique to this file, so that no code
// compiled for AVX-512 can stand in for a generic copy elsewhere.
// c10::BFloat16 and c10::Half come in before the target pragma: their inline
// functions are compiled for the baseline ISA like everywhere else (this file only
// needs their size). So do the standard headers: GCC 13 fails to inline
// std::allocator's members into implicitly defined destructors declared after the
// pragma ("target specific option mismatch", fixed in GCC 14.2).
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

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,prfchw")
// GCC 12 warns about the deliberately undefined vectors inside its own AVX-512 headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include "../step_functors.h"
#include "simd.h"
#include "simd_avx512.h"

#include "simd_rows.h"
#include "fused_loop.h"

namespace rnnfused {
namespace cpu {

template <typename F>
void run_rows_avx512(const F& f, int64_t row_begin, int64_t row_end) {
  using Functor = FunctorLanes<typename F::scalar_type>;
  run_rows<Functor::template one, Functor::template pair>(f, row_begin, row_end);
}

RNNFUSED_INSTANTIATE_RUN_ROWS(run_rows_avx512, float);
RNNFUSED_INSTANTIATE_RUN_ROWS(run_rows_avx512, c10::BFloat16);
RNNFUSED_INSTANTIATE_RUN_ROWS(run_rows_avx512, c10::Half);

void bf16_gate_math_avx512(const float* x, float* sigmoid_out, float* tanh_out, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const Bf16Lanes<true> lanes(static_cast<int>(std::min<int64_t>(16, n - i)));
    const Bf16Vec v = lanes.load(x + i);
    lanes.store(sigmoid_out + i, sigmoid(v));
    lanes.store(tanh_out + i, tanh_of(v));
  }
}

RNNFUSED_DEFINE_FUSED_LOOPS(run_fused_steps_avx512, run_fused_backward_avx512, pack_recurrent_tiles_avx512);
RNNFUSED_INSTANTIATE_FUSED_LOOPS(run_fused_steps_avx512, run_fused_backward_avx512, c10::BFloat16);
RNNFUSED_INSTANTIATE_FUSED_LOOPS(run_fused_steps_avx512, run_fused_backward_avx512, c10::Half);

}  // namespace cpu
}  // namespace rnnfused
