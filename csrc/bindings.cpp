// The Python module rnnfused._C. Importing it loads this library, which registers
// the ops (ops.cpp and the kernels). It also binds typed calls of the layer ops
// for eager Python (rnnfused/ops.py): a call through torch.ops boxes its eleven
// arguments into a stack (~3 us of a cell step's ~50); these call the dispatcher
// unboxed, through every dispatch key as before (autograd, Python modes), with
// torch's own error translation and the GIL released as torch's functions do.
// What they skip is __torch_function__ handling and dynamo's view of the op:
// ops.py takes torch.ops wherever either could matter. The cell bindings are the
// layer ops on a one-step sequence.
#include <torch/csrc/Exceptions.h>
#include <torch/extension.h>

#include <functional>
#include <initializer_list>

#include "op_handle.h"

namespace rnnfused {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Whether autograd will need the op's saved workspace (ops.py's _backward_follows).
bool backward_follows(std::initializer_list<std::reference_wrapper<const OptTensor>> tensors) {
  if (!at::GradMode::is_enabled()) return false;
  for (const OptTensor& t : tensors) {
    if (t.has_value() && t->defined() && t->requires_grad()) return true;
  }
  return false;
}

// Returns (output, h_n, c_n): the workspaces, saved when a backward follows, stay
// with autograd.
std::tuple<Tensor, Tensor, Tensor> lstm_layer(const Tensor& input, const OptTensor& batch_sizes,
                                              const Tensor& hx, const Tensor& cx,
                                              const Tensor& w_ih, const Tensor& w_hh,
                                              const OptTensor& b_ih, const OptTensor& b_hh,
                                              const OptTensor& w_hr, bool reverse) {
  static const auto op = op_handle<signature::LstmLayer>("rnnfused::lstm_layer");
  const OptTensor x = input, h = hx, c = cx, wi = w_ih, wh = w_hh;
  const bool need_workspace = backward_follows({x, h, c, wi, wh, b_ih, b_hh, w_hr});
  auto [output, h_n, c_n, gates, cells] =
      op.call(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, need_workspace);
  return {output, h_n, c_n};
}

// Returns (output, h_n).
std::tuple<Tensor, Tensor> gru_layer(const Tensor& input, const OptTensor& batch_sizes,
                                     const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                                     const OptTensor& b_ih, const OptTensor& b_hh, bool reverse) {
  static const auto op = op_handle<signature::GruLayer>("rnnfused::gru_layer");
  const OptTensor x = input, h = hx, wi = w_ih, wh = w_hh;
  const bool need_workspace = backward_follows({x, h, wi, wh, b_ih, b_hh});
  auto [output, h_n, workspace] =
      op.call(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, need_workspace);
  return {output, h_n};
}

std::tuple<Tensor, Tensor> rnn_layer(const Tensor& input, const OptTensor& batch_sizes,
                                     const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                                     const OptTensor& b_ih, const OptTensor& b_hh, bool relu,
                                     bool reverse) {
  static const auto op = op_handle<signature::RnnLayer>("rnnfused::rnn_layer");
  return op.call(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse);
}

// One cell step: the layer op on the one-step sequence input [1, B, I], the view
// taken here (a Python unsqueeze costs ~1 us of a small step). Returns (h', c').
std::tuple<Tensor, Tensor> lstm_cell(const Tensor& input, const Tensor& hx, const Tensor& cx,
                                     const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                                     const OptTensor& b_hh) {
  auto [output, h_n, c_n] = lstm_layer(input.unsqueeze(0), std::nullopt, hx, cx, w_ih, w_hh, b_ih,
                                       b_hh, std::nullopt, /*reverse=*/false);
  return {h_n, c_n};
}

// Returns h'.
Tensor gru_cell(const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                const OptTensor& b_ih, const OptTensor& b_hh) {
  return std::get<1>(
      gru_layer(input.unsqueeze(0), std::nullopt, hx, w_ih, w_hh, b_ih, b_hh, /*reverse=*/false));
}

Tensor rnn_cell(const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                const OptTensor& b_ih, const OptTensor& b_hh, bool relu) {
  return std::get<1>(rnn_layer(input.unsqueeze(0), std::nullopt, hx, w_ih, w_hh, b_ih, b_hh, relu,
                               /*reverse=*/false));
}

}  // namespace
}  // namespace rnnfused

namespace {

// f as a Python function: c10 errors become the Python exceptions torch raises for
// them (RuntimeError, ValueError, ... without the C++ backtrace), TORCH_WARN a
// Python warning; the GIL is released while the op runs.
template <typename Result, typename... Args>
auto python_call(Result (*f)(Args...)) {
  return [f](Args... args) -> Result {
    HANDLE_TH_ERRORS
    pybind11::gil_scoped_release no_gil;
    return f(args...);
    END_HANDLE_TH_ERRORS_PYBIND
  };
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.def("lstm_layer", python_call(&rnnfused::lstm_layer));
  m.def("gru_layer", python_call(&rnnfused::gru_layer));
  m.def("rnn_layer", python_call(&rnnfused::rnn_layer));
  m.def("lstm_cell", python_call(&rnnfused::lstm_cell));
  m.def("gru_cell", python_call(&rnnfused::gru_cell));
  m.def("rnn_cell", python_call(&rnnfused::rnn_cell));
}
