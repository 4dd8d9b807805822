// One GRU layer in one direction, forward and backward (see lstm.h for the shape
// of the loop). b_hh stays out of the input projection: r multiplies W_hn h + b_hn.
#pragma once

#include "../step_functors.h"
#include "common.h"

namespace rnnfused {

// input: [N, I], h0: [B, H]. Returns output [N, H], h_n [B, H] and, when `save`,
// workspace [N, 4H] (r, z, n, W_hn h + b_hn of every row; else [0]).
template <typename scalar_t, typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const LayerSizes& sz, const Schedule& sched, const at::Tensor& input, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih,
    const at::Tensor& b_hh, bool save) {
  const int64_t H = sz.hidden, B = sz.batch, N = sz.rows;
  ProjectedInput<scalar_t, Launch> x_proj(sched, input, w_ih, b_ih);  // [N, 3H]
  at::Tensor output = Launch::empty({N, H}, input.options());
  // Saved for the backward (else not written).
  at::Tensor workspace = save ? Launch::empty({N, 4 * H}, input.options()) : empty_grad(input);
  at::Tensor h_proj = at::empty({B, 3 * H}, input.options());
  // product: scalar_t, or float (the AMX loop's sums).
  auto make_step = [&](int64_t s, const scalar_t* x, const scalar_t* h_in, auto* product,
                       scalar_t* out) {
    using product_t = std::remove_pointer_t<decltype(product)>;
    return GruForwardStep<scalar_t, product_t>{{}, x, product,
        b_hh.defined() ? b_hh.data_ptr<scalar_t>() : nullptr, h_in,
        save ? workspace.data_ptr<scalar_t>() + sched.offset(s) * 4 * H : nullptr, out, H};
  };
  at::Tensor h_n = forward_loop<scalar_t, Launch>(sz, sched, x_proj, h0, w_hh, at::Tensor(),
                                                  output, h_proj, at::Tensor(), /*fusable=*/true,
                                                  make_step, [](int64_t, const at::Tensor&) {});
  return {output, h_n, workspace};
}

// Returns grad_input [N, I], grad_h0 [B, H], grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh.
template <typename scalar_t, typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_backward(
    const LayerSizes& sz, const Schedule& sched, const at::Tensor& grad_output,
    const at::Tensor& grad_h_n, const at::Tensor& input, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& output,
    const at::Tensor& workspace, const GradMask& mask) {
  const int64_t H = sz.hidden, N = sz.rows;
  at::Tensor d_h = grad_h_n.clone(at::MemoryFormat::Contiguous);  // [B, H]
  at::Tensor d_x = Launch::gradient_rows(N, 3 * H, input.options());
  at::Tensor d_hh = Launch::gradient_rows(N, 3 * H, input.options());

  auto make_step = [&](int64_t s, const scalar_t* grad_output_rows) {
    const int64_t off = sched.offset(s), before = sched.rows_before(s);
    return GruBackwardStep<scalar_t>{{},
        workspace.data_ptr<scalar_t>() + off * 4 * H,
        before > 0 ? output.data_ptr<scalar_t>() + sched.offset_before(s) * H : nullptr,
        h0.data_ptr<scalar_t>(), before, d_h.data_ptr<scalar_t>(), grad_output_rows,
        d_x.data_ptr<scalar_t>() + off * d_x.stride(0),
        d_hh.data_ptr<scalar_t>() + off * d_hh.stride(0), H, d_x.stride(0)};
  };
  const bool loop_on_one_thread = backward_loop<scalar_t, Launch>(
      sz, sched, grad_output, w_hh, d_h, d_hh, /*accumulate=*/true,
      mask.states, /*fusable=*/true, make_step, [](int64_t, const at::Tensor&) {});
  // The loop writes d_x as well, of d_hh's size: the limit holds for each.
  const typename Launch::GemmsWhereLoopRan gemms_here(loop_on_one_thread, d_hh);

  at::Tensor grad_input = mask.input ? matmul<Launch>(d_x, w_ih) : empty_grad(input);
  const WeightGrads wg =
      weight_grads<Launch>(d_x, d_hh, input, sched, output, h0, mask, /*shared_columns=*/2 * H);
  if (!mask.states) d_h = empty_grad(input);
  return {grad_input, d_h, wg.w_ih, wg.w_hh, wg.b_ih, wg.b_hh};
}

}  // namespace rnnfused
