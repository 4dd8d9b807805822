// One LSTM layer in one direction, forward and backward: the time loop around
// the recurrent GEMM and LstmForwardStep / LstmBackwardStep. Device-generic:
// `Launch::run(n, functor)` runs a step functor over n indices on the device.
#pragma once

#include "../step_functors.h"
#include "common.h"

namespace rnnfused {

// input: [N, I] (rows of the dense [T, B, I] or packed data), h0: [B, P], c0: [B, H].
// Returns output [N, P], h_n [B, P], c_n [B, H], and what the backward needs when
// `save`: gates [N, 4H], cells [N, H] (else both [0]).
template <typename scalar_t, typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward(
    const LayerSizes& sz, const Schedule& sched, const at::Tensor& input, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh, const SummedBiases& bias,
    const at::Tensor& w_hr, bool save) {
  const int64_t H = sz.hidden, P = sz.output, B = sz.batch, N = sz.rows;
  const bool proj = w_hr.defined();
  ProjectedInput<scalar_t, Launch> x_proj(sched, input, w_ih, bias.input);  // [N, 4H]
  at::Tensor output = Launch::empty({N, P}, input.options());
  // Saved for the backward (else not written).
  at::Tensor gates = save ? Launch::empty({N, 4 * H}, input.options()) : at::Tensor();
  at::Tensor cells = save ? Launch::empty({N, H}, input.options()) : at::Tensor();
  at::Tensor c = c0.clone(at::MemoryFormat::Contiguous);  // running state [B, H]
  at::Tensor h_proj = at::empty({B, 4 * H}, input.options());
  at::Tensor hidden = proj ? at::empty({B, H}, input.options()) : at::Tensor();
  // product: scalar_t, or float (the AMX loop's sums).
  auto make_step = [&](int64_t s, const scalar_t* x, const scalar_t* /*h_in*/, auto* product,
                       scalar_t* out) {
    using product_t = std::remove_pointer_t<decltype(product)>;
    return LstmForwardStep<scalar_t, product_t>{{}, x, product, c.data_ptr<scalar_t>(),
        save ? gates.data_ptr<scalar_t>() + sched.offset(s) * 4 * H : nullptr,
        save ? cells.data_ptr<scalar_t>() + sched.offset(s) * H : nullptr, out, H};
  };
  at::Tensor h_n = forward_loop<scalar_t, Launch>(
      sz, sched, x_proj, h0, w_hh, bias.recurrent, output, h_proj, hidden, /*fusable=*/!proj,
      make_step, [&](int64_t, const at::Tensor& out_rows) {
        if (!proj) return;
        Launch::gemm_nt(NtProduct{out_rows, row_range(hidden, 0, out_rows.size(0)), w_hr, {}});
      });
  if (!save) return {output, h_n, c, empty_grad(input), empty_grad(input)};
  return {output, h_n, c, gates, cells};
}

// Returns grad_input [N, I], grad_h0 [B, P], grad_c0 [B, H], grad_w_ih, grad_w_hh,
// grad_b_ih, grad_b_hh, grad_w_hr (each [0] where not asked for by `mask`).
template <typename scalar_t, typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
lstm_backward(const LayerSizes& sz, const Schedule& sched, const at::Tensor& grad_output,
              const at::Tensor& grad_h_n, const at::Tensor& grad_c_n, const at::Tensor& input,
              const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
              const at::Tensor& w_hh, const at::Tensor& w_hr, const at::Tensor& output,
              const at::Tensor& gates, const at::Tensor& cells, const GradMask& mask) {
  const int64_t H = sz.hidden, P = sz.output, B = sz.batch, N = sz.rows;
  const bool proj = w_hr.defined();
  at::Tensor d_h = grad_h_n.clone(at::MemoryFormat::Contiguous);  // [B, P]
  at::Tensor d_c = grad_c_n.clone(at::MemoryFormat::Contiguous);  // [B, H]
  at::Tensor d_pre = Launch::gradient_rows(N, 4 * H, input.options());
  // With a projection: the total gradient on every row's h' and o*tanh(c'), for grad_w_hr.
  at::Tensor d_h_all = proj ? Launch::empty({N, P}, input.options()) : at::Tensor();
  at::Tensor hidden_all = proj ? Launch::empty({N, H}, input.options()) : at::Tensor();
  at::Tensor d_hidden = proj ? at::empty({B, H}, input.options()) : at::Tensor();

  // With a projection the loop adds grad_output (before_step needs the sum).
  auto make_step = [&](int64_t s, const scalar_t* grad_output_rows) {
    const int64_t off = sched.offset(s), before = sched.rows_before(s);
    return LstmBackwardStep<scalar_t>{{},
        gates.data_ptr<scalar_t>() + off * 4 * H, cells.data_ptr<scalar_t>() + off * H,
        before > 0 ? cells.data_ptr<scalar_t>() + sched.offset_before(s) * H : nullptr,
        c0.data_ptr<scalar_t>(), before,
        proj ? d_hidden.data_ptr<scalar_t>() : d_h.data_ptr<scalar_t>(),
        proj ? nullptr : grad_output_rows, d_c.data_ptr<scalar_t>(),
        d_pre.data_ptr<scalar_t>() + off * d_pre.stride(0),
        proj ? hidden_all.data_ptr<scalar_t>() + off * H : nullptr, H, d_pre.stride(0)};
  };
  const bool loop_on_one_thread = backward_loop<scalar_t, Launch>(
      sz, sched, grad_output, w_hh, d_h, d_pre, /*accumulate=*/false, mask.states,
      /*fusable=*/!proj, make_step,
      [&](int64_t s, const at::Tensor& d_h_rows) {
        if (!proj) return;
        d_h_all.narrow(0, sched.offset(s), d_h_rows.size(0)).copy_(d_h_rows);
        at::Tensor d_hidden_rows = row_range(d_hidden, 0, d_h_rows.size(0));
        at::mm_out(d_hidden_rows, d_h_rows, w_hr);  // [rows, P] @ [P, H]
      });
  const typename Launch::GemmsWhereLoopRan gemms_here(loop_on_one_thread, d_pre);

  at::Tensor grad_input = mask.input ? matmul<Launch>(d_pre, w_ih) : empty_grad(input);
  at::Tensor grad_w_hr = empty_grad(input);
  const WeightGrads wg =
      weight_grads<Launch>(d_pre, d_pre, input, sched, output, h0, mask,
                           /*shared_columns=*/d_pre.size(1));
  if (proj && mask.w_hr) grad_w_hr = matmul<Launch>(d_h_all.t(), hidden_all);  // [P, H]
  if (!mask.states) {
    d_h = empty_grad(input);
    d_c = empty_grad(input);
  }
  return {grad_input, d_h, d_c, wg.w_ih, wg.w_hh, wg.b_ih, wg.b_hh, grad_w_hr};
}

}  // namespace rnnfused
