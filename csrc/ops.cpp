// The op schemas, declared once for every backend (kernels register per device
// in cpu/ and cuda/). Sequence arguments: `input` is [T, B, I] when
// `batch_sizes` is None, else the packed data [N, I]; `output` follows it.
// Saved workspaces (`gates`, `cells`, `workspace`) are [N, k * hidden_size] when
// `need_workspace` (a backward will follow), else empty.
// output_mask: which of (input, initial states, w_ih, w_hh, b_ih, b_hh, w_hr) get
// gradients; the others come back as [0] tensors and cost no work.
#include <Python.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

#include "cpu/fused_forward_cpu.h"
#include "cpu/huge_pages.h"
#include "cpu/simd.h"

TORCH_LIBRARY(rnnfused, m) {
  m.def(
      "lstm_layer(Tensor input, Tensor? batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, bool need_workspace) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells)");
  m.def(
      "lstm_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, "
      "Tensor? batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? w_hr, "
      "Tensor output, Tensor gates, Tensor cells, bool reverse, bool[7] output_mask) -> ("
      "Tensor grad_input, Tensor grad_hx, Tensor grad_cx, "
      "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_w_hr)");
  m.def(
      "gru_layer(Tensor input, Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, bool reverse, bool need_workspace) "
      "-> (Tensor output, Tensor h_n, Tensor workspace)");
  m.def(
      "gru_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor? batch_sizes, "
      "Tensor hx, Tensor w_ih, Tensor w_hh, Tensor output, Tensor workspace, bool reverse, "
      "bool[7] output_mask) -> (Tensor grad_input, Tensor grad_hx, "
      "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");
  m.def(
      "rnn_layer(Tensor input, Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, bool relu, bool reverse) -> (Tensor output, Tensor h_n)");
  m.def(
      "rnn_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor? batch_sizes, "
      "Tensor hx, Tensor w_ih, Tensor w_hh, Tensor output, bool relu, bool reverse, "
      "bool[7] output_mask) -> (Tensor grad_input, Tensor grad_hx, "
      "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");
  // The backward ops' differentiable stand-ins for double backward (create_graph):
  // one gradient per forward argument (empty where `needs` is false), implemented
  // in Python (rnnfused/ops.py) by recomputing the layer with rnnfused.reference.
  m.def(
      "_lstm_layer_backward_graph(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, "
      "Tensor input, Tensor? batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, bool[] needs) -> Tensor[]");
  m.def(
      "_gru_layer_backward_graph(Tensor grad_output, Tensor grad_h_n, Tensor input, "
      "Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "bool reverse, bool[] needs) -> Tensor[]");
  m.def(
      "_rnn_layer_backward_graph(Tensor grad_output, Tensor grad_h_n, Tensor input, "
      "Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "bool relu, bool reverse, bool[] needs) -> Tensor[]");
  // Both directions of a bidirectional layer on a thread each (csrc/directions.cpp):
  // the layer op per direction, weights (w_ih, w_hh, b_ih, b_hh[, w_hr]) and states
  // (hx[, cx]) of the forward direction first; returns each direction's
  // (output, h_n[, c_n]). Eager CPU only: rnnfused.functional decides when.
  m.def(
      "_lstm_layer_pair(Tensor input, Tensor? batch_sizes, Tensor[] states, Tensor?[] weights, "
      "bool need_workspace) -> Tensor[]");
  m.def(
      "_gru_layer_pair(Tensor input, Tensor? batch_sizes, Tensor[] states, Tensor?[] weights, "
      "bool need_workspace) -> Tensor[]");
  // For the tests: out = a @ w^T (+ bias) as the layer ops form their input
  // projections and per-step products (the device launcher's gemm_nt).
  m.def("_gemm_nt(Tensor a, Tensor w, Tensor? bias) -> Tensor");
  // And out = (c +) a @ w, w [K, N] as stored, `a` with any strides, as the
  // backward ops form d_pre @ W_hh, grad_input and the weight gradients (gemm_nn).
  m.def("_gemm_nn(Tensor a, Tensor w, Tensor? c) -> Tensor");
  // For the benchmark: the float32 FMA ceiling of `threads` threads in GFLOP/s
  // (a register-only loop on the active ISA's widest vectors, AVX-512 or AVX2, run
  // for `seconds`); 0 on other CPUs.
  m.def("_cpu_fma_peak_gflops(float seconds, int threads) -> float",
        [](double seconds, int64_t threads) {
#if defined(__x86_64__)
          switch (rnnfused::cpu::active_isa()) {
            case rnnfused::cpu::Isa::kAvx512:
              return rnnfused::cpu::fma_peak_gflops_avx512(seconds, static_cast<int>(threads));
            case rnnfused::cpu::Isa::kAvx2:
              return rnnfused::cpu::fma_peak_gflops_avx2(seconds, static_cast<int>(threads));
            default:
              break;
          }
#endif
          return 0.0;
        });
  // The same for the bfloat16 dot product (AVX512-BF16 vdpbf16ps); 0 where the CPU
  // lacks it or AVX-512 does not run.
  m.def("_cpu_bf16_dot_peak_gflops(float seconds, int threads) -> float",
        [](double seconds, int64_t threads) {
#if defined(__x86_64__)
          if (rnnfused::cpu::active_isa() == rnnfused::cpu::Isa::kAvx512 &&
              rnnfused::cpu::has_avx512_bf16()) {
            return rnnfused::cpu::bf16_dot_peak_gflops_avx512(seconds, static_cast<int>(threads));
          }
#endif
          return 0.0;
        });
  // The same for AMX-BF16's tdpbf16ps from tile registers; 0 where the tiles are off
  // (cpu_amx()).
  m.def("_cpu_amx_peak_gflops(float seconds, int threads) -> float",
        [](double seconds, int64_t threads) {
#if defined(__x86_64__)
          if (rnnfused::cpu::amx_tiles_enabled()) {
            return rnnfused::cpu::amx_bf16_peak_gflops(seconds, static_cast<int>(threads));
          }
#endif
          return 0.0;
        });
  // For the tests: [sigmoid(x), tanh(x)] (x float32) as a bfloat16 layer's gate
  // math forms them on AVX-512 (cpu::bf16_gate_math_avx512);
  // only where the AVX-512 kernels run (cpu_isa() "avx512").
  m.def("_cpu_bf16_gate_math(Tensor x) -> Tensor[]", [](const at::Tensor& x) {
    TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat,
                "_cpu_bf16_gate_math: expected a float32 CPU tensor, got ", x.scalar_type(), " on ",
                x.device());
#if defined(__x86_64__)
    TORCH_CHECK(rnnfused::cpu::active_isa() == rnnfused::cpu::Isa::kAvx512,
                "_cpu_bf16_gate_math: needs the AVX-512 kernels (cpu_isa() is ",
                rnnfused::cpu::isa_name(rnnfused::cpu::active_isa()), ")");
    const at::Tensor input = x.contiguous();
    at::Tensor sigmoid = at::empty_like(input), tanh = at::empty_like(input);
    rnnfused::cpu::bf16_gate_math_avx512(input.data_ptr<float>(), sigmoid.data_ptr<float>(),
                                         tanh.data_ptr<float>(), input.numel());
    return std::vector<at::Tensor>{sigmoid, tanh};
#else
    TORCH_CHECK(false, "_cpu_bf16_gate_math: needs the AVX-512 kernels (an x86-64 CPU)");
    return std::vector<at::Tensor>{};
#endif
  });
  // For the tests: a @ b (a [M, K], b [K, N], both bfloat16 or both float32 CPU
  // tensors; float32 rounded to bfloat16 as under "medium") on the AMX tiles as the
  // backward's per-step products run there (cpu::amx_gemm_bf16, b packed by
  // cpu::pack_amx_gemm_b); added to `out` (then returned) where given. Only where
  // cpu_amx().
  m.def("_cpu_amx_matmul(Tensor a, Tensor b, Tensor(a!)? out=None) -> Tensor",
        [](const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& out) {
    const at::ScalarType type = a.scalar_type();
    TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && a.dim() == 2 && b.dim() == 2 &&
                    (type == at::kBFloat16 || type == at::kFloat) && b.scalar_type() == type,
                "_cpu_amx_matmul: expected 2-D CPU tensors, both bfloat16 or both float32, got ",
                a.dim(), "-D ", a.scalar_type(), " and ", b.dim(), "-D ", b.scalar_type());
    TORCH_CHECK(a.size(1) == b.size(0), "_cpu_amx_matmul: a is [", a.size(0), ", ", a.size(1),
                "], b [", b.size(0), ", ", b.size(1), "]");
#if defined(__x86_64__)
    TORCH_CHECK(rnnfused::cpu::amx_tiles_enabled(), "_cpu_amx_matmul: needs AMX tiles (cpu_amx())");
    const at::Tensor lhs = a.size(1) <= 1 || a.stride(1) == 1 ? a : a.contiguous();
    at::Tensor result = out.has_value() ? *out : at::empty({a.size(0), b.size(1)}, a.options());
    TORCH_CHECK(result.scalar_type() == type && result.dim() == 2 &&
                    result.size(0) == a.size(0) && result.size(1) == b.size(1) &&
                    (result.size(1) <= 1 || result.stride(1) == 1),
                "_cpu_amx_matmul: out must be ", type, " [", a.size(0), ", ", b.size(1),
                "] with unit column stride");
    const at::Tensor packed = rnnfused::cpu::pack_amx_gemm_weights(b);
    rnnfused::cpu::amx_gemm_bf16({a.size(0), b.size(1), a.size(1), lhs.data_ptr(),
                                  lhs.size(0) > 1 ? lhs.stride(0) : lhs.size(1), packed.data_ptr(),
                                  result.data_ptr(), result.size(0) > 1 ? result.stride(0) : result.size(1),
                                  out.has_value(), type == at::kFloat});
    return result;
#else
    TORCH_CHECK(false, "_cpu_amx_matmul: needs AMX tiles (an x86-64 CPU)");
    return at::Tensor();
#endif
  });
  // Which vectorised CPU step kernels run here: "avx512", "avx2" or "scalar".
  m.def("cpu_isa() -> str",
        [] { return std::string(rnnfused::cpu::isa_name(rnnfused::cpu::active_isa())); });
  // Units a float64 step functor call runs on the CPU: cpu::kFloat64Lanes (4, where
  // cpu::float64_vectors()) or 1.
  m.def("cpu_float64_lanes() -> int", [] {
#if defined(__x86_64__)
    if (rnnfused::cpu::float64_vectors()) return rnnfused::cpu::kFloat64Lanes;
#endif
    return int64_t{1};
  });
  // The free blocks the CPU buffer cache holds (cpu/huge_pages.h), and their release.
  m.def("cpu_cache_bytes() -> int",
        [] { return static_cast<int64_t>(rnnfused::cpu::cached_bytes()); });
  m.def("cpu_cache_clear() -> ()", [] { rnnfused::cpu::release_cached_blocks(); });
  // The threads the CPU kernels fork at most: torch's (torch.get_num_threads()), at
  // most one per CPU the process may run on (cpu::capped_threads).
  m.def("cpu_threads() -> int",
        [] { return int64_t{rnnfused::cpu::capped_threads(at::get_num_threads())}; });
  // Whether bfloat16 layers run their persistent forward loop on AMX tiles here.
  m.def("cpu_amx() -> bool", [] {
#if defined(__x86_64__)
    return rnnfused::cpu::amx_tiles_enabled();
#else
    return false;
#endif
  });
  // Whether bfloat16 layers run their persistent forward loop on vdpbf16ps here
  // (where cpu_amx() is false), and their backward loop (where W_hh's rows pair up).
  m.def("cpu_bf16_dot() -> bool", [] {
#if defined(__x86_64__)
    return rnnfused::cpu::bf16_dot_loops() && !rnnfused::cpu::amx_tiles_enabled();
#else
    return false;
#endif
  });
  // The row stride, in elements, of a float32 backward's gradients on the
  // pre-activations of `columns` columns (G * H) here: `columns`, or a line more
  // (cpu::gradient_row_floats, RNNFUSED_CPU_PAD_GRADIENTS).
  m.def("cpu_gradient_row_stride(int columns) -> int", [](int64_t columns) {
#if defined(__x86_64__)
    return rnnfused::cpu::gradient_row_floats(columns);
#else
    return columns;
#endif
  });
}

