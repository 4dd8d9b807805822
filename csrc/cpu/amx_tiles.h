// The AMX tile operations the bfloat16 tile loop (amx_loop.h) and the bfloat16
// GEMM on tiles (gemm_amx_avx512.cpp) share: R x N blocks of float32 sum tiles
// (R row tiles of the left operand by N tiles of packed right operand, each at
// most 2) loaded, multiplied a 32-deep chunk at a time with TDPBF16PS, and stored.
// Tile registers: sum tile 2r + n in 2r + n, row tile r in 4 + r, weight tile n in
// 6 + n (the configuration simd.h's TileConfig sets: 16 rows of 64 bytes each).
// Include after a target pragma with AVX-512 and <immintrin.h>.
#pragma once

#include <cstdint>
#include <vector>

namespace rnnfused {
namespace cpu {
namespace {

#define RNNFUSED_AMX_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,amx-tile,amx-bf16")))

// A block of R x N sum tiles (R row tiles, R <= 2, by N gates, N <= 2): sum tile
// 2r + n in tile register 2r + n, row tile r's operand in 4 + r, gate n's
// weights in 6 + n, so that every load of a chunk feeds two products (where R
// and N are 2) and no register is reused within a chunk.
// sums[2r + n] (16 x 16 float32 each) -> the sum tiles; or, at the first panel, the
// gates' biases (bias[n]: gate n's 16 values, in every row; bias[0] null: none), or
// zeros.
template <int R, int N>
RNNFUSED_AMX_TARGET __attribute__((always_inline)) inline void amx_load_sums(
    float* const* sums, bool first_panel, const float* const* bias) {
  if (first_panel && bias[0] != nullptr) {  // rows 0 bytes apart: every row the same 16 values
    _tile_loadd(0, bias[0], 0);
    if constexpr (N > 1) _tile_loadd(1, bias[1], 0);
    if constexpr (R > 1) _tile_loadd(2, bias[0], 0);
    if constexpr (R > 1 && N > 1) _tile_loadd(3, bias[1], 0);
    return;
  }
  if (first_panel) {
    _tile_zero(0);
    if constexpr (N > 1) _tile_zero(1);
    if constexpr (R > 1) _tile_zero(2);
    if constexpr (R > 1 && N > 1) _tile_zero(3);
    return;
  }
  _tile_loadd(0, sums[0], 64);
  if constexpr (N > 1) _tile_loadd(1, sums[1], 64);
  if constexpr (R > 1) _tile_loadd(2, sums[2], 64);
  if constexpr (R > 1 && N > 1) _tile_loadd(3, sums[3], 64);
}

template <int R, int N>
RNNFUSED_AMX_TARGET __attribute__((always_inline)) inline void amx_store_sums(float* const* sums) {
  _tile_stored(0, sums[0], 64);
  if constexpr (N > 1) _tile_stored(1, sums[1], 64);
  if constexpr (R > 1) _tile_stored(2, sums[2], 64);
  if constexpr (R > 1 && N > 1) _tile_stored(3, sums[3], 64);
}

// The sum tiles += the chunk's products: a (row tile 0's 16 rows of 32 state units,
// row stride a_bytes; row tile 1's 16 rows further), b (gate 0's weight tile,
// gate 1's b_step values further).
template <int R, int N>
RNNFUSED_AMX_TARGET __attribute__((always_inline)) inline void amx_chunk(
    const void* a, int64_t a_bytes, const uint16_t* b, int64_t b_step) {
  _tile_loadd(4, a, a_bytes);
  _tile_loadd(6, b, 64);
  _tile_dpbf16ps(0, 4, 6);
  if constexpr (N > 1) {
    _tile_loadd(7, b + b_step, 64);
    _tile_dpbf16ps(1, 4, 7);
  }
  if constexpr (R > 1) {
    _tile_loadd(5, static_cast<const char*>(a) + kAmxRows * a_bytes, a_bytes);
    _tile_dpbf16ps(2, 5, 6);
    if constexpr (N > 1) _tile_dpbf16ps(3, 5, 7);
  }
}

// Sum tiles [tile, tile + R) x gates [gate, gate + N) over chunks [c0, c1).
// weights: the first weight tile of chunk 0, chunk c's chunk_values further, the
// second of a pair b_step further than the first.
template <int R, int N>
RNNFUSED_AMX_TARGET __attribute__((always_inline)) inline void amx_block(
    float* const* sums, bool first_panel, const float* const* bias, const uint16_t* a,
    int64_t a_bytes, const uint16_t* weights, int64_t chunk_values, int64_t b_step, int64_t c0,
    int64_t c1) {
  amx_load_sums<R, N>(sums, first_panel, bias);
  for (int64_t c = c0; c < c1; ++c) {
    amx_chunk<R, N>(a + c * kAmxDepth, a_bytes, weights + c * chunk_values, b_step);
  }
  amx_store_sums<R, N>(sums);
}

// Per-thread scratch of float32 sum tiles, 64-byte aligned.
class SumTiles {
 public:
  explicit SumTiles(int64_t tiles) : values_(tiles * kAmxSumValues + 16) {}
  float* tile(int64_t i) {
    const uintptr_t base = (reinterpret_cast<uintptr_t>(values_.data()) + 63) & ~uintptr_t{63};
    return reinterpret_cast<float*>(base) + i * kAmxSumValues;
  }

 private:
  std::vector<float> values_;
};

}  // namespace
}  // namespace cpu
}  // namespace rnnfused
