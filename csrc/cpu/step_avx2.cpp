// The step functors on 8 floats at a time with AVX2 and FMA, and the persistent
// loops on them (fused_loop.h); see step_avx512.cpp for why everything here is
// internal or unique to this file; and why the standard headers come first.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

#pragma GCC target("avx2,fma,prfchw")

#include <immintrin.h>

#include "../step_functors.h"
#include "avx2_transpose.h"
#include "simd.h"

namespace rnnfused {
namespace cpu {
namespace {

struct Vec {
  __m256 v;
  Vec() = default;
  Vec(__m256 x) : v(x) {}
  Vec(float x) : v(_mm256_set1_ps(x)) {}
};

inline Vec operator+(Vec a, Vec b) { return _mm256_add_ps(a.v, b.v); }
inline Vec operator-(Vec a, Vec b) { return _mm256_sub_ps(a.v, b.v); }
inline Vec operator*(Vec a, Vec b) { return _mm256_mul_ps(a.v, b.v); }
inline Vec operator/(Vec a, Vec b) { return _mm256_div_ps(a.v, b.v); }
inline Vec operator-(Vec a) { return _mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f)); }
inline Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a.v, b.v, c.v); }

inline Vec min_of(Vec a, Vec b) { return _mm256_min_ps(a.v, b.v); }
inline Vec max_of(Vec a, Vec b) { return _mm256_max_ps(a.v, b.v); }
inline Vec round_of(Vec x) {
  return _mm256_round_ps(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// 2^n is built in the exponent field: the clamp keeps n in [-126, 128], where
// n = 128 (x past ~88.7) gives the bit pattern of inf; below x = -87.3, where
// results would be denormal, exp is 0.
constexpr float kExpLow = -87.3f, kExpHigh = 89.0f;
inline Vec scale_exp(Vec y, Vec n, Vec x) {
  const __m256i exponent =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127)), 23);
  const __m256 scaled = _mm256_mul_ps(y.v, _mm256_castsi256_ps(exponent));
  return _mm256_andnot_ps(_mm256_cmp_ps(x.v, _mm256_set1_ps(kExpLow), _CMP_LT_OQ), scaled);
}

inline Vec abs_of(Vec x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x.v); }
inline Vec with_sign_of(Vec magnitude, Vec sign) {
  return _mm256_or_ps(magnitude.v, _mm256_and_ps(_mm256_set1_ps(-0.0f), sign.v));
}
inline Vec where_less(Vec a, Vec b, Vec if_less, Vec otherwise) {
  return _mm256_blendv_ps(otherwise.v, if_less.v, _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ));
}

#include "simd_math.h"

inline Vec relu_of(Vec x) { return _mm256_max_ps(_mm256_setzero_ps(), x.v); }

inline Vec where_positive(Vec h, Vec value) {
  return _mm256_and_ps(_mm256_cmp_ps(h.v, _mm256_setzero_ps(), _CMP_GT_OQ), value.v);
}

template <bool kPartial>
struct Lanes {
  using value = Vec;
  static constexpr int64_t kWidth = 8;
  __m256i mask = _mm256_set1_epi32(-1);
  Lanes() = default;
  explicit Lanes(int count)
      : mask(_mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))) {}
  Vec load(const float* p) const {
    return kPartial ? _mm256_maskload_ps(p, mask) : _mm256_loadu_ps(p);
  }
  void store(float* p, Vec v) const {
    if (kPartial) {
      _mm256_maskstore_ps(p, mask, v.v);
    } else {
      _mm256_storeu_ps(p, v.v);
    }
  }
};

#include "simd_pair.h"

// float64: 4 units a call, exp and tanh from SLEEF's AVX2 functions in libtorch_cpu
// (1 ulp, the functions ATen's own float64 sigmoid and tanh take on AVX2; weak
// references: a torch built without them leaves them null, and float64 then runs
// one unit at a time, avx2_float64_math()).
struct DVec {
  __m256d v;
  DVec() = default;
  DVec(__m256d x) : v(x) {}
  DVec(double x) : v(_mm256_set1_pd(x)) {}
};

}  // namespace
}  // namespace cpu
}  // namespace rnnfused

extern "C" __m256d Sleef_expd4_u10avx2(__m256d) __attribute__((weak));
extern "C" __m256d Sleef_tanhd4_u10avx2(__m256d) __attribute__((weak));

namespace rnnfused {
namespace cpu {
namespace {

inline DVec operator+(DVec a, DVec b) { return _mm256_add_pd(a.v, b.v); }
inline DVec operator-(DVec a, DVec b) { return _mm256_sub_pd(a.v, b.v); }
inline DVec operator*(DVec a, DVec b) { return _mm256_mul_pd(a.v, b.v); }
inline DVec operator/(DVec a, DVec b) { return _mm256_div_pd(a.v, b.v); }
inline DVec operator-(DVec a) { return _mm256_xor_pd(a.v, _mm256_set1_pd(-0.0)); }
inline DVec exp_of(DVec x) { return Sleef_expd4_u10avx2(x.v); }
inline DVec tanh_of(DVec x) { return Sleef_tanhd4_u10avx2(x.v); }
// As gates.h's scalar ones: NaN propagates through relu (x < 0 is false for NaN),
// and where_positive gives 0 where h is not > 0.
inline DVec relu_of(DVec x) {
  return _mm256_blendv_pd(x.v, _mm256_setzero_pd(), _mm256_cmp_pd(x.v, _mm256_setzero_pd(), _CMP_LT_OQ));
}
inline DVec where_positive(DVec h, DVec value) {
  return _mm256_and_pd(_mm256_cmp_pd(h.v, _mm256_setzero_pd(), _CMP_GT_OQ), value.v);
}

template <bool kPartial>
struct DoubleLanes {
  using value = DVec;
  static constexpr int64_t kWidth = kFloat64Lanes;
  __m256i mask = _mm256_set1_epi64x(-1);
  DoubleLanes() = default;
  explicit DoubleLanes(int count)
      : mask(_mm256_cmpgt_epi64(_mm256_set1_epi64x(count), _mm256_setr_epi64x(0, 1, 2, 3))) {}
  DVec load(const double* p) const {
    return kPartial ? _mm256_maskload_pd(p, mask) : _mm256_loadu_pd(p);
  }
  void store(double* p, DVec v) const {
    if (kPartial) {
      _mm256_maskstore_pd(p, mask, v.v);
    } else {
      _mm256_storeu_pd(p, v.v);
    }
  }
};

// The persistent loops' vector operations (fused_loop.h).
struct Simd {
  using V = __m256;
  using Mask = __m256i;  // lanes whose sign bit is set
  static constexpr int64_t kLanes = 8;
  using State = float;
  static constexpr int64_t kStatePerK = 1;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load(Mask m, const float* p) { return _mm256_maskload_ps(p, m); }
  // A whole vector's store unmasked: Zen 2 runs vmaskmovps stores in microcode
  // (~12 cycles each), and the loops' tiles are whole but for H's last.
  static void store(Mask m, float* p, V v) {
    if (_mm256_movemask_ps(_mm256_castsi256_ps(m)) == 0xff) {
      _mm256_storeu_ps(p, v);
    } else {
      _mm256_maskstore_ps(p, m, v);
    }
  }
  static V broadcast(float x) { return _mm256_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static Mask first(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  // W_hh is packed by 8 x 8 transposes in registers (pack_tiles): Zen 2 runs
  // AVX2's gathers in microcode (~20 cycles for 8 floats), which made packing a
  // small layer's W_hh a third of its forward (LSTM 50, 1, 64, 64: ~14 us a call).
  static void transpose(V (&r)[kLanes]) { transpose8(r); }
  // Of 16 registers, with the C weight vectors and a broadcast beside them: 12
  // accumulators for LSTM (6 rows x 2 of its 4 gates a pass) and GRU (4 x 3), 8 for
  // RNN (8 x 1). Ten or more cover the FMA latency of Zen 2 (5 cycles, 2 ports):
  // LSTM 100, 64, 512, 512 forward 9% faster than at 2 x 4 (AMD EPYC, two vCPUs),
  // 4 x 2 only 2.5%; GRU 6.5% faster than at 3 x 3; RNN even at 8 x 1 rather than
  // 10 x 1 (load-bound: 11 loads per 10 FMAs; 2% ahead at B 64, 2% behind at 16).
  // Row blocks of 2 or fewer keep an LSTM's 4 gates in one pass (the partial
  // sums of tile_product then make up the chains).
  template <int G, int M>
  static constexpr int forward_columns() { return G == 4 && M > 2 ? 2 : G; }
  template <int G>
  static constexpr int forward_rows() { return G == 1 ? 8 : G == 3 ? 4 : 6; }
  // A tile's whole reduction in one panel up to 256 KB (half of Zen 2's L2; every
  // layer up to H 2048): the tile streams from L2 (the next one prefetched while it
  // runs) rather than 32 KB panels (L1 holds 32 KB here), each row block walking
  // them in turn. (Either way the sums are blocked by kSumDepth.) Measured with the
  // sums straight through, in-process A/B, two Zen 2 vCPUs, forward:
  // LSTM 100, 64, 512, 512 2.5% faster (the steps alone, I 8, 6%), 50, 64, 1024,
  // 1024 5%, 20, 64, 2048, 2048 3.5%; GRU 100, 64, 512, 512 1-2%, 50, 64, 1024, 1024
  // 4%; RNN 50, 64, 2048, 2048 2%; backward within 1% (LSTM 1024 0.7% faster). With
  // the blocked sums, against 32 KB panels, processes alternating: LSTM 100, 64, 512,
  // 512 forward 2-2.5% faster, training 2%; GRU 2-5%, 1%; LSTM 50, 64, 1024, 1024
  // forward 3-4%; RNN (one panel already at H 512) the same.
  static constexpr int64_t kPanelBytes = 256 * 1024;
  // 5 rows x 2 column vectors: 10 accumulators.
  static constexpr int kBackwardRows = 5;
  // A single-gate layer's (RNN's) tiles two at a time, 6 rows x 2 tiles: 12
  // accumulators, 2 weight loads and 6 broadcasts a step against 1 and 8 for 8 FMAs
  // at 8 x 1 (in-process A/B, two Zen 2 vCPUs: RNN 100, 64, 512, 512 forward 58.5 ->
  // 51.7 ms, training 161 -> 154; 100, 16, 128, 128 and 50, 1, 64, 64 2-3% faster).
  // A thread's odd tile goes alone, 8 x 1.
  static constexpr bool kPairTiles = true;
  static constexpr int kPairRows = 6;
  // The forward's rows left after whole blocks run as one smaller block, never spread
  // (fused_loop.h's for_row_blocks): with 16 registers the blocks have few
  // accumulators to spare (these kernels on a Zen 5, processes alternating: spread,
  // LSTM B 13 and GRU B 9 were 6% slower, LSTM B 20 2%).
  static constexpr bool kEvenRowBlocks = false;
  // Two tiles' functors together at every depth (fused_loop.h's TileFunctor; measured
  // on Zen 2 there).
  static constexpr int64_t kPairedFunctorDepth = INT64_MAX;
};

}  // namespace
}  // namespace cpu
}  // namespace rnnfused

#include "simd_rows.h"
#include "fused_loop.h"

namespace rnnfused {
namespace cpu {

template <typename F>
void run_rows_avx2(const F& f, int64_t row_begin, int64_t row_end) {
  if constexpr (std::is_same_v<typename F::scalar_type, double>) {
    run_rows<DoubleLanes, DoubleLanes>(f, row_begin, row_end);
  } else {
    run_rows<Lanes, PairLanes>(f, row_begin, row_end);
  }
}

bool avx2_float64_math() {
  return Sleef_expd4_u10avx2 != nullptr && Sleef_tanhd4_u10avx2 != nullptr;
}

RNNFUSED_INSTANTIATE_RUN_ROWS(run_rows_avx2, float);
RNNFUSED_INSTANTIATE_RUN_ROWS(run_rows_avx2, double);

RNNFUSED_DEFINE_FUSED_LOOPS(run_fused_steps_avx2, run_fused_backward_avx2, pack_recurrent_tiles_avx2);

}  // namespace cpu
}  // namespace rnnfused
