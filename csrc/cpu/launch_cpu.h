// Runs a step functor (step_functors.h) over [0, n) on the CPU, split over
// at::parallel_for's threads once there is enough work to pay for them.
#pragma once

#include <ATen/Parallel.h>
#include <c10/core/Device.h>

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
    at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) f(i);
    });
  }
};

}  // namespace rnnfused
