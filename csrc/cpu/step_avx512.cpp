// The step functors on 16 units at a time with AVX-512 (F, BW, VL, DQ), for
// float32 and bfloat16 storage (math in float32). Compiled for AVX-512 from the
// target pragma on, and run only where active_isa() says so.
// Everything defined here is internal or unique to this file, so that no code
// compiled for AVX-512 can stand in for a generic copy elsewhere.
// c10::BFloat16 comes in before the target pragma: its inline functions are
// compiled for the baseline ISA like everywhere else (this file only needs its size).
#include <c10/util/BFloat16.h>

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
// GCC 12 warns about the deliberately undefined vectors inside its own AVX-512 headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "../step_functors.h"
#include "bf16_avx512.h"
#include "simd.h"

namespace rnnfused {
namespace cpu {
namespace {

struct Vec {
  __m512 v;
  Vec() = default;
  Vec(__m512 x) : v(x) {}
  Vec(float x) : v(_mm512_set1_ps(x)) {}
};

inline Vec operator+(Vec a, Vec b) { return _mm512_add_ps(a.v, b.v); }
inline Vec operator-(Vec a, Vec b) { return _mm512_sub_ps(a.v, b.v); }
inline Vec operator*(Vec a, Vec b) { return _mm512_mul_ps(a.v, b.v); }
inline Vec operator/(Vec a, Vec b) { return _mm512_div_ps(a.v, b.v); }
inline Vec operator-(Vec a) {
  return _mm512_castsi512_ps(
      _mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(static_cast<int>(0x80000000u))));
}
inline Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a.v, b.v, c.v); }

inline Vec min_of(Vec a, Vec b) { return _mm512_min_ps(a.v, b.v); }
inline Vec max_of(Vec a, Vec b) { return _mm512_max_ps(a.v, b.v); }
inline Vec round_of(Vec x) {
  return _mm512_roundscale_ps(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// scalef rounds to denormals, 0 and inf as exp does: past x = 89, 2^n overflows
// to inf; from x = -104 down the result is below half the smallest denormal: 0.
constexpr float kExpLow = -104.0f, kExpHigh = 89.0f;
inline Vec scale_exp(Vec y, Vec n, Vec) { return _mm512_scalef_ps(y.v, n.v); }

// Bitwise operations through the integer forms (AVX-512F has no and_ps).
inline Vec abs_of(Vec x) {
  return _mm512_castsi512_ps(
      _mm512_and_si512(_mm512_castps_si512(x.v), _mm512_set1_epi32(0x7fffffff)));
}
inline Vec with_sign_of(Vec magnitude, Vec sign) {
  const __m512i sign_bit = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  return _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_castps_si512(magnitude.v), _mm512_and_si512(_mm512_castps_si512(sign.v), sign_bit)));
}
inline Vec where_less(Vec a, Vec b, Vec if_less, Vec otherwise) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ), otherwise.v, if_less.v);
}

#include "simd_math.h"

inline Vec relu_of(Vec x) { return _mm512_max_ps(_mm512_setzero_ps(), x.v); }

inline Vec where_positive(Vec h, Vec value) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(h.v, _mm512_setzero_ps(), _CMP_GT_OQ), value.v);
}

template <bool kPartial>
struct Lanes {
  using value = Vec;
  static constexpr int64_t kWidth = 16;
  __mmask16 mask = 0xFFFF;
  Lanes() = default;
  explicit Lanes(int count) : mask(static_cast<__mmask16>((1u << count) - 1u)) {}
  Vec load(const float* p) const {
    return kPartial ? _mm512_maskz_loadu_ps(mask, p) : _mm512_loadu_ps(p);
  }
  void store(float* p, Vec v) const {
    if (kPartial) {
      _mm512_mask_storeu_ps(p, mask, v.v);
    } else {
      _mm512_storeu_ps(p, v.v);
    }
  }

  // bfloat16 through bf16_avx512.h.
  Vec load(const c10::BFloat16* p) const {
    return widen_bf16(kPartial ? _mm256_maskz_loadu_epi16(mask, p)
                               : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  void store(c10::BFloat16* p, Vec v) const {
    const __m256i half = narrow_bf16(v.v);
    if (kPartial) {
      _mm256_mask_storeu_epi16(p, mask, half);
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), half);
    }
  }
};

}  // namespace
}  // namespace cpu
}  // namespace rnnfused

#include "simd_rows.h"

namespace rnnfused {
namespace cpu {

template <typename F>
void run_rows_avx512(const F& f, int64_t row_begin, int64_t row_end) {
  run_rows<Lanes>(f, row_begin, row_end);
}

RNNFUSED_INSTANTIATE_RUN_ROWS(run_rows_avx512, float);
RNNFUSED_INSTANTIATE_RUN_ROWS(run_rows_avx512, c10::BFloat16);

namespace {

// part[m][g] += rows[m][k] * w[k][g * 16 .. g * 16 + 15] for one k.
template <int M, int G>
__attribute__((always_inline)) inline void tile_step(const float* w, const float* const* rows,
                                                     int64_t k, __m512 (&part)[M][G]) {
  __m512 wk[G];
  for (int g = 0; g < G; ++g) wk[g] = _mm512_loadu_ps(w + (k * G + g) * 16);
  for (int m = 0; m < M; ++m) {
    const __m512 a = _mm512_set1_ps(rows[m][k]);
    for (int g = 0; g < G; ++g) part[m][g] = _mm512_fmadd_ps(a, wk[g], part[m][g]);
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

// acc[m][g] += sum_{k0 <= k < k1} rows[m][k] * w[k][g * 16 .. g * 16 + 15] for M
// rows: M * G accumulators live in registers, the packed tile streams from L1.
// Fewer than 8 accumulators cannot hide the FMA latency (4 cycles, 2 ports): a
// few rows (a batch of 1, the rows left over) then split k over S partial sums.
// `prefetch` runs along (whole blocks only: a few rows reuse a panel too little
// for it to pay).
template <int M, int G>
inline void tile_product(const float* w, const float* const* rows, int64_t k0, int64_t k1,
                         __m512 (&acc)[M][G], PanelPrefetch prefetch = {}) {
  constexpr int S = M * G >= 8 ? 1 : M * G >= 4 ? 2 : M * G >= 2 ? 4 : 8;
  static_assert(S == 1 || M == 1, "a whole block keeps its accumulators in one chain each");
  if constexpr (S == 1) {
    for (int64_t k = k0; k < k1; ++k) {
      prefetch.one();
      tile_step<M, G>(w, rows, k, acc);
    }
  } else {
    __m512 part[S][M][G];
    for (int s = 0; s < S; ++s) {
      for (int m = 0; m < M; ++m) {
        for (int g = 0; g < G; ++g) part[s][m][g] = s == 0 ? acc[m][g] : _mm512_setzero_ps();
      }
    }
    // The k % S leading steps first: the loop after them is then the last use
    // of the partial sums before the reduction (GCC keeps them in registers).
    int64_t k = k0;
    for (; (k1 - k) % S != 0; ++k) tile_step<M, G>(w, rows, k, part[0]);
    for (; k < k1; k += S) {
      for (int s = 0; s < S; ++s) tile_step<M, G>(w, rows, k + s, part[s]);
    }
    for (int m = 0; m < M; ++m) {
      for (int g = 0; g < G; ++g) {
        __m512 sum = part[0][m][g];
        for (int s = 1; s < S; ++s) sum = _mm512_add_ps(sum, part[s][m][g]);
        acc[m][g] = sum;
      }
    }
  }
}

// The barrier between the persistent loops' steps. Their threads do nothing
// else in between, so they spin on one cache line (~0.1 us per step where
// libgomp's barrier costs several, and it costs nothing on one thread); after a
// while they yield the CPU, for machines with more threads than cores.
// Called by every thread of the enclosing OpenMP team.
class StepBarrier {
 public:
  void wait() {
    const int threads = omp_get_num_threads();
    if (threads <= 1) return;
    const unsigned generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == threads - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(generation + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
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

// The reduction dimension is split into panels of kPanelBytes of packed weights,
// small enough to stay in L1 while every row block of the step reuses them; the
// partial sums wait in the product buffer between panels.
constexpr int64_t kPanelBytes = 32 * 1024;

inline int64_t panel_depth(int64_t vectors_per_k) {
  return std::max<int64_t>(1, kPanelBytes / (vectors_per_k * 64));
}

// Rows [row, row + M) of tile u over k in [k0, k1): the partial product, kept in
// the product buffer where the functor reads it. After the last panel, the
// functor runs on those units and h' goes into the next state.
template <int M, int G, typename F>
inline void fused_tile(const F& f, const FusedStepRows& step, const PackedRecurrent& w,
                       int64_t u, int64_t row, int64_t k0, int64_t k1,
                       PanelPrefetch prefetch = {}, bool prefetch_state = false) {
  const int64_t H = w.H, K = w.K;
  const int64_t j = u * 16;
  const int count = static_cast<int>(std::min<int64_t>(16, H - j));
  const __mmask16 mask = static_cast<__mmask16>((1u << count) - 1u);
  const float* h_rows[M];
  __m512 acc[M][G];
  for (int m = 0; m < M; ++m) {
    h_rows[m] = step.h_in + (row + m) * K;
    const float* partial = step.product + (row + m) * G * H + j;  // gate g at g * H
    for (int g = 0; g < G; ++g) {
      acc[m][g] = k0 == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask, partial + g * H);
    }
  }
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
  if (k1 == K) {
    // The functor's input projection comes next: from L3, unless asked for now.
    for (int m = 0; m < M; ++m) {
      for (int g = 0; g < G; ++g) {
        _mm_prefetch(reinterpret_cast<const char*>(step.x_proj + (row + m) * G * H + g * H + j),
                     _MM_HINT_T0);
      }
    }
  }
  tile_product<M, G>(w.w + u * K * G * 16, h_rows, k0, k1, acc, prefetch);
  for (int m = 0; m < M; ++m) {
    const int64_t b = row + m;
    for (int g = 0; g < G; ++g) {
      _mm512_mask_storeu_ps(step.product + b * G * H + g * H + j, mask, acc[m][g]);
    }
    if (k1 < K) continue;
    apply_units<Lanes>(f, b, j, count);
    _mm512_mask_storeu_ps(step.h_out + b * H + j, mask,
                          _mm512_maskz_loadu_ps(mask, step.out + b * H + j));
  }
}

template <int G, typename F>
void fused_steps(const F* steps, const FusedStepRows* rows, int64_t count,
                 const PackedRecurrent& w, int threads) {
  // Rows per block: enough independent accumulators (rows x G) to cover the FMA
  // latency, few enough to leave registers for the weights: 16 for LSTM, 12 for
  // GRU, 8 for RNN.
  constexpr int kRows = G == 1 ? 8 : 4;
  StepBarrier barrier;
#pragma omp parallel num_threads(threads)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t first = w.tiles * t / nt, last = w.tiles * (t + 1) / nt;
    const int64_t depth = panel_depth(G);
    // The thread's tiles are one contiguous range of the packed weights; each
    // panel's row blocks prefetch the next panel (after the last, the first).
    const char* const mine = reinterpret_cast<const char*>(w.w + first * w.K * G * 16);
    const char* const mine_end = reinterpret_cast<const char*>(w.w + last * w.K * G * 16);
    for (int64_t s = 0; s < count; ++s) {
      const FusedStepRows& step = rows[s];
      const int64_t blocks = step.rows / kRows;
      for (int64_t u = first; u < last; ++u) {
        for (int64_t k0 = 0; k0 < w.K; k0 += depth) {
          const int64_t k1 = std::min(w.K, k0 + depth);
          const char* next = reinterpret_cast<const char*>(w.w + (u * w.K + k1) * G * 16);
          if (next >= mine_end) next = mine;
          const int64_t k2 = k1 < w.K ? std::min(w.K, k1 + depth) : std::min(w.K, depth);
          const int64_t lines = (k2 - (k1 < w.K ? k1 : 0)) * G;  // 64-byte lines
          int64_t row = 0;
          for (int64_t block = 0; block < blocks; ++block, row += kRows) {
            const int64_t begin = lines * block / blocks, end = lines * (block + 1) / blocks;
            fused_tile<kRows, G>(steps[s], step, w, u, row, k0, k1,
                                 PanelPrefetch{next + begin * 64, end - begin}, u == first);
          }
          for (; row < step.rows; ++row) fused_tile<1, G>(steps[s], step, w, u, row, k0, k1);
        }
      }
      barrier.wait();
    }
  }
}

// d_h rows [row, row + M), units 32 q .. 32 q + 31, over j in [j0, j1): the
// partial product of d_recurrent with W_hh's block, kept in d_h between panels
// (the first panel adds to the functor's direct part (GRU) or replaces d_h).
template <int M>
inline void backward_block(const FusedBackwardRows& step, const PackedRecurrentT& w, int64_t q,
                           int64_t row, int64_t j0, int64_t j1, PanelPrefetch prefetch = {}) {
  const float* d_rows[M];
  __m512 acc[M][2];
  __mmask16 masks[2];
  for (int half = 0; half < 2; ++half) {
    const int64_t k = q * 32 + half * 16;
    const int count = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(16, w.K - k)));
    masks[half] = static_cast<__mmask16>((1u << count) - 1u);
  }
  const bool add_existing = j0 > 0 || step.accumulate;
  for (int m = 0; m < M; ++m) {
    d_rows[m] = step.d_recurrent + (row + m) * w.J;
    for (int half = 0; half < 2; ++half) {
      const float* src = step.d_h + (row + m) * w.K + q * 32 + half * 16;
      acc[m][half] = add_existing ? _mm512_maskz_loadu_ps(masks[half], src) : _mm512_setzero_ps();
    }
  }
  tile_product<M, 2>(w.w + q * w.J * 32, d_rows, j0, j1, acc, prefetch);
  for (int m = 0; m < M; ++m) {
    for (int half = 0; half < 2; ++half) {
      _mm512_mask_storeu_ps(step.d_h + (row + m) * w.K + q * 32 + half * 16, masks[half],
                            acc[m][half]);
    }
  }
}

template <typename F>
void fused_backward(const F* steps, const FusedBackwardRows* rows, int64_t count,
                    const PackedRecurrentT& w, int threads) {
  // 6 rows x 2 column vectors: 12 accumulators, 8 loads per 12 FMAs.
  constexpr int kRows = 6;
  const int64_t H = w.K;  // state units: K == H (no projection)
  StepBarrier barrier;
#pragma omp parallel num_threads(threads)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t first = w.blocks * t / nt, last = w.blocks * (t + 1) / nt;
    const char* const mine = reinterpret_cast<const char*>(w.w + first * w.J * 32);
    const char* const mine_end = reinterpret_cast<const char*>(w.w + last * w.J * 32);
    for (int64_t s = 0; s < count; ++s) {
      const FusedBackwardRows& step = rows[s];
      for (int64_t j = first * 32; j < std::min(last * 32, H); j += 16) {
        const int n = static_cast<int>(std::min<int64_t>(16, H - j));
        const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1u);
        for (int64_t b = 0; b < step.rows; ++b) {
          float* d_h = step.d_h + b * H + j;
          _mm512_mask_storeu_ps(d_h, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, d_h),
                                _mm512_maskz_loadu_ps(mask, step.grad_output + b * H + j)));
          apply_units<Lanes>(steps[s], b, j, n);
        }
      }
      barrier.wait();
      // As in the forward: each full row block prefetches its share of the
      // thread's next panel (after the last, the first).
      const int64_t depth = panel_depth(2), blocks = step.rows / kRows;
      for (int64_t q = first; q < last; ++q) {
        for (int64_t j0 = 0; j0 < w.J; j0 += depth) {
          const int64_t j1 = std::min(w.J, j0 + depth);
          const char* next = reinterpret_cast<const char*>(w.w + (q * w.J + j1) * 32);
          if (next >= mine_end) next = mine;
          const int64_t j2 = j1 < w.J ? std::min(w.J, j1 + depth) : std::min(w.J, depth);
          const int64_t lines = (j2 - (j1 < w.J ? j1 : 0)) * 2;  // 64-byte lines
          int64_t row = 0;
          for (int64_t block = 0; block < blocks; ++block, row += kRows) {
            const int64_t begin = lines * block / blocks, end = lines * (block + 1) / blocks;
            backward_block<kRows>(step, w, q, row, j0, j1,
                                  PanelPrefetch{next + begin * 64, end - begin});
          }
          for (; row < step.rows; ++row) backward_block<1>(step, w, q, row, j0, j1);
        }
      }
    }
  }
}

}  // namespace

template <typename F>
void run_fused_backward_avx512(const F* steps, const FusedBackwardRows* rows, int64_t count,
                               const PackedRecurrentT& w, int threads) {
  fused_backward(steps, rows, count, w, threads);
}

template void run_fused_backward_avx512(const RnnBackwardStep<float>*, const FusedBackwardRows*,
                                        int64_t, const PackedRecurrentT&, int);
template void run_fused_backward_avx512(const LstmBackwardStep<float>*, const FusedBackwardRows*,
                                        int64_t, const PackedRecurrentT&, int);
template void run_fused_backward_avx512(const GruBackwardStep<float>*, const FusedBackwardRows*,
                                        int64_t, const PackedRecurrentT&, int);

template <typename F>
void run_fused_steps_avx512(const F* steps, const FusedStepRows* rows, int64_t count,
                            const PackedRecurrent& w, int threads) {
  fused_steps<F::kGates>(steps, rows, count, w, threads);
}

template void run_fused_steps_avx512(const RnnForwardStep<float>*, const FusedStepRows*, int64_t,
                                     const PackedRecurrent&, int);
template void run_fused_steps_avx512(const LstmForwardStep<float>*, const FusedStepRows*, int64_t,
                                     const PackedRecurrent&, int);
template void run_fused_steps_avx512(const GruForwardStep<float>*, const FusedStepRows*, int64_t,
                                     const PackedRecurrent&, int);

}  // namespace cpu
}  // namespace rnnfused
