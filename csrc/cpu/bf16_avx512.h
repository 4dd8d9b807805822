// bfloat16 and float16 <-> float32 for 16 lanes, AVX-512: the one copy for the
// translation units compiled for it (step_avx512.cpp and step_avx512_bf16.cpp
// through simd_avx512.h, gemm_avx512.cpp), included after their target pragma.
// bfloat16 is the upper half of a float: widening is a shift; narrowing rounds to
// nearest even, NaN to the quiet NaN 0x7fc0 (as c10::BFloat16 does; AVX512-BF16's
// instruction where a file is compiled for it, below). float16
// converts in hardware (AVX-512F's vcvtph2ps / vcvtps2ph), rounding to nearest even
// as c10::Half does.
#pragma once

#include <immintrin.h>

namespace rnnfused {
namespace cpu {
namespace {

// 16 bfloat16 bit patterns -> 16 floats.
inline __m512 widen_bf16(__m256i halves) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16));
}

// 16 floats -> 16 bfloat16 bit patterns.
#if defined(RNNFUSED_TARGET_AVX512_BF16)
// In a file compiled for AVX512-BF16 (its own define: GCC's target pragma sets no
// macro), AVX512-BF16's vcvtneps2bf16: the same rounding to nearest even but for
// float32 denormals (below 2^-126), which go to a signed 0 where the integer form
// keeps a bfloat16 denormal, as the same loops' vdpbf16ps already treats them; NaN
// stays NaN (sign and payload kept, where the integer form gives 0x7fc0). Checked
// against the integer form over all 2^32 inputs on Zen 5: no other difference. One
// instruction for eight: a bfloat16 loop rounds its projection, product, states,
// saved gates and (backward) gradients through it. In-process A/B, two Zen 5 cores,
// forward: LSTM 100, 128, 256, 256 4% faster, 100, 16, 128, 128 4.7%, H 512 1.2%;
// GRU and RNN H 128-256 2.3-5.3%; training 0.5-3%.
inline __m256i narrow_bf16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }
#else
inline __m256i narrow_bf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i upper = _mm512_srli_epi32(
      _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd)), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  upper = _mm512_mask_blend_epi32(nan, upper, _mm512_set1_epi32(0x7fc0));
  return _mm512_cvtepi32_epi16(upper);
}
#endif

// 16 float16 bit patterns -> 16 floats, and back.
inline __m512 widen_f16(__m256i halves) { return _mm512_cvtph_ps(halves); }
inline __m256i narrow_f16(__m512 v) {
  return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

}  // namespace
}  // namespace cpu
}  // namespace rnnfused
