// An 8 x 8 transpose of floats in AVX2 registers, for the files compiled for
// AVX2 (step_avx2.cpp's W_hh packing, gemm_avx2.cpp's panels); include it after
// their target pragma and <immintrin.h>.
#pragma once

namespace rnnfused {
namespace cpu {
namespace {

// r[i][c] -> r[c][i].
inline void transpose8(__m256 (&r)[8]) {
  __m256 t[8], s[8];
  for (int i = 0; i < 4; ++i) {  // rows 2i, 2i + 1 interleaved
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {  // s[4i + j], 128-bit lane L: column 4L + j of rows 4i .. 4i + 3
    s[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
    s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x31);
  }
}

}  // namespace
}  // namespace cpu
}  // namespace rnnfused
