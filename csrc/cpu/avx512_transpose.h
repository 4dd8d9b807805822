// A 16 x 16 transpose of floats in AVX-512 registers, for the files compiled for
// AVX-512 (gemm_avx512.cpp's panels, step_avx512.cpp's W_hh packing); include it
// after their target pragma and <immintrin.h>.
#pragma once

namespace rnnfused {
namespace cpu {
namespace {

// 16 x 16 transpose in registers: r[i][c] -> r[c][i] (see the derivation in
// the comments: 128-bit lanes L hold elements 4L .. 4L + 3).
inline void transpose16(__m512 (&r)[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {  // rows 2i, 2i+1 interleaved in pairs of columns
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  __m512 u[16];  // u[4i + j], lane L: column 4L + j of rows 4i .. 4i + 3
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
    u[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  for (int j = 0; j < 4; ++j) {  // gather lane L of u[j], u[4+j], u[8+j], u[12+j]
    const __m512 v = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);       // lanes 0, 2
    const __m512 w = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xdd);       // lanes 1, 3
    const __m512 x = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    const __m512 y = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xdd);
    r[j] = _mm512_shuffle_f32x4(v, x, 0x88);       // column j      (lane 0)
    r[8 + j] = _mm512_shuffle_f32x4(v, x, 0xdd);   // column 8 + j  (lane 2)
    r[4 + j] = _mm512_shuffle_f32x4(w, y, 0x88);   // column 4 + j  (lane 1)
    r[12 + j] = _mm512_shuffle_f32x4(w, y, 0xdd);  // column 12 + j (lane 3)
  }
}

}  // namespace
}  // namespace cpu
}  // namespace rnnfused
