// What the three layer drivers share: the step schedule over a dense or packed
// sequence, the GEMM helpers, and the weight gradients formed after the loop.
// Everything here is device-generic ATen (cuBLAS on CUDA, the CPU BLAS on CPU).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "../checks.h"

namespace rnnfused {

// Rows [first, first + rows) of t: t itself where that is all of it (a narrow
// view costs ~0.5 us of a cell's ~20 us step on a Zen 2 vCPU).
inline at::Tensor row_range(const at::Tensor& t, int64_t first, int64_t rows) {
  return first == 0 && rows == t.size(0) ? t : t.narrow(0, first, rows);
}

// The rows of the [N, *] sequence matrix that each step touches, in processing
// order (time T-1 first when `reverse`). Dense input [T, B, *] is batch_sizes
// {B, ..., B}. A packed sequence's batch sizes do not increase with time, so in
// the reverse direction every sequence starts at its own last step.
class Schedule {
 public:
  Schedule(const char* op, const LayerSizes& sizes, const at::Tensor& input,
           const std::optional<at::Tensor>& batch_sizes, bool reverse)
      : reverse_(reverse) {
    if (batch_sizes.has_value() && batch_sizes->defined()) {
      const at::Tensor bs = batch_sizes->contiguous();
      const int64_t* data = bs.data_ptr<int64_t>();
      rows_.assign(data, data + bs.numel());
      int64_t total = 0;
      for (size_t t = 0; t < rows_.size(); ++t) {
        const int64_t limit = t == 0 ? sizes.batch : rows_[t - 1];
        TORCH_CHECK(rows_[t] >= 0 && rows_[t] <= limit, op, ": expected 'batch_sizes'[", t,
                    "] in [0, ", limit, "] (batch sizes never increase and never exceed ",
                    "hx.size(0) = ", sizes.batch, "), got ", rows_[t]);
        total += rows_[t];
      }
      TORCH_CHECK(rows_.empty() || rows_[0] == sizes.batch, op,
                  ": expected 'batch_sizes'[0] == hx.size(0) = ", sizes.batch, ", got ",
                  rows_[0]);
      TORCH_CHECK(total == sizes.rows, op, ": expected sum('batch_sizes') == input.size(0) = ",
                  sizes.rows, ", got ", total);
    } else {
      rows_.assign(input.size(0), sizes.batch);
    }
    offsets_.resize(rows_.size());
    int64_t offset = 0;
    for (size_t t = 0; t < rows_.size(); ++t) {
      offsets_[t] = offset;
      offset += rows_[t];
    }
  }

  int64_t steps() const { return static_cast<int64_t>(rows_.size()); }
  // Whether every step has every batch row (dense input, or packed equal lengths).
  bool dense() const {
    return std::all_of(rows_.begin(), rows_.end(), [&](int64_t r) { return r == rows_[0]; });
  }
  int64_t time(int64_t s) const { return reverse_ ? steps() - 1 - s : s; }
  int64_t rows(int64_t s) const { return rows_[time(s)]; }
  int64_t offset(int64_t s) const { return offsets_[time(s)]; }
  // Rows of the previous processing step (0 before the first).
  int64_t rows_before(int64_t s) const { return s == 0 ? 0 : rows(s - 1); }
  int64_t offset_before(int64_t s) const { return s == 0 ? 0 : offset(s - 1); }

  // Every batch row's final state: the row of `sequence` [N, D] at its last step
  // (for dense input the last step's rows, all together). Returns [B, D].
  at::Tensor final_states(const at::Tensor& sequence) const {
    if (steps() == 0) return sequence.new_empty({0, sequence.size(1)});
    const int64_t last = steps() - 1;
    if (rows(last) == rows_[0]) {  // every sequence ends at the last step
      return sequence.narrow(0, offset(last), rows(last)).clone();
    }
    std::vector<int64_t> index(rows_[0]);  // for every batch row, the row of its last step
    for (int64_t s = 0; s < steps(); ++s) {
      for (int64_t b = 0; b < rows(s); ++b) index[b] = offset(s) + b;
    }
    return sequence.index_select(0, index_tensor(index, sequence.device()));
  }

  // grad^T @ previous(sequence, initial): grad [N, G] -> [G, D], the recurrent
  // weight gradient, on the launcher's GEMM. Where every step has every row
  // (dense input) the previous states are `initial` and `sequence` shifted by one
  // step: two GEMMs over them in place, no [N, D] gather.
  template <typename Launch>
  at::Tensor previous_product(const at::Tensor& grad, const at::Tensor& sequence,
                              const at::Tensor& initial) const {
    const int64_t n = sequence.size(0), batch = initial.size(0);
    at::Tensor product = Launch::empty({grad.size(1), sequence.size(1)}, grad.options());
    if (!dense() || n == 0) {
      Launch::gemm_nn(product, grad.t(), previous(sequence, initial), /*accumulate=*/false);
      return product;
    }
    // forward: step 0's rows take `initial`, rows [B, N) the sequence's rows [0, N - B);
    // reverse: the last time's rows [N - B, N) take `initial`, rows [0, N - B) rows [B, N).
    const int64_t first = reverse_ ? n - batch : 0, rest = reverse_ ? 0 : batch;
    Launch::gemm_nn(product, grad.narrow(0, first, batch).t(), initial, /*accumulate=*/false);
    if (n > batch) {
      Launch::gemm_nn(product, grad.narrow(0, rest, n - batch).t(),
                      sequence.narrow(0, reverse_ ? batch : 0, n - batch), /*accumulate=*/true);
    }
    return product;
  }

  // For every row of the sequence, the row holding its previous state: a row of
  // `sequence` [N, D] or, for a sequence's first step, a row of `initial` [B, D].
  // Returns [N, D]: the matrix the recurrent weight gradient multiplies.
  at::Tensor previous(const at::Tensor& sequence, const at::Tensor& initial) const {
    const int64_t n = sequence.size(0);
    std::vector<int64_t> index(n);
    for (int64_t s = 0; s < steps(); ++s) {
      const int64_t before = rows_before(s), offset_prev = offset_before(s);
      for (int64_t b = 0; b < rows(s); ++b) {
        index[offset(s) + b] = b < before ? offset_prev + b : n + b;
      }
    }
    return at::cat({sequence, initial}, 0).index_select(0, index_tensor(index, sequence.device()));
  }

 private:
  static at::Tensor index_tensor(const std::vector<int64_t>& index, const at::Device& device) {
    return at::tensor(index, at::TensorOptions().dtype(at::kLong)).to(device);
  }

  bool reverse_;
  std::vector<int64_t> rows_;     // batch size at each time
  std::vector<int64_t> offsets_;  // first row of each time in [N, *]
};

// out = a @ w^T (+ bias), into an existing buffer. a: [m, k], w: [n, k],
// bias: [n] or undefined, out: [m, n]. Each launcher's gemm_nt(products) forms
// one or more of them, on ATen's GEMM (gemm_nt_aten) or a kernel of its own.
// w_panels: w in the launcher's own GEMM layout (Launch::pack_gemm_weights), or
// undefined.
struct NtProduct {
  at::Tensor out, a, w, bias, w_panels;
};

// On ATen's GEMM: cuBLAS, the CPU BLAS.
inline void gemm_nt_aten(const NtProduct& p) {
  at::Tensor out = p.out;
  if (p.bias.defined()) {
    at::addmm_out(out, p.bias, p.a, p.w.t());
  } else {
    at::mm_out(out, p.a, p.w.t());
  }
}

// out (+)= a @ w (w [K, N] as stored: the backward's d_pre @ W_hh) on ATen's GEMM.
inline void gemm_nn_aten(at::Tensor out, const at::Tensor& a, const at::Tensor& w,
                         bool accumulate) {
  if (accumulate) {
    out.addmm_(a, w);
  } else {
    at::mm_out(out, a, w);
  }
}

// a @ w ([M, K] @ [K, N], any strides) on the launcher's GEMM: the backward's
// large products.
template <typename Launch>
at::Tensor matmul(const at::Tensor& a, const at::Tensor& w) {
  at::Tensor out = Launch::empty({a.size(0), w.size(1)}, a.options());
  Launch::gemm_nn(out, a, w, /*accumulate=*/false);
  return out;
}

// The input projection x_proj = input @ w_ih^T + bias, formed a chunk of steps
// at a time as the loop reaches them: a GEMM of chunk_rows() rows each, and
// memory independent of T. Or by the loop itself, a step at a time (form_in_loop:
// the CPU's fused loops).
//   input: [N, I], w_ih: [G*H, I], bias: [G*H] or undefined.
template <typename scalar_t, typename Launch>
class ProjectedInput {
 public:
  // Rows of a chunk: 512 in float32 (its result still in cache when the steps read
  // it). In 16-bit types 2048, or as many as make a GEMM of 2^30 multiply-adds
  // (G*H x I a row) where W_ih is narrow, up to 32 MB of x_proj: each chunk costs a
  // GEMM call (oneDNN's bfloat16 GEMM, ~40 us of set-up) and a restart of the loop
  // (its threads, tile state, scratch), which weigh most beside narrow layers' small
  // GEMMs. Two Xeon vCPUs, bfloat16, forward on the AMX tile loop, chunk rows in-process
  // A/B: LSTM 100, 128, 128, 128 2048 rows 4.72 ms, 4096 4.23, 8192 3.92, all 12800
  // (13 MB) 3.62; GRU the same 3.87 -> 2.94, RNN 1.43 -> 1.23, LSTM 100, 256, 64, 64
  // 3.59 (4 MB chunks) -> 2.88 (32 MB), LSTM 100, 64, 64, 64 1.21 -> 1.08; where
  // 2048 rows already make 2^30 multiply-adds and more (I 512, H 1024) larger chunks
  // were 3-7% slower. (The CUDA launcher's 16-bit chunks follow the same rule.)
  static int64_t chunk_rows(int64_t row_values, int64_t input_size) {
    if (sizeof(scalar_t) != 2) return 512;
    constexpr int64_t kRows = 2048, kChunkWork = int64_t{1} << 30;
    constexpr int64_t kMostBytes = int64_t{32} << 20;
    const int64_t by_work = kChunkWork / std::max<int64_t>(1, row_values * input_size);
    const int64_t by_bytes = kMostBytes / std::max<int64_t>(1, row_values * 2);
    return std::max(kRows, std::min(by_work, by_bytes));
  }

  ProjectedInput(const Schedule& sched, const at::Tensor& input, const at::Tensor& w_ih,
                 const at::Tensor& bias)
      : sched_(sched), input_(input), w_ih_(w_ih), bias_(bias), gemm_bias_(bias) {
    for (int64_t s = 0; s < sched.steps(); ++s) widest_ = std::max(widest_, sched.rows(s));
    const int64_t rows = std::min(chunk_rows(w_ih.size(0), input.size(1)), input.size(0));
    buffer_ = Launch::empty({std::max(widest_, rows), w_ih.size(0)}, input.options());
  }

  // [rows(s), G*H]: the projection of step s's rows. Steps are visited in order;
  // the pointers of steps s .. chunk_end() - 1 stay valid together.
  const scalar_t* step(int64_t s) {
    if (in_loop_) return buffer_.data_ptr<scalar_t>() + (s % 2) * widest_ * w_ih_.size(0);
    if (s >= chunk_end_) load_chunk(s);
    return buffer_.data_ptr<scalar_t>() + (sched_.offset(s) - first_row_) * w_ih_.size(0);
  }
  int64_t chunk_end() const { return chunk_end_; }

  // For a loop that forms the projection itself, a step at a time (the CPU's
  // fused loops): from here on step(s) is one of two buffers of the widest step's
  // rows x G*H, by the step's parity, which the loop fills with the step's
  // projection before its functor reads it (no GEMM here): a thread may form the
  // next step's while another's functors still read this step's.
  struct Operands {
    const at::Tensor& input;  // [N, I]
    const at::Tensor& w_ih;   // [G*H, I]
    const at::Tensor& bias;   // [G*H] or undefined
  };
  Operands operands() const { return {input_, w_ih_, bias_}; }
  void form_in_loop() {
    TORCH_INTERNAL_ASSERT(chunk_end_ == 0, "rnnfused: the projection is formed in chunks already");
    in_loop_ = true;
    chunk_end_ = sched_.steps();
    if (buffer_.size(0) < 2 * widest_) {
      buffer_ = Launch::empty({2 * widest_, w_ih_.size(0)}, input_.options());
    }
  }

  // For a loop that adds the bias itself (the CPU's fused loops: to the recurrent
  // product's sums, cpu::PackedRecurrent::product_bias, or a GRU's functor to the
  // values it reads, GruForwardStep::b_ih): from here on the chunks'
  // GEMMs leave it out, and step(s) hands out W_ih x alone. A GEMM with a bias
  // (ATen's addmm on MKL) first copies it into every row of its output and then sums
  // onto them: on two Xeon vCPUs a 512 x 2048 x 512 chunk 370 GFLOP/s with the bias,
  // 388 without.
  void leave_bias_to_loop() {
    TORCH_INTERNAL_ASSERT(chunk_end_ == 0, "rnnfused: the projection is formed in chunks already");
    gemm_bias_ = at::Tensor();
  }

  // A single-step sequence's projection, formed in one launcher call with
  // `recurrent` (the step's other product); returns step(0).
  const scalar_t* single_step_with(const NtProduct& recurrent) {
    TORCH_INTERNAL_ASSERT(sched_.steps() == 1 && chunk_end_ == 0);
    Launch::gemm_nt(NtProduct{row_range(buffer_, 0, input_.size(0)), input_, w_ih_, gemm_bias_},
                    recurrent);
    chunk_end_ = 1;
    return buffer_.data_ptr<scalar_t>();
  }

 private:
  void load_chunk(int64_t s) {
    // Steps s .. chunk_end_-1 cover a contiguous range of rows in either direction.
    int64_t lo = sched_.offset(s), hi = lo + sched_.rows(s);
    int64_t end = s + 1;
    for (; end < sched_.steps(); ++end) {
      const int64_t l = std::min(lo, sched_.offset(end));
      const int64_t h = std::max(hi, sched_.offset(end) + sched_.rows(end));
      if (h - l > buffer_.size(0)) break;
      lo = l;
      hi = h;
    }
    const int64_t rows = hi - lo;
    // W_ih packed once, at the first chunk, for every chunk's product where there
    // are several.
    if (chunk_end_ == 0 && input_.size(0) > buffer_.size(0)) {
      w_panels_ = Launch::pack_gemm_weights(
          NtProduct{buffer_, row_range(input_, 0, buffer_.size(0)), w_ih_, gemm_bias_});
    }
    Launch::gemm_nt(NtProduct{row_range(buffer_, 0, rows), row_range(input_, lo, rows), w_ih_,
                              gemm_bias_, w_panels_});
    first_row_ = lo;
    chunk_end_ = end;
  }

  const Schedule& sched_;
  const at::Tensor& input_;
  const at::Tensor& w_ih_;
  const at::Tensor& bias_;
  at::Tensor gemm_bias_;  // bias_, or undefined where the loop adds it (leave_bias_to_loop)
  at::Tensor buffer_;
  at::Tensor w_panels_;
  int64_t first_row_ = 0;
  int64_t chunk_end_ = 0;
  int64_t widest_ = 0;  // the most rows a step has
  bool in_loop_ = false;
};

// The biases of a layer whose pre-activations take both (RNN, LSTM). Over many
// steps b_ih + b_hh rides on the input projection, summed once; a single step (a
// cell) puts b_ih on the input projection and b_hh on the recurrent product,
// which saves the sum and its allocation.
struct SummedBiases {
  at::Tensor input, recurrent;  // either may be undefined
};

inline SummedBiases summed_biases(const Schedule& sched, const std::optional<at::Tensor>& b_ih,
                                  const std::optional<at::Tensor>& b_hh) {
  const at::Tensor ih = b_ih.has_value() && b_ih->defined() ? b_ih->contiguous() : at::Tensor();
  const at::Tensor hh = b_hh.has_value() && b_hh->defined() ? b_hh->contiguous() : at::Tensor();
  if (sched.steps() == 1 || !hh.defined()) return {ih, hh};
  if (!ih.defined()) return {hh, at::Tensor()};
  return {ih + hh, at::Tensor()};
}

inline at::Tensor empty_grad(const at::Tensor& like) { return at::empty({0}, like.options()); }

// Which gradients the caller needs (the backward ops' output_mask).
struct GradMask {
  bool input, states, w_ih, w_hh, b_ih, b_hh, w_hr;

  explicit GradMask(const std::array<bool, 7>& m)
      : input(m[0]), states(m[1]), w_ih(m[2]), w_hh(m[3]), b_ih(m[4]), b_hh(m[5]), w_hr(m[6]) {}
};

struct WeightGrads {
  at::Tensor w_ih, w_hh, b_ih, b_hh;
};

// The parameter gradients as large GEMMs over all steps, each only where `mask`
// asks for it (the others [0]).
//   d_x: [N, G*H] gradient on the input-side pre-activations, d_h: [N, G*H] on the
//   hidden-side products (the same tensor for RNN and LSTM), input: [N, I],
//   output: [N, P] every row's state, h0: [B, P] (the previous states: sched.previous_product);
//   shared_columns: how many leading columns of d_h hold d_x's values (all where d_h is
//   d_x; a GRU's r and z gates, 2H), whose bias sums b_hh then takes from b_ih's rather
//   than summing them again (GRU 100, 64, 512, 512 training: two of the three
//   [6400, 512] column blocks, ~1.6 ms of a ~250 ms step on two Xeon vCPUs).
template <typename Launch>
WeightGrads weight_grads(const at::Tensor& d_x, const at::Tensor& d_h, const at::Tensor& input,
                         const Schedule& sched, const at::Tensor& output, const at::Tensor& h0,
                         const GradMask& mask, int64_t shared_columns) {
  WeightGrads g;
  g.w_ih = mask.w_ih ? matmul<Launch>(d_x.t(), input) : empty_grad(d_x);
  g.w_hh = mask.w_hh ? sched.previous_product<Launch>(d_h, output, h0) : empty_grad(d_x);
  g.b_ih = mask.b_ih ? d_x.sum(0) : empty_grad(d_x);
  const int64_t columns = d_h.size(1);
  if (!mask.b_hh) {
    g.b_hh = empty_grad(d_x);
  } else if (!mask.b_ih || shared_columns == 0) {
    g.b_hh = d_h.sum(0);
  } else if (shared_columns >= columns) {
    g.b_hh = g.b_ih.clone();
  } else {
    g.b_hh = at::cat({g.b_ih.narrow(0, 0, shared_columns),
                      d_h.narrow(1, shared_columns, columns - shared_columns).sum(0)});
  }
  return g;
}

// The forward time loop. Where the launcher has a persistent fused loop for these
// sizes (and `fusable`), it runs there; a single step (a cell) runs from h0 in
// place; else per step:
//   product[:rows] = h[:rows] @ w_hh^T + product_bias (into the step's output rows
//   when `product` is undefined: RNN); the step functor, writing h' into `hidden`
//   (LSTM's projection input) or the output rows; after_step(s, output rows) (the
//   projection); then the running state h advances to the output rows.
//   make_step(s, x_proj_s, h_in, product, h' destination) -> the step functor.
// Returns h_n [B, P].
template <typename scalar_t, typename Launch, typename MakeStep, typename AfterStep>
at::Tensor forward_loop(const LayerSizes& sz, const Schedule& sched,
                        ProjectedInput<scalar_t, Launch>& x_proj, const at::Tensor& h0,
                        const at::Tensor& w_hh, const at::Tensor& product_bias,
                        at::Tensor& output, const at::Tensor& product, const at::Tensor& hidden,
                        bool fusable, MakeStep make_step, AfterStep after_step) {
  // The step functor of step s on `rows` rows, reading state h; its recurrent
  // product h @ w_hh^T + product_bias goes into `product` (or the output rows: RNN).
  auto step_functor = [&](int64_t s, const scalar_t* x, const at::Tensor& h, at::Tensor& out_rows) {
    scalar_t* out = out_rows.data_ptr<scalar_t>();
    return make_step(s, x, h.data_ptr<scalar_t>(),
                     product.defined() ? product.data_ptr<scalar_t>() : out,
                     hidden.defined() ? hidden.data_ptr<scalar_t>() : out);
  };
  auto recurrent = [&](const at::Tensor& h, const at::Tensor& out_rows) {
    const int64_t rows = out_rows.size(0);
    return NtProduct{product.defined() ? row_range(product, 0, rows) : out_rows,
                     row_range(h, 0, rows), w_hh, product_bias};
  };
  if (sched.steps() == 1) {  // every row's one step: h0 is the state, h_n a copy of the output
    const scalar_t* x = x_proj.single_step_with(recurrent(h0, output));
    Launch::run(output.size(0) * sz.hidden, step_functor(0, x, h0, output));
    after_step(0, output);
    return output.clone();
  }
  if (fusable && !product_bias.defined() && Launch::template fuses_forward<scalar_t>(sz)) {
    return Launch::template fused_forward<scalar_t>(sz, sched, x_proj, h0, w_hh, output, product,
                                                    make_step);
  }
  // The running state [B, P]: h0, then each row's latest h'. While the active rows
  // stay the same (every step of a dense batch) a step reads the last step's output
  // rows instead, and h takes them only when the rows change and at the end: no
  // copy per step (on CUDA a launch and most of a step's host time).
  at::Tensor h = h0.clone(at::MemoryFormat::Contiguous);
  at::Tensor last_out;  // the last step's output rows, not yet in h
  for (int64_t s = 0; s < sched.steps(); ++s) {
    const int64_t rows = sched.rows(s);
    if (rows == 0) continue;
    if (last_out.defined() && last_out.size(0) != rows) {
      row_range(h, 0, last_out.size(0)).copy_(last_out);
      last_out = at::Tensor();
    }
    const at::Tensor& state = last_out.defined() ? last_out : h;
    at::Tensor out_rows = row_range(output, sched.offset(s), rows);
    Launch::gemm_nt(recurrent(state, out_rows));
    Launch::run(rows * sz.hidden, step_functor(s, x_proj.step(s), state, out_rows));
    after_step(s, out_rows);
    last_out = out_rows;
  }
  if (last_out.defined()) row_range(h, 0, last_out.size(0)).copy_(last_out);
  return h;
}

// The backward time loop, steps in reverse. Where the launcher has a persistent
// fused loop for these sizes (and `fusable`), it runs there; else one functor
// launch and one GEMM per step:
//   the step functor make_step(s, grad_output rows) adds those rows to d_h's as it
//   reads them; where it takes null instead (before_step needs the sum: LSTM's
//   projection) d_h[:rows] += grad_output rows and before_step(s, d_h rows) first;
//   then d_h[:rows] = (accumulate ? d_h[:rows] : 0) + d_recurrent rows @ w_hh.
// d_recurrent: [N, G*H], where the functors leave the gradient on h_prev @ W_hh^T;
// accumulate: the functor leaves the direct part of d_h in d_h (GRU);
// initial_state_grad: whether d_h must end as the gradient on h0. Without it the
// first step's product, which only feeds that gradient (every active row's h_prev
// there is h0), is skipped, and d_h ends holding no gradient (a quarter of a
// one-step layer's backward GEMMs).
// Returns whether the steps ran on the calling thread alone (as a persistent loop):
// the caller's products over d_recurrent then stay there (Launch::GemmsWhereLoopRan).
template <typename scalar_t, typename Launch, typename MakeStep, typename BeforeStep>
bool backward_loop(const LayerSizes& sz, const Schedule& sched, const at::Tensor& grad_output,
                   const at::Tensor& w_hh, at::Tensor& d_h, const at::Tensor& d_recurrent,
                   bool accumulate, bool initial_state_grad, bool fusable, MakeStep make_step,
                   BeforeStep before_step) {
  if (fusable && Launch::template fuses_backward<scalar_t>(sz)) {
    return Launch::template fused_backward<scalar_t>(sz, sched, grad_output, w_hh, d_h,
                                                     d_recurrent, accumulate, initial_state_grad,
                                                     make_step);
  }
  // W_hh in the launcher's layout for the steps' products, where it has one (and
  // there is a product: not for one step without the initial state's gradient).
  const at::Tensor w_hh_packed = sched.steps() > 1 || initial_state_grad
                                     ? Launch::pack_gemm_nn_weights(w_hh, sz.batch)
                                     : at::Tensor();
  for (int64_t s = sched.steps() - 1; s >= 0; --s) {
    const int64_t rows = sched.rows(s), off = sched.offset(s);
    if (rows == 0) continue;
    at::Tensor d_h_rows = row_range(d_h, 0, rows);
    const auto step = make_step(s, grad_output.data_ptr<scalar_t>() + off * sz.output);
    if (step.grad_output == nullptr) {
      d_h_rows.add_(row_range(grad_output, off, rows));
      before_step(s, d_h_rows);
    }
    Launch::run(rows * sz.hidden, step);
    if (s == 0 && !initial_state_grad) break;
    Launch::gemm_nn(d_h_rows, row_range(d_recurrent, off, rows), w_hh, accumulate, w_hh_packed);
  }
  return false;
}

}  // namespace rnnfused
