// The AVX-512 (F, BW, VL, DQ) vector types of the step functors and persistent loops:
// Vec / Bf16Vec and their math (simd_math.h), Lanes / Bf16Lanes / PairLanes
// (simd_rows.h, simd_pair.h) and the loops' traits Simd (fused_loop.h). Included
// after a target pragma with those
// extensions by each translation unit that compiles code on them (step_avx512.cpp;
// step_avx512_bf16.cpp, which adds AVX512-BF16), and defined in an unnamed
// namespace there: no code compiled for AVX-512 can stand in for a generic copy
// elsewhere, nor code compiled for AVX512-BF16 for a copy of step_avx512.cpp's.
// The includer brings <immintrin.h>, <cstdint> and c10::BFloat16 / c10::Half in
// first (the last two before its target pragma: step_avx512.cpp says why).
#pragma once

#include "avx512_transpose.h"
#include "bf16_avx512.h"

namespace rnnfused {
namespace cpu {
namespace {

// Sixteen floats, the step functors' values (gates.h's math on them). Vec: float32's
// math (float32, float16 layers). Bf16Vec: a bfloat16 layer's (every functor of one,
// forward and backward, in every loop: FunctorLanes below), whose states, gates and
// outputs are rounded to bfloat16 (up to 2^-9 relative) at every step: the same
// operations but for division, vrcp14ps's reciprocal (within 2^-14 relative) times
// the dividend, and exp and tanh of lower degree (simd_math.h's kBFloat16: within
// 6.4e-6); its sigmoid and tanh within ~7e-5 relative, 1/28 of that rounding
// (tests/test_low_precision.py measures them over a grid). An LSTM unit's gate math
// loses its five vdivps (~10 cycles each on Intel's cores) and ~15 other operations.
// Two Xeon vCPUs, bfloat16: forward on AMX tiles, in-process A/B, LSTM 100, 128,
// 128, 128 15% faster, 100, 64, 64, 64 10%, 100, 64, 256, 256 9%, GRU 100, 128, 128,
// 128 15%, RNN 7%, LSTM H 512 within noise; the float32 loop's narrow states
// (forward) and every backward loop, processes alternating: LSTM, GRU K 32 B 16-24
// forward 15-31% faster, RNN K 64 B 16 36%, training 26-32%, LSTM 100, 64, 256, 256
// training 16%, GRU 6%.
template <bool kBFloat16MathParam>
struct VecOf {
  static constexpr bool kBFloat16Math = kBFloat16MathParam;
  __m512 v;
  VecOf() = default;
  VecOf(__m512 x) : v(x) {}
  VecOf(float x) : v(_mm512_set1_ps(x)) {}
};

// Its operations: templates over M (hidden friends in VecOf would be instantiated
// without the file's target pragma by GCC 12).
template <bool M>
inline VecOf<M> operator+(VecOf<M> a, VecOf<M> b) { return _mm512_add_ps(a.v, b.v); }
template <bool M>
inline VecOf<M> operator-(VecOf<M> a, VecOf<M> b) { return _mm512_sub_ps(a.v, b.v); }
template <bool M>
inline VecOf<M> operator*(VecOf<M> a, VecOf<M> b) { return _mm512_mul_ps(a.v, b.v); }
template <bool M>
inline VecOf<M> operator/(VecOf<M> a, VecOf<M> b) {
  if constexpr (M) {
    return _mm512_mul_ps(a.v, _mm512_rcp14_ps(b.v));
  } else {
    return _mm512_div_ps(a.v, b.v);
  }
}
template <bool M>
inline VecOf<M> operator-(VecOf<M> a) {
  return _mm512_castsi512_ps(
      _mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(static_cast<int>(0x80000000u))));
}
template <bool M>
inline VecOf<M> fma(VecOf<M> a, VecOf<M> b, VecOf<M> c) { return _mm512_fmadd_ps(a.v, b.v, c.v); }

template <bool M>
inline VecOf<M> min_of(VecOf<M> a, VecOf<M> b) { return _mm512_min_ps(a.v, b.v); }
template <bool M>
inline VecOf<M> max_of(VecOf<M> a, VecOf<M> b) { return _mm512_max_ps(a.v, b.v); }
template <bool M>
inline VecOf<M> round_of(VecOf<M> x) {
  return _mm512_roundscale_ps(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// scalef rounds to denormals, 0 and inf as exp does: past x = 89, 2^n overflows
// to inf; from x = -104 down the result is below half the smallest denormal: 0.
constexpr float kExpLow = -104.0f, kExpHigh = 89.0f;
template <bool M>
inline VecOf<M> scale_exp(VecOf<M> y, VecOf<M> n, VecOf<M>) { return _mm512_scalef_ps(y.v, n.v); }

// Bitwise operations through the integer forms (AVX-512F has no and_ps).
template <bool M>
inline VecOf<M> abs_of(VecOf<M> x) {
  return _mm512_castsi512_ps(
      _mm512_and_si512(_mm512_castps_si512(x.v), _mm512_set1_epi32(0x7fffffff)));
}
template <bool M>
inline VecOf<M> with_sign_of(VecOf<M> magnitude, VecOf<M> sign) {
  const __m512i sign_bit = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  return _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_castps_si512(magnitude.v), _mm512_and_si512(_mm512_castps_si512(sign.v), sign_bit)));
}
template <bool M>
inline VecOf<M> where_less(VecOf<M> a, VecOf<M> b, VecOf<M> if_less, VecOf<M> otherwise) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ), otherwise.v, if_less.v);
}

template <bool M>
inline VecOf<M> relu_of(VecOf<M> x) { return _mm512_max_ps(_mm512_setzero_ps(), x.v); }

template <bool M>
inline VecOf<M> where_positive(VecOf<M> h, VecOf<M> value) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(h.v, _mm512_setzero_ps(), _CMP_GT_OQ), value.v);
}

using Vec = VecOf<false>;
using Bf16Vec = VecOf<true>;

#include "simd_math.h"

__attribute__((always_inline)) inline Bf16Vec exp_of(Bf16Vec x) {
  return exp_vector<Bf16Vec, true>(x);
}
__attribute__((always_inline)) inline Bf16Vec tanh_of(Bf16Vec x) {
  return tanh_vector<Bf16Vec, true>(x);
}

// A row's units [j, j + 16) (or its first `count`: kPartial) as the functors' values V.
template <bool kPartial, typename V>
struct LanesOf {
  using value = V;
  static constexpr int64_t kWidth = 16;
  __mmask16 mask = 0xFFFF;
  LanesOf() = default;
  explicit LanesOf(int count) : mask(static_cast<__mmask16>((1u << count) - 1u)) {}
  V load(const float* p) const {
    return kPartial ? _mm512_maskz_loadu_ps(mask, p) : _mm512_loadu_ps(p);
  }
  void store(float* p, V v) const {
    if (kPartial) {
      _mm512_mask_storeu_ps(p, mask, v.v);
    } else {
      _mm512_storeu_ps(p, v.v);
    }
  }

  // A value that is not read again soon (the workspace saved for the backward:
  // step_functors.h's store_saved): a whole 64-byte line straight to memory, without
  // first reading it in (a non-temporal store); else, and for 16-bit types, store().
  void stream(float* p, V v) const {
    if (!kPartial && (reinterpret_cast<uintptr_t>(p) & 63) == 0) {
      _mm512_stream_ps(p, v.v);
    } else {
      store(p, v);
    }
  }
  template <typename T>
  void stream(T* p, V v) const {
    store(p, v);
  }

  // bfloat16 and float16 through bf16_avx512.h.
  V load(const c10::BFloat16* p) const { return widen_bf16(load_bits(p)); }
  void store(c10::BFloat16* p, V v) const { store_bits(p, narrow_bf16(v.v)); }
  V load(const c10::Half* p) const { return widen_f16(load_bits(p)); }
  void store(c10::Half* p, V v) const { store_bits(p, narrow_f16(v.v)); }

 private:
  __m256i load_bits(const void* p) const {
    return kPartial ? _mm256_maskz_loadu_epi16(mask, p)
                    : _mm256_loadu_si256(static_cast<const __m256i*>(p));
  }
  void store_bits(void* p, __m256i bits) const {
    if (kPartial) {
      _mm256_mask_storeu_epi16(p, mask, bits);
    } else {
      _mm256_storeu_si256(static_cast<__m256i*>(p), bits);
    }
  }
};
template <bool kPartial>
using Lanes = LanesOf<kPartial, Vec>;
// A bfloat16 layer's functors on Bf16Vec.
template <bool kPartial>
using Bf16Lanes = LanesOf<kPartial, Bf16Vec>;

#include "simd_pair.h"

template <bool kPartial>
using Bf16PairLanes = PairLanesOf<kPartial, Bf16Lanes>;

// A bfloat16 layer's functors on Bf16Vec (simd_pair.h's FunctorLanes: every other
// type's on Vec).
template <>
struct FunctorLanes<c10::BFloat16> {
  template <bool kPartial>
  using one = Bf16Lanes<kPartial>;
  template <bool kPartial>
  using pair = Bf16PairLanes<kPartial>;
};

// The persistent loops' vector operations (fused_loop.h).
struct Simd {
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int64_t kLanes = 16;
  using State = float;
  static constexpr int64_t kStatePerK = 1;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(Mask m, float* p, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static V load(Mask m, const c10::BFloat16* p) { return widen_bf16(_mm256_maskz_loadu_epi16(m, p)); }
  static void store(Mask m, c10::BFloat16* p, V v) { _mm256_mask_storeu_epi16(p, m, narrow_bf16(v)); }
  static V load(Mask m, const c10::Half* p) { return widen_f16(_mm256_maskz_loadu_epi16(m, p)); }
  static void store(Mask m, c10::Half* p, V v) { _mm256_mask_storeu_epi16(p, m, narrow_f16(v)); }
  static V broadcast(float x) { return _mm512_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static Mask first(int n) { return static_cast<Mask>((1u << n) - 1u); }
  // W_hh is packed by 16 x 16 transposes in registers (pack_tiles).
  static void transpose(V (&r)[kLanes]) { transpose16(r); }
  // 24 accumulators (of 32 registers): LSTM 6 rows x 4 gates, GRU 8 x 3, RNN 12 rows
  // x 2 tiles (kPairTiles), each weight vector reused by more rows than the 16, 12
  // and 8 of 4 x 4, 4 x 3 and 8 x 1 before. Two Zen 5 cores (4-cycle FMA, two
  // pipes), in-process A/B, forward: LSTM 100, 64, 512, 512 1.2-2% faster, GRU
  // 3.5-5%, RNN 5-13%; B 8-32, H 128-256: LSTM 0.5-2%, GRU 3-8%, RNN 8-10%; B 1 the
  // same (RNN 5% faster).
  template <int G>
  static constexpr int forward_rows() { return G == 1 ? 8 : G == 4 ? 6 : 8; }
  template <int G, int M>
  static constexpr int forward_columns() { return G; }
  // A tile's whole reduction in one panel up to 256 KB, as on AVX2 (every layer up
  // to H 1024): on a Xeon (48 KB L1, 2 MB L2) as fast as 32 KB panels with the
  // partial sums stored between them; two Zen 5 cores (48 KB L1, 1 MB L2),
  // processes alternating: LSTM 100, 64, 512, 512 training 2.5% faster (the forward
  // the same), 50, 64, 1024, 1024 forward 1.5%, GRU the same.
  static constexpr int64_t kPanelBytes = 256 * 1024;
  // 8 rows x 2 column vectors: 16 accumulators, 10 loads per 16 FMAs (12 rows, 24
  // accumulators: no faster on Zen 5, in-process A/B).
  static constexpr int kBackwardRows = 8;
  // Single-gate tiles two at a time, 12 rows (above).
  static constexpr bool kPairTiles = true;
  static constexpr int kPairRows = 12;
  // The forward's 1-3 rows left after whole blocks spread over them, any number on
  // Intel's CPUs (fused_loop.h's for_row_blocks; bfloat16 on vdpbf16ps, processes
  // alternating: LSTM B 13-20 1-3% faster, GRU B 19 3%, RNN B 25 2%).
  static constexpr bool kEvenRowBlocks = true;
  // Two tiles' functors together (fused_loop.h's TileFunctor) only where a tile's
  // product takes at most 128 k steps (I = H = 64 with the projection in the loop).
  // In-process A/B, two Zen 5 cores, float32 forward, T 50, paired against each
  // tile's own: LSTM I = H = 64 B 1-256 1.2-2.4% faster, GRU 2-3%; past 128 k steps
  // slower: LSTM I = H = 128 B 64-256 4-5%, I 256 H 64 6-10%, I 64 H 128 3-6%, I = H
  // = 96 B 64 5% (B 256 0.8% faster), H 256 B 256 2%; H 512 B 16-256 within 1%.
  static constexpr int64_t kPairedFunctorDepth = 128;
};

}  // namespace
}  // namespace cpu
}  // namespace rnnfused
