// Calling this library's ops from C++ (autograd.cpp, directions.cpp, bindings.cpp):
// a typed handle on an op, the ops' signatures (one copy, as ops.cpp declares
// them), and the argument conversions those callers share. Look a handle up once
// (keep the result in a function-local static): the lookup searches the
// dispatcher's table.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace rnnfused {

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// The C++ signature of each op (see ops.cpp for the arguments).
namespace signature {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

using LstmLayer = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const OptTensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const OptTensor&, const OptTensor&, const OptTensor&, bool, bool);
using LstmLayerBackward =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
        const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
        const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
        const Tensor&, const Tensor&, const Tensor&, bool, std::array<bool, 7>);
using LstmLayerGraph = std::vector<Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
    const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
    const OptTensor&, bool, c10::List<bool>);

using GruLayer = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const OptTensor&,
                                                    const Tensor&, const Tensor&, const Tensor&,
                                                    const OptTensor&, const OptTensor&, bool, bool);
using GruLayerBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, const Tensor&, bool, std::array<bool, 7>);
using GruLayerGraph = std::vector<Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                          const OptTensor&, const Tensor&, const Tensor&,
                                          const Tensor&, const OptTensor&, const OptTensor&, bool,
                                          c10::List<bool>);

using RnnLayer = std::tuple<Tensor, Tensor>(const Tensor&, const OptTensor&, const Tensor&,
                                            const Tensor&, const Tensor&, const OptTensor&,
                                            const OptTensor&, bool, bool);
using RnnLayerBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, bool, bool, std::array<bool, 7>);
using RnnLayerGraph = std::vector<Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                          const OptTensor&, const Tensor&, const Tensor&,
                                          const Tensor&, const OptTensor&, const OptTensor&, bool,
                                          bool, c10::List<bool>);

// Both directions of a layer (directions.cpp): input, batch_sizes, states, weights,
// need_workspace.
using LayerPair = std::vector<Tensor>(const Tensor&, const OptTensor&, at::TensorList,
                                      const c10::List<OptTensor>&, bool);

}  // namespace signature

// An optional argument as a possibly undefined tensor (for save_for_backward), and back.
inline at::Tensor value_of(const std::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}
inline std::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// Whether `pred` holds for any defined tensor among the arguments: tensors,
// optional tensors, tensor lists and lists of optional tensors, as the ops take them.
template <typename Pred>
bool any_tensor(const Pred& pred, const at::Tensor& t) {
  return t.defined() && pred(t);
}
template <typename Pred>
bool any_tensor(const Pred& pred, const std::optional<at::Tensor>& t) {
  return t.has_value() && any_tensor(pred, *t);
}
template <typename Pred>
bool any_tensor(const Pred& pred, at::TensorList list) {
  for (const at::Tensor& t : list) {
    if (any_tensor(pred, t)) return true;
  }
  return false;
}
template <typename Pred>
bool any_tensor(const Pred& pred, const c10::List<std::optional<at::Tensor>>& list) {
  for (size_t i = 0; i < list.size(); ++i) {
    if (any_tensor(pred, static_cast<std::optional<at::Tensor>>(list[i]))) return true;
  }
  return false;
}
template <typename Pred, typename First, typename Second, typename... Rest>
bool any_tensor(const Pred& pred, const First& first, const Second& second, const Rest&... rest) {
  return any_tensor(pred, first) || any_tensor(pred, second, rest...);
}

// Whether autograd will need a layer op's saved workspace (ops.py's
// _backward_follows): grad mode on and an argument requiring a gradient.
template <typename... Args>
bool backward_follows(const Args&... args) {
  return at::GradMode::is_enabled() &&
         any_tensor([](const at::Tensor& t) { return t.requires_grad(); }, args...);
}

// Whether autograd has anything to record for a call on these arguments: a node
// (backward_follows: Function::apply's is_executable) or a forward-mode tangent on
// one (which the Functions refuse, as torch's C++ custom Functions do). Where it
// has none, the Autograd kernels run the op straight below autograd: under no_grad
// a Function's context, saved variables and wrapped outputs are most of a small
// layer's host time outside its loop.
template <typename... Args>
bool autograd_records(const Args&... args) {
  return backward_follows(args...) ||
         any_tensor([](const at::Tensor& t) { return t._fw_grad(/*level=*/0).defined(); },
                    args...);
}

// Autograd leaves the gradient of an unused output undefined (the Functions turn
// off materialize_grads: materialising would also zero-fill the non-differentiable
// workspace outputs, [N, 4H] per backward). The backward ops take zeros there.
inline at::Tensor grad_or_zeros(const at::Tensor& grad, const at::Tensor& like) {
  // sym_sizes: under torch.compile the sizes are symbolic (sizes() would specialise them)
  return grad.defined() ? grad : at::zeros_symint(like.sym_sizes(), like.options());
}

}  // namespace rnnfused
