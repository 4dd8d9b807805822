// CUDA kernels of every layer op: the shared drivers (cuBLAS GEMMs on the current
// stream) with the CUDA step launcher. Every kernel launch goes
// through CudaLaunch::run (launch_cuda.cuh), which follows it with
// C10_CUDA_KERNEL_LAUNCH_CHECK().
#include <torch/library.h>

#include "../layers/ops_impl.h"
#include "launch_cuda.cuh"

TORCH_LIBRARY_IMPL(rnnfused, CUDA, m) {
  RNNFUSED_REGISTER_LAYER_OPS(m, rnnfused::CudaLaunch);
}
