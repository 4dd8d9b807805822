// One Elman RNN layer (tanh or relu) in one direction, forward and backward
// (see lstm.h for the shape of the loop).
#pragma once

#include "../step_functors.h"
#include "common.h"

namespace rnnfused {

// input: [N, I], h0: [B, H]. Returns output [N, H], h_n [B, H].
template <typename scalar_t, typename Launch>
std::tuple<at::Tensor, at::Tensor> rnn_forward(const LayerSizes& sz, const Schedule& sched,
                                               const at::Tensor& input, const at::Tensor& h0,
                                               const at::Tensor& w_ih, const at::Tensor& w_hh,
                                               const SummedBiases& bias, bool relu) {
  const int64_t H = sz.hidden, N = sz.rows;
  ProjectedInput<scalar_t, Launch> x_proj(sched, input, w_ih, bias.input);  // [N, H]
  at::Tensor output = Launch::empty({N, H}, input.options());
  auto make_step = [&](int64_t, const scalar_t* x, const scalar_t*, auto* /*product*/,
                       scalar_t* out) {
    return RnnForwardStep<scalar_t>{{}, x, out, H, relu};
  };
  // No product buffer: the recurrent product goes into the output rows, and the
  // functor adds x_proj and applies the activation in place.
  at::Tensor h_n = forward_loop<scalar_t, Launch>(
      sz, sched, x_proj, h0, w_hh, bias.recurrent, output, at::Tensor(), at::Tensor(),
      /*fusable=*/true, make_step, [](int64_t, const at::Tensor&) {});
  return {output, h_n};
}

// Returns grad_input [N, I], grad_h0 [B, H], grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh.
template <typename scalar_t, typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_backward(
    const LayerSizes& sz, const Schedule& sched, const at::Tensor& grad_output,
    const at::Tensor& grad_h_n, const at::Tensor& input, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
    bool relu, const GradMask& mask) {
  const int64_t H = sz.hidden, N = sz.rows;
  at::Tensor d_h = grad_h_n.clone(at::MemoryFormat::Contiguous);  // [B, H]
  at::Tensor d_pre = Launch::gradient_rows(N, H, input.options());

  auto make_step = [&](int64_t s, const scalar_t* grad_output_rows) {
    const int64_t off = sched.offset(s);
    return RnnBackwardStep<scalar_t>{{}, output.data_ptr<scalar_t>() + off * H,
        d_h.data_ptr<scalar_t>(), grad_output_rows,
        d_pre.data_ptr<scalar_t>() + off * d_pre.stride(0), H, relu, d_pre.stride(0)};
  };
  const bool loop_on_one_thread = backward_loop<scalar_t, Launch>(
      sz, sched, grad_output, w_hh, d_h, d_pre, /*accumulate=*/false,
      mask.states, /*fusable=*/true, make_step, [](int64_t, const at::Tensor&) {});
  const typename Launch::GemmsWhereLoopRan gemms_here(loop_on_one_thread, d_pre);

  at::Tensor grad_input = mask.input ? matmul<Launch>(d_pre, w_ih) : empty_grad(input);
  const WeightGrads wg =
      weight_grads<Launch>(d_pre, d_pre, input, sched, output, h0, mask,
                           /*shared_columns=*/d_pre.size(1));
  if (!mask.states) d_h = empty_grad(input);
  return {grad_input, d_h, wg.w_ih, wg.w_hh, wg.b_ih, wg.b_hh};
}

}  // namespace rnnfused
