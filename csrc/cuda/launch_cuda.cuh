// Runs a step functor (step_functors.h) over [0, n) on the current CUDA stream:
// one grid-stride kernel for every functor, checked after every launch.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#if defined(RNNFUSED_CUBLAS_DIRECT)  // setup.py: where cuBLAS's headers were found
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>

#include <climits>
#endif

#include "../layers/common.h"

namespace rnnfused {

// cuBLAS called directly for the products of the time loops: for a step's small
// GEMM, ATen's mm spends more host time (dispatch, argument checks, the
// transposed view) than the GPU spends on it, and the GPU waits for the host
// between steps. The routines and math modes of ATen's at::cuda::blas::gemm:
// cublasSgemm / cublasDgemm under the handle's math mode (TF32 as
// torch.backends.cuda.matmul says), cublasGemmEx with float32 sums for the 16-bit
// types; ATen's GEMM takes what this doesn't (everything, in a build without
// cuBLAS's headers).
namespace cublas_direct {

#if defined(RNNFUSED_CUBLAS_DIRECT)

// A row-major [rows, cols] matrix that cuBLAS takes as column-major cols x rows
// with leading dimension stride(0).
inline bool plain_matrix(const at::Tensor& t) {
  return t.dim() == 2 && t.size(0) > 0 && t.size(1) > 0 && t.stride(1) == 1 &&
         t.stride(0) >= t.size(1) && t.stride(0) <= INT_MAX && t.size(0) <= INT_MAX;
}

// out [M, N] = a [M, K] @ w^T (w [N, K]) when transpose_w, else a @ w (w [K, N]);
// plus out's own values when accumulate. Returns false, having done nothing, for
// what it doesn't take (strides, sizes, dtypes, reduced-precision reductions turned off).
inline bool gemm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& w,
                 bool transpose_w, bool accumulate) {
  const at::ScalarType dtype = out.scalar_type();
  if (a.scalar_type() != dtype || w.scalar_type() != dtype || !plain_matrix(out) ||
      !plain_matrix(a) || !plain_matrix(w)) {
    return false;
  }
  const int64_t M = out.size(0), N = out.size(1), K = a.size(1);
  const bool shapes_agree = a.size(0) == M && (transpose_w ? w.size(0) == N && w.size(1) == K
                                                           : w.size(0) == K && w.size(1) == N);
  if (!shapes_agree) return false;
  // Column-major, out^T [N, M] = op(w)^T [N, K] @ a^T [K, M].
  const cublasOperation_t op_w = transpose_w ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int ldw = static_cast<int>(w.stride(0)), lda = static_cast<int>(a.stride(0)),
            ldo = static_cast<int>(out.stride(0));
  // cublasSgemm or cublasDgemm, whose arguments differ only in T.
  auto real_gemm = [&](auto routine, auto zero) {
    using T = decltype(zero);
    const T one = 1, beta = accumulate ? 1 : 0;
    TORCH_CUDABLAS_CHECK(routine(at::cuda::getCurrentCUDABlasHandle(), op_w, CUBLAS_OP_N, m, n, k,
                                 &one, w.const_data_ptr<T>(), ldw, a.const_data_ptr<T>(), lda,
                                 &beta, out.data_ptr<T>(), ldo));
    return true;
  };
  switch (dtype) {
    case at::kFloat:
      return real_gemm(cublasSgemm, 0.0f);
    case at::kDouble:
      return real_gemm(cublasDgemm, 0.0);
    case at::kHalf:
    case at::kBFloat16: {
      const bool half = dtype == at::kHalf;
      const at::CuBLASReductionOption reduction = half
          ? at::globalContext().allowFP16ReductionCuBLAS()
          : at::globalContext().allowBF16ReductionCuBLAS();
      if (reduction != at::CuBLASReductionOption::AllowReducedPrecisionWithSplitK) return false;
      const cudaDataType_t type = half ? CUDA_R_16F : CUDA_R_16BF;
      const float one = 1, beta = accumulate ? 1 : 0;
      TORCH_CUDABLAS_CHECK(cublasGemmEx(at::cuda::getCurrentCUDABlasHandle(), op_w, CUBLAS_OP_N,
                                        m, n, k, &one, w.const_data_ptr(), type, ldw,
                                        a.const_data_ptr(), type, lda, &beta, out.data_ptr(),
                                        type, ldo, CUBLAS_COMPUTE_32F,
                                        CUBLAS_GEMM_DEFAULT_TENSOR_OP));
      return true;
    }
    default:
      return false;
  }
}
#else
inline bool gemm(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, bool) {
  return false;
}
#endif

}  // namespace cublas_direct

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
  static bool fused_backward(Args&&...) {
    TORCH_INTERNAL_ASSERT(false, "rnnfused: no fused backward loop on CUDA");
    return false;
  }
  // Nothing to keep on a calling thread here (CpuLaunch's keeps small GEMMs on it).
  struct GemmsWhereLoopRan {
    GemmsWhereLoopRan(bool, const at::Tensor&) {}
  };

  // A layer's buffer that grows with the sequence (the CPU puts large ones on
  // huge pages): the caching allocator's.
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return at::empty(sizes, options);
  }
  // The backward's gradients on the pre-activations, [rows, columns]: contiguous
  // here (CpuLaunch's may pad their rows).
  static at::Tensor gradient_rows(int64_t rows, int64_t columns, const at::TensorOptions& options) {
    return at::empty({rows, columns}, options);
  }

  // Each product out = a @ w^T (+ bias) (common.h's NtProduct) on cuBLAS: directly
  // (cublas_direct) without a bias, else through ATen.
  template <typename... Products>
  static void gemm_nt(const Products&... each) {
    (gemm_nt_one(each), ...);
  }

  // cuBLAS takes w as stored: nothing to pack (NtProduct::w_panels).
  static at::Tensor pack_gemm_weights(const NtProduct&) { return at::Tensor(); }

  // cuBLAS takes w as stored: nothing to pack for a loop's products.
  static at::Tensor pack_gemm_nn_weights(const at::Tensor&, int64_t) { return at::Tensor(); }

  static void gemm_nn(const at::Tensor& out, const at::Tensor& a, const at::Tensor& w,
                      bool accumulate, const at::Tensor& /*w_packed*/ = at::Tensor()) {
    if (!cublas_direct::gemm(out, a, w, /*transpose_w=*/false, accumulate)) {
      gemm_nn_aten(out, a, w, accumulate);
    }
  }

  static void gemm_nt_one(const NtProduct& p) {
    if (p.bias.defined() || !cublas_direct::gemm(p.out, p.a, p.w, /*transpose_w=*/true, false)) {
      gemm_nt_aten(p);
    }
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
