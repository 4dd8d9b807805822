// Gate math of every cell, forward and backward: the one copy shared by the CPU
// loops and the CUDA kernels. Templates over the value type `T`: a scalar of the
// accumulation type (float for float/half/bfloat16 storage, double for double),
// or on the CPU a SIMD vector of floats (cpu/simd.h), which supplies its own
// exp_of / tanh_of / relu_of / where_positive found by argument-dependent
// lookup. No tensors, no indexing. Gate order and formulas are torch.nn's.
// Every function is forced inline: the SIMD step kernels must keep their vectors
// in registers, and GCC's per-file inlining budget runs out as the step files
// instantiate more storage types (an LSTM forward at 1.7x its time when
// lstm_activate became a call).
#pragma once

#include <c10/macros/Macros.h>
#include <cmath>

namespace rnnfused {

// The elementary functions, scalar versions.
template <typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE T exp_of(T x) {
  return std::exp(x);
}

template <typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE T tanh_of(T x) {
  return std::tanh(x);
}

// relu with NaN propagating as in torch.relu.
template <typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE T relu_of(T x) {
  return x < T(0) ? T(0) : x;
}

// value where h > 0, else 0 (relu's backward, as torch's threshold_backward).
template <typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE T where_positive(T h, T value) {
  return h > T(0) ? value : T(0);
}

template <typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + exp_of(-x));
}

// ---------------------------------------------------------------- RNN
// h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu.
template <typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE T rnn_forward(T preactivation, bool relu) {
  return relu ? relu_of(preactivation) : tanh_of(preactivation);
}

// d_pre given the output h' of the activation and d_h' (the gradient on h').
template <typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE T rnn_backward(T h, T d_h, bool relu) {
  return relu ? where_positive(h, d_h) : d_h * (T(1) - h * h);
}

// ---------------------------------------------------------------- LSTM
// Gates i, f, g, o (rows of weight_ih in this order).
template <typename T>
struct LstmGates {
  T i, f, g, o;
};

// Activated gates from the pre-activations (x and h products plus both biases).
template <typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE LstmGates<T> lstm_activate(T pre_i, T pre_f, T pre_g, T pre_o) {
  return {sigmoid(pre_i), sigmoid(pre_f), tanh_of(pre_g), sigmoid(pre_o)};
}

// c' = f * c + i * g
template <typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE T lstm_cell(const LstmGates<T>& a, T c_prev) {
  return a.f * c_prev + a.i * a.g;
}

// The hidden output before the projection: o * tanh(c').
template <typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE T lstm_hidden(const LstmGates<T>& a, T c) {
  return a.o * tanh_of(c);
}

template <typename T>
struct LstmGrads {
  LstmGates<T> d_pre;  // gradient on the four pre-activations
  T d_c_prev;          // gradient on the previous cell state
};

// Backward of one unit. `d_hidden`: gradient on o*tanh(c') (after the projection's
// backward, if any); `d_c`: gradient on c' arriving from the next step.
template <typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE LstmGrads<T> lstm_backward(
    const LstmGates<T>& a, T c, T c_prev, T d_hidden, T d_c) {
  const T tanh_c = tanh_of(c);
  const T d_o = d_hidden * tanh_c;
  const T d_cell = d_c + d_hidden * a.o * (T(1) - tanh_c * tanh_c);
  LstmGrads<T> out;
  out.d_pre.i = d_cell * a.g * a.i * (T(1) - a.i);
  out.d_pre.f = d_cell * c_prev * a.f * (T(1) - a.f);
  out.d_pre.g = d_cell * a.i * (T(1) - a.g * a.g);
  out.d_pre.o = d_o * a.o * (T(1) - a.o);
  out.d_c_prev = d_cell * a.f;
  return out;
}

// ---------------------------------------------------------------- GRU
// Gates r, z, n. `x_*` include b_ih, `h_*` include b_hh:
//   r = sigmoid(x_r + h_r), z = sigmoid(x_z + h_z), n = tanh(x_n + r * h_n),
//   h' = (1 - z) * n + z * h.
template <typename T>
struct GruGates {
  T r, z, n;
  T h_n;  // W_hn h + b_hn, kept for the backward
};

template <typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE GruGates<T> gru_activate(T x_r, T x_z, T x_n, T h_r, T h_z, T h_n) {
  const T r = sigmoid(x_r + h_r);
  const T z = sigmoid(x_z + h_z);
  const T n = tanh_of(x_n + r * h_n);
  return {r, z, n, h_n};
}

template <typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE T gru_hidden(const GruGates<T>& a, T h_prev) {
  return (T(1) - a.z) * a.n + a.z * h_prev;
}

template <typename T>
struct GruGrads {
  T d_x_r, d_x_z, d_x_n;  // gradient on the input-side pre-activations (and b_ih)
  T d_h_r, d_h_z, d_h_n;  // gradient on the hidden-side products (and b_hh)
  T d_h_prev_direct;      // the part of d h that skips W_hh (z * d_h')
};

template <typename T>
C10_ALWAYS_INLINE C10_HOST_DEVICE GruGrads<T> gru_backward(const GruGates<T>& a, T h_prev, T d_h) {
  const T d_n = d_h * (T(1) - a.z);
  const T d_z = d_h * (h_prev - a.n);
  const T d_n_pre = d_n * (T(1) - a.n * a.n);
  const T d_r = d_n_pre * a.h_n;
  GruGrads<T> out;
  out.d_x_r = d_r * a.r * (T(1) - a.r);
  out.d_x_z = d_z * a.z * (T(1) - a.z);
  out.d_x_n = d_n_pre;
  out.d_h_r = out.d_x_r;
  out.d_h_z = out.d_x_z;
  out.d_h_n = d_n_pre * a.r;
  out.d_h_prev_direct = d_h * a.z;
  return out;
}

}  // namespace rnnfused
