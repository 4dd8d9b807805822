// Argument checks shared by every op and every backend. Each failure names the
// op, the argument, what was expected and what was passed (TORCH_CHECK raises a
// Python RuntimeError/ValueError, never a crash).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

namespace rnnfused {

inline void check_defined(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": expected '", name, "' to be a tensor, got None");
}

// `t` must be a floating tensor with `dim` dimensions, on `like`'s device, of its dtype.
inline void check_tensor(
    const char* op, const char* name, const at::Tensor& t, int64_t dim, const at::Tensor& like) {
  check_defined(op, name, t);
  TORCH_CHECK(t.dim() == dim, op, ": expected '", name, "' to have ", dim,
              " dimension(s), got ", t.dim(), " (shape ", t.sizes(), ")");
  TORCH_CHECK(t.device() == like.device(), op, ": expected '", name, "' on device ",
              like.device(), " (the input's), got ", t.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": expected '", name,
              "' of dtype ", like.scalar_type(), " (the input's), got ", t.scalar_type());
}

inline void check_size(const char* op, const char* name, const at::Tensor& t, int64_t d,
                       int64_t expected, const char* meaning) {
  TORCH_CHECK(t.size(d) == expected, op, ": expected '", name, "'.size(", d, ") == ", expected,
              " (", meaning, "), got ", t.size(d), " (shape ", t.sizes(), ")");
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        at::IntArrayRef expected, const at::Tensor& like) {
  check_tensor(op, name, t, static_cast<int64_t>(expected.size()), like);
  TORCH_CHECK(t.sizes() == expected, op, ": expected '", name, "' of shape ", expected,
              ", got ", t.sizes());
}

inline void check_optional_shape(const char* op, const char* name,
                                 const std::optional<at::Tensor>& t, at::IntArrayRef expected,
                                 const at::Tensor& like) {
  if (t.has_value() && t->defined()) {
    check_shape(op, name, *t, expected, like);
  }
}

// The sizes every layer op agrees on, read off the weights.
struct LayerSizes {
  int64_t gates;   // G: 1 (RNN), 3 (GRU), 4 (LSTM)
  int64_t input;   // I
  int64_t hidden;  // H
  int64_t output;  // P: proj_size, or H without projection
  int64_t batch;   // B
  int64_t rows;    // N: T * B for dense input, sum(batch_sizes) for packed
};

// Checks the forward arguments of a layer op and returns their sizes.
//   input: [T, B, I] (batch_sizes None) or [N, I] (packed); batch_sizes: [T] int64 CPU
//   hx: [B, P]; w_ih: [G*H, I]; w_hh: [G*H, P]; b_ih, b_hh: [G*H]; w_hr: [P, H]
inline LayerSizes check_layer_args(
    const char* op, int64_t gate_count, const at::Tensor& input,
    const std::optional<at::Tensor>& batch_sizes, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr) {
  check_defined(op, "input", input);
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), op,
              ": expected 'input' of a floating dtype, got ", input.scalar_type());
  const bool packed = batch_sizes.has_value() && batch_sizes->defined();
  const int64_t input_dim = packed ? 2 : 3;
  TORCH_CHECK(input.dim() == input_dim, op, ": expected 'input' to have ", input_dim,
              " dimensions (", packed ? "[N, input_size] with batch_sizes" : "[T, B, input_size]",
              "), got ", input.dim(), " (shape ", input.sizes(), ")");
  check_tensor(op, "w_ih", w_ih, 2, input);
  check_tensor(op, "w_hh", w_hh, 2, input);
  TORCH_CHECK(w_ih.size(0) % gate_count == 0, op, ": expected 'w_ih'.size(0) to be a multiple of ",
              gate_count, " (gates x hidden_size), got ", w_ih.size(0));
  LayerSizes s{};
  s.gates = gate_count;
  s.hidden = w_ih.size(0) / gate_count;
  s.input = w_ih.size(1);
  check_size(op, "input", input, input.dim() - 1, s.input, "w_ih.size(1), the input size");
  const bool has_proj = w_hr.has_value() && w_hr->defined();
  if (has_proj) {
    check_tensor(op, "w_hr", *w_hr, 2, input);
    check_size(op, "w_hr", *w_hr, 1, s.hidden, "hidden_size");
    s.output = w_hr->size(0);
  } else {
    s.output = s.hidden;
  }
  check_shape(op, "w_hh", w_hh, {gate_count * s.hidden, s.output}, input);
  check_optional_shape(op, "b_ih", b_ih, {gate_count * s.hidden}, input);
  check_optional_shape(op, "b_hh", b_hh, {gate_count * s.hidden}, input);
  check_tensor(op, "hx", hx, 2, input);
  s.batch = hx.size(0);
  check_size(op, "hx", hx, 1, s.output, "proj_size or hidden_size");
  if (packed) {
    const at::Tensor& bs = *batch_sizes;
    TORCH_CHECK(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.device().is_cpu(), op,
                ": expected 'batch_sizes' to be a 1-D int64 CPU tensor, got ", bs.dim(),
                "-D ", bs.scalar_type(), " on ", bs.device());
    s.rows = input.size(0);
  } else {
    check_size(op, "input", input, 1, s.batch, "the batch size, hx.size(0)");
    s.rows = input.size(0) * input.size(1);
  }
  return s;
}

}  // namespace rnnfused
