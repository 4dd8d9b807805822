// Runs a step functor (step_functors.h) over [0, n) on the CPU, split over
// at::parallel_for's threads once there is enough work to pay for them. Float
// steps run 16 (AVX-512) or 8 (AVX2) units per call where the CPU has them
// (simd.h); other dtypes, and CPUs without them, run one unit at a time.
#pragma once

#include <ATen/Parallel.h>
#include <c10/core/Device.h>

#include <type_traits>

#include "simd.h"

namespace rnnfused {

struct CpuLaunch {
  // Nothing to set on the CPU; the type keeps the op entry points device-generic.
  struct Guard {
    explicit Guard(c10::Device) {}
  };

  // Elements per task: below this one thread runs the whole step.
  static constexpr int64_t kGrainSize = 16384;

  template <typename Functor>
  static void run(int64_t n, const Functor& f) {
    if (n == 0) return;
#if defined(__x86_64__)
    if constexpr (std::is_same_v<typename Functor::scalar_type, float>) {
      const cpu::Isa isa = cpu::active_isa();
      if (isa != cpu::Isa::kScalar) {
        const int64_t rows = n / f.H;
        const int64_t grain_rows = (kGrainSize + f.H - 1) / f.H;
        at::parallel_for(0, rows, grain_rows, [&](int64_t begin, int64_t end) {
          if (isa == cpu::Isa::kAvx512) {
            cpu::run_rows_avx512(f, begin, end);
          } else {
            cpu::run_rows_avx2(f, begin, end);
          }
        });
        return;
      }
    }
#endif
    at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) f(i);
    });
  }
};

}  // namespace rnnfused
