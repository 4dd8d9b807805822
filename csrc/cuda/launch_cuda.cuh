// Runs a step functor (step_functors.h) over [0, n) on the current CUDA stream:
// one grid-stride kernel for every functor, checked after every launch.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "../layers/common.h"

namespace rnnfused {

template <typename Functor>
__global__ void step_kernel(int64_t n, Functor f) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    f(i);
  }
}

struct CudaLaunch {
  using Guard = c10::cuda::CUDAGuard;

  // No persistent fused forward loop on CUDA yet: a GEMM and a launch per step.
  template <typename scalar_t, typename Sizes>
  static bool fuses_forward(const Sizes&) {
    return false;
  }
  template <typename scalar_t, typename Sizes>
  static bool fuses_backward(const Sizes&) {
    return false;
  }
  template <typename scalar_t, typename... Args>
  static at::Tensor fused_forward(Args&&...) {
    TORCH_INTERNAL_ASSERT(false, "rnnfused: no fused forward loop on CUDA");
    return at::Tensor();
  }
  template <typename scalar_t, typename... Args>
  static void fused_backward(Args&&...) {
    TORCH_INTERNAL_ASSERT(false, "rnnfused: no fused backward loop on CUDA");
  }

  // A layer's buffer that grows with the sequence (the CPU puts large ones on
  // huge pages): the caching allocator's.
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return at::empty(sizes, options);
  }

  // Each product out = a @ w^T (+ bias) (common.h's NtProduct) on cuBLAS.
  template <typename... Products>
  static void gemm_nt(const Products&... each) {
    (gemm_nt_aten(each), ...);
  }

  static void gemm_nn(const at::Tensor& out, const at::Tensor& a, const at::Tensor& w,
                      bool accumulate) {
    gemm_nn_aten(out, a, w, accumulate);
  }

  static constexpr int kThreads = 256;
  // Enough blocks to fill any current GPU; the grid-stride loop covers the rest.
  static constexpr int64_t kMaxBlocks = 4096;

  template <typename Functor>
  static void run(int64_t n, const Functor& f) {
    if (n == 0) return;
    const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks);
    step_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        n, f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace rnnfused
