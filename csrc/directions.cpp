// Both directions of a bidirectional layer at the same time, one thread each
// (rnnfused.functional calls these in eager CPU float32 where it pays; see
// _directions_together there). Each direction is an ordinary call of the
// layer op through the dispatcher, so autograd records it as usual: these ops are
// CompositeImplicitAutograd, above autograd, and only choose the threads.
//
// Inside the two-thread region every inner parallel construct runs on its own
// thread: OpenMP does not nest by default, at::parallel_for runs inline in a
// parallel region, and MKL runs sequentially when called from one.
#include <Python.h>

#include <ATen/ThreadLocalState.h>
#include <omp.h>
#include <torch/library.h>

#include <exception>
#include <vector>

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

// Runs run(0) and run(1) on two threads (one after the other if OpenMP gives one),
// each under the caller's thread-local state (grad mode, autocast, dispatch keys);
// rethrows the first direction's error.
template <typename F>
void run_two(const F& run) {
  const at::ThreadLocalState state;
  std::exception_ptr errors[2];
  const GilReleased gil;
#pragma omp parallel num_threads(2)
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

OptTensor optional_at(const c10::List<OptTensor>& list, size_t i) { return list.get(i); }

// weights: 10 entries, (w_ih, w_hh, b_ih, b_hh, w_hr) per direction; states:
// (hx, cx) per direction. Returns (output, h_n, c_n) per direction.
std::vector<Tensor> lstm_layer_pair(const Tensor& input, const OptTensor& batch_sizes,
                                    at::TensorList states, const c10::List<OptTensor>& weights,
                                    bool need_workspace) {
  TORCH_CHECK(states.size() == 4, "rnnfused::_lstm_layer_pair: expected 4 states, got ",
              states.size());
  TORCH_CHECK(weights.size() == 10, "rnnfused::_lstm_layer_pair: expected 10 weights, got ",
              weights.size());
  using Layer = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
      const Tensor&, const OptTensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
      const OptTensor&, const OptTensor&, const OptTensor&, bool, bool);
  static const auto layer = op_handle<Layer>("rnnfused::lstm_layer");
  std::vector<Tensor> results(6);
  run_two([&](int d) {
    const size_t w = 5 * d;
    auto [output, h_n, c_n, gates, cells] =
        layer.call(input, batch_sizes, states[2 * d], states[2 * d + 1], *weights.get(w),
                   *weights.get(w + 1), optional_at(weights, w + 2), optional_at(weights, w + 3),
                   optional_at(weights, w + 4), d == 1, need_workspace);
    results[3 * d] = output;
    results[3 * d + 1] = h_n;
    results[3 * d + 2] = c_n;
  });
  return results;
}

// weights: 8 entries, (w_ih, w_hh, b_ih, b_hh) per direction; states: hx per
// direction. Returns (output, h_n) per direction.
std::vector<Tensor> gru_layer_pair(const Tensor& input, const OptTensor& batch_sizes,
                                   at::TensorList states, const c10::List<OptTensor>& weights,
                                   bool need_workspace) {
  TORCH_CHECK(states.size() == 2, "rnnfused::_gru_layer_pair: expected 2 states, got ",
              states.size());
  TORCH_CHECK(weights.size() == 8, "rnnfused::_gru_layer_pair: expected 8 weights, got ",
              weights.size());
  using Layer = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const OptTensor&, const Tensor&,
                                                   const Tensor&, const Tensor&, const OptTensor&,
                                                   const OptTensor&, bool, bool);
  static const auto layer = op_handle<Layer>("rnnfused::gru_layer");
  std::vector<Tensor> results(4);
  run_two([&](int d) {
    const size_t w = 4 * d;
    auto [output, h_n, workspace] =
        layer.call(input, batch_sizes, states[d], *weights.get(w), *weights.get(w + 1),
                   optional_at(weights, w + 2), optional_at(weights, w + 3), d == 1,
                   need_workspace);
    results[2 * d] = output;
    results[2 * d + 1] = h_n;
  });
  return results;
}

}  // namespace
}  // namespace rnnfused

TORCH_LIBRARY_IMPL(rnnfused, CompositeImplicitAutograd, m) {
  m.impl("_lstm_layer_pair", &rnnfused::lstm_layer_pair);
  m.impl("_gru_layer_pair", &rnnfused::gru_layer_pair);
}
