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

#include <array>
#include <utility>
#include <vector>

#include "cpu/huge_pages.h"
#include "op_handle.h"

namespace rnnfused {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Returns (output, h_n, c_n): the workspaces, saved when a backward follows, stay
// with autograd.
std::tuple<Tensor, Tensor, Tensor> lstm_layer(const Tensor& input, const OptTensor& batch_sizes,
                                              const Tensor& hx, const Tensor& cx,
                                              const Tensor& w_ih, const Tensor& w_hh,
                                              const OptTensor& b_ih, const OptTensor& b_hh,
                                              const OptTensor& w_hr, bool reverse) {
  static const auto op = op_handle<signature::LstmLayer>("rnnfused::lstm_layer");
  const bool need_workspace = backward_follows(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
  auto [output, h_n, c_n, gates, cells] =
      op.call(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, need_workspace);
  return {output, h_n, c_n};
}

// Returns (output, h_n).
std::tuple<Tensor, Tensor> gru_layer(const Tensor& input, const OptTensor& batch_sizes,
                                     const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                                     const OptTensor& b_ih, const OptTensor& b_hh, bool reverse) {
  static const auto op = op_handle<signature::GruLayer>("rnnfused::gru_layer");
  const bool need_workspace = backward_follows(input, hx, w_ih, w_hh, b_ih, b_hh);
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

// ------------------------------------------------------------------ layer stacks
// functional._run_stack for an eager fused call, in one call from Python: a small
// layer's forward paid ~80 us of Python around its ~120 us op (T 50, B 1, H 64 on
// two Zen 2 vCPUs): frames, per-layer views and lists, the finals' stacking. The
// same steps, in the same order, with the same ops: the layers over time, both
// directions of a layer on the same input (together when `together`, which
// functional._directions_together decides), outputs concatenated (reverse last),
// dropout between layers in training (torch.dropout), the output the stack's own
// (a copy of one direction's op output where autograd records it; batch_first
// transposed in place) and every final state stacked [L*D, B, *].
// functional._run_stack stays the path of the reference backend and of traced,
// compiled and __torch_function__ calls; keep the two in step.

// One layer-direction's weights, as functional._split_weights.
struct LayerWeights {
  Tensor w_ih, w_hh;
  OptTensor b_ih, b_hh, w_hr;
};

LayerWeights split_weights(at::ArrayRef<Tensor> w, bool has_biases) {
  const size_t plain = has_biases ? 4 : 2;
  LayerWeights split{w[0], w[1], std::nullopt, std::nullopt, std::nullopt};
  if (has_biases) {
    split.b_ih = w[2];
    split.b_hh = w[3];
  }
  if (w.size() > plain) split.w_hr = w[plain];
  return split;
}

// torch.nn's initial state where the caller gives none: zeros [L*D, B, size] in
// the input's dtype, B the batch of the dense input or batch_sizes[0]. Made here
// rather than by torch.zeros in Python, which cost ~7 us of a small layer's ~150
// us call (T 50, B 1, H 64, two Zen 2 vCPUs): a Python op between two large C++
// calls runs cold.
Tensor initial_state(const Tensor& input, const OptTensor& batch_sizes, bool batch_first,
                     int64_t num_layers, bool bidirectional, int64_t size) {
  const int64_t slots = num_layers * (bidirectional ? 2 : 1);
  const bool dense = !(batch_sizes.has_value() && batch_sizes->defined());
  int64_t batch = 0;
  if (dense) {
    TORCH_CHECK(input.dim() == 3, "rnnfused: expected a 3-D input with no initial state, got ",
                input.dim(), "-D");
    batch = input.size(batch_first ? 0 : 1);
  } else if (batch_sizes->numel() > 0) {
    batch = (*batch_sizes)[0].item<int64_t>();  // the first step's rows
  }
  return at::zeros({slots, batch, size}, input.options());
}

// The first layer-direction's W_hh, [G*H, P] (P = H but for an LSTM's projection),
// whose shape gives the default states'.
const Tensor& first_recurrent_weight(at::TensorList flat_weights) {
  TORCH_CHECK(flat_weights.size() > 1, "rnnfused: a layer stack needs w_ih and w_hh, got ",
              flat_weights.size(), " weight tensors");
  return flat_weights[1];
}

// [1, *sizes].
std::vector<int64_t> prepend_one(at::IntArrayRef sizes) {
  std::vector<int64_t> shape{1};
  shape.insert(shape.end(), sizes.begin(), sizes.end());
  return shape;
}

// A bidirectional layer's output: the directions' [T, B, H] (or packed [N, H])
// outputs side by side in one [.., 2H]. Where autograd records nothing and both
// directions ran together (the pair ops: plain CPU tensors, no mode, nothing
// traced) into a buffer of the CPU cache (cpu/huge_pages.h) rather than at::cat's
// fresh memory, whose pages glibc maps and the kernel clears every call as often as
// not (its heap trimmed between calls, or the buffer past its mmap threshold: 1,170
// page faults a forward of a 2-layer bidirectional LSTM 100, 16, 128, 128 run alone,
// 3 with it cached). In-process A/B, two Xeon vCPUs, that forward: LSTM 5.7-8.5%
// faster (three runs: 12 of 12 rounds, 10 of 10, 11 of 12), GRU 4.4-7.6% (12 of 12,
// twice); a 1-layer LSTM 100, 64, 256, 256 and GRU 50, 8, 64, 64 (200 KB: at::empty's)
// even. (RNN layers run their directions in turn: at::cat.)
Tensor side_by_side(const Tensor& forward, const Tensor& reverse, bool together) {
  const bool recorded = forward.requires_grad() || reverse.requires_grad() ||
                        forward._fw_grad(/*level=*/0).defined() ||
                        reverse._fw_grad(/*level=*/0).defined();
  if (!together || recorded || !forward.is_cpu()) {
    return at::cat({forward, reverse}, -1);
  }
  std::vector<int64_t> sizes = forward.sizes().vec();
  sizes.back() += reverse.size(-1);
  Tensor out = cpu::empty_on_huge_pages(sizes, forward.options());
  at::cat_out(out, {forward, reverse}, -1);
  return out;
}

// A layer-direction's (output, final states).
using LayerResult = std::pair<Tensor, std::vector<Tensor>>;

// run_layer(input, batch_sizes, states, weights, reverse) -> LayerResult;
// run_pair(input, batch_sizes, states per direction, weights per direction) -> two.
// Returns output, then each state's finals [L*D, B, *].
template <typename RunLayer, typename RunPair>
std::vector<Tensor> run_stack(const Tensor& input, const OptTensor& batch_sizes,
                              at::TensorList states, at::TensorList flat_weights,
                              int64_t num_layers, double dropout, bool train, bool bidirectional,
                              bool batch_first, bool together, const RunLayer& run_layer,
                              const RunPair& run_pair) {
  const bool dense = !(batch_sizes.has_value() && batch_sizes->defined());
  const int64_t directions = bidirectional ? 2 : 1;
  TORCH_CHECK(num_layers > 0 && flat_weights.size() % (num_layers * directions) == 0,
              "rnnfused: expected the flat weights of ", num_layers * directions,
              " layer-directions, got ", flat_weights.size(), " tensors");
  const size_t per_layer = flat_weights.size() / (num_layers * directions);
  std::vector<std::vector<Tensor>> finals(states.size());
  Tensor layer_input = batch_first && dense ? input.transpose(0, 1) : input;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    std::array<std::vector<Tensor>, 2> layer_states;
    std::array<at::ArrayRef<Tensor>, 2> layer_weights;
    for (int64_t d = 0; d < directions; ++d) {
      const int64_t slot = layer * directions + d;
      for (const Tensor& s : states) layer_states[d].push_back(s.select(0, slot));
      layer_weights[d] = flat_weights.slice(slot * per_layer, per_layer);
    }
    std::vector<LayerResult> results;
    if (directions == 2 && together) {
      results = run_pair(layer_input, batch_sizes, layer_states, layer_weights);
    } else {
      for (int64_t d = 0; d < directions; ++d) {
        results.push_back(run_layer(layer_input, batch_sizes, layer_states[d], layer_weights[d],
                                    d == 1));
      }
    }
    for (const LayerResult& r : results) {
      for (size_t k = 0; k < finals.size(); ++k) finals[k].push_back(r.second[k]);
    }
    layer_input = directions == 1 ? results[0].first
                                  : side_by_side(results[0].first, results[1].first, together);
    if (dropout != 0 && train && layer < num_layers - 1) {
      layer_input = at::dropout(layer_input, dropout, /*train=*/true);
    }
  }
  Tensor output = layer_input;
  if (batch_first && dense) output.transpose_(0, 1);  // no view: output.detach_() works on it
  std::vector<Tensor> result{output};
  for (const std::vector<Tensor>& f : finals) {
    // A lone layer-direction's final state [B, *] is a tensor of its own (the ops'
    // outputs alias nothing): reshaped to [1, B, *] by _unsafe_view, which autograd
    // does not count as a view (detach_() and in-place ops work on it, as on torch.nn's
    // h_n), instead of copied by at::stack (~2 us a state of a small layer's call).
    result.push_back(f.size() == 1 ? at::_unsafe_view(f[0], prepend_one(f[0].sizes()))
                                   : at::stack(f, 0));
  }
  return result;
}

// A two-direction op (directions.cpp) on each direction's states and weights,
// forward first (kWeights of each: LSTM's five, GRU's four): (output, final
// states) per direction.
template <size_t kWeights>
std::vector<LayerResult> run_pair_op(const c10::TypedOperatorHandle<signature::LayerPair>& op,
                                     const Tensor& input, const OptTensor& batch_sizes,
                                     const std::array<std::vector<Tensor>, 2>& states,
                                     const std::array<at::ArrayRef<Tensor>, 2>& weights,
                                     bool has_biases) {
  std::vector<Tensor> flat_states;
  c10::List<OptTensor> flat_weights;
  for (int d = 0; d < 2; ++d) {
    flat_states.insert(flat_states.end(), states[d].begin(), states[d].end());
    const LayerWeights w = split_weights(weights[d], has_biases);
    const OptTensor ordered[5] = {w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr};
    for (size_t k = 0; k < kWeights; ++k) flat_weights.push_back(ordered[k]);
  }
  const bool need_workspace = backward_follows(input, at::TensorList(flat_states), flat_weights);
  const std::vector<Tensor> r = op.call(input, batch_sizes, flat_states, flat_weights, need_workspace);
  const size_t per_direction = r.size() / 2;  // output and one final state per state argument
  std::vector<LayerResult> results;
  for (size_t k : {size_t{0}, per_direction}) {
    results.push_back({r[k], std::vector<Tensor>(r.begin() + k + 1, r.begin() + k + per_direction)});
  }
  return results;
}

// Returns (output, h_n, c_n). hx and cx: both or neither (zeros: initial_state).
std::vector<Tensor> lstm_stack(const Tensor& input, const OptTensor& batch_sizes,
                               const OptTensor& hx, const OptTensor& cx,
                               std::vector<Tensor> flat_weights, bool has_biases,
                               int64_t num_layers, double dropout, bool train, bool bidirectional,
                               bool batch_first, bool together) {
  Tensor h0, c0;
  if (hx.has_value() && hx->defined()) {
    TORCH_CHECK(cx.has_value() && cx->defined(), "rnnfused: lstm_stack got hx without cx");
    h0 = *hx;
    c0 = *cx;
  } else {
    // w_hh [4H, P]: P the output's size (H without a projection, whose h0 and c0 can
    // be one tensor: the ops only read them).
    const Tensor& w_hh = first_recurrent_weight(flat_weights);
    const int64_t hidden = w_hh.size(0) / 4, output_size = w_hh.size(1);
    c0 = initial_state(input, batch_sizes, batch_first, num_layers, bidirectional, hidden);
    h0 = output_size == hidden ? c0
                               : initial_state(input, batch_sizes, batch_first, num_layers,
                                               bidirectional, output_size);
  }
  return run_stack(
      input, batch_sizes, {h0, c0}, flat_weights, num_layers, dropout, train, bidirectional,
      batch_first, together,
      [&](const Tensor& x, const OptTensor& bs, const std::vector<Tensor>& s,
          at::ArrayRef<Tensor> weights, bool reverse) -> LayerResult {
        const LayerWeights w = split_weights(weights, has_biases);
        auto [output, h_n, c_n] =
            lstm_layer(x, bs, s[0], s[1], w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr, reverse);
        return {output, {h_n, c_n}};
      },
      [&](const Tensor& x, const OptTensor& bs, const std::array<std::vector<Tensor>, 2>& s,
          const std::array<at::ArrayRef<Tensor>, 2>& w) {
        static const auto pair = op_handle<signature::LayerPair>("rnnfused::_lstm_layer_pair");
        return run_pair_op<5>(pair, x, bs, s, w, has_biases);
      });
}

// The initial state of a GRU or RNN stack: hx, else zeros (initial_state).
Tensor single_state(const Tensor& input, const OptTensor& batch_sizes, const OptTensor& hx,
                    at::TensorList flat_weights, int64_t num_layers, bool bidirectional,
                    bool batch_first) {
  if (hx.has_value() && hx->defined()) return *hx;
  return initial_state(input, batch_sizes, batch_first, num_layers, bidirectional,
                       first_recurrent_weight(flat_weights).size(1));
}

// Returns (output, h_n). hx: none for zeros.
std::vector<Tensor> gru_stack(const Tensor& input, const OptTensor& batch_sizes,
                              const OptTensor& hx, std::vector<Tensor> flat_weights,
                              bool has_biases, int64_t num_layers, double dropout, bool train,
                              bool bidirectional, bool batch_first, bool together) {
  const Tensor h0 =
      single_state(input, batch_sizes, hx, flat_weights, num_layers, bidirectional, batch_first);
  return run_stack(
      input, batch_sizes, {h0}, flat_weights, num_layers, dropout, train, bidirectional,
      batch_first, together,
      [&](const Tensor& x, const OptTensor& bs, const std::vector<Tensor>& s,
          at::ArrayRef<Tensor> weights, bool reverse) -> LayerResult {
        const LayerWeights w = split_weights(weights, has_biases);
        auto [output, h_n] = gru_layer(x, bs, s[0], w.w_ih, w.w_hh, w.b_ih, w.b_hh, reverse);
        return {output, {h_n}};
      },
      [&](const Tensor& x, const OptTensor& bs, const std::array<std::vector<Tensor>, 2>& s,
          const std::array<at::ArrayRef<Tensor>, 2>& w) {
        static const auto pair = op_handle<signature::LayerPair>("rnnfused::_gru_layer_pair");
        return run_pair_op<4>(pair, x, bs, s, w, has_biases);
      });
}

// Returns (output, h_n); hx as gru_stack's. (RNN layers have no two-direction op.)
std::vector<Tensor> rnn_stack(const Tensor& input, const OptTensor& batch_sizes,
                              const OptTensor& hx, std::vector<Tensor> flat_weights,
                              bool has_biases, int64_t num_layers, double dropout, bool train,
                              bool bidirectional, bool batch_first, bool relu) {
  const Tensor h0 =
      single_state(input, batch_sizes, hx, flat_weights, num_layers, bidirectional, batch_first);
  return run_stack(
      input, batch_sizes, {h0}, flat_weights, num_layers, dropout, train, bidirectional,
      batch_first, /*together=*/false,
      [&](const Tensor& x, const OptTensor& bs, const std::vector<Tensor>& s,
          at::ArrayRef<Tensor> weights, bool reverse) -> LayerResult {
        const LayerWeights w = split_weights(weights, has_biases);
        auto [output, h_n] = rnn_layer(x, bs, s[0], w.w_ih, w.w_hh, w.b_ih, w.b_hh, relu, reverse);
        return {output, {h_n}};
      },
      [](const Tensor&, const OptTensor&, const std::array<std::vector<Tensor>, 2>&,
         const std::array<at::ArrayRef<Tensor>, 2>&) -> std::vector<LayerResult> {
        TORCH_INTERNAL_ASSERT(false, "rnnfused: RNN layers run one direction at a time");
      });
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
  m.def("lstm_stack", python_call(&rnnfused::lstm_stack));
  m.def("gru_stack", python_call(&rnnfused::gru_stack));
  m.def("rnn_stack", python_call(&rnnfused::rnn_stack));
}
