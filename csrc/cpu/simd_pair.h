// Two of an ISA's vectors as one value (VecPair), and the Lanes that load and
// store 2 x kWidth units of a row as one (PairLanes): the step functors' gate math
// on two vectors at a time, each operation applied to both halves back to back.
// One vector's LSTM step is a chain of dependent operations (exp, divide, then the
// cell's tanh and divide) of ~150 cycles with little beside it, and Zen 2's
// out-of-order window (224 operations) holds little more than one call: two
// independent chains interleaved take about the time of one.
// Included by each ISA translation unit inside its internal namespace, after it
// defines Vec (with simd_math.h's operations, relu_of and where_positive), includes
// simd_math.h, and defines Lanes<kPartial>.

struct VecPair {
  Vec lo, hi;
  VecPair() = default;
  VecPair(Vec l, Vec h) : lo(l), hi(h) {}
  VecPair(float x) : lo(x), hi(x) {}
};

#define RNNFUSED_PAIR_INLINE __attribute__((always_inline)) inline
RNNFUSED_PAIR_INLINE VecPair operator+(VecPair a, VecPair b) { return {a.lo + b.lo, a.hi + b.hi}; }
RNNFUSED_PAIR_INLINE VecPair operator-(VecPair a, VecPair b) { return {a.lo - b.lo, a.hi - b.hi}; }
RNNFUSED_PAIR_INLINE VecPair operator*(VecPair a, VecPair b) { return {a.lo * b.lo, a.hi * b.hi}; }
RNNFUSED_PAIR_INLINE VecPair operator/(VecPair a, VecPair b) { return {a.lo / b.lo, a.hi / b.hi}; }
RNNFUSED_PAIR_INLINE VecPair operator-(VecPair a) { return {-a.lo, -a.hi}; }
RNNFUSED_PAIR_INLINE VecPair fma(VecPair a, VecPair b, VecPair c) {
  return {fma(a.lo, b.lo, c.lo), fma(a.hi, b.hi, c.hi)};
}
RNNFUSED_PAIR_INLINE VecPair min_of(VecPair a, VecPair b) {
  return {min_of(a.lo, b.lo), min_of(a.hi, b.hi)};
}
RNNFUSED_PAIR_INLINE VecPair max_of(VecPair a, VecPair b) {
  return {max_of(a.lo, b.lo), max_of(a.hi, b.hi)};
}
RNNFUSED_PAIR_INLINE VecPair round_of(VecPair x) { return {round_of(x.lo), round_of(x.hi)}; }
RNNFUSED_PAIR_INLINE VecPair scale_exp(VecPair y, VecPair n, VecPair x) {
  return {scale_exp(y.lo, n.lo, x.lo), scale_exp(y.hi, n.hi, x.hi)};
}
RNNFUSED_PAIR_INLINE VecPair abs_of(VecPair x) { return {abs_of(x.lo), abs_of(x.hi)}; }
RNNFUSED_PAIR_INLINE VecPair with_sign_of(VecPair magnitude, VecPair sign) {
  return {with_sign_of(magnitude.lo, sign.lo), with_sign_of(magnitude.hi, sign.hi)};
}
RNNFUSED_PAIR_INLINE VecPair where_less(VecPair a, VecPair b, VecPair if_less, VecPair otherwise) {
  return {where_less(a.lo, b.lo, if_less.lo, otherwise.lo),
          where_less(a.hi, b.hi, if_less.hi, otherwise.hi)};
}
RNNFUSED_PAIR_INLINE VecPair relu_of(VecPair x) { return {relu_of(x.lo), relu_of(x.hi)}; }
RNNFUSED_PAIR_INLINE VecPair where_positive(VecPair h, VecPair value) {
  return {where_positive(h.lo, value.lo), where_positive(h.hi, value.hi)};
}
RNNFUSED_PAIR_INLINE VecPair exp_of(VecPair x) { return exp_vector(x); }
RNNFUSED_PAIR_INLINE VecPair tanh_of(VecPair x) { return tanh_vector(x); }
#undef RNNFUSED_PAIR_INLINE

// Units [j, j + kWidth) of a row whole (PairLanes<false>), or [j, j + count) for
// kHalf < count < kWidth: the first kHalf whole, a mask on the rest (apply_units).
template <bool kPartial>
struct PairLanes {
  using value = VecPair;
  static constexpr int64_t kHalf = Lanes<false>::kWidth;
  static constexpr int64_t kWidth = 2 * kHalf;
  Lanes<false> lo;
  Lanes<kPartial> hi;
  PairLanes() = default;
  explicit PairLanes(int count) : hi(count - static_cast<int>(kHalf)) {}
  template <typename T>
  VecPair load(const T* p) const {
    return {lo.load(p), hi.load(p + kHalf)};
  }
  template <typename T>
  void store(T* p, VecPair v) const {
    lo.store(p, v.lo);
    hi.store(p + kHalf, v.hi);
  }
  // Where the ISA's Lanes stream (simd_avx512.h), both halves so.
  template <typename T, typename L0 = Lanes<false>, typename L1 = Lanes<kPartial>>
    requires requires(const L0& a, T* q, Vec w) { a.stream(q, w); }
  void stream(T* p, VecPair v) const {
    static_cast<const L0&>(lo).stream(p, v.lo);
    static_cast<const L1&>(hi).stream(p + kHalf, v.hi);
  }
};
