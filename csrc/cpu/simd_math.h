// exp and tanh (Cephes' single-precision algorithms) over a SIMD vector type,
// shared by the AVX-512 and AVX2 translation units. Included inside each one's
// internal namespace after it defines, for its `Vec`:
//   Vec fma(Vec a, Vec b, Vec c)               a * b + c
//   Vec round_of(Vec x)                        to the nearest integer
//   Vec scale_exp(Vec y, Vec n, Vec x)         y * 2^n for exp(x), 0 and inf where exp
//                                              underflows / overflows, NaN kept
//   Vec abs_of(Vec x), Vec with_sign_of(Vec magnitude, Vec sign)
//   Vec where_less(Vec a, Vec b, Vec if_less, Vec otherwise)   (ordered compare)
// and the clamp bounds kExpLow, kExpHigh of its range reduction.

// exp: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-5 polynomial, scaled by 2^n.
// The clamp keeps n where the ISA can form 2^n; min/max return their second
// operand on NaN, so NaN passes through.
inline Vec exp_of(Vec x) {
  const Vec v = max_of(Vec(kExpLow), min_of(Vec(kExpHigh), x));
  const Vec n = round_of(v * Vec(1.44269504088896341f));
  Vec r = fma(n, Vec(-0.693359375f), v);  // ln2 in two parts, for an exact product
  r = fma(n, Vec(2.12194440e-4f), r);
  Vec y = fma(Vec(1.9875691500e-4f), r, Vec(1.3981999507e-3f));
  y = fma(y, r, Vec(8.3334519073e-3f));
  y = fma(y, r, Vec(4.1665795894e-2f));
  y = fma(y, r, Vec(1.6666665459e-1f));
  y = fma(y, r, Vec(5.0000001201e-1f));
  y = fma(y, r * r, r + Vec(1.0f));
  return scale_exp(y, n, x);
}

// tanh: an odd polynomial for |x| < 0.625, else 1 - 2 / (exp(2|x|) + 1) with the
// sign of x.
inline Vec tanh_of(Vec x) {
  const Vec ax = abs_of(x);
  const Vec z = x * x;
  Vec p = fma(Vec(-5.70498872745e-3f), z, Vec(2.06390887954e-2f));
  p = fma(p, z, Vec(-5.37397155531e-2f));
  p = fma(p, z, Vec(1.33314422036e-1f));
  p = fma(p, z, Vec(-3.33332819422e-1f));
  const Vec small = fma(p * z, x, x);
  const Vec large = with_sign_of(Vec(1.0f) - Vec(2.0f) / (exp_of(ax + ax) + Vec(1.0f)), x);
  return where_less(ax, Vec(0.625f), small, large);
}
