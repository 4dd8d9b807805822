// Autograd of the layer ops (the Autograd dispatch key), in C++ so that a call in
// training costs no Python: the forward op runs below autograd and saves what
// its backward op needs. When the backward itself is recorded (create_graph, for
// double backward), the fused backward op, which is not differentiable, gives way
// to `_<op>_backward_graph`: a Python op (rnnfused/ops.py) that recomputes the
// layer with rnnfused.reference and differentiates it with the graph kept.
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "op_handle.h"

namespace rnnfused {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Which forward arguments need a gradient. A Function's input edges are its
// defined tensor arguments in order; `defined[i]` says whether argument i is one.
class ArgGrads {
 public:
  static void record(AutogradContext* ctx, const std::vector<bool>& defined) {
    std::vector<int64_t> edges;
    int64_t next = 0;
    for (bool d : defined) edges.push_back(d ? next++ : -1);
    ctx->saved_data["edges"] = edges;
  }

  explicit ArgGrads(AutogradContext* ctx) : ctx_(ctx) {
    for (int64_t e : ctx->saved_data["edges"].toIntList()) edges_.push_back(e);
  }

  size_t size() const { return edges_.size(); }
  bool need(size_t arg) const {
    return edges_[arg] >= 0 && ctx_->needs_input_grad(static_cast<size_t>(edges_[arg]));
  }
  c10::List<bool> needs() const {
    c10::List<bool> result;
    for (size_t i = 0; i < size(); ++i) result.push_back(need(i));
    return result;
  }
  // The backward ops' output_mask (input, states, w_ih, w_hh, b_ih, b_hh, w_hr)
  // from argument positions; -1: absent (w_hr of RNN and GRU).
  std::array<bool, 7> mask(size_t input, std::vector<size_t> states,
                           std::array<int64_t, 5> params) const {
    std::array<bool, 7> m{};
    m[0] = need(input);
    for (size_t s : states) m[1] = m[1] || need(s);
    for (size_t p = 0; p < params.size(); ++p) m[2 + p] = params[p] >= 0 && need(params[p]);
    return m;
  }
  // One gradient per forward argument: `grads[k]` for the argument `positions[k]`
  // where it needs one, undefined everywhere else.
  variable_list place(const std::vector<Tensor>& grads, const std::vector<size_t>& positions) const {
    variable_list result(size());
    for (size_t k = 0; k < positions.size(); ++k) {
      if (need(positions[k])) result[positions[k]] = grads[k];
    }
    return result;
  }
  // The graph path's result, one entry per argument (empty where not needed).
  variable_list place_all(const std::vector<Tensor>& grads) const {
    variable_list result(size());
    for (size_t i = 0; i < size(); ++i) {
      if (need(i)) result[i] = grads[i];
    }
    return result;
  }

 private:
  AutogradContext* ctx_;
  std::vector<int64_t> edges_;
};

bool graph_backward() { return at::GradMode::is_enabled(); }

// What a layer's backward keeps of the output it returns: a copy, so that the caller
// may change the output in place before the backward (torch.nn allows `out += x` on
// a module's output). Made here, below autograd, it costs the copy alone; made by
// the caller (a clone of the stack's output) it cost a node in the graph as well:
// in-process A/B on two Zen 2 vCPUs, a 50, 1, 64, 64 LSTM or RNN training step ~10
// us (2-3%) faster, as fast as saving the output itself; cells, whose output the
// bindings drop, B 8, H 128: the copy costs 0-0.5% of a training step.
Tensor saved_output(const Tensor& output) { return output.clone(at::MemoryFormat::Contiguous); }

// ------------------------------------------------------------------ LSTM
// Arguments: 0 input, 1 batch_sizes, 2 hx, 3 cx, 4 w_ih, 5 w_hh, 6 b_ih, 7 b_hh,
// 8 w_hr, 9 reverse, 10 need_workspace.
struct LstmLayer : torch::autograd::Function<LstmLayer> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input,
                               const OptTensor& batch_sizes, const Tensor& hx, const Tensor& cx,
                               const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                               const OptTensor& b_hh, const OptTensor& w_hr, bool reverse,
                               bool need_workspace) {
    static const auto op = op_handle<signature::LstmLayer>("rnnfused::lstm_layer");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [output, h_n, c_n, gates, cells] = op.call(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih,
                                                    b_hh, w_hr, reverse, need_workspace);
    ArgGrads::record(ctx, {true, value_of(batch_sizes).defined(), true, true, true, true,
                           value_of(b_ih).defined(), value_of(b_hh).defined(),
                           value_of(w_hr).defined(), false, false});
    ctx->save_for_backward({input, value_of(batch_sizes), hx, cx, w_ih, w_hh, value_of(b_ih),
                            value_of(b_hh), value_of(w_hr), saved_output(output), gates, cells});
    ctx->saved_data["reverse"] = reverse;
    ctx->mark_non_differentiable({gates, cells});
    ctx->set_materialize_grads(false);
    return {output, h_n, c_n, gates, cells};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    // output [N, P] like the saved output, h_n [B, P] like hx, c_n [B, H] like cx
    grads = {grad_or_zeros(grads[0], s[9]), grad_or_zeros(grads[1], s[2]),
             grad_or_zeros(grads[2], s[3])};
    const OptTensor batch_sizes = optional_of(s[1]), b_ih = optional_of(s[6]),
                    b_hh = optional_of(s[7]), w_hr = optional_of(s[8]);
    const bool reverse = ctx->saved_data["reverse"].toBool();
    const ArgGrads args(ctx);
    if (graph_backward()) {
      static const auto graph =
          op_handle<signature::LstmLayerGraph>("rnnfused::_lstm_layer_backward_graph");
      return args.place_all(graph.call(grads[0], grads[1], grads[2], s[0], batch_sizes, s[2], s[3],
                                       s[4], s[5], b_ih, b_hh, w_hr, reverse, args.needs()));
    }
    static const auto op = op_handle<signature::LstmLayerBackward>("rnnfused::lstm_layer_backward");
    // Below autograd, as the forward op: the backward op is not differentiable (the
    // graph path above serves create_graph), and its views and buffers need no
    // autograd bookkeeping (a view's metadata, the fallback kernel a call). In-process
    // A/B on two Zen 2 vCPUs: 50, 1, 64, 64 training 2-4% faster, cells at B 8, H 128
    // 3-6%.
    const at::AutoDispatchBelowADInplaceOrView below;
    auto [g_in, g_hx, g_cx, g_wih, g_whh, g_bih, g_bhh, g_whr] =
        op.call(grads[0], grads[1], grads[2], s[0], batch_sizes, s[2], s[3], s[4], s[5], w_hr,
                s[9], s[10], s[11], reverse, args.mask(0, {2, 3}, {4, 5, 6, 7, 8}));
    return args.place({g_in, g_hx, g_cx, g_wih, g_whh, g_bih, g_bhh, g_whr},
                      {0, 2, 3, 4, 5, 6, 7, 8});
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_autograd(
    const Tensor& input, const OptTensor& batch_sizes, const Tensor& hx, const Tensor& cx,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const OptTensor& w_hr, bool reverse, bool need_workspace) {
  if (!autograd_records(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)) {
    static const auto op = op_handle<signature::LstmLayer>("rnnfused::lstm_layer");
    const at::AutoDispatchBelowADInplaceOrView below;
    return op.call(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                   need_workspace);
  }
  const variable_list r = LstmLayer::apply(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh,
                                           w_hr, reverse, need_workspace);
  return {r[0], r[1], r[2], r[3], r[4]};
}

// ------------------------------------------------------------------ GRU
// Arguments: 0 input, 1 batch_sizes, 2 hx, 3 w_ih, 4 w_hh, 5 b_ih, 6 b_hh, 7 reverse,
// 8 need_workspace.
struct GruLayer : torch::autograd::Function<GruLayer> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input,
                               const OptTensor& batch_sizes, const Tensor& hx, const Tensor& w_ih,
                               const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                               bool reverse, bool need_workspace) {
    static const auto op = op_handle<signature::GruLayer>("rnnfused::gru_layer");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [output, h_n, workspace] =
        op.call(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, need_workspace);
    ArgGrads::record(ctx, {true, value_of(batch_sizes).defined(), true, true, true,
                           value_of(b_ih).defined(), value_of(b_hh).defined(), false, false});
    ctx->save_for_backward({input, value_of(batch_sizes), hx, w_ih, w_hh, value_of(b_ih),
                            value_of(b_hh), saved_output(output), workspace});
    ctx->saved_data["reverse"] = reverse;
    ctx->mark_non_differentiable({workspace});
    ctx->set_materialize_grads(false);
    return {output, h_n, workspace};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    grads = {grad_or_zeros(grads[0], s[7]), grad_or_zeros(grads[1], s[2])};  // output, h_n
    const OptTensor batch_sizes = optional_of(s[1]);
    const bool reverse = ctx->saved_data["reverse"].toBool();
    const ArgGrads args(ctx);
    if (graph_backward()) {
      static const auto graph =
          op_handle<signature::GruLayerGraph>("rnnfused::_gru_layer_backward_graph");
      return args.place_all(graph.call(grads[0], grads[1], s[0], batch_sizes, s[2], s[3], s[4],
                                       optional_of(s[5]), optional_of(s[6]), reverse,
                                       args.needs()));
    }
    static const auto op = op_handle<signature::GruLayerBackward>("rnnfused::gru_layer_backward");
    const at::AutoDispatchBelowADInplaceOrView below;  // as LstmLayer's
    auto [g_in, g_hx, g_wih, g_whh, g_bih, g_bhh] =
        op.call(grads[0], grads[1], s[0], batch_sizes, s[2], s[3], s[4], s[7], s[8], reverse,
                args.mask(0, {2}, {3, 4, 5, 6, -1}));
    return args.place({g_in, g_hx, g_wih, g_whh, g_bih, g_bhh}, {0, 2, 3, 4, 5, 6});
  }
};

std::tuple<Tensor, Tensor, Tensor> gru_layer_autograd(const Tensor& input,
                                                      const OptTensor& batch_sizes,
                                                      const Tensor& hx, const Tensor& w_ih,
                                                      const Tensor& w_hh, const OptTensor& b_ih,
                                                      const OptTensor& b_hh, bool reverse,
                                                      bool need_workspace) {
  if (!autograd_records(input, hx, w_ih, w_hh, b_ih, b_hh)) {
    static const auto op = op_handle<signature::GruLayer>("rnnfused::gru_layer");
    const at::AutoDispatchBelowADInplaceOrView below;
    return op.call(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, need_workspace);
  }
  const variable_list r =
      GruLayer::apply(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, need_workspace);
  return {r[0], r[1], r[2]};
}

// ------------------------------------------------------------------ RNN
// Arguments: 0 input, 1 batch_sizes, 2 hx, 3 w_ih, 4 w_hh, 5 b_ih, 6 b_hh, 7 relu, 8 reverse.
struct RnnLayer : torch::autograd::Function<RnnLayer> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input,
                               const OptTensor& batch_sizes, const Tensor& hx, const Tensor& w_ih,
                               const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                               bool relu, bool reverse) {
    static const auto op = op_handle<signature::RnnLayer>("rnnfused::rnn_layer");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [output, h_n] = op.call(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse);
    ArgGrads::record(ctx, {true, value_of(batch_sizes).defined(), true, true, true,
                           value_of(b_ih).defined(), value_of(b_hh).defined(), false, false});
    ctx->save_for_backward({input, value_of(batch_sizes), hx, w_ih, w_hh, value_of(b_ih),
                            value_of(b_hh), saved_output(output)});
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["reverse"] = reverse;
    return {output, h_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const OptTensor batch_sizes = optional_of(s[1]);
    const bool relu = ctx->saved_data["relu"].toBool();
    const bool reverse = ctx->saved_data["reverse"].toBool();
    const ArgGrads args(ctx);
    if (graph_backward()) {
      static const auto graph =
          op_handle<signature::RnnLayerGraph>("rnnfused::_rnn_layer_backward_graph");
      return args.place_all(graph.call(grads[0], grads[1], s[0], batch_sizes, s[2], s[3], s[4],
                                       optional_of(s[5]), optional_of(s[6]), relu, reverse,
                                       args.needs()));
    }
    static const auto op = op_handle<signature::RnnLayerBackward>("rnnfused::rnn_layer_backward");
    const at::AutoDispatchBelowADInplaceOrView below;  // as LstmLayer's
    auto [g_in, g_hx, g_wih, g_whh, g_bih, g_bhh] =
        op.call(grads[0], grads[1], s[0], batch_sizes, s[2], s[3], s[4], s[7], relu, reverse,
                args.mask(0, {2}, {3, 4, 5, 6, -1}));
    return args.place({g_in, g_hx, g_wih, g_whh, g_bih, g_bhh}, {0, 2, 3, 4, 5, 6});
  }
};

std::tuple<Tensor, Tensor> rnn_layer_autograd(const Tensor& input, const OptTensor& batch_sizes,
                                              const Tensor& hx, const Tensor& w_ih,
                                              const Tensor& w_hh, const OptTensor& b_ih,
                                              const OptTensor& b_hh, bool relu, bool reverse) {
  if (!autograd_records(input, hx, w_ih, w_hh, b_ih, b_hh)) {
    static const auto op = op_handle<signature::RnnLayer>("rnnfused::rnn_layer");
    const at::AutoDispatchBelowADInplaceOrView below;
    return op.call(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse);
  }
  const variable_list r =
      RnnLayer::apply(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse);
  return {r[0], r[1]};
}

}  // namespace
}  // namespace rnnfused

TORCH_LIBRARY_IMPL(rnnfused, Autograd, m) {
  m.impl("lstm_layer", &rnnfused::lstm_layer_autograd);
  m.impl("gru_layer", &rnnfused::gru_layer_autograd);
  m.impl("rnn_layer", &rnnfused::rnn_layer_autograd);
}
