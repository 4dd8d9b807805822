// The time loops as persistent, fused loops (simd.h's run_fused_steps_<isa> and
// run_fused_backward_<isa>, fused_loop.h): float32, no projection, AVX-512 or
// AVX2. The layer drivers take them through CpuLaunch::fused_forward /
// fused_backward where they apply.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../layers/common.h"
#include "simd.h"

namespace rnnfused {
namespace cpu {

// The floats of the persistent loops' vectors on this CPU: their tiles' width.
inline int64_t fused_lanes() { return active_isa() == Isa::kAvx512 ? 16 : 8; }

// W_hh [G*H, K] (contiguous) -> [tiles, K, G * L] (see PackedRecurrent), zero past
// H. One pass over the packed tensor: its rows are read as they are written.
inline at::Tensor pack_recurrent(const at::Tensor& w_hh, int64_t G, int64_t H, int64_t L) {
  const int64_t K = w_hh.size(1), tiles = (H + L - 1) / L;
  at::Tensor packed = at::empty({tiles, K, G * L}, w_hh.options());
  const float* src = w_hh.data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  for (int64_t u = 0; u < tiles; ++u) {
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t l = 0; l < L; ++l) {
          const int64_t unit = u * L + l;
          *dst++ = unit < H ? src[(g * H + unit) * K + k] : 0.0f;
        }
      }
    }
  }
  return packed;
}

// W_hh [J, K] -> [blocks, J, 2L] (see PackedRecurrentT), zero-padded to whole blocks.
inline at::Tensor pack_recurrent_t(const at::Tensor& w_hh, int64_t L) {
  const int64_t J = w_hh.size(0), K = w_hh.size(1), width = 2 * L;
  const int64_t blocks = (K + width - 1) / width;
  at::Tensor padded = at::zeros({J, blocks * width}, w_hh.options());
  padded.narrow(1, 0, K).copy_(w_hh);
  return padded.view({J, blocks, width}).permute({1, 0, 2}).contiguous();
}

// Threads for a loop whose steps cost `work` multiply-adds over `parts` units of split.
inline int loop_threads(int64_t work, int64_t parts) {
  // Small steps run on one thread: a barrier would cost more than the split saves.
  if (work < (int64_t{1} << 16)) return 1;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), parts)));
}

// Packing W_hh costs about one step's reads of it: worth it from a few steps on
// (a cell's single step takes the GEMM-and-functor path).
inline bool fused_forward_applies(const LayerSizes& sz) {
  constexpr int64_t kMinSteps = 4;
  const Isa isa = active_isa();
  return (isa == Isa::kAvx512 || isa == Isa::kAvx2) && sz.output == sz.hidden &&
         sz.hidden > 0 && sz.rows >= kMinSteps * sz.batch;
}

// Runs every forward step of a layer; returns h_n [B, H].
//   product: [B, G*H] scratch for the recurrent product, or undefined when the
//     functor reads it from its output rows (RNN);
//   make_step(s, x_proj_s, h_in, product, out_rows) -> the step functor.
template <typename XProj, typename MakeStep>
at::Tensor fused_forward(const LayerSizes& sz, const Schedule& sched, XProj& x_proj,
                         const at::Tensor& h0, const at::Tensor& w_hh, at::Tensor& output,
                         const at::Tensor& product, MakeStep make_step) {
  const int64_t G = sz.gates, H = sz.hidden, K = sz.output;
  if (sched.steps() == 0) return h0.clone(at::MemoryFormat::Contiguous);
  const bool avx512 = active_isa() == Isa::kAvx512;
  const at::Tensor packed = pack_recurrent(w_hh, G, H, fused_lanes());
  const PackedRecurrent w{packed.data_ptr<float>(), K, H, G, packed.size(0)};
  // The state before and after each step, alternating: a step reads one while
  // it writes the other, so one barrier per step is all the threads need.
  // Both start as h0: in reverse over packed input the batch grows, and a row that
  // joins reads its h0 from whichever buffer the step reads.
  const at::Tensor states[2] = {h0.clone(at::MemoryFormat::Contiguous),
                                h0.clone(at::MemoryFormat::Contiguous)};
  const int threads = loop_threads(sz.batch * G * H * K, w.tiles);

  using Step = decltype(make_step(int64_t{0}, nullptr, nullptr, nullptr, nullptr));
  std::vector<Step> steps;
  std::vector<FusedStepRows> rows;
  for (int64_t s = 0; s < sched.steps();) {
    x_proj.step(s);
    const int64_t end = x_proj.chunk_end();
    steps.clear();
    rows.clear();
    for (; s < end; ++s) {
      float* out = output.data_ptr<float>() + sched.offset(s) * H;
      const float* h_in = states[s % 2].data_ptr<float>();
      float* prod = product.defined() ? product.data_ptr<float>() : out;
      const float* x_proj_s = x_proj.step(s);
      steps.push_back(make_step(s, x_proj_s, h_in, prod, out));
      rows.push_back(
          {sched.rows(s), h_in, prod, out, states[(s + 1) % 2].data_ptr<float>(), x_proj_s});
    }
    const int64_t n = static_cast<int64_t>(steps.size());
    if (avx512) {
      run_fused_steps_avx512(steps.data(), rows.data(), n, w, threads);
    } else {
      run_fused_steps_avx2(steps.data(), rows.data(), n, w, threads);
    }
  }
  return sched.final_states(output);
}

// Runs every backward step of a layer, in reverse; d_h [B, H] holds grad_h_n on
// entry and the gradient on h0 on return.
//   d_recurrent: [N, G*H], the matrix the step functors write the gradient on
//     h_prev @ W_hh^T into; accumulate: the functor leaves the direct part of d_h
//     in d_h (GRU);
//   make_step(s) -> the step functor, reading and writing d_h's rows.
template <typename MakeStep>
void fused_backward(const LayerSizes& sz, const Schedule& sched, const at::Tensor& grad_output,
                    const at::Tensor& w_hh, at::Tensor& d_h, const at::Tensor& d_recurrent,
                    bool accumulate, MakeStep make_step) {
  const int64_t J = w_hh.size(0), K = sz.output;
  const bool avx512 = active_isa() == Isa::kAvx512;
  const at::Tensor packed = pack_recurrent_t(w_hh, fused_lanes());
  const PackedRecurrentT w{packed.data_ptr<float>(), J, K, packed.size(0)};
  const int threads = loop_threads(sz.batch * J * K, w.blocks);
  using Step = decltype(make_step(int64_t{0}));
  std::vector<Step> steps;
  std::vector<FusedBackwardRows> rows;
  for (int64_t s = sched.steps() - 1; s >= 0; --s) {
    const int64_t off = sched.offset(s);
    steps.push_back(make_step(s));
    rows.push_back({sched.rows(s), grad_output.data_ptr<float>() + off * K, d_h.data_ptr<float>(),
                    d_recurrent.data_ptr<float>() + off * J, accumulate});
  }
  const int64_t n = static_cast<int64_t>(steps.size());
  if (avx512) {
    run_fused_backward_avx512(steps.data(), rows.data(), n, w, threads);
  } else {
    run_fused_backward_avx2(steps.data(), rows.data(), n, w, threads);
  }
}

}  // namespace cpu
}  // namespace rnnfused
