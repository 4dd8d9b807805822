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

// Autograd leaves the gradient of an unused output undefined (the Functions turn
// off materialize_grads: materialising would also zero-fill the non-differentiable
// workspace outputs, [N, 4H] per backward). The backward ops take zeros there.
inline at::Tensor grad_or_zeros(const at::Tensor& grad, const at::Tensor& like) {
  // sym_sizes: under torch.compile the sizes are symbolic (sizes() would specialise them)
  return grad.defined() ? grad : at::zeros_symint(like.sym_sizes(), like.options());
}

}  // namespace rnnfused
