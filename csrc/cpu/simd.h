// Which vectorised step kernels this CPU runs, and their entry points. The
// kernels live in step_avx512.cpp and step_avx2.cpp, compiled for those
// instruction sets; everything else runs on any x86-64 (or other) CPU.
// No ATen here: the ISA translation units include this header.
#pragma once

#include <cstdint>

namespace rnnfused {
namespace cpu {

enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The best instruction set both the CPU and the build support, capped by the
// environment variable RNNFUSED_CPU_ISA ("scalar", "avx2", "avx512") when set.
// Decided once per process.
Isa active_isa();
const char* isa_name(Isa isa);

// Run the step functor `f` (step_functors.h, float) over rows [row_begin,
// row_end) and all of its H units, 16 (AVX-512) or 8 (AVX2) units per call.
template <typename F>
void run_rows_avx512(const F& f, int64_t row_begin, int64_t row_end);
template <typename F>
void run_rows_avx2(const F& f, int64_t row_begin, int64_t row_end);

}  // namespace cpu
}  // namespace rnnfused
