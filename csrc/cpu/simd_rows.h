// Included by each ISA translation unit after it defines `Lanes<partial>`
// (kWidth units per call, and for the tail a mask of the first `count` units) and
// `PairLanes<partial>` (simd_pair.h: two vectors a call).
#pragma once

#include <cstdint>

namespace rnnfused {
namespace cpu {
namespace {

// f.apply on units [j, j + count) of row b, count <= kWidth: a whole vector
// without a mask, a partial one with.
template <template <bool> class Lanes, typename F>
__attribute__((always_inline)) inline void apply_units(const F& f, int64_t b, int64_t j, int count) {
  if (count == Lanes<false>::kWidth) {
    f.apply(Lanes<false>{}, b, j);
  } else {
    f.apply(Lanes<true>(count), b, j);
  }
}

// f.apply on units [j, j + count) of row b, count <= 2 kWidth: two vectors at a
// time (PairLanes) where they cover more than one, else one.
template <template <bool> class Lanes, template <bool> class PairLanes, typename F>
__attribute__((always_inline)) inline void apply_span(const F& f, int64_t b, int64_t j, int count) {
  if (count > Lanes<false>::kWidth) {
    apply_units<PairLanes>(f, b, j, count);
  } else {
    apply_units<Lanes>(f, b, j, count);
  }
}

template <template <bool> class Lanes, template <bool> class PairLanes, typename F>
inline void run_rows(const F& f, int64_t row_begin, int64_t row_end) {
  constexpr int64_t width = PairLanes<false>::kWidth;
  const int64_t H = f.H;
  const int64_t full = H - H % width;
  for (int64_t b = row_begin; b < row_end; ++b) {
    for (int64_t j = 0; j < full; j += width) {
      f.apply(PairLanes<false>{}, b, j);
    }
    if (full < H) apply_span<Lanes, PairLanes>(f, b, full, static_cast<int>(H - full));
  }
}

}  // namespace
}  // namespace cpu
}  // namespace rnnfused

// Explicit instantiations of run_rows_<isa> for every step functor of a storage type.
#define RNNFUSED_INSTANTIATE_RUN_ROWS(fn, T)                                      \
  template void fn(const ::rnnfused::RnnForwardStep<T>&, int64_t, int64_t);   \
  template void fn(const ::rnnfused::RnnBackwardStep<T>&, int64_t, int64_t);  \
  template void fn(const ::rnnfused::LstmForwardStep<T>&, int64_t, int64_t);  \
  template void fn(const ::rnnfused::LstmBackwardStep<T>&, int64_t, int64_t); \
  template void fn(const ::rnnfused::GruForwardStep<T>&, int64_t, int64_t);   \
  template void fn(const ::rnnfused::GruBackwardStep<T>&, int64_t, int64_t)
