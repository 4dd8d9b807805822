// The step functors on 8 floats at a time with AVX2 and FMA (see
// step_avx512.cpp for why everything here is internal or unique to this file).
#pragma GCC target("avx2,fma")

#include <immintrin.h>

#include "../step_functors.h"
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

// Cephes expf (see step_avx512.cpp). 2^n is built in the exponent field: the
// clamp keeps n in [-126, 128], where n = 128 (x past ~88.7) gives the bit
// pattern of inf; below x = -87.3, where results would be denormal, exp is 0.
inline Vec exp_of(Vec x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 v = _mm256_max_ps(lo, _mm256_min_ps(_mm256_set1_ps(89.0f), x.v));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), v);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  Vec y = fma(Vec(1.9875691500e-4f), r, Vec(1.3981999507e-3f));
  y = fma(y, r, Vec(8.3334519073e-3f));
  y = fma(y, r, Vec(4.1665795894e-2f));
  y = fma(y, r, Vec(1.6666665459e-1f));
  y = fma(y, r, Vec(5.0000001201e-1f));
  y = fma(y, Vec(r) * Vec(r), Vec(r) + Vec(1.0f));
  const __m256i exponent =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 result = _mm256_mul_ps(y.v, _mm256_castsi256_ps(exponent));
  return _mm256_andnot_ps(_mm256_cmp_ps(x.v, lo, _CMP_LT_OQ), result);  // 0 below the clamp
}

inline Vec tanh_of(Vec x) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  const __m256 ax = _mm256_andnot_ps(sign_bit, x.v);
  const Vec z = x * x;
  Vec p = fma(Vec(-5.70498872745e-3f), z, Vec(2.06390887954e-2f));
  p = fma(p, z, Vec(-5.37397155531e-2f));
  p = fma(p, z, Vec(1.33314422036e-1f));
  p = fma(p, z, Vec(-3.33332819422e-1f));
  const Vec small = fma(p * z, x, x);
  const Vec e = exp_of(Vec(ax) + Vec(ax));
  const Vec large_abs = Vec(1.0f) - Vec(2.0f) / (e + Vec(1.0f));
  const __m256 large = _mm256_or_ps(large_abs.v, _mm256_and_ps(sign_bit, x.v));
  const __m256 is_small = _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_LT_OQ);
  return _mm256_blendv_ps(large, small.v, is_small);
}

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

}  // namespace
}  // namespace cpu
}  // namespace rnnfused

#include "simd_rows.h"

namespace rnnfused {
namespace cpu {

template <typename F>
void run_rows_avx2(const F& f, int64_t row_begin, int64_t row_end) {
  run_rows<Lanes>(f, row_begin, row_end);
}

RNNFUSED_INSTANTIATE_RUN_ROWS(run_rows_avx2);

}  // namespace cpu
}  // namespace rnnfused
