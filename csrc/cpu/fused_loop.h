// The persistent forward and backward loops (simd.h's run_fused_steps_<isa> and
// run_fused_backward_<isa>), written once over the vector instruction set. Each
// ISA translation unit (step_avx512.cpp, step_avx512_bf16.cpp, step_avx2.cpp)
// includes it after simd_rows.h, with `FunctorLanes<T>` defined (the Lanes and
// PairLanes, `one` and `pair`, of a functor stored in T), and passes a traits struct S:
//   V, Mask, kLanes         a vector of kLanes floats, a mask of some of its lanes
//   zero(), load(p), load(mask, p) (zero past the mask), store(mask, p, v),
//                           the masked two also on the storage type of every layer
//                           instantiated (c10::BFloat16: widen, round to nearest even),
//   broadcast(x), fma(a, b, c), add(a, b), first(n) (the mask of lanes 0 .. n-1)
//   forward_columns<G, M>() a tile's G gate vectors are formed C at a time, in blocks of
//                           M rows (C divides G)
//   forward_rows<G>()       rows per register block of the forward: rows x C
//                           accumulators, enough to cover the FMA latency, few
//                           enough to leave registers for the C weight vectors
//   kBackwardRows           rows per block of the backward (rows x 2 accumulators)
//   kPairTiles, kPairRows   whether a single-gate layer's (RNN's) tiles are formed two
//                           at a time (one vector of each), in blocks of kPairRows rows
//   kEvenRowBlocks          whether the forward spreads rows left after whole blocks
//                           over them (for_row_blocks' RowSpread: 1-3 rows, more on
//                           Intel's CPUs)
//   kPairedFunctorDepth     the most k steps a tile's product may take (its recurrent
//                           K, plus I where the loop forms the input projection) for
//                           two tiles' functors to run together (TileFunctor)
//   kPanelBytes             the most packed weights a panel of the reduction takes
//   transpose(V (&)[kLanes])  a kLanes x kLanes block transposed (W_hh's packing)
//   State, kStatePerK       the state operand's element type and its elements per step
//                           k of the reduction: float and 1, or for the bfloat16 dot
//                           product's loop (step_avx512_bf16.cpp's SimdDot, whose fma is
//                           vdpbf16ps and whose k are pairs of state units)
//                           c10::BFloat16 and 2: FusedStepRows' h_in and h_out then
//                           hold bfloat16 pairs, K (PackedRecurrent) pairs a row; in
//                           the backward the product's rows (FusedBackwardRows'
//                           d_recurrent_float) J pairs a row (PackedRecurrentT)
// Tiles are kLanes hidden units wide (PackedRecurrent), the backward's blocks 2 x kLanes
// (PackedRecurrentT).
// The hot functions below are forced inline (as gates.h's math is): the
// accumulators must stay in registers whatever GCC's per-file inlining budget,
// which the ISA files exhaust as they instantiate more storage types.
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <type_traits>

#include "simd.h"
#include "simd_rows.h"

namespace rnnfused {
namespace cpu {
namespace {

// part[m][c] += rows[m][k] * w[k * kStride * L + c * column .. + L - 1] for one k (L =
// kLanes): w's rows are kStride vectors apart, column c's vector `column` floats
// after column 0's (L: the C vectors side by side, or another tile's).
template <typename S, int M, int C, int kStride>
__attribute__((always_inline)) inline void tile_step(const float* w, const float* const* rows,
                                                     int64_t k, int64_t column,
                                                     typename S::V (&part)[M][C]) {
  typename S::V wk[C];
  for (int c = 0; c < C; ++c) wk[c] = S::load(w + k * kStride * S::kLanes + c * column);
  for (int m = 0; m < M; ++m) {
    const typename S::V a = S::broadcast(rows[m][k]);
    for (int c = 0; c < C; ++c) part[m][c] = S::fma(a, wk[c], part[m][c]);
  }
}

// Software prefetch of the lines [next, next + 64 * lines) into L2, one line
// per k step while the product runs: the next weight panel, so that it comes
// from L2 rather than from L3 when its turn comes.
struct PanelPrefetch {
  const char* next = nullptr;
  int64_t lines = 0;
  __attribute__((always_inline)) void one() {
    if (lines > 0) {
      _mm_prefetch(next, _MM_HINT_T1);
      next += 64;
      --lines;
    }
  }
};

// The loops' products are summed in blocks of kSumDepth terms, each from 0 in
// registers, and the blocks' sums added up in memory, as BLAS sums a depth (kc) at
// a time: a sum of K float32 terms then rounds ~sqrt(kSumDepth + K / kSumDepth)
// times a term's error rather than ~sqrt(K), and a GRU's d_h (its direct part plus
// d_recurrent W_hh, J = 3H terms) is no longer summed onto a large first term. Summed
// straight through, a GRU's state gradient (H 512, T 50) was 10 times as far from
// float64's as torch.nn's, now about as far; an LSTM's 3.5 times, now 1.8 (H 2400:
// 5 times, now 1.4). 512 rather than BLAS's 256: two Zen 2 vCPUs, the steps alone
// (LSTM, GRU H 512) 4.5% slower at 256, at 512 as fast as one block (K 1024: 1%).
constexpr int64_t kSumDepth = 512;

// acc[m][c] += sum_{k0 <= k < k1} rows[m][k] * w[k][c * L .. c * L + L - 1] for M
// rows, w's rows kStride vectors apart (column c `column` floats from column 0:
// tile_step): M * C accumulators live in registers, the
// packed tile streams from L1. Fewer than 8 accumulators cannot hide the FMA
// latency (4-5 cycles, 2 ports): a few rows (a batch of 1, the rows left over) then
// split k over P partial sums. `prefetch` runs along (whole blocks only: a few
// rows reuse a panel too little for it to pay).
template <typename S, int M, int C, int kStride = C>
__attribute__((always_inline)) inline void tile_product(const float* w, const float* const* rows, int64_t k0, int64_t k1,
                         typename S::V (&acc)[M][C], PanelPrefetch& prefetch,
                         int64_t column = S::kLanes) {
  constexpr int P = M * C >= 8 ? 1 : M * C >= 4 ? 2 : M * C >= 2 ? 4 : 8;
  if constexpr (P == 1) {
    for (int64_t k = k0; k < k1; ++k) {
      prefetch.one();
      tile_step<S, M, C, kStride>(w, rows, k, column, acc);
    }
  } else {
    typename S::V part[P][M][C];
    for (int s = 0; s < P; ++s) {
      for (int m = 0; m < M; ++m) {
        for (int c = 0; c < C; ++c) part[s][m][c] = s == 0 ? acc[m][c] : S::zero();
      }
    }
    // The k % P leading steps first: the loop after them is then the last use
    // of the partial sums before the reduction (GCC keeps them in registers).
    int64_t k = k0;
    for (; (k1 - k) % P != 0; ++k) tile_step<S, M, C, kStride>(w, rows, k, column, part[0]);
    for (; k < k1; k += P) {
      for (int s = 0; s < P; ++s) tile_step<S, M, C, kStride>(w, rows, k + s, column, part[s]);
    }
    for (int m = 0; m < M; ++m) {
      for (int c = 0; c < C; ++c) {
        typename S::V sum = part[0][m][c];
        for (int s = 1; s < P; ++s) sum = S::add(sum, part[s][m][c]);
        acc[m][c] = sum;
      }
    }
  }
}

// fn(std::integral_constant<int, rows>{}) where 1 <= rows <= R (the rows left
// after a loop's whole register blocks, formed as one smaller block), else nothing.
template <int R, typename Fn>
__attribute__((always_inline)) inline void with_row_count(int64_t rows, const Fn& fn) {
  if constexpr (R > 0) {
    if (rows == R) {
      fn(std::integral_constant<int, R>{});
    } else {
      with_row_count<R - 1>(rows, fn);
    }
  }
}

// Which rows left after whole register blocks for_row_blocks spreads over the blocks:
// none; 1-3 after two or more (kFew); any number after two or more (kAfterTwo); those,
// and 2 or more after one (kAfterOne).
enum class RowSpread { kNone, kFew, kAfterTwo, kAfterOne };

// Rows [0, rows) in register blocks of at most R rows: fn(std::integral_constant<int,
// M>{}, row, block, blocks) for each; `block` is -1 for the rows left after whole
// blocks (they prefetch nothing: PanelWalk). Where `spread` takes the rows left, as
// many blocks as the whole ones and that, their sizes as even as can be (20 rows at R
// 6: 5, 5, 5, 5, not 6, 6, 6, 2; the short block's few sums keep too few FMAs in
// flight). The AVX-512 forward (fused_steps):
// - kFew elsewhere: in-process A/B, two Zen 5 cores, H 512: LSTM B 13-33 2-5% faster,
//   GRU B 17-33 1-4%, RNN B 25-37 3-5%; left there: 4-5 rows (LSTM B 16, 22, 28, 34
//   and RNN 64 even or 1-2% slower), one whole block (LSTM B 7, 8 2-7% slower), the
//   backward (LSTM training B 17-20 1-2% slower).
// - On Intel's CPUs (blas_runs_avx512) kAfterOne for LSTM and GRU tiles, kAfterTwo for
//   an RNN's (tile pairs, a lone tile unmeasured). Two Xeon vCPUs, in-process A/B,
//   forward, against kFew: 4 rows after two or more blocks, LSTM H 512 B 16 3% faster
//   (12 of 12 rounds), B 22 1.9%, H 256 B 28 1.4%, training H 512 B 16 2.3%, the 2-layer
//   bidirectional 100, 16, 128, 128 0.9%; GRU H 512 B 20 3.3%, H 256 B 28 3.8%; RNN
//   100, 64, 512, 512 3.7% (12 of 12); 5 rows, GRU B 21 3.3%, RNN B 29 1.1%; 10 rows,
//   RNN H 256 B 70 even; LSTM 100, 64, 512, 512 even. After one block, T 50, H 512: LSTM B 8 (4 + 4) 6.6% faster (10 of
//   10), B 9 (5 + 4) 11%, B 10 2.5%, H 256 B 8 5.7%; GRU B 10 7.7%, B 12 3.5%, H 256 B
//   14 even; but RNN B 20 (10 + 10) 3.4% slower, B 16 even, and LSTM B 7 (4 + 3) 5%
//   slower than 6 + 1: one row stays a block of its own.
template <int R, typename Fn>
__attribute__((always_inline)) inline void for_row_blocks(int64_t rows, RowSpread spread,
                                                          const Fn& fn) {
  const int64_t rest = rows % R;
  const int64_t most_spread = spread == RowSpread::kNone ? 0
                              : spread == RowSpread::kFew ? 3
                                                          : R - 1;
  const int64_t least_rows = spread == RowSpread::kAfterOne && rest >= 2 ? R : 2 * R;
  if (rest == 0 || rest > most_spread || rows < least_rows) {
    const int64_t blocks = rows / R;
    int64_t row = 0;
    for (int64_t block = 0; block < blocks; ++block, row += R) {
      fn(std::integral_constant<int, R>{}, row, block, blocks);
    }
    with_row_count<R - 1>(rest, [&](auto count) { fn(count, row, int64_t{-1}, blocks); });
    return;
  }
  const int64_t blocks = rows / R + 1;
  const int64_t smaller = rows / blocks, larger = rows % blocks;  // blocks of smaller + 1 first
  int64_t row = 0;
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t count = smaller + (block < larger ? 1 : 0);
    with_row_count<R>(count, [&](auto m) { fn(m, row, block, blocks); });
    row += count;
  }
}

// The barrier between the persistent loops' steps. Their threads do nothing
// else in between, so they spin on one cache line (~0.1 us per step where
// libgomp's barrier costs several, and it costs nothing on one thread); after a
// while they yield the CPU, for machines with more threads than cores.
// Called by every thread of the enclosing OpenMP team: wait(), or in two halves,
// arrive() (this thread's step is done) and then wait(ticket) (every thread's is),
// with work that needs no other thread's step in between.
class StepBarrier {
 public:
  void wait() { wait(arrive()); }

  // The generation this thread waits to see end; the last thread to arrive ends it.
  unsigned arrive() {
    const int threads = omp_get_num_threads();
    if (threads <= 1) return 0;
    const unsigned generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == threads - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(generation + 1, std::memory_order_release);
    }
    return generation;
  }

  void wait(unsigned ticket) {
    if (omp_get_num_threads() <= 1) return;
    for (int spins = 0; generation_.load(std::memory_order_acquire) == ticket; ++spins) {
      if (spins < kSpins) {
        _mm_pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static constexpr int kSpins = 1 << 14;
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<unsigned> generation_{0};
};

// The reduction dimension is split into panels of at most S::kPanelBytes of packed
// weights (the ISA's traits), the partial sums waiting in the product buffer
// between panels. Panels of equal depth over a reduction of `length`, up to an
// eighth past panel_bytes rather than a sliver of a last panel: a GRU's K = 512 at
// 32 KB in 3 panels of 171 rows, not 170, 170, 170 and 2.
inline int64_t panel_depth(int64_t bytes_per_k, int64_t length, int64_t panel_bytes) {
  const int64_t most = std::max<int64_t>(1, panel_bytes / bytes_per_k);
  const int64_t stretched = most + most / 8;
  const int64_t panels = std::max<int64_t>(1, (length + stretched - 1) / stretched);
  return (length + panels - 1) / panels;
}

// 64-byte lines of `bytes`, rounded up.
inline int64_t lines_of(int64_t bytes) { return (bytes + 63) / 64; }

// A thread's tiles [first, last) of packed weights (K rows of floats_per_k floats
// a tile), walked a panel of `depth` rows at a time. Each full row block of a
// panel prefetches its share of the next panel: the tile's next, else the next
// tile's first, after the thread's last tile its first.
struct PanelWalk {
  const float* packed;
  int64_t K, floats_per_k, depth, first, last;

  // Block `block` of `blocks`' share of the panel after the one ending at k1 of tile u,
  // walked with the `tiles` - 1 after it (tile pairs: fused_steps): after the last
  // panel, the next walk's first, all of its tiles' where a panel is a whole tile
  // (they lie side by side), else its first tile's.
  PanelPrefetch share(int64_t u, int64_t k1, int64_t block, int64_t blocks,
                      int64_t tiles = 1) const {
    const char* next = k1 < K ? bytes_at(u * K + k1) : bytes_at((u + tiles) * K);
    if (next >= bytes_at(last * K)) next = bytes_at(first * K);
    const int64_t start = k1 < K ? k1 : 0;
    const int64_t panels = k1 >= K && depth >= K ? tiles : 1;
    const int64_t lines = std::min<int64_t>(
        (bytes_at(last * K) - next) / 64,
        lines_of(panels * (std::min(K, start + depth) - start) * floats_per_k *
                 int64_t{sizeof(float)}));
    const int64_t begin = lines * block / blocks, end = lines * (block + 1) / blocks;
    return {next + begin * 64, end - begin};
  }

 private:
  const char* bytes_at(int64_t row) const {
    return reinterpret_cast<const char*>(packed + row * floats_per_k);
  }
};

// A thread's share of a step's `units` blocks of packed weights (the forward's
// tiles, the backward's 2L-unit blocks) over its `rows` rows: whole blocks [first,
// last), and where the blocks do not divide evenly among the nt threads and each
// thread would get a whole register block (block_rows) of rows, rows [row0, row1)
// of the units % nt left over, [owned, units); else owned == units. by_batch (the
// caller's choice: batch_split), where each thread would get a whole register
// block of rows: rows [row0, row1) of every block (owned == 0), so that no thread
// reads the state rows another wrote.
struct ThreadShare {
  int64_t first, last, owned, row0, row1;
  bool by_batch;

  static ThreadShare of(int64_t units, int64_t rows, int64_t block_rows, int64_t t, int64_t nt,
                        bool by_batch) {
    const bool by_rows = rows >= nt * block_rows && (units % nt != 0 || by_batch);
    const bool batch = by_rows && by_batch && nt > 1;
    const int64_t owned = batch ? 0 : by_rows ? units / nt * nt : units;
    return {owned * t / nt, owned * (t + 1) / nt, owned, rows * t / nt, rows * (t + 1) / nt,
            batch};
  }
};

// Whether a loop's threads split each step's batch rows (ThreadShare's by_batch)
// rather than its blocks of weights: where each thread's copy of the weights the
// loop reads every step (`weight_bytes`) takes at most half a core's L2. Split by
// units, every thread reads the whole state each step, written by all of them: LSTM
// 10, 512, 32, 64's forward ran 1.26x as fast on two threads as on one. In-process
// A/B against the split by units, two Xeon vCPUs (2 MB L2), T 50, I = H, forward:
// LSTM H 32-64 B 32-256 13-39% faster, H 128 6-12%, GRU H 32-64 15-31%, H 128-192
// 4-12%, RNN H 32-256 B 16-256 10-46%; training (B 16-128): LSTM H 32-192 5-21%,
// GRU 4-32%, RNN 3-24%; the AVX2 kernels on that CPU 6-16%. Without the bound,
// LSTM H 256 (2 MB a thread) B 16-64 was 4-25% slower.
inline bool batch_split(int64_t weight_bytes, int threads) {
  return threads > 1 && weight_bytes <= l2_cache_bytes() / 2;
}

// Which units the step functor runs on after a tile's last panel (fused_steps):
// the tile's own, none (the thread's next tile runs it), or the previous tile's
// and its own, two vectors at a time (simd_pair.h: the gate math's dependency
// chains interleaved; in-process A/B, two Zen 2 cores: LSTM 100, 64, 512, 512
// forward 1.5% faster, GRU 3%). Only where a tile's product is short enough
// (S::kPairedFunctorDepth): the previous tile's gates, formed a whole pass of row
// blocks earlier, come back from L2 rather than L1, which the interleaving pays for
// only where the gate math weighs enough beside the product.
enum class TileFunctor { kOwn, kNext, kWithPrevious };

// What a fused_tile call forms: the input projection where the loop forms it
// (PackedRecurrent::w_input, at the first panel), the recurrent product and the
// functor (kAll); the projection alone (kProjection: a step's, formed ahead while the
// other threads finish the step before, fused_steps); or all but the projection
// (kProduct: formed ahead).
enum class TilePart { kAll, kProjection, kProduct };

// The input projection of tile u's rows [row, row + M) (kPair: tiles u and u + 1)
// into x_proj (FusedStepRows::x_proj_out), where the functor reads it: the
// recurrent product's register blocks over the input rows and W_ih's packed tile (I
// rows), the bias added to the first block's sums (fused_forward_cpu.h's
// forms_projection_in_loop says where). A float32 x_proj is summed kSumDepth terms
// at a time; a bfloat16 one (the dot product's loop: I pairs of input values a row)
// in registers over all of I, rounded once, as a GEMM's bfloat16 out is.
template <typename S, int M, int G, bool kPair>
__attribute__((always_inline)) inline void project_tile(const auto& step, const PackedRecurrent& w,
                                                        int64_t u, int64_t row) {
  constexpr int kTiles = kPair ? 2 : 1;
  constexpr int64_t L = S::kLanes;
  constexpr int C = kPair ? 2 : S::template forward_columns<G, M>();
  constexpr int kGatesAPass = kPair ? 1 : C;
  const int64_t H = w.H, j = u * L;
  typename S::Mask mask[kTiles];
  for (int t = 0; t < kTiles; ++t) {
    mask[t] = S::first(static_cast<int>(std::min<int64_t>(L, H - (u + t) * L)));
  }
  // Column c of a pass: fused_tile's.
  const int64_t column_at = kPair ? L : H;
  using Out = std::remove_pointer_t<decltype(step.x_proj_out)>;
  const int64_t I = w.I, sum_depth = std::is_same_v<Out, float> ? kSumDepth : I;
  const float* x_rows[M];
  for (int m = 0; m < M; ++m) x_rows[m] = step.x_in + (row + m) * step.x_stride;
  for (int g0 = 0; g0 < G; g0 += kGatesAPass) {
    for (int64_t b0 = 0; b0 < I; b0 += sum_depth) {
      const int64_t b1 = std::min(I, b0 + sum_depth);
      typename S::V acc[M][C];
      for (int m = 0; m < M; ++m) {
        for (int c = 0; c < C; ++c) acc[m][c] = S::zero();
      }
      PanelPrefetch none;
      tile_product<S, M, C, G>(w.w_input + (u * I * G + g0) * L, x_rows, b0, b1, acc, none,
                               kPair ? I * G * L : L);
      for (int c = 0; c < C; ++c) {
        const typename S::Mask& lanes = mask[kPair ? c : 0];
        const int64_t column = g0 * H + j + c * column_at;
        const typename S::V bias = b0 == 0 && w.input_bias != nullptr
                                       ? S::load(lanes, w.input_bias + column)
                                       : S::zero();
        for (int m = 0; m < M; ++m) {
          Out* at = step.x_proj_out + (row + m) * G * H + column;
          const typename S::V sum = S::add(acc[m][c], b0 == 0 ? bias : S::load(lanes, at));
          S::store(lanes, at, sum);
        }
      }
    }
  }
}

// Rows [row, row + M) of tile u over k in [k0, k1) (kPair: tiles u and u + 1, a
// single-gate layer's, one vector of each a pass): the partial product, kept in
// float32 between panels, C = forward_columns<G, M>() gate vectors at a time (kPair:
// one of each tile). After the last panel it goes to the product buffer (rounded to
// the layer's type) where the functor reads it, the functor runs on the units
// `functor` says, and h' goes into the next state where the step has one; `part`
// says whether the input projection comes first, alone, or not at all (TilePart).
// prefetch_writes: has_prefetchw(), read once per loop.
template <typename S, int M, int G, typename F, bool kPair = false>
__attribute__((always_inline)) inline void fused_tile(const F& f, const FusedStepRows<typename F::scalar_type>& step,
                       const PackedRecurrent& w, int64_t u, int64_t row, int64_t k0, int64_t k1,
                       bool prefetch_writes, TileFunctor functor, TilePart part,
                       PanelPrefetch prefetch = {}, bool prefetch_state = false) {
  static_assert(!kPair || G == 1, "tile pairs: single-gate layers");
  if (part == TilePart::kProjection) {
    project_tile<S, M, G, kPair>(step, w, u, row);
    return;
  }
  constexpr int kTiles = kPair ? 2 : 1;
  constexpr int64_t L = S::kLanes;
  const int64_t H = w.H, K = w.K;
  int count[kTiles];
  typename S::Mask mask[kTiles];
  for (int t = 0; t < kTiles; ++t) {
    count[t] = static_cast<int>(std::min<int64_t>(L, H - (u + t) * L));
    mask[t] = S::first(count[t]);
  }
  const int64_t j = u * L;
  // Row b of the next state: K * kStatePerK State values a row (float32 layers: H).
  auto state_out = [&](int64_t b) {
    return reinterpret_cast<typename S::State*>(step.h_out) + b * K * S::kStatePerK;
  };
  if (prefetch_state) {
    // The first tile of a step reads the state rows the other threads wrote:
    // the next block's rows of this panel asked for while this block runs.
    const int64_t next_end = std::min(step.rows, row + 2 * M);
    for (int64_t b = row + M; b < next_end; ++b) {
      for (int64_t k = k0; k < k1; k += 16) {
        _mm_prefetch(reinterpret_cast<const char*>(step.h_in + b * K + k), _MM_HINT_T0);
      }
    }
  }
  // The tiles whose units the functor runs on after this call, from unit
  // functor_first: none (kNext), this call's, or the previous tile's as well (its
  // product, formed a pass of row blocks ago, read back too). Prefetched for the
  // call that runs the functor, not the one that forms the product (in-process A/B,
  // two Zen 5 cores, forward, paired tiles: float32 LSTM H 64 0.6-1.6% faster, GRU
  // 0.6%, bfloat16 LSTM H 64-512 0.2-1%; the AVX2 kernels on that CPU, LSTM and GRU
  // H 128-512, 0.2-2%).
  const int64_t functor_first = functor == TileFunctor::kWithPrevious ? j - L : j;
  const int functor_tiles = functor == TileFunctor::kNext ? 0
                            : functor == TileFunctor::kWithPrevious ? kTiles + 1
                                                                    : kTiles;
  if (k1 == K) {
    // The functor's input projection comes next: from L3, unless asked for now
    // (one line per gate: a bfloat16 layer's 16 units are half of one).
    for (int m = 0; m < M; ++m) {
      for (int g = 0; g < G; ++g) {
        for (int t = 0; t < functor_tiles; ++t) {
          const int64_t at = (row + m) * G * H + g * H + functor_first + t * L;
          _mm_prefetch(reinterpret_cast<const char*>(step.x_proj + at), _MM_HINT_T0);
          if (functor_first + t * L < j) {
            _mm_prefetch(reinterpret_cast<const char*>(step.product + at), _MM_HINT_T0);
          }
        }
      }
    }
    // The rows this tile writes at the end, claimed for writing now (PREFETCHW,
    // with the ISA files' target "prfchw"): the next state's, which every thread
    // read a step ago (each store otherwise waits to take its line from the other
    // cores), and the output rows, fresh memory (RNN's product goes there). Two Zen 2
    // cores, in-process A/B: RNN 100, 64, 512, 512 forward 5% faster (steps alone 17%),
    // the 2-layer bidirectional RNN 11%, GRU 2-4%, LSTM within 1%; AVX-512 not measured.
    if (prefetch_writes) {
      for (int m = 0; m < M; ++m) {
        for (int t = 0; t < functor_tiles; ++t) {
          const int64_t at = (row + m) * H + functor_first + t * L;
          if (step.h_out != nullptr) {
            __builtin_prefetch(state_out(row + m) + functor_first + t * L, /*rw=*/1,
                               /*locality=*/3);
          }
          __builtin_prefetch(step.out + at, 1, 3);
          if (step.h_out_stored != nullptr) __builtin_prefetch(step.h_out_stored + at, 1, 3);
        }
      }
    }
  }
  constexpr int C = kPair ? 2 : S::template forward_columns<G, M>();
  constexpr int kGatesAPass = kPair ? 1 : C;
  static_assert(G % kGatesAPass == 0, "a tile's gates in groups of C");
  // Column c of a pass: gate g0 + c of the tile (H apart in a row of the product
  // buffers, the next vector of its packed row), or (kPair) tile u + c's gate 0 (L
  // apart, its own packed tile K rows later).
  const int64_t column_at = kPair ? L : H;
  const int64_t column_weights = kPair ? K * G * L : L;
  if (w.w_input != nullptr && k0 == 0 && part == TilePart::kAll) {
    project_tile<S, M, G, kPair>(step, w, u, row);
  }
  // The state rows' pointers, set up here rather than live across the input
  // projection's block: there, in a draft of for_row_blocks, GCC ran out of registers
  // for 11-row tile pairs and kept W_ih's vectors on the stack (25% slower).
  const float* h_rows[M];
  for (int m = 0; m < M; ++m) h_rows[m] = step.h_in + (row + m) * K;
  for (int g0 = 0; g0 < G; g0 += kGatesAPass) {
    // Gates g0 .. g0 + C - 1 of the rows; gate g of row b at b * G * H + g * H + j.
    // Summed kSumDepth k at a time from 0 in registers, each block's sums then added
    // to the earlier blocks' in the partial buffer.
    PanelPrefetch pass_prefetch = g0 == 0 ? prefetch : PanelPrefetch{};
    for (int64_t b0 = k0; b0 < k1; b0 += kSumDepth) {
      const int64_t b1 = std::min(k1, b0 + kSumDepth);
      typename S::V acc[M][C];
      for (int m = 0; m < M; ++m) {
        for (int c = 0; c < C; ++c) acc[m][c] = S::zero();
      }
      tile_product<S, M, C, G>(w.w + (u * K * G + g0) * L, h_rows, b0, b1, acc, pass_prefetch,
                               column_weights);
      if (b1 == K && w.product_bias != nullptr) {
        // The projection's bias, which its GEMM left out, on the last block's sums.
        for (int c = 0; c < C; ++c) {
          const typename S::V bias =
              S::load(mask[kPair ? c : 0], w.product_bias + g0 * H + j + c * column_at);
          for (int m = 0; m < M; ++m) acc[m][c] = S::add(acc[m][c], bias);
        }
      }
      for (int m = 0; m < M; ++m) {
        const int64_t at = (row + m) * G * H + g0 * H + j;
        for (int c = 0; c < C; ++c) {
          const typename S::Mask& lanes = mask[kPair ? c : 0];
          if (b0 > 0) acc[m][c] = S::add(acc[m][c], S::load(lanes, step.partial + at + c * column_at));
          if (b1 < K) {
            S::store(lanes, step.partial + at + c * column_at, acc[m][c]);
          } else {
            S::store(lanes, step.product + at + c * column_at, acc[m][c]);
          }
        }
      }
    }
  }
  if (k1 < K || functor == TileFunctor::kNext) return;
  const int64_t begin = functor_first;
  const int64_t end = std::min(H, j + kTiles * L);  // at most 2L units from begin
  for (int m = 0; m < M; ++m) {
    const int64_t b = row + m;
    using Functor = FunctorLanes<typename F::scalar_type>;
    apply_span<Functor::template one, Functor::template pair>(f, b, begin,
                                                              static_cast<int>(end - begin));
    if (step.h_out == nullptr) continue;
    for (int64_t units = begin; units < end; units += L) {
      const typename S::Mask lanes = S::first(static_cast<int>(std::min(L, end - units)));
      const typename S::V h = S::load(lanes, step.out + b * H + units);
      S::store(lanes, state_out(b) + units, h);
      if (step.h_out_stored != nullptr) S::store(lanes, step.h_out_stored + b * H + units, h);
    }
  }
}

template <typename S, int G, typename F>
void fused_steps(const F* steps, const FusedStepRows<typename F::scalar_type>* rows, int64_t count,
                 const PackedRecurrent& w, int threads) {
  // A single-gate layer's tiles two at a time where S::kPairTiles (fused_tile's kPair).
  constexpr bool kPairs = S::kPairTiles && G == 1;
  constexpr int64_t kBytesPerK = G * S::kLanes * sizeof(float);
  const bool prefetch_writes = has_prefetchw();
  // Which rows left after the whole register blocks for_row_blocks spreads over them.
  const RowSpread spread = !S::kEvenRowBlocks  ? RowSpread::kNone
                           : !blas_runs_avx512() ? RowSpread::kFew
                           : G == 1              ? RowSpread::kAfterTwo
                                                 : RowSpread::kAfterOne;
  // The rows of packed weights a tile reads every step: W_hh's K, and W_ih's I where
  // the loop forms the input projection; all tiles' bytes.
  const int64_t step_depth = w.K + (w.w_input != nullptr ? w.I : 0);
  const int64_t step_weight_bytes = w.tiles * step_depth * kBytesPerK;
  const bool by_batch = batch_split(step_weight_bytes, threads);
  StepBarrier barrier;
#pragma omp parallel num_threads(threads)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t depth = panel_depth(kBytesPerK, w.K, S::kPanelBytes);
    // Whether a thread's tiles pair their functors (TileFunctor), for every step.
    const bool paired_functors = step_depth <= S::kPairedFunctorDepth;
    // Whether the steps' projections are formed ahead (at the barrier before each
    // step; below): where each thread's share of the weights the loop reads every step
    // takes at most half its L2, so that the projection stays there until the step
    // reads it (every loop that forms it on Intel's AVX-512 CPUs). Past that it was
    // measured only on a Xeon's AVX2 kernels (8 MB of weights: LSTM 2% faster, GRU 7%),
    // not on Zen 5, whose loop forms the projection up to 24 MB and runs LSTM 100, 64,
    // 512, 512 at ~90% of its peak: left as it was there.
    const bool project_ahead =
        w.w_input != nullptr && nt > 1 && step_weight_bytes <= nt * l2_cache_bytes() / 2;
    // Whether step s's projection was formed ahead, and whether every thread is done
    // with step s - 1 (it ended at the barrier).
    bool projected_ahead = false, synced = true;
    for (int64_t s = 0; s < count; ++s) {
      const FusedStepRows<typename F::scalar_type>& step = rows[s];
      // Each thread owns whole tiles [first, last). Where the tiles do not divide
      // evenly and each thread would get a whole register block of a tile's rows,
      // the tiles % nt left over are shared, each thread forming rows
      // [rows * t / nt, rows * (t + 1) / nt) of them (41 tiles at H 650 had one
      // thread take 21 while the other, done with 20, waited at the barrier).
      // In-process A/B, two Zen 5 cores, forward: LSTM H 100, 200, 300 (7, 13, 19
      // tiles) 3.5-7% faster at B 20-64, H 650 B 20 1.6-2%, GRU H 200 3%, RNN H 300
      // B 64 1.7%; bfloat16 2-4%; the AVX2 kernels (8-unit tiles) 1.5-3%. Fewer rows
      // keep whole tiles (RNN H 300 B 8: shared, its tile pairs split, 2-3% slower).
      constexpr int64_t kRows = S::template forward_rows<G>();
      const ThreadShare share = ThreadShare::of(w.tiles, step.rows, kRows, t, nt, by_batch);
      // Tiles [first, last) over rows [row0, row1). `own`: the thread's own tiles,
      // each full row block prefetching its share of the next panel into L2 and the
      // functors paired (TileFunctor); else shared by rows, with no prefetch (where
      // split by batch each thread's weights stay in its L2: 2-4.5% faster without,
      // LSTM and GRU H 128, RNN H 128-256 3-6.6%) and each tile its own functor.
      // `pairs`: single-gate tiles two at a time (kPairs; an RNN's split batch, H 256
      // B 64-128, 3% slower one at a time than split by tiles, 8-10% faster in pairs).
      // `part`: what each tile call forms (TilePart) for step `at`.
      auto run_tiles = [&](int64_t at, TilePart part, int64_t first, int64_t last, int64_t row0,
                           int64_t row1, bool own, bool pairs) {
        const FusedStepRows<typename F::scalar_type>& at_rows = rows[at];
        const PanelWalk walk{w.w, w.K, G * S::kLanes, depth, first, last};
        // Tile u (and u + 1 when kPair) over [k0, k1), R rows at a time.
        auto panel = [&](auto rows_at_once, auto pair, int64_t u, int64_t k0, int64_t k1,
                         TileFunctor functor) {
          constexpr int R = decltype(rows_at_once)::value;
          constexpr bool kPair = decltype(pair)::value;
          for_row_blocks<R>(row1 - row0, spread, [&](auto count, int64_t row, int64_t block,
                                                     int64_t blocks) {
            constexpr int M = decltype(count)::value;
            if (block >= 0 && own && part != TilePart::kProjection) {
              fused_tile<S, M, G, F, kPair>(steps[at], at_rows, w, u, row0 + row, k0, k1,
                                            prefetch_writes, functor, part,
                                            walk.share(u, k1, block, blocks, kPair ? 2 : 1),
                                            u == first);
            } else {
              fused_tile<S, M, G, F, kPair>(steps[at], at_rows, w, u, row0 + row, k0, k1,
                                            prefetch_writes, functor, part);
            }
          });
        };
        // The projection is a tile's first panel's alone.
        const int64_t k_end = part == TilePart::kProjection ? std::min(w.K, depth) : w.K;
        for (int64_t u = first; u < last;) {
          const bool two = pairs && kPairs && u + 1 < last;
          // A lone tile's functor runs with the next one's (fused_tile) where
          // paired_functors: the thread's tiles first, first + 1 pair up, an odd last
          // one alone.
          const TileFunctor functor = !own || two || !paired_functors ? TileFunctor::kOwn
                                      : (u - first) % 2 == 1 ? TileFunctor::kWithPrevious
                                      : u + 1 < last         ? TileFunctor::kNext
                                                             : TileFunctor::kOwn;
          for (int64_t k0 = 0; k0 < k_end; k0 += depth) {
            const int64_t k1 = std::min(w.K, k0 + depth);
            if constexpr (kPairs) {
              if (two) {
                panel(std::integral_constant<int, S::kPairRows>{}, std::true_type{}, u, k0, k1,
                      functor);
                continue;
              }
            }
            panel(std::integral_constant<int, kRows>{}, std::false_type{}, u, k0, k1, functor);
          }
          u += two ? 2 : 1;
        }
      };
      // A share's tiles for step `at`: the thread's own, then those shared by rows.
      auto run_share = [&](int64_t at, TilePart part, const ThreadShare& of) {
        run_tiles(at, part, of.first, of.last, 0, rows[at].rows, true, true);
        run_tiles(at, part, of.owned, w.tiles, of.row0, of.row1, false, of.by_batch);
      };
      run_share(s, projected_ahead ? TilePart::kProduct : TilePart::kAll, share);
      // Split by batch over the same rows as the next step, a thread's next step reads
      // only rows it wrote (state, output, projection): no barrier. In-process A/B, two
      // Xeon vCPUs, T 50: LSTM B 64 H 32 4.8% faster, B 256 H 128 2.9%, RNN B 64 H 32 9%,
      // B 32 H 128 4.5%, GRU B 128 H 64 1.6%.
      const bool rows_stay_own =
          share.by_batch && s + 1 < count && rows[s + 1].rows == step.rows;
      if (rows_stay_own) {
        projected_ahead = synced = false;
        continue;
      }
      // Where the loop forms the input projection, each thread forms the next step's
      // for the tiles and rows it runs that step on (ThreadShare: no other thread reads
      // them) between arriving at the barrier and waiting there (it reads no state),
      // into the x_proj buffer of the step's parity (ProjectedInput's form_in_loop),
      // which every thread is done with if the step before this one ended at the
      // barrier too: a thread that arrives early works rather than waits (at LSTM 100,
      // 32, 256, 256 the threads spent 11% of the loop waiting there).
      // In-process A/B against the projection formed in the step, two Xeon vCPUs,
      // forward, T 100, I = H (W_ih and W_hh 1-2 MB: split by tiles): LSTM H 256 B
      // 16-128 1.7-2.6% faster, GRU H 256-288 4-7%, RNN H 384-512 2.4-4.7%; the AVX2
      // kernels on that CPU LSTM H 256 8%, GRU 13%, RNN H 512 3%; training within 1.6%.
      const bool project_next = project_ahead && synced && s + 1 < count;
      const unsigned ticket = barrier.arrive();
      if (project_next) {
        run_share(s + 1, TilePart::kProjection,
                  ThreadShare::of(w.tiles, rows[s + 1].rows, kRows, t, nt, by_batch));
      }
      barrier.wait(ticket);
      projected_ahead = project_next;
      synced = true;
    }
    // The functors' streamed stores (the saved workspace: Lanes::stream) are weakly
    // ordered: visible to every thread before the loop returns.
    _mm_sfence();
  }
}

// d_h rows [row, row + M), units 2L q .. 2L q + C L - 1 (C 1: a last block of at
// most L units, its second half all zero), over j in [j0, j1): the partial product of
// d_recurrent with W_hh's block, plus the functor's direct part where step.accumulate
// (GRU: in d_h), kept in float32 between panels; the last panel's sums go to d_h
// (rounded to the layer's type).
template <typename S, int M, int C, typename T>
__attribute__((always_inline)) inline void backward_block(const FusedBackwardRows<T>& step, const PackedRecurrentT& w, int64_t q,
                           int64_t row, int64_t j0, int64_t j1, PanelPrefetch prefetch = {}) {
  constexpr int64_t L = S::kLanes;
  const float* d_rows[M];
  typename S::Mask masks[C];
  for (int half = 0; half < C; ++half) {
    const int64_t k = q * 2 * L + half * L;
    masks[half] = S::first(static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(L, w.K - k))));
  }
  for (int m = 0; m < M; ++m) {
    d_rows[m] = step.d_recurrent_float + (row + m) * step.d_recurrent_stride;
  }
  // Blocks of kSumDepth, their sums added up in d_h_partial (a float32 layer's d_h
  // itself); the functor's direct part (GRU: in d_h) added to the first block's.
  for (int64_t b0 = j0; b0 < j1; b0 += kSumDepth) {
    const int64_t b1 = std::min(j1, b0 + kSumDepth);
    typename S::V acc[M][C];
    for (int m = 0; m < M; ++m) {
      for (int half = 0; half < C; ++half) acc[m][half] = S::zero();
    }
    tile_product<S, M, C, 2>(w.w + q * w.J * 2 * L, d_rows, b0, b1, acc, prefetch);
    for (int m = 0; m < M; ++m) {
      for (int half = 0; half < C; ++half) {
        const int64_t at = (row + m) * w.K + q * 2 * L + half * L;
        typename S::V sum = acc[m][half];
        if (b0 > 0) {
          sum = S::add(sum, S::load(masks[half], step.d_h_partial + at));
        } else if (step.accumulate) {
          sum = S::add(sum, S::load(masks[half], step.d_h + at));
        }
        if (b1 < w.J) {
          S::store(masks[half], step.d_h_partial + at, sum);
        } else {
          S::store(masks[half], step.d_h + at, sum);
        }
      }
    }
  }
}

template <typename S, typename F>
void fused_backward(const F* steps, const FusedBackwardRows<typename F::scalar_type>* rows,
                    int64_t count, const PackedRecurrentT& w, int threads) {
  using T = typename F::scalar_type;
  constexpr int kRows = S::kBackwardRows;
  constexpr int64_t L = S::kLanes, kBytesPerJ = 2 * L * sizeof(float);
  const int64_t H = w.K;  // state units: K == H (no projection)
  // A 16-bit layer's product reads the functor's gradient widened to float32, the
  // dot product's (S::kStatePerK 2: w.J pairs of it a row) as it is.
  constexpr bool kWidens = !std::is_same_v<T, float> && S::kStatePerK == 1;
  const int64_t G = w.J / H;
  // Split by batch (batch_split) where W_hh's blocks fit: every block shared by rows.
  const bool by_batch = batch_split(w.blocks * w.J * kBytesPerJ, threads);
  StepBarrier barrier;
#pragma omp parallel num_threads(threads)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t depth = panel_depth(kBytesPerJ, w.J, S::kPanelBytes);
    // The thread's share of a step's product over `product_rows` rows (as
    // fused_steps shares its tiles or the batch). The next step's functors run on the
    // same units and rows: a thread reads only the d_h its own product wrote, so one
    // barrier a step suffices.
    auto share_of = [&](int64_t product_rows) {
      return ThreadShare::of(w.blocks, product_rows, kRows, t, nt, by_batch);
    };
    // The functors on rows [b0, b1) of units [j0, j1): row by row, each row's
    // units in order, so the saved gates, cells and gradients stream from memory
    // in runs (by unit first, a row apart each access jumped 2-8 KB, past the
    // prefetchers); a block's 2L units at once (two vectors, simd_pair.h).
    auto functors = [&](int64_t s, int64_t b0, int64_t b1, int64_t j0, int64_t j1) {
      const FusedBackwardRows<T>& step = rows[s];
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t j = j0; j < j1; j += 2 * L) {
          using Functor = FunctorLanes<T>;
          apply_span<Functor::template one, Functor::template pair>(
              steps[s], b, j, static_cast<int>(std::min<int64_t>(2 * L, j1 - j)));
          if constexpr (kWidens) {
            // The functor's gradient on this step's products, widened for the product.
            for (int64_t unit = j; unit < std::min(j + 2 * L, j1); unit += L) {
              const typename S::Mask mask =
                  S::first(static_cast<int>(std::min<int64_t>(L, j1 - unit)));
              for (int64_t g = 0; g < G; ++g) {
                const int64_t at = b * w.J + g * H + unit;
                S::store(mask, step.d_recurrent_float + at, S::load(mask, step.d_recurrent + at));
              }
            }
          }
        }
      }
    };
    for (int64_t s = 0; s < count; ++s) {
      const FusedBackwardRows<T>& step = rows[s];
      // Rows past the last product's (a packed batch's sequences that end here)
      // read no product: the last thread takes them in the shared blocks.
      const bool after_product = s > 0 && rows[s - 1].product;
      const ThreadShare before = share_of(after_product ? rows[s - 1].rows : step.rows);
      functors(s, 0, step.rows, before.first * 2 * L, std::min(before.last * 2 * L, H));
      functors(s, std::min(before.row0, step.rows),
               t == nt - 1 ? step.rows : std::min(before.row1, step.rows),
               before.owned * 2 * L, H);
      barrier.wait();
      if (!step.product) continue;
      const ThreadShare own = share_of(step.rows);
      // As in the forward: each full row block of the thread's own blocks
      // prefetches its share of the thread's next panel; shared blocks none.
      const PanelWalk walk{w.w, w.J, 2 * L, depth, own.first, own.last};
      auto product = [&](int64_t q, int64_t row0, int64_t row1) {
        // A last block of at most L units forms only its first half (half the
        // multiply-adds of a full block, and no masked accesses of no lanes).
        const bool narrow = H - q * 2 * L <= L;
        for (int64_t j0 = 0; j0 < w.J; j0 += depth) {
          const int64_t j1 = std::min(w.J, j0 + depth);
          for_row_blocks<kRows>(row1 - row0, RowSpread::kNone, [&](auto count, int64_t row,
                                                                   int64_t block,
                                                                   int64_t blocks) {
            constexpr int M = decltype(count)::value;
            PanelPrefetch prefetch;
            if (block >= 0 && q < own.last) prefetch = walk.share(q, j1, block, blocks);
            if (narrow) {
              backward_block<S, M, 1>(step, w, q, row0 + row, j0, j1, prefetch);
            } else {
              backward_block<S, M, 2>(step, w, q, row0 + row, j0, j1, prefetch);
            }
          });
        }
      };
      for (int64_t q = own.first; q < own.last; ++q) product(q, 0, step.rows);
      for (int64_t q = own.owned; q < w.blocks; ++q) product(q, own.row0, own.row1);
    }
  }
}

// Tiles [begin, end) of W [G*H, K] (float32, contiguous) in PackedRecurrent's
// layout at dst (the first tile's start), zero past H: L x L blocks of the tile's L
// rows of a gate are loaded, transposed in registers (S::transpose) and stored as L
// steps of k. (Gathers, L rows' values at each k, packed AVX-512 layers until
// 2026-12-06: on two Zen 5 cores the transposes made LSTM 100, 64, 512, 512's
// forward 1.9% faster, 50, 1, 64, 64's 4%; AVX2's gathers, microcoded on Zen 2, had
// made packing a third of a small layer's forward.)
template <typename S>
void pack_tiles(const float* w, int64_t G, int64_t H, int64_t K, int64_t begin, int64_t end,
                float* dst) {
  constexpr int64_t L = S::kLanes;
  const typename S::Mask all = S::first(L);
  for (int64_t u = begin; u < end; ++u, dst += K * G * L) {
    const int64_t j = u * L;
    const int64_t units = std::min<int64_t>(L, H - j);
    for (int64_t g = 0; g < G; ++g) {
      const float* rows = w + (g * H + j) * K;  // the tile's units of gate g
      for (int64_t k0 = 0; k0 < K; k0 += L) {
        const int64_t depth = std::min<int64_t>(L, K - k0);
        const typename S::Mask columns = S::first(static_cast<int>(depth));
        typename S::V block[L];
        for (int64_t l = 0; l < L; ++l) {
          block[l] = l < units ? S::load(columns, rows + l * K + k0) : S::zero();
        }
        S::transpose(block);  // block[kk]: unit l's W[.][k0 + kk] in lane l
        for (int64_t kk = 0; kk < depth; ++kk) {
          S::store(all, dst + ((k0 + kk) * G + g) * L, block[kk]);
        }
      }
    }
  }
}

}  // namespace
}  // namespace cpu
}  // namespace rnnfused

// A forward and a backward loop entry point (simd.h's run_fused_steps_<isa> and
// run_fused_backward_<isa>) on the traits S, templates over the step functor:
// RNNFUSED_INSTANTIATE_FUSED_LOOPS instantiates them for a storage type. Used in
// namespace rnnfused::cpu.
#define RNNFUSED_DEFINE_FUSED_LOOP_ENTRIES(S, steps_fn, backward_fn)                          \
  template <typename F>                                                                       \
  void steps_fn(const F* steps, const FusedStepRows<typename F::scalar_type>* rows,          \
                int64_t count, const PackedRecurrent& w, int threads) {                       \
    fused_steps<S, F::kGates>(steps, rows, count, w, threads);                                \
  }                                                                                           \
  template <typename F>                                                                       \
  void backward_fn(const F* steps, const FusedBackwardRows<typename F::scalar_type>* rows,   \
                   int64_t count, const PackedRecurrentT& w, int threads) {                   \
    fused_backward<S>(steps, rows, count, w, threads);                                        \
  }

// An ISA's loops on its traits `Simd` (the entry points above, instantiated for the
// float32 step functors) and its pack_recurrent_tiles_<isa>. Used in namespace
// rnnfused::cpu.
#define RNNFUSED_DEFINE_FUSED_LOOPS(steps_fn, backward_fn, pack_fn)                           \
  void pack_fn(const float* w, int64_t G, int64_t H, int64_t K, int64_t begin, int64_t end,  \
               float* dst) {                                                                  \
    pack_tiles<Simd>(w, G, H, K, begin, end, dst);                                            \
  }                                                                                           \
  RNNFUSED_DEFINE_FUSED_LOOP_ENTRIES(Simd, steps_fn, backward_fn)                             \
  RNNFUSED_INSTANTIATE_FUSED_LOOPS(steps_fn, backward_fn, float)

#define RNNFUSED_INSTANTIATE_FUSED_LOOPS(steps_fn, backward_fn, T)                            \
  template void steps_fn(const ::rnnfused::RnnForwardStep<T>*, const FusedStepRows<T>*,      \
                         int64_t, const PackedRecurrent&, int);                               \
  template void steps_fn(const ::rnnfused::LstmForwardStep<T>*, const FusedStepRows<T>*,     \
                         int64_t, const PackedRecurrent&, int);                               \
  template void steps_fn(const ::rnnfused::GruForwardStep<T>*, const FusedStepRows<T>*,      \
                         int64_t, const PackedRecurrent&, int);                               \
  template void backward_fn(const ::rnnfused::RnnBackwardStep<T>*,                            \
                            const FusedBackwardRows<T>*, int64_t, const PackedRecurrentT&,   \
                            int);                                                             \
  template void backward_fn(const ::rnnfused::LstmBackwardStep<T>*,                           \
                            const FusedBackwardRows<T>*, int64_t, const PackedRecurrentT&,   \
                            int);                                                             \
  template void backward_fn(const ::rnnfused::GruBackwardStep<T>*,                            \
                            const FusedBackwardRows<T>*, int64_t, const PackedRecurrentT&,   \
                            int)
