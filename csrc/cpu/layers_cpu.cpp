// CPU kernels of every layer op: the shared drivers with the CPU step launcher.
#include <torch/library.h>

#include "../layers/ops_impl.h"
#include "launch_cpu.h"

TORCH_LIBRARY_IMPL(rnnfused, CPU, m) {
  RNNFUSED_REGISTER_LAYER_OPS(m, rnnfused::CpuLaunch);
}
