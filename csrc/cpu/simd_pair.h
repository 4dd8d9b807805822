// Two of an ISA's vectors as one value (PairOf<V>: VecPair, and on AVX-512 PairOf<Bf16Vec>),
// and the Lanes that load and store 2 x kWidth units of a row as one (PairLanesOf:
// PairLanes over the ISA's Lanes): the step functors' gate math on two vectors at a
// time, each operation applied to both halves back to back.
// One vector's LSTM step is a chain of dependent operations (exp, divide, then the
// cell's tanh and divide) of ~150 cycles with little beside it, and Zen 2's
// out-of-order window (224 operations) holds little more than one call: two
// independent chains interleaved take about the time of one.
// Included by each ISA translation unit inside its internal namespace, after it
// defines Vec (with simd_math.h's operations, relu_of and where_positive), includes
// simd_math.h, and defines Lanes<kPartial>.

template <typename V>
struct PairOf {
  V lo, hi;
  PairOf() = default;
  PairOf(V l, V h) : lo(l), hi(h) {}
  PairOf(float x) : lo(x), hi(x) {}
};
using VecPair = PairOf<Vec>;

// Whether V's exp and tanh are a bfloat16 layer's (simd_avx512.h's Bf16Vec).
template <typename V>
constexpr bool bfloat16_math_of() {
  if constexpr (requires { V::kBFloat16Math; }) {
    return V::kBFloat16Math;
  } else {
    return false;
  }
}

#define RNNFUSED_PAIR_INLINE __attribute__((always_inline)) inline
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> operator+(PairOf<V> a, PairOf<V> b) {
  return {a.lo + b.lo, a.hi + b.hi};
}
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> operator-(PairOf<V> a, PairOf<V> b) {
  return {a.lo - b.lo, a.hi - b.hi};
}
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> operator*(PairOf<V> a, PairOf<V> b) {
  return {a.lo * b.lo, a.hi * b.hi};
}
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> operator/(PairOf<V> a, PairOf<V> b) {
  return {a.lo / b.lo, a.hi / b.hi};
}
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> operator-(PairOf<V> a) { return {-a.lo, -a.hi}; }
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> fma(PairOf<V> a, PairOf<V> b, PairOf<V> c) {
  return {fma(a.lo, b.lo, c.lo), fma(a.hi, b.hi, c.hi)};
}
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> min_of(PairOf<V> a, PairOf<V> b) {
  return {min_of(a.lo, b.lo), min_of(a.hi, b.hi)};
}
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> max_of(PairOf<V> a, PairOf<V> b) {
  return {max_of(a.lo, b.lo), max_of(a.hi, b.hi)};
}
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> round_of(PairOf<V> x) { return {round_of(x.lo), round_of(x.hi)}; }
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> scale_exp(PairOf<V> y, PairOf<V> n, PairOf<V> x) {
  return {scale_exp(y.lo, n.lo, x.lo), scale_exp(y.hi, n.hi, x.hi)};
}
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> abs_of(PairOf<V> x) { return {abs_of(x.lo), abs_of(x.hi)}; }
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> with_sign_of(PairOf<V> magnitude, PairOf<V> sign) {
  return {with_sign_of(magnitude.lo, sign.lo), with_sign_of(magnitude.hi, sign.hi)};
}
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> where_less(PairOf<V> a, PairOf<V> b, PairOf<V> if_less, PairOf<V> otherwise) {
  return {where_less(a.lo, b.lo, if_less.lo, otherwise.lo),
          where_less(a.hi, b.hi, if_less.hi, otherwise.hi)};
}
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> relu_of(PairOf<V> x) { return {relu_of(x.lo), relu_of(x.hi)}; }
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> where_positive(PairOf<V> h, PairOf<V> value) {
  return {where_positive(h.lo, value.lo), where_positive(h.hi, value.hi)};
}
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> exp_of(PairOf<V> x) {
  return exp_vector<PairOf<V>, bfloat16_math_of<V>()>(x);
}
template <typename V>
RNNFUSED_PAIR_INLINE PairOf<V> tanh_of(PairOf<V> x) {
  return tanh_vector<PairOf<V>, bfloat16_math_of<V>()>(x);
}
#undef RNNFUSED_PAIR_INLINE

// Units [j, j + kWidth) of a row whole (PairLanesOf<false, L>), or [j, j + count) for
// kHalf < count < kWidth: the first kHalf whole, a mask on the rest (apply_units); L
// the ISA's Lanes (or, on AVX-512, Bf16Lanes).
template <bool kPartial, template <bool> class L>
struct PairLanesOf {
  using value = PairOf<typename L<false>::value>;
  static constexpr int64_t kHalf = L<false>::kWidth;
  static constexpr int64_t kWidth = 2 * kHalf;
  L<false> lo;
  L<kPartial> hi;
  PairLanesOf() = default;
  explicit PairLanesOf(int count) : hi(count - static_cast<int>(kHalf)) {}
  template <typename T>
  value load(const T* p) const {
    return {lo.load(p), hi.load(p + kHalf)};
  }
  template <typename T>
  void store(T* p, value v) const {
    lo.store(p, v.lo);
    hi.store(p + kHalf, v.hi);
  }
  // Where the ISA's Lanes stream (simd_avx512.h), both halves so.
  template <typename T, typename L0 = L<false>, typename L1 = L<kPartial>>
    requires requires(const L0& a, T* q, typename L0::value w) { a.stream(q, w); }
  void stream(T* p, value v) const {
    static_cast<const L0&>(lo).stream(p, v.lo);
    static_cast<const L1&>(hi).stream(p + kHalf, v.hi);
  }
};
template <bool kPartial>
using PairLanes = PairLanesOf<kPartial, Lanes>;

// The Lanes and PairLanes (`one`, `pair`) the step functors of a layer stored in T
// run on (fused_loop.h, amx_loop.h, run_rows_<isa>): the ISA's own, but where the ISA
// specializes it (simd_avx512.h: a bfloat16 layer's on Bf16Vec).
template <typename T>
struct FunctorLanes {
  template <bool kPartial>
  using one = Lanes<kPartial>;
  template <bool kPartial>
  using pair = PairLanes<kPartial>;
};
