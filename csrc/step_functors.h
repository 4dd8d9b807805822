// The pointwise work of one time step. Each functor holds the step's pointers
// (already offset to the step's first row; row strides are the matrices' widths,
// everything contiguous) and has one body, `apply(lanes, b, j)`, for batch row b
// and hidden units starting at j. `lanes` says how many units one call covers
// and how to load and store them:
//   - ScalarLanes: one unit, in the accumulation type. `operator()(idx)` runs it
//     for the flat index idx = b * H + j: CUDA's grid-stride kernel and the CPU's
//     generic loop (launch*.h) both call it, so the CPU tests cover the indexing
//     the GPU uses.
//   - cpu/simd.h: 8 or 16 float units per call (AVX2, AVX-512), same body.
// The math is gates.h's. This header includes no ATen, so that the SIMD
// translation units, compiled for other instruction sets, share no inline code
// with the rest of the library.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "gates.h"

namespace c10 {
struct Half;
struct BFloat16;
}  // namespace c10

namespace rnnfused {

// The type the math runs in for a storage type (as at::opmath_type).
template <typename T>
struct AccType {
  using type = T;
};
template <>
struct AccType<c10::Half> {
  using type = float;
};
template <>
struct AccType<c10::BFloat16> {
  using type = float;
};

// One unit at a time, in the accumulation type `acc_t`.
template <typename scalar_t>
struct ScalarLanes {
  using value = typename AccType<scalar_t>::type;
  C10_HOST_DEVICE value load(const scalar_t* p) const { return value(*p); }
  C10_HOST_DEVICE void store(scalar_t* p, value v) const { *p = scalar_t(v); }
};

// Splits a flat index into (row, unit) and runs the body on one unit.
template <typename Derived, typename scalar_t>
struct StepFunctor {
  using scalar_type = scalar_t;

  C10_HOST_DEVICE void operator()(int64_t idx) const {
    const Derived& self = static_cast<const Derived&>(*this);
    const int64_t b = idx / self.H;
    self.apply(ScalarLanes<scalar_t>{}, b, idx - b * self.H);
  }
};

// l.load(p + i), plus l.load(q + i) where q is non-null (the backward's gradient
// from the step's output, which the time loops leave to the functor).
template <typename Lanes, typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE typename Lanes::value load_plus(const Lanes& l, const T* p,
                                                                  const T* q, int64_t i) {
  return q == nullptr ? l.load(p + i) : l.load(p + i) + l.load(q + i);
}

// l.load(p + i), or zeros where p is null (an optional bias).
template <typename Lanes, typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE typename Lanes::value load_or_zero(const Lanes& l, const T* p,
                                                                     int64_t i) {
  return p == nullptr ? typename Lanes::value(0) : l.load(p + i);
}

// A value of the workspace saved for the backward: l.stream(p, v) where `stream` and
// the Lanes have one (a non-temporal store: the CPU's AVX-512 Lanes), else l.store.
template <typename Lanes, typename T, typename V>
C10_ALWAYS_INLINE C10_HOST_DEVICE auto stream_or_store(const Lanes& l, T* p, V v, int)
    -> decltype(l.stream(p, v)) {
  return l.stream(p, v);
}
template <typename Lanes, typename T, typename V>
C10_ALWAYS_INLINE C10_HOST_DEVICE void stream_or_store(const Lanes& l, T* p, V v, long) {
  l.store(p, v);
}
template <typename Lanes, typename T, typename V>
C10_ALWAYS_INLINE C10_HOST_DEVICE void store_saved(const Lanes& l, T* p, V v, bool stream) {
  if (stream) {
    stream_or_store(l, p, v, 0);
  } else {
    l.store(p, v);
  }
}

// ----------------------------------------------------------------- RNN
template <typename scalar_t>
struct RnnForwardStep : StepFunctor<RnnForwardStep<scalar_t>, scalar_t> {
  static constexpr int kGates = 1;
  // x_proj and the recurrent product enter each pre-activation as a sum: a loop may
  // carry the bias on either (the CPU's fused loops: fused_forward_cpu.h).
  static constexpr bool kSumsProjections = true;
  const scalar_t* x_proj;  // [rows, H]  W_ih x + b_ih + b_hh (or the bias in `hidden`'s)
  scalar_t* hidden;        // [rows, H]  in: W_hh h_prev, out: h'
  int64_t H;
  bool relu;

  template <typename Lanes>
  C10_ALWAYS_INLINE C10_HOST_DEVICE void apply(const Lanes& l, int64_t b, int64_t j) const {
    const int64_t i = b * H + j;
    l.store(hidden + i, rnn_forward(l.load(x_proj + i) + l.load(hidden + i), relu));
  }
};

template <typename scalar_t>
struct RnnBackwardStep : StepFunctor<RnnBackwardStep<scalar_t>, scalar_t> {
  static constexpr int kGates = 1;
  const scalar_t* hidden;       // [rows, H]  h' of this step
  const scalar_t* d_hidden;     // [rows, H]  gradient on h' from the later steps
  const scalar_t* grad_output;  // [rows, H]  gradient on h' from the output, or null (in d_hidden)
  scalar_t* d_pre;              // [rows, H]  out: gradient on the pre-activation, rows
                                //   d_pre_stride apart (>= H: Launch::gradient_rows)
  int64_t H;
  bool relu;
  int64_t d_pre_stride;

  template <typename Lanes>
  C10_ALWAYS_INLINE C10_HOST_DEVICE void apply(const Lanes& l, int64_t b, int64_t j) const {
    const int64_t i = b * H + j;
    l.store(d_pre + b * d_pre_stride + j,
            rnn_backward(l.load(hidden + i), load_plus(l, d_hidden, grad_output, i), relu));
  }
};

// ----------------------------------------------------------------- LSTM
// product_t: the type of the recurrent product it reads (the storage type, or
// float32 where the product's sums come from AMX tiles, cpu/amx_loop.h).
template <typename scalar_t, typename product_t = scalar_t>
struct LstmForwardStep : StepFunctor<LstmForwardStep<scalar_t, product_t>, scalar_t> {
  static constexpr int kGates = 4;
  static constexpr bool kSumsProjections = true;  // as RnnForwardStep's
  const scalar_t* x_proj;  // [rows, 4H]  W_ih x + b_ih + b_hh (or the bias in h_proj)
  const product_t* h_proj; // [rows, 4H]  W_hh h_prev
  scalar_t* cell_state;    // [rows, H]   in: c_prev, out: c'
  scalar_t* gates;         // [rows, 4H]  out: activated i, f, g, o (saved for backward), or
                           //   null when nothing is saved (then cells is null too)
  scalar_t* cells;         // [rows, H]   out: c' (saved for backward)
  scalar_t* hidden;        // [rows, H]   out: o * tanh(c') (before any projection)
  int64_t H;
  bool stream_saved = false;  // gates and cells stored past the caches (store_saved)

  template <typename Lanes>
  C10_ALWAYS_INLINE C10_HOST_DEVICE void apply(const Lanes& l, int64_t b, int64_t j) const {
    const int64_t i = b * H + j;
    const int64_t g = b * 4 * H + j;  // gate k of unit j at g + k * H
    const auto a = lstm_activate(
        l.load(x_proj + g) + l.load(h_proj + g),
        l.load(x_proj + g + H) + l.load(h_proj + g + H),
        l.load(x_proj + g + 2 * H) + l.load(h_proj + g + 2 * H),
        l.load(x_proj + g + 3 * H) + l.load(h_proj + g + 3 * H));
    const auto c = lstm_cell(a, l.load(cell_state + i));
    if (gates != nullptr) {
      store_saved(l, gates + g, a.i, stream_saved);
      store_saved(l, gates + g + H, a.f, stream_saved);
      store_saved(l, gates + g + 2 * H, a.g, stream_saved);
      store_saved(l, gates + g + 3 * H, a.o, stream_saved);
      store_saved(l, cells + i, c, stream_saved);
    }
    l.store(cell_state + i, c);
    l.store(hidden + i, lstm_hidden(a, c));
  }
};

template <typename scalar_t>
struct LstmBackwardStep : StepFunctor<LstmBackwardStep<scalar_t>, scalar_t> {
  static constexpr int kGates = 4;
  const scalar_t* gates;         // [rows, 4H]       saved activated gates
  const scalar_t* cells;         // [rows, H]        saved c'
  const scalar_t* cells_before;  // [rows_before, H] c' of the previous step (may be null)
  const scalar_t* c0;            // [>= rows, H]     initial cell state, for rows >= rows_before
  int64_t rows_before;
  const scalar_t* d_hidden;      // [rows, H]  gradient on o * tanh(c') from the later steps
  const scalar_t* grad_output;   // [rows, H]  ... from the output, or null (in d_hidden)
  scalar_t* d_cell;              // [rows, H]  in: gradient on c', out: gradient on c_prev
  scalar_t* d_pre;               // [rows, 4H] out: gradient on the pre-activations, rows
                                 //   d_pre_stride apart (>= 4H: Launch::gradient_rows)
  scalar_t* hidden;              // [rows, H]  out: o * tanh(c') when non-null (projection grads)
  int64_t H;
  int64_t d_pre_stride;

  template <typename Lanes>
  C10_ALWAYS_INLINE C10_HOST_DEVICE void apply(const Lanes& l, int64_t b, int64_t j) const {
    const int64_t i = b * H + j;
    const int64_t g = b * 4 * H + j;
    using V = typename Lanes::value;
    const LstmGates<V> a{l.load(gates + g), l.load(gates + g + H), l.load(gates + g + 2 * H),
                         l.load(gates + g + 3 * H)};
    const V c = l.load(cells + i);
    const V c_prev = l.load(b < rows_before ? cells_before + i : c0 + i);
    const LstmGrads<V> d = lstm_backward(a, c, c_prev, load_plus(l, d_hidden, grad_output, i),
                                         l.load(d_cell + i));
    const int64_t p = b * d_pre_stride + j;
    l.store(d_pre + p, d.d_pre.i);
    l.store(d_pre + p + H, d.d_pre.f);
    l.store(d_pre + p + 2 * H, d.d_pre.g);
    l.store(d_pre + p + 3 * H, d.d_pre.o);
    l.store(d_cell + i, d.d_c_prev);
    if (hidden != nullptr) {
      l.store(hidden + i, lstm_hidden(a, c));
    }
  }
};

// ----------------------------------------------------------------- GRU
// product_t: as LstmForwardStep's.
template <typename scalar_t, typename product_t = scalar_t>
struct GruForwardStep : StepFunctor<GruForwardStep<scalar_t, product_t>, scalar_t> {
  static constexpr int kGates = 3;
  // b_in stays on the input side: n = tanh(x_n + b_in + r * h_n) (RnnForwardStep's
  // kSumsProjections; the CPU's fused loops pass b_ih apart instead: b_ih below).
  static constexpr bool kSumsProjections = false;
  const scalar_t* x_proj;  // [rows, 3H]  W_ih x + b_ih (or W_ih x, and b_ih below)
  const product_t* h_proj; // [rows, 3H]  W_hh h_prev (without b_hh)
  const scalar_t* b_hh;    // [3H] or null
  const scalar_t* h_prev;  // [rows, H]
  scalar_t* workspace;     // [rows, 4H]  out: r, z, n, W_hn h + b_hn (saved for backward),
                           //   or null when nothing is saved
  scalar_t* hidden;        // [rows, H]   out: h'
  int64_t H;
  bool stream_saved = false;  // the workspace stored past the caches (store_saved)
  const scalar_t* b_ih = nullptr;  // [3H] where x_proj is formed without it, else null

  template <typename Lanes>
  C10_ALWAYS_INLINE C10_HOST_DEVICE void apply(const Lanes& l, int64_t b, int64_t j) const {
    const int64_t i = b * H + j;
    const int64_t g = b * 3 * H + j;
    const auto a = gru_activate(
        l.load(x_proj + g) + load_or_zero(l, b_ih, j),
        l.load(x_proj + g + H) + load_or_zero(l, b_ih, j + H),
        l.load(x_proj + g + 2 * H) + load_or_zero(l, b_ih, j + 2 * H),
        l.load(h_proj + g) + load_or_zero(l, b_hh, j),
        l.load(h_proj + g + H) + load_or_zero(l, b_hh, j + H),
        l.load(h_proj + g + 2 * H) + load_or_zero(l, b_hh, j + 2 * H));
    if (workspace != nullptr) {
      const int64_t w = b * 4 * H + j;
      store_saved(l, workspace + w, a.r, stream_saved);
      store_saved(l, workspace + w + H, a.z, stream_saved);
      store_saved(l, workspace + w + 2 * H, a.n, stream_saved);
      store_saved(l, workspace + w + 3 * H, a.h_n, stream_saved);
    }
    l.store(hidden + i, gru_hidden(a, l.load(h_prev + i)));
  }
};

template <typename scalar_t>
struct GruBackwardStep : StepFunctor<GruBackwardStep<scalar_t>, scalar_t> {
  static constexpr int kGates = 3;
  const scalar_t* workspace;      // [rows, 4H]  saved r, z, n, W_hn h + b_hn
  const scalar_t* hidden_before;  // [rows_before, H] h' of the previous step (may be null)
  const scalar_t* h0;             // [>= rows, H] initial state, for rows >= rows_before
  int64_t rows_before;
  scalar_t* d_hidden;             // [rows, H]  in: gradient on h' from the later steps,
                                  //   out: z * d_h' (the direct part of the gradient on h_prev)
  const scalar_t* grad_output;    // [rows, H]  ... from the output, or null (in d_hidden)
  scalar_t* d_x;                  // [rows, 3H] out: gradient on the input-side pre-activations
  scalar_t* d_h;                  // [rows, 3H] out: gradient on the hidden-side products
  int64_t H;
  int64_t d_stride;               // d_x's and d_h's row stride (>= 3H: Launch::gradient_rows)

  template <typename Lanes>
  C10_ALWAYS_INLINE C10_HOST_DEVICE void apply(const Lanes& l, int64_t b, int64_t j) const {
    using V = typename Lanes::value;
    const int64_t i = b * H + j;
    const int64_t w = b * 4 * H + j;
    const GruGates<V> a{l.load(workspace + w), l.load(workspace + w + H),
                        l.load(workspace + w + 2 * H), l.load(workspace + w + 3 * H)};
    const V h_prev = l.load(b < rows_before ? hidden_before + i : h0 + i);
    const GruGrads<V> d = gru_backward(a, h_prev, load_plus(l, d_hidden, grad_output, i));
    const int64_t g = b * d_stride + j;
    l.store(d_x + g, d.d_x_r);
    l.store(d_x + g + H, d.d_x_z);
    l.store(d_x + g + 2 * H, d.d_x_n);
    l.store(d_h + g, d.d_h_r);
    l.store(d_h + g + H, d.d_h_z);
    l.store(d_h + g + 2 * H, d.d_h_n);
    l.store(d_hidden + i, d.d_h_prev_direct);
  }
};

}  // namespace rnnfused
