// The AVX-512 (F, BW, VL, DQ) vector types of the step functors and persistent loops:
// Vec and its math (simd_math.h), Lanes / PairLanes (simd_rows.h, simd_pair.h) and
// the loops' traits Simd (fused_loop.h). Included after a target pragma with those
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

  // A value that is not read again soon (the workspace saved for the backward:
  // step_functors.h's store_saved): a whole 64-byte line straight to memory, without
  // first reading it in (a non-temporal store); else, and for 16-bit types, store().
  void stream(float* p, Vec v) const {
    if (!kPartial && (reinterpret_cast<uintptr_t>(p) & 63) == 0) {
      _mm512_stream_ps(p, v.v);
    } else {
      store(p, v);
    }
  }
  template <typename T>
  void stream(T* p, Vec v) const {
    store(p, v);
  }

  // bfloat16 and float16 through bf16_avx512.h.
  Vec load(const c10::BFloat16* p) const { return widen_bf16(load_bits(p)); }
  void store(c10::BFloat16* p, Vec v) const { store_bits(p, narrow_bf16(v.v)); }
  Vec load(const c10::Half* p) const { return widen_f16(load_bits(p)); }
  void store(c10::Half* p, Vec v) const { store_bits(p, narrow_f16(v.v)); }

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

#include "simd_pair.h"

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
