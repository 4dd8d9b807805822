// Both directions of a bidirectional layer at the same time, one thread each
// (rnnfused.functional calls these in eager CPU float32, bfloat16 and float16 where it pays; see
// _directions_together there), forward and backward. Each op has a CPU kernel
// (the layer op of each direction below autograd, a thread each) and an
// Autograd kernel: one autograd node for the pair, whose backward runs the two
// directions' backward ops a thread each as well (two nodes would run one after
// the other: the engine runs a device's nodes on one thread). With create_graph
// (double backward) the directions' differentiable backward runs in turn.
//
// Inside the two-thread region every inner parallel construct runs on its own
// thread: OpenMP does not nest by default, at::parallel_for runs inline in a
// parallel region, and MKL runs sequentially when called from one.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/ThreadLocalState.h>
#include <omp.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <exception>
#include <vector>

#include "cpu/simd.h"
#include "op_handle.h"
namespace rnnfused {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Called from Python, the caller's thread holds the GIL: released for the region,
// so that whatever in either thread needs Python takes it instead of finding it
// held by a thread that waits for the region to end.
struct GilReleased {
  PyThreadState* state = Py_IsInitialized() && PyGILState_Check() ? PyEval_SaveThread() : nullptr;
  GilReleased() = default;
  GilReleased(const GilReleased&) = delete;
  GilReleased& operator=(const GilReleased&) = delete;
  ~GilReleased() {
    if (state != nullptr) PyEval_RestoreThread(state);
  }
};

// Runs run(0) and run(1) on two threads (one after the other if OpenMP gives one,
// or the process may run on one CPU only: cpu::capped_threads), each under the
// caller's thread-local state (grad mode, autocast, dispatch keys); rethrows the
// first direction's error.
template <typename F>
void run_two(const F& run) {
  const at::ThreadLocalState state;
  std::exception_ptr errors[2];
  const GilReleased gil;
  const int threads = cpu::capped_threads(2);
#pragma omp parallel num_threads(threads)
  {
    const at::ThreadLocalStateGuard guard(state);
    for (int d = omp_get_thread_num(); d < 2; d += omp_get_num_threads()) {
      try {
        run(d);
      } catch (...) {
        errors[d] = std::current_exception();
      }
    }
  }
  for (const auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A pair Function's backward result, one entry per forward argument (the last,
// need_workspace, none): each direction's gradients on its own arguments, the
// two summed on the shared ones (input). per_direction[d][a]: argument a's.
variable_list placed(const std::array<variable_list, 2>& per_direction,
                     const std::vector<bool>& need) {
  variable_list result(need.size() + 1);
  for (size_t a = 0; a < need.size(); ++a) {
    if (!need[a]) continue;
    const Tensor& g0 = per_direction[0][a];
    const Tensor& g1 = per_direction[1][a];
    result[a] = g0.defined() && g1.defined() ? g0 + g1 : g0.defined() ? g0 : g1;
  }
  return result;
}

// A pair Function's forward bookkeeping: saves `args` (its tensor arguments in
// order, undefined where absent) and then `workspaces`, records which arguments
// are defined (their input edges), keeps materialize_grads off.
void save_pair(AutogradContext* ctx, const variable_list& args, const variable_list& workspaces) {
  c10::List<bool> defined;
  for (const Tensor& t : args) defined.push_back(t.defined());
  ctx->saved_data["defined"] = defined;
  variable_list saved = args;
  saved.insert(saved.end(), workspaces.begin(), workspaces.end());
  ctx->save_for_backward(saved);
  ctx->set_materialize_grads(false);
}

// Which of the saved arguments need a gradient (a Function's input edges are
// its defined tensor arguments, in order).
std::vector<bool> pair_needs(AutogradContext* ctx) {
  std::vector<bool> needs;
  size_t edge = 0;
  for (bool defined : ctx->saved_data["defined"].toBoolList()) {
    needs.push_back(defined && ctx->needs_input_grad(edge++));
  }
  return needs;
}

// A pair's backward: run(d) for both directions, a thread each; in turn where the
// backward itself is recorded (create_graph), whose ops run Python.
template <typename F>
variable_list pair_backward(const std::vector<bool>& need, const F& run) {
  std::array<variable_list, 2> per_direction;
  auto each = [&](int d) { per_direction[d] = run(d); };
  if (at::GradMode::is_enabled()) {
    each(0);
    each(1);
  } else {
    run_two(each);
  }
  return placed(per_direction, need);
}

// The op's `what` list (states or weights) as a fixed-size array, checked for its length.
template <size_t n, typename List>
auto fixed(const char* op, const char* what, const List& list) {
  TORCH_CHECK(list.size() == n, op, ": expected ", n, " ", what, ", got ", list.size());
  std::array<typename List::value_type, n> result;
  for (size_t i = 0; i < n; ++i) result[i] = list[i];  // c10::List: through its element reference
  return result;
}

// ------------------------------------------------------------------ LSTM
// Pair arguments: 0 input, 1 batch_sizes, 2 + 2d hx and 3 + 2d cx of direction d,
// 6 + 5d .. 10 + 5d its (w_ih, w_hh, b_ih, b_hh, w_hr), 16 need_workspace.
constexpr const char* kLstmPair = "rnnfused::_lstm_layer_pair";

// Per direction (output, h_n, c_n, gates, cells), the layer op below autograd.
std::array<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>, 2> lstm_pair_below_autograd(
    const Tensor& input, const OptTensor& batch_sizes, const std::array<Tensor, 4>& states,
    const std::array<OptTensor, 10>& weights, bool need_workspace) {
  static const auto layer = op_handle<signature::LstmLayer>("rnnfused::lstm_layer");
  const at::AutoDispatchBelowADInplaceOrView below;  // captured by run_two's threads
  std::array<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>, 2> results;
  run_two([&](int d) {
    const size_t w = 5 * d;
    results[d] = layer.call(input, batch_sizes, states[2 * d], states[2 * d + 1], *weights[w],
                            *weights[w + 1], weights[w + 2], weights[w + 3], weights[w + 4],
                            d == 1, need_workspace);
  });
  return results;
}

// The CPU kernel (below autograd, e.g. in inference mode): (output, h_n, c_n) per direction.
std::vector<Tensor> lstm_layer_pair(const Tensor& input, const OptTensor& batch_sizes,
                                    at::TensorList states, const c10::List<OptTensor>& weights,
                                    bool need_workspace) {
  const auto r =
      lstm_pair_below_autograd(input, batch_sizes, fixed<4>(kLstmPair, "states", states),
                               fixed<10>(kLstmPair, "weights", weights), need_workspace);
  return {std::get<0>(r[0]), std::get<1>(r[0]), std::get<2>(r[0]),
          std::get<0>(r[1]), std::get<1>(r[1]), std::get<2>(r[1])};
}

struct LstmLayerPair : torch::autograd::Function<LstmLayerPair> {
  // saved: 0 input, 1 batch_sizes, 2..5 states, 6..15 weights, then per direction
  // output, gates, cells at 16 + 3d.
  static variable_list forward(AutogradContext* ctx, const Tensor& input,
                               const OptTensor& batch_sizes, const Tensor& hx0, const Tensor& cx0,
                               const Tensor& hx1, const Tensor& cx1, const OptTensor& w_ih0,
                               const OptTensor& w_hh0, const OptTensor& b_ih0,
                               const OptTensor& b_hh0, const OptTensor& w_hr0,
                               const OptTensor& w_ih1, const OptTensor& w_hh1,
                               const OptTensor& b_ih1, const OptTensor& b_hh1,
                               const OptTensor& w_hr1, bool need_workspace) {
    const std::array<OptTensor, 10> weights{w_ih0, w_hh0, b_ih0, b_hh0, w_hr0,
                                            w_ih1, w_hh1, b_ih1, b_hh1, w_hr1};
    const auto r = lstm_pair_below_autograd(input, batch_sizes, {hx0, cx0, hx1, cx1}, weights,
                                            need_workspace);
    variable_list args{input, value_of(batch_sizes), hx0, cx0, hx1, cx1};
    for (const OptTensor& w : weights) args.push_back(value_of(w));
    save_pair(ctx, args, {std::get<0>(r[0]), std::get<3>(r[0]), std::get<4>(r[0]),
                          std::get<0>(r[1]), std::get<3>(r[1]), std::get<4>(r[1])});
    return {std::get<0>(r[0]), std::get<1>(r[0]), std::get<2>(r[0]),
            std::get<0>(r[1]), std::get<1>(r[1]), std::get<2>(r[1])};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const std::vector<bool> need = pair_needs(ctx);
    const OptTensor batch_sizes = optional_of(s[1]);
    // direction d's gradients, by argument position (undefined where not needed)
    return pair_backward(need, [&](int d) {
      const size_t h = 2 + 2 * d, w = 6 + 5 * d, o = 16 + 3 * d;  // hx, w_ih, output
      const Tensor g_out = grad_or_zeros(grads[3 * d], s[o]);
      const Tensor g_hn = grad_or_zeros(grads[3 * d + 1], s[h]);
      const Tensor g_cn = grad_or_zeros(grads[3 * d + 2], s[h + 1]);
      variable_list g(17);
      if (at::GradMode::is_enabled()) {  // create_graph: the differentiable backward
        static const auto graph =
            op_handle<signature::LstmLayerGraph>("rnnfused::_lstm_layer_backward_graph");
        const size_t to[9] = {0, 1, h, h + 1, w, w + 1, w + 2, w + 3, w + 4};
        c10::List<bool> needs;
        for (size_t a : to) needs.push_back(need[a]);
        needs.push_back(false);  // reverse
        needs.push_back(false);  // need_workspace
        const auto r = graph.call(g_out, g_hn, g_cn, s[0], batch_sizes, s[h], s[h + 1], s[w],
                                  s[w + 1], optional_of(s[w + 2]), optional_of(s[w + 3]),
                                  optional_of(s[w + 4]), d == 1, needs);
        for (size_t k = 0; k < 9; ++k) g[to[k]] = r[k];
      } else {
        static const auto op =
            op_handle<signature::LstmLayerBackward>("rnnfused::lstm_layer_backward");
        const at::AutoDispatchBelowADInplaceOrView below;  // as LstmLayer's (autograd.cpp)
        const std::array<bool, 7> mask{need[0], need[h] || need[h + 1], need[w], need[w + 1],
                                       need[w + 2], need[w + 3], need[w + 4]};
        auto [g_in, g_hx, g_cx, g_wih, g_whh, g_bih, g_bhh, g_whr] =
            op.call(g_out, g_hn, g_cn, s[0], batch_sizes, s[h], s[h + 1], s[w], s[w + 1],
                    optional_of(s[w + 4]), s[o], s[o + 1], s[o + 2], d == 1, mask);
        const Tensor got[8] = {g_in, g_hx, g_cx, g_wih, g_whh, g_bih, g_bhh, g_whr};
        const size_t to[8] = {0, h, h + 1, w, w + 1, w + 2, w + 3, w + 4};
        for (size_t k = 0; k < 8; ++k) g[to[k]] = got[k];
      }
      return g;
    });
  }
};

std::vector<Tensor> lstm_layer_pair_autograd(const Tensor& input, const OptTensor& batch_sizes,
                                             at::TensorList states,
                                             const c10::List<OptTensor>& weights,
                                             bool need_workspace) {
  if (!autograd_records(input, states, weights)) {
    static const auto op = op_handle<signature::LayerPair>(kLstmPair);
    const at::AutoDispatchBelowADInplaceOrView below;
    return op.call(input, batch_sizes, states, weights, need_workspace);
  }
  const auto h = fixed<4>(kLstmPair, "states", states);
  const auto w = fixed<10>(kLstmPair, "weights", weights);
  return LstmLayerPair::apply(input, batch_sizes, h[0], h[1], h[2], h[3], w[0], w[1], w[2], w[3],
                              w[4], w[5], w[6], w[7], w[8], w[9], need_workspace);
}

// ------------------------------------------------------------------ GRU
// Pair arguments: 0 input, 1 batch_sizes, 2 + d hx of direction d, 4 + 4d .. 7 + 4d
// its (w_ih, w_hh, b_ih, b_hh), 12 need_workspace.
constexpr const char* kGruPair = "rnnfused::_gru_layer_pair";

// Per direction (output, h_n, workspace), the layer op below autograd.
std::array<std::tuple<Tensor, Tensor, Tensor>, 2> gru_pair_below_autograd(
    const Tensor& input, const OptTensor& batch_sizes, const std::array<Tensor, 2>& states,
    const std::array<OptTensor, 8>& weights, bool need_workspace) {
  static const auto layer = op_handle<signature::GruLayer>("rnnfused::gru_layer");
  const at::AutoDispatchBelowADInplaceOrView below;  // captured by run_two's threads
  std::array<std::tuple<Tensor, Tensor, Tensor>, 2> results;
  run_two([&](int d) {
    const size_t w = 4 * d;
    results[d] = layer.call(input, batch_sizes, states[d], *weights[w], *weights[w + 1],
                            weights[w + 2], weights[w + 3], d == 1, need_workspace);
  });
  return results;
}

// The CPU kernel (below autograd): (output, h_n) per direction.
std::vector<Tensor> gru_layer_pair(const Tensor& input, const OptTensor& batch_sizes,
                                   at::TensorList states, const c10::List<OptTensor>& weights,
                                   bool need_workspace) {
  const auto r =
      gru_pair_below_autograd(input, batch_sizes, fixed<2>(kGruPair, "states", states),
                              fixed<8>(kGruPair, "weights", weights), need_workspace);
  return {std::get<0>(r[0]), std::get<1>(r[0]), std::get<0>(r[1]), std::get<1>(r[1])};
}

struct GruLayerPair : torch::autograd::Function<GruLayerPair> {
  // saved: 0 input, 1 batch_sizes, 2..3 states, 4..11 weights, then per direction
  // output, workspace at 12 + 2d.
  static variable_list forward(AutogradContext* ctx, const Tensor& input,
                               const OptTensor& batch_sizes, const Tensor& hx0, const Tensor& hx1,
                               const OptTensor& w_ih0, const OptTensor& w_hh0,
                               const OptTensor& b_ih0, const OptTensor& b_hh0,
                               const OptTensor& w_ih1, const OptTensor& w_hh1,
                               const OptTensor& b_ih1, const OptTensor& b_hh1,
                               bool need_workspace) {
    const std::array<OptTensor, 8> weights{w_ih0, w_hh0, b_ih0, b_hh0, w_ih1, w_hh1, b_ih1, b_hh1};
    const auto r = gru_pair_below_autograd(input, batch_sizes, {hx0, hx1}, weights, need_workspace);
    variable_list args{input, value_of(batch_sizes), hx0, hx1};
    for (const OptTensor& w : weights) args.push_back(value_of(w));
    save_pair(ctx, args, {std::get<0>(r[0]), std::get<2>(r[0]), std::get<0>(r[1]),
                          std::get<2>(r[1])});
    return {std::get<0>(r[0]), std::get<1>(r[0]), std::get<0>(r[1]), std::get<1>(r[1])};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const std::vector<bool> need = pair_needs(ctx);
    const OptTensor batch_sizes = optional_of(s[1]);
    return pair_backward(need, [&](int d) {
      const size_t h = 2 + d, w = 4 + 4 * d, o = 12 + 2 * d;  // hx, w_ih, output
      const Tensor g_out = grad_or_zeros(grads[2 * d], s[o]);
      const Tensor g_hn = grad_or_zeros(grads[2 * d + 1], s[h]);
      variable_list g(13);
      if (at::GradMode::is_enabled()) {  // create_graph: the differentiable backward
        static const auto graph =
            op_handle<signature::GruLayerGraph>("rnnfused::_gru_layer_backward_graph");
        const size_t to[7] = {0, 1, h, w, w + 1, w + 2, w + 3};
        c10::List<bool> needs;
        for (size_t a : to) needs.push_back(need[a]);
        needs.push_back(false);  // reverse
        needs.push_back(false);  // need_workspace
        const auto r = graph.call(g_out, g_hn, s[0], batch_sizes, s[h], s[w], s[w + 1],
                                  optional_of(s[w + 2]), optional_of(s[w + 3]), d == 1, needs);
        for (size_t k = 0; k < 7; ++k) g[to[k]] = r[k];
      } else {
        static const auto op =
            op_handle<signature::GruLayerBackward>("rnnfused::gru_layer_backward");
        const at::AutoDispatchBelowADInplaceOrView below;  // as LstmLayer's (autograd.cpp)
        const std::array<bool, 7> mask{need[0], need[h], need[w], need[w + 1], need[w + 2],
                                       need[w + 3], false};
        auto [g_in, g_hx, g_wih, g_whh, g_bih, g_bhh] = op.call(
            g_out, g_hn, s[0], batch_sizes, s[h], s[w], s[w + 1], s[o], s[o + 1], d == 1, mask);
        const Tensor got[6] = {g_in, g_hx, g_wih, g_whh, g_bih, g_bhh};
        const size_t to[6] = {0, h, w, w + 1, w + 2, w + 3};
        for (size_t k = 0; k < 6; ++k) g[to[k]] = got[k];
      }
      return g;
    });
  }
};

std::vector<Tensor> gru_layer_pair_autograd(const Tensor& input, const OptTensor& batch_sizes,
                                            at::TensorList states,
                                            const c10::List<OptTensor>& weights,
                                            bool need_workspace) {
  if (!autograd_records(input, states, weights)) {
    static const auto op = op_handle<signature::LayerPair>(kGruPair);
    const at::AutoDispatchBelowADInplaceOrView below;
    return op.call(input, batch_sizes, states, weights, need_workspace);
  }
  const auto h = fixed<2>(kGruPair, "states", states);
  const auto w = fixed<8>(kGruPair, "weights", weights);
  return GruLayerPair::apply(input, batch_sizes, h[0], h[1], w[0], w[1], w[2], w[3], w[4], w[5],
                             w[6], w[7], need_workspace);
}

}  // namespace
}  // namespace rnnfused

TORCH_LIBRARY_IMPL(rnnfused, CPU, m) {
  m.impl("_lstm_layer_pair", &rnnfused::lstm_layer_pair);
  m.impl("_gru_layer_pair", &rnnfused::gru_layer_pair);
}

TORCH_LIBRARY_IMPL(rnnfused, Autograd, m) {
  m.impl("_lstm_layer_pair", &rnnfused::lstm_layer_pair_autograd);
  m.impl("_gru_layer_pair", &rnnfused::gru_layer_pair_autograd);
}
