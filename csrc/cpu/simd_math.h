// exp and tanh (Cephes' single-precision algorithms) over a SIMD vector type,
// shared by the AVX-512 and AVX2 translation units. Included inside each one's
// internal namespace after it defines, for its `Vec`:
//   Vec fma(Vec a, Vec b, Vec c)               a * b + c
//   Vec round_of(Vec x)                        to the nearest integer
//   Vec scale_exp(Vec y, Vec n, Vec x)         y * 2^n for exp(x), 0 and inf where exp
//                                              underflows / overflows, NaN kept
//   Vec abs_of(Vec x), Vec with_sign_of(Vec magnitude, Vec sign)
//   Vec where_less(Vec a, Vec b, Vec if_less, Vec otherwise)   (ordered compare)
// and the clamp bounds kExpLow, kExpHigh of its range reduction. Written over any
// type W with those operations: exp_of / tanh_of for Vec here, for two vectors at a
// time in simd_pair.h.

// exp: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-5 polynomial, scaled by 2^n.
// The clamp keeps n where the ISA can form 2^n; min/max return their second
// operand on NaN, so NaN passes through.
// kBFloat16: for bfloat16 layers' gate math (simd_avx512.h's Bf16Vec), a degree-4
// polynomial, within 5.3e-6 relative of exp(r) against degree 5's 1.2e-7 (minimax
// by iteratively reweighted least squares over |r| <= ln2 / 2, float32
// coefficients, error measured in float64).
template <typename W, bool kBFloat16 = false>
__attribute__((always_inline)) inline W exp_vector(W x) {
  const W v = max_of(W(kExpLow), min_of(W(kExpHigh), x));
  const W n = round_of(v * W(1.44269504088896341f));
  W r = fma(n, W(-0.693359375f), v);  // ln2 in two parts, for an exact product
  r = fma(n, W(2.12194440e-4f), r);
  W y;
  if constexpr (kBFloat16) {
    y = fma(W(4.127774387598038e-2f), r, W(1.6753515601158142e-1f));
    y = fma(y, r, W(5.000511407852173e-1f));
  } else {
    y = fma(W(1.9875691500e-4f), r, W(1.3981999507e-3f));
    y = fma(y, r, W(8.3334519073e-3f));
    y = fma(y, r, W(4.1665795894e-2f));
    y = fma(y, r, W(1.6666665459e-1f));
    y = fma(y, r, W(5.0000001201e-1f));
  }
  y = fma(y, r * r, r + W(1.0f));
  return scale_exp(y, n, x);
}

// tanh: a 13/6-degree odd/even rational function on x clamped to [-9, 9], past
// which tanh is +-1 in float (the interpolant and its coefficients are Eigen's
// generic_fast_tanh_float, MPL-2.0). Within 3e-7 (2.3 x float's epsilon relative)
// where the two-branch form it replaced (a polynomial below 0.625,
// 1 - 2 / (exp(2|x|) + 1) above, both computed for every lane) was within 1.03
// epsilon, in about half the instructions: the gate math of an LSTM step takes
// two. The clamps' min/max return x on NaN, which passes through.
// kBFloat16: a 7/6-degree one on the same interval, within 6.4e-6 relative (fitted
// as exp's above, the numerator's coefficients and the denominator's but its 1).
template <typename W, bool kBFloat16 = false>
__attribute__((always_inline)) inline W tanh_vector(W x) {
  const W v = max_of(W(-9.0f), min_of(W(9.0f), x));
  const W z = v * v;
  W p, q;
  if constexpr (kBFloat16) {
    p = fma(z, W(3.0431376671913313e-06f), W(2.0737075246870518e-03f));
    p = fma(p, z, W(1.2069135159254074e-01f));
    p = fma(p, z, W(9.99997615814209e-01f));
    q = fma(z, W(1.2097664148313925e-04f), W(2.0107077434659004e-02f));
    q = fma(q, z, W(4.539964497089386e-01f));
    q = fma(q, z, W(1.0f));
  } else {
    p = fma(z, W(-2.76076847742355e-16f), W(2.00018790482477e-13f));
    p = fma(p, z, W(-8.60467152213735e-11f));
    p = fma(p, z, W(5.12229709037114e-08f));
    p = fma(p, z, W(1.48572235717979e-05f));
    p = fma(p, z, W(6.37261928875436e-04f));
    p = fma(p, z, W(4.89352455891786e-03f));
    q = fma(z, W(1.19825839466702e-06f), W(1.18534705686654e-04f));
    q = fma(q, z, W(2.26843463243900e-03f));
    q = fma(q, z, W(4.89352518554385e-03f));
  }
  // The interpolant overshoots 1 by up to 2 ulp near the clamp: the result is clamped too.
  return max_of(W(-1.0f), min_of(W(1.0f), v * p / q));
}

__attribute__((always_inline)) inline Vec exp_of(Vec x) { return exp_vector(x); }
__attribute__((always_inline)) inline Vec tanh_of(Vec x) { return tanh_vector(x); }
