// The pointwise work of one time step, as functors over a flat index
// `idx = b * H + j` (b: batch row within the step, j: hidden unit). The CPU runs
// them with a parallel loop, CUDA with a grid-stride kernel (launch.h); both call
// the same operator(), so the CPU tests cover the indexing the GPU uses.
// Pointers are already offset to the step's first row; row strides are the
// matrices' widths (everything here is contiguous). Math is in `acc_t`
// (float for half/bfloat16, else the storage type), via gates.h.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include "gates.h"

namespace rnnfused {

// ----------------------------------------------------------------- RNN
template <typename scalar_t>
struct RnnForwardStep {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x_proj;  // [rows, H]  W_ih x + b_ih + b_hh
  scalar_t* hidden;        // [rows, H]  in: W_hh h_prev, out: h'
  int64_t H;
  bool relu;

  C10_HOST_DEVICE void operator()(int64_t idx) const {
    const acc_t pre = acc_t(x_proj[idx]) + acc_t(hidden[idx]);
    hidden[idx] = scalar_t(rnn_forward(pre, relu));
  }
};

template <typename scalar_t>
struct RnnBackwardStep {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* hidden;  // [rows, H]  h' of this step
  const scalar_t* d_hidden;  // [rows, H]  total gradient on h'
  scalar_t* d_pre;         // [rows, H]  out: gradient on the pre-activation
  int64_t H;
  bool relu;

  C10_HOST_DEVICE void operator()(int64_t idx) const {
    d_pre[idx] = scalar_t(rnn_backward(acc_t(hidden[idx]), acc_t(d_hidden[idx]), relu));
  }
};

// ----------------------------------------------------------------- LSTM
template <typename scalar_t>
struct LstmForwardStep {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x_proj;  // [rows, 4H]  W_ih x + b_ih + b_hh
  const scalar_t* h_proj;  // [rows, 4H]  W_hh h_prev
  scalar_t* cell_state;    // [rows, H]   in: c_prev, out: c'
  scalar_t* gates;         // [rows, 4H]  out: activated i, f, g, o (saved for backward)
  scalar_t* cells;         // [rows, H]   out: c' (saved for backward)
  scalar_t* hidden;        // [rows, H]   out: o * tanh(c') (before any projection)
  int64_t H;

  C10_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t b = idx / H;
    const int64_t j = idx - b * H;
    const int64_t g0 = b * 4 * H + j;
    acc_t pre[4];
    for (int gate = 0; gate < 4; ++gate) {
      pre[gate] = acc_t(x_proj[g0 + gate * H]) + acc_t(h_proj[g0 + gate * H]);
    }
    const LstmGates<acc_t> a = lstm_activate(pre[0], pre[1], pre[2], pre[3]);
    const acc_t c = lstm_cell(a, acc_t(cell_state[idx]));
    gates[g0] = scalar_t(a.i);
    gates[g0 + H] = scalar_t(a.f);
    gates[g0 + 2 * H] = scalar_t(a.g);
    gates[g0 + 3 * H] = scalar_t(a.o);
    cells[idx] = scalar_t(c);
    cell_state[idx] = scalar_t(c);
    hidden[idx] = scalar_t(lstm_hidden(a, c));
  }
};

template <typename scalar_t>
struct LstmBackwardStep {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* gates;         // [rows, 4H]      saved activated gates
  const scalar_t* cells;         // [rows, H]       saved c'
  const scalar_t* cells_before;  // [rows_before, H] c' of the previous step (may be null)
  const scalar_t* c0;            // [>= rows, H]    initial cell state, for rows >= rows_before
  int64_t rows_before;
  const scalar_t* d_hidden;      // [rows, H]  gradient on o * tanh(c')
  scalar_t* d_cell;              // [rows, H]  in: gradient on c', out: gradient on c_prev
  scalar_t* d_pre;               // [rows, 4H] out: gradient on the pre-activations
  scalar_t* hidden;              // [rows, H]  out: o * tanh(c') when non-null (projection grads)
  int64_t H;

  C10_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t b = idx / H;
    const int64_t j = idx - b * H;
    const int64_t g0 = b * 4 * H + j;
    const LstmGates<acc_t> a{
        acc_t(gates[g0]), acc_t(gates[g0 + H]), acc_t(gates[g0 + 2 * H]), acc_t(gates[g0 + 3 * H])};
    const acc_t c = acc_t(cells[idx]);
    const acc_t c_prev = acc_t(b < rows_before ? cells_before[idx] : c0[idx]);
    const LstmGrads<acc_t> d =
        lstm_backward(a, c, c_prev, acc_t(d_hidden[idx]), acc_t(d_cell[idx]));
    d_pre[g0] = scalar_t(d.d_pre.i);
    d_pre[g0 + H] = scalar_t(d.d_pre.f);
    d_pre[g0 + 2 * H] = scalar_t(d.d_pre.g);
    d_pre[g0 + 3 * H] = scalar_t(d.d_pre.o);
    d_cell[idx] = scalar_t(d.d_c_prev);
    if (hidden != nullptr) {
      hidden[idx] = scalar_t(lstm_hidden(a, c));
    }
  }
};

// ----------------------------------------------------------------- GRU
template <typename scalar_t>
struct GruForwardStep {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x_proj;  // [rows, 3H]  W_ih x + b_ih
  const scalar_t* h_proj;  // [rows, 3H]  W_hh h_prev (without b_hh)
  const scalar_t* b_hh;    // [3H] or null
  const scalar_t* h_prev;  // [rows, H]
  scalar_t* workspace;     // [rows, 4H]  out: r, z, n, W_hn h + b_hn (saved for backward)
  scalar_t* hidden;        // [rows, H]   out: h'
  int64_t H;

  C10_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t b = idx / H;
    const int64_t j = idx - b * H;
    const int64_t g0 = b * 3 * H + j;
    acc_t h_part[3];
    for (int gate = 0; gate < 3; ++gate) {
      const acc_t bias = b_hh == nullptr ? acc_t(0) : acc_t(b_hh[gate * H + j]);
      h_part[gate] = acc_t(h_proj[g0 + gate * H]) + bias;
    }
    const GruGates<acc_t> a = gru_activate(
        acc_t(x_proj[g0]), acc_t(x_proj[g0 + H]), acc_t(x_proj[g0 + 2 * H]),
        h_part[0], h_part[1], h_part[2]);
    const int64_t w0 = b * 4 * H + j;
    workspace[w0] = scalar_t(a.r);
    workspace[w0 + H] = scalar_t(a.z);
    workspace[w0 + 2 * H] = scalar_t(a.n);
    workspace[w0 + 3 * H] = scalar_t(a.h_n);
    hidden[idx] = scalar_t(gru_hidden(a, acc_t(h_prev[idx])));
  }
};

template <typename scalar_t>
struct GruBackwardStep {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* workspace;      // [rows, 4H]  saved r, z, n, W_hn h + b_hn
  const scalar_t* hidden_before;  // [rows_before, H] h' of the previous step (may be null)
  const scalar_t* h0;             // [>= rows, H] initial state, for rows >= rows_before
  int64_t rows_before;
  scalar_t* d_hidden;  // [rows, H]   in: total gradient on h', out: z * d_h' (the direct part)
  scalar_t* d_x;       // [rows, 3H]  out: gradient on the input-side pre-activations
  scalar_t* d_h;       // [rows, 3H]  out: gradient on the hidden-side products
  int64_t H;

  C10_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t b = idx / H;
    const int64_t j = idx - b * H;
    const int64_t w0 = b * 4 * H + j;
    const GruGates<acc_t> a{
        acc_t(workspace[w0]), acc_t(workspace[w0 + H]), acc_t(workspace[w0 + 2 * H]),
        acc_t(workspace[w0 + 3 * H])};
    const acc_t h_prev = acc_t(b < rows_before ? hidden_before[idx] : h0[idx]);
    const GruGrads<acc_t> d = gru_backward(a, h_prev, acc_t(d_hidden[idx]));
    const int64_t g0 = b * 3 * H + j;
    d_x[g0] = scalar_t(d.d_x_r);
    d_x[g0 + H] = scalar_t(d.d_x_z);
    d_x[g0 + 2 * H] = scalar_t(d.d_x_n);
    d_h[g0] = scalar_t(d.d_h_r);
    d_h[g0 + H] = scalar_t(d.d_h_z);
    d_h[g0 + 2 * H] = scalar_t(d.d_h_n);
    d_hidden[idx] = scalar_t(d.d_h_prev_direct);
  }
};

}  // namespace rnnfused
