// The op entry points, shared by every device: check the arguments, lay the
// tensors out contiguously, build the step schedule, dispatch on dtype and run
// the driver. `Launch` is the device's step launcher (cpu/launch_cpu.h,
// cuda/launch_cuda.cuh); `Launch::Guard` sets the current device.
//
// Sequence layout: input is [T, B, I] when batch_sizes is None (outputs
// [T, B, P]) or packed data [N, I] with batch_sizes [T] (outputs [N, P]).
// Saved workspaces are [N, k * H] when need_workspace, else [0].
#pragma once

#include <ATen/Dispatch.h>

#include <array>

#include "gru.h"
#include "lstm.h"
#include "rnn.h"

namespace rnnfused {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

inline Tensor value_or_undefined(const OptTensor& t) {
  return t.has_value() && t->defined() ? t->contiguous() : Tensor();
}

// [N, D] sequence matrix back to the caller's layout: [T, B, D] for dense input.
inline Tensor sequence_layout(const Tensor& rows, const Tensor& input, const OptTensor& batch_sizes) {
  if (batch_sizes.has_value() && batch_sizes->defined()) return rows;
  return rows.view({input.size(0), input.size(1), rows.size(1)});
}

// The gradient arguments of a backward op: shapes equal to what the forward returned.
inline void check_backward_args(const char* op, const LayerSizes& sz, const Tensor& input,
                                const OptTensor& batch_sizes, const Tensor& grad_output,
                                const Tensor& output, const Tensor& grad_h_n) {
  const bool packed = batch_sizes.has_value() && batch_sizes->defined();
  std::vector<int64_t> out_shape =
      packed ? std::vector<int64_t>{sz.rows, sz.output}
             : std::vector<int64_t>{input.size(0), input.size(1), sz.output};
  check_shape(op, "grad_output", grad_output, out_shape, input);
  check_shape(op, "output", output, out_shape, input);
  check_shape(op, "grad_h_n", grad_h_n, {sz.batch, sz.output}, input);
}

// A dense [T, B, D] or packed [N, D] tensor as the contiguous [N, D] matrix the drivers use.
inline Tensor rows_of(const Tensor& t, const LayerSizes& sz, int64_t cols) {
  return t.contiguous().view({sz.rows, cols});
}

// ------------------------------------------------------------------ LSTM
template <typename Launch>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer(
    const Tensor& input, const OptTensor& batch_sizes, const Tensor& hx, const Tensor& cx,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const OptTensor& w_hr, bool reverse, bool need_workspace) {
  constexpr const char* op = "rnnfused::lstm_layer";
  const LayerSizes sz = check_layer_args(op, 4, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, w_hr);
  check_shape(op, "cx", cx, {sz.batch, sz.hidden}, input);
  typename Launch::Guard guard(input.device());
  const Schedule sched(op, sz, input, batch_sizes, reverse);
  const Tensor x = rows_of(input, sz, sz.input);
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), op, [&] {
    auto [output, h_n, c_n, gates, cells] = lstm_forward<scalar_t, Launch>(
        sz, sched, x, hx.contiguous(), cx.contiguous(), w_ih.contiguous(), w_hh.contiguous(),
        summed_biases(sched, b_ih, b_hh), value_or_undefined(w_hr), need_workspace);
    return std::make_tuple(sequence_layout(output, input, batch_sizes), h_n, c_n, gates, cells);
  });
}

template <typename Launch>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
    const OptTensor& batch_sizes, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& w_hr, const Tensor& output, const Tensor& gates,
    const Tensor& cells, bool reverse, std::array<bool, 7> output_mask) {
  constexpr const char* op = "rnnfused::lstm_layer_backward";
  const LayerSizes sz = check_layer_args(op, 4, input, batch_sizes, hx, w_ih, w_hh,
                                         std::nullopt, std::nullopt, w_hr);
  check_shape(op, "cx", cx, {sz.batch, sz.hidden}, input);
  check_backward_args(op, sz, input, batch_sizes, grad_output, output, grad_h_n);
  check_shape(op, "grad_c_n", grad_c_n, {sz.batch, sz.hidden}, input);
  check_shape(op, "gates", gates, {sz.rows, 4 * sz.hidden}, input);
  check_shape(op, "cells", cells, {sz.rows, sz.hidden}, input);
  typename Launch::Guard guard(input.device());
  const Schedule sched(op, sz, input, batch_sizes, reverse);
  const GradMask mask(output_mask);
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), op, [&] {
    auto grads = lstm_backward<scalar_t, Launch>(
        sz, sched, rows_of(grad_output, sz, sz.output), grad_h_n, grad_c_n, rows_of(input, sz, sz.input),
        hx.contiguous(), cx.contiguous(), w_ih.contiguous(), w_hh.contiguous(),
        value_or_undefined(w_hr), rows_of(output, sz, sz.output), gates.contiguous(),
        cells.contiguous(), mask);
    if (mask.input) std::get<0>(grads) = sequence_layout(std::get<0>(grads), input, batch_sizes);
    return grads;
  });
}

// ------------------------------------------------------------------ GRU
template <typename Launch>
std::tuple<Tensor, Tensor, Tensor> gru_layer(const Tensor& input, const OptTensor& batch_sizes,
                                             const Tensor& hx, const Tensor& w_ih,
                                             const Tensor& w_hh, const OptTensor& b_ih,
                                             const OptTensor& b_hh, bool reverse,
                                             bool need_workspace) {
  constexpr const char* op = "rnnfused::gru_layer";
  const LayerSizes sz =
      check_layer_args(op, 3, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, std::nullopt);
  typename Launch::Guard guard(input.device());
  const Schedule sched(op, sz, input, batch_sizes, reverse);
  const Tensor x = rows_of(input, sz, sz.input);
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), op, [&] {
    auto [output, h_n, workspace] = gru_forward<scalar_t, Launch>(
        sz, sched, x, hx.contiguous(), w_ih.contiguous(), w_hh.contiguous(),
        value_or_undefined(b_ih), value_or_undefined(b_hh), need_workspace);
    return std::make_tuple(sequence_layout(output, input, batch_sizes), h_n, workspace);
  });
}

template <typename Launch>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_layer_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
    const OptTensor& batch_sizes, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& output, const Tensor& workspace, bool reverse,
    std::array<bool, 7> output_mask) {
  constexpr const char* op = "rnnfused::gru_layer_backward";
  const LayerSizes sz = check_layer_args(op, 3, input, batch_sizes, hx, w_ih, w_hh, std::nullopt,
                                         std::nullopt, std::nullopt);
  check_backward_args(op, sz, input, batch_sizes, grad_output, output, grad_h_n);
  check_shape(op, "workspace", workspace, {sz.rows, 4 * sz.hidden}, input);
  typename Launch::Guard guard(input.device());
  const Schedule sched(op, sz, input, batch_sizes, reverse);
  const GradMask mask(output_mask);
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), op, [&] {
    auto grads = gru_backward<scalar_t, Launch>(
        sz, sched, rows_of(grad_output, sz, sz.output), grad_h_n, rows_of(input, sz, sz.input),
        hx.contiguous(), w_ih.contiguous(), w_hh.contiguous(), rows_of(output, sz, sz.output),
        workspace.contiguous(), mask);
    if (mask.input) std::get<0>(grads) = sequence_layout(std::get<0>(grads), input, batch_sizes);
    return grads;
  });
}

// ------------------------------------------------------------------ RNN
template <typename Launch>
std::tuple<Tensor, Tensor> rnn_layer(const Tensor& input, const OptTensor& batch_sizes,
                                     const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                                     const OptTensor& b_ih, const OptTensor& b_hh, bool relu,
                                     bool reverse) {
  constexpr const char* op = "rnnfused::rnn_layer";
  const LayerSizes sz =
      check_layer_args(op, 1, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, std::nullopt);
  typename Launch::Guard guard(input.device());
  const Schedule sched(op, sz, input, batch_sizes, reverse);
  const Tensor x = rows_of(input, sz, sz.input);
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), op, [&] {
    auto [output, h_n] = rnn_forward<scalar_t, Launch>(
        sz, sched, x, hx.contiguous(), w_ih.contiguous(), w_hh.contiguous(),
        summed_biases(sched, b_ih, b_hh), relu);
    return std::make_tuple(sequence_layout(output, input, batch_sizes), h_n);
  });
}

template <typename Launch>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_layer_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
    const OptTensor& batch_sizes, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& output, bool relu, bool reverse,
    std::array<bool, 7> output_mask) {
  constexpr const char* op = "rnnfused::rnn_layer_backward";
  const LayerSizes sz = check_layer_args(op, 1, input, batch_sizes, hx, w_ih, w_hh, std::nullopt,
                                         std::nullopt, std::nullopt);
  check_backward_args(op, sz, input, batch_sizes, grad_output, output, grad_h_n);
  typename Launch::Guard guard(input.device());
  const Schedule sched(op, sz, input, batch_sizes, reverse);
  const GradMask mask(output_mask);
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), op, [&] {
    auto grads = rnn_backward<scalar_t, Launch>(
        sz, sched, rows_of(grad_output, sz, sz.output), grad_h_n, rows_of(input, sz, sz.input),
        hx.contiguous(), w_ih.contiguous(), w_hh.contiguous(), rows_of(output, sz, sz.output),
        relu, mask);
    if (mask.input) std::get<0>(grads) = sequence_layout(std::get<0>(grads), input, batch_sizes);
    return grads;
  });
}

// The test GEMM ops' checks: a [M, K] and w 2-D with K at w's dimension w_k
// (`w_layout` names it in the message), `extra` (bias or c) of `extra_shape`
// where given, all of a's dtype.
inline void check_gemm_args(const char* op, const char* w_layout, const Tensor& a,
                            const Tensor& w, int64_t w_k, const char* extra_name,
                            const Tensor& extra, at::IntArrayRef extra_shape) {
  TORCH_CHECK(a.dim() == 2 && w.dim() == 2 && a.size(1) == w.size(w_k), op, ": expected a [M, K] and w ",
              w_layout, ", got ", a.sizes(), " and ", w.sizes());
  TORCH_CHECK(!extra.defined() || extra.sizes() == extra_shape, op, ": expected ", extra_name,
              " of shape ", extra_shape, ", got ", extra.sizes());
  TORCH_CHECK(w.dtype() == a.dtype() && (!extra.defined() || extra.dtype() == a.dtype()), op,
              ": expected a, w and ", extra_name, " of one dtype");
}

// The launcher's gemm_nt as an op, for the tests: a [M, K], w [N, K], bias [N].
template <typename Launch>
Tensor gemm_nt_op(const Tensor& a, const Tensor& w, const OptTensor& bias) {
  const Tensor b = value_or_undefined(bias);
  check_gemm_args("rnnfused::_gemm_nt", "[N, K]", a, w, 1, "bias", b,
                  {w.dim() == 2 ? w.size(0) : 0});
  typename Launch::Guard guard(a.device());
  Tensor out = at::empty({a.size(0), w.size(0)}, a.options());
  Launch::gemm_nt(NtProduct{out, a.contiguous(), w.contiguous(), b});
  return out;
}

// The launcher's gemm_nn as an op, for the tests: a [M, K] (any strides), w [K, N],
// c [M, N] (added to) or None.
template <typename Launch>
Tensor gemm_nn_op(const Tensor& a, const Tensor& w, const OptTensor& c) {
  const Tensor added = value_or_undefined(c);
  const std::array<int64_t, 2> out_shape{a.dim() == 2 ? a.size(0) : 0, w.dim() == 2 ? w.size(1) : 0};
  check_gemm_args("rnnfused::_gemm_nn", "[K, N]", a, w, 0, "c", added, out_shape);
  typename Launch::Guard guard(a.device());
  Tensor out = added.defined() ? added.clone(at::MemoryFormat::Contiguous)
                               : at::empty(out_shape, a.options());
  Launch::gemm_nn(out, a, w.contiguous(), /*accumulate=*/added.defined());
  return out;
}

// Registers every op's kernel for one dispatch key.
#define RNNFUSED_REGISTER_LAYER_OPS(m, Launch)                          \
  m.impl("lstm_layer", &::rnnfused::lstm_layer<Launch>);                \
  m.impl("lstm_layer_backward", &::rnnfused::lstm_layer_backward<Launch>); \
  m.impl("gru_layer", &::rnnfused::gru_layer<Launch>);                  \
  m.impl("gru_layer_backward", &::rnnfused::gru_layer_backward<Launch>); \
  m.impl("rnn_layer", &::rnnfused::rnn_layer<Launch>);                  \
  m.impl("rnn_layer_backward", &::rnnfused::rnn_layer_backward<Launch>); \
  m.impl("_gemm_nt", &::rnnfused::gemm_nt_op<Launch>);                  \
  m.impl("_gemm_nn", &::rnnfused::gemm_nn_op<Launch>)

}  // namespace rnnfused
