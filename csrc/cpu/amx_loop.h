// The persistent forward loop of a bfloat16 layer with its recurrent products on
// AMX tiles (simd.h's run_fused_steps_amx), and of a float32 layer whose products
// torch lets run in bfloat16 (fused_forward_cpu.h's float32_products_on_amx).
// Included by step_avx512_bf16.cpp after fused_loop.h, whose StepBarrier, Simd traits
// and apply_units it shares: only the product differs from fused_steps. Per step,
// each thread takes its 16-unit blocks u (or, splitting the batch, every block over
// its own rows) and forms the G gates' 16 x 16 float32 sums of every 16 rows and those
// units with TDPBF16PS (tiles 0-3 the sums of two row tiles by two gates, 4-5 the row
// tiles' state, 16 rows x 32 state units each, 6-7 the two gates' packed weights,
// PackedRecurrentAmx), a panel of
// 32-unit chunks at a time with the sums kept in a per-thread scratch in between;
// then the step functor reads the sums (float32; RNN's from its output rows, rounded
// to bfloat16 in a bfloat16 layer) and h' goes into the next step's operand
// (rounded to bfloat16 in a float32 layer). A barrier closes the step where the
// threads share rows.
// Tile state is per thread: each thread of the team loads the configuration and
// releases the tiles when done.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "amx_tiles.h"

namespace rnnfused {
namespace cpu {
namespace {

// amx_block for R row tiles by N weight tiles known at run time (1 or 2 each).
RNNFUSED_AMX_TARGET __attribute__((always_inline)) inline void amx_block_of(
    int rows, int columns, float* const* sums, bool first_panel, const float* const* bias,
    const uint16_t* a, int64_t a_bytes, const uint16_t* weights, int64_t chunk_values,
    int64_t b_step, int64_t c0, int64_t c1) {
  if (columns == 2) {
    if (rows == 2) {
      amx_block<2, 2>(sums, first_panel, bias, a, a_bytes, weights, chunk_values, b_step, c0, c1);
    } else {
      amx_block<1, 2>(sums, first_panel, bias, a, a_bytes, weights, chunk_values, b_step, c0, c1);
    }
  } else if (rows == 2) {
    amx_block<2, 1>(sums, first_panel, bias, a, a_bytes, weights, chunk_values, b_step, c0, c1);
  } else {
    amx_block<1, 1>(sums, first_panel, bias, a, a_bytes, weights, chunk_values, b_step, c0, c1);
  }
}

// The weight tiles of one panel of chunks (a block's G tiles a chunk) take at most
// this much, so that they stay in L1 while every row tile of the step runs over
// them; the row tiles' sums wait in the thread's scratch between panels.
constexpr int64_t kAmxPanelBytes = 32 * 1024;

template <typename F>
RNNFUSED_AMX_TARGET void fused_steps_amx(const F* steps,
                                         const AmxStepRows<typename F::scalar_type>* rows,
                                         int64_t count, const PackedRecurrentAmx& w, int threads) {
  using T = typename F::scalar_type;
  static_assert(std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, float>,
                "the AMX loop runs bfloat16 layers and float32 ones on bfloat16 operands");
  constexpr int G = F::kGates;
  const int64_t H = w.H, K_padded = w.chunks * kAmxDepth;
  const int64_t a_bytes = K_padded * int64_t{sizeof(uint16_t)};  // bfloat16 operands whatever T
  const int64_t panel_chunks =
      std::max<int64_t>(1, kAmxPanelBytes / (G * kAmxTileValues * int64_t{sizeof(uint16_t)}));
  int64_t most_rows = 0;  // the batch grows over the steps in reverse over packed input
  for (int64_t s = 0; s < count; ++s) most_rows = std::max(most_rows, rows[s].rows);
  const int64_t most_tiles = std::max<int64_t>(1, (most_rows + kAmxRows - 1) / kAmxRows);
  // Whether the threads split the batch's row tiles among them, each running all of
  // W_hh's blocks over its own rows, rather than W_hh's blocks over every row:
  // where each thread's copy of W_hh takes at most half its L2 (fused_loop.h's
  // batch_split) and every thread gets a whole tile of rows or more. Each thread's
  // rows are fixed for the whole run (by the widest step), so that no thread reads a
  // state row another wrote and the steps need no barrier. In-process A/B, two Xeon
  // vCPUs, T 100, I = H, bfloat16 forward: LSTM H 128-256 B 32-128 10-28% faster,
  // GRU H 128-384 B 32-128 9-46%, RNN H 256-512 B 32-64 4-36%, LSTM / GRU H 64 B 32-64
  // 17-32%; float32 under "medium" 3-44%. Past the L2 bound (LSTM and GRU H 512, RNN
  // H 1024, B 64) 0-11% slower, and with a thread's share short of a tile (B 17-24:
  // one thread's 16 rows against the other's 1-8) 5-13% slower.
  // Thread t of nt's row tiles [first, second) where they split the batch.
  const auto row_tiles_of = [&](int64_t t, int64_t nt) {
    return std::pair<int64_t, int64_t>{most_tiles * t / nt, most_tiles * (t + 1) / nt};
  };
  const auto whole_tile_each = [&] {
    for (int64_t t = 0; t < threads; ++t) {
      const auto [tile0, tile1] = row_tiles_of(t, threads);
      if (std::min(most_rows, tile1 * kAmxRows) - tile0 * kAmxRows < kAmxRows) return false;
    }
    return true;
  };
  const bool by_batch = batch_split(w.blocks * w.chunks * G * kAmxTileValues * 2, threads) &&
                         whole_tile_each();
  StepBarrier barrier;
#pragma omp parallel num_threads(threads)
  {
    const TileConfig config;
    _tile_loadconfig(&config);
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t first = by_batch ? 0 : w.blocks * t / nt;
    const int64_t last = by_batch ? w.blocks : w.blocks * (t + 1) / nt;
    const auto [tile0, tile1] = by_batch ? row_tiles_of(t, nt)
                                         : std::pair<int64_t, int64_t>{0, most_tiles};
    // Every row tile's G tiles of sums (16 rows x 16 units each) between panels.
    SumTiles scratch(most_tiles * G);
    auto sums_of = [&](int64_t tile, int gate) { return scratch.tile(tile * G + gate); };
    // Gate g's bias for units [j, j + 16), or null where w.sum_bias is.
    auto bias_of = [&](int gate, int64_t j) -> const float* {
      return w.sum_bias != nullptr ? w.sum_bias + gate * w.blocks * kAmxUnits + j : nullptr;
    };
    for (int64_t s = 0; s < count; ++s) {
      const AmxStepRows<T>& step = rows[s];
      const F& f = steps[s];
      const int64_t tiles_now = std::min(tile1, (step.rows + kAmxRows - 1) / kAmxRows);
      const int64_t row0 = tile0 * kAmxRows, row1 = std::min(step.rows, tile1 * kAmxRows);
      for (int64_t u = first; u < last; ++u) {
        const int64_t j = u * kAmxUnits;
        const int units = static_cast<int>(std::min<int64_t>(kAmxUnits, H - j));
        const typename Simd::Mask mask = Simd::first(units);
        const uint16_t* block = w.w + u * w.chunks * G * kAmxTileValues;
        for (int64_t c0 = 0; c0 < w.chunks; c0 += panel_chunks) {
          const int64_t c1 = std::min(w.chunks, c0 + panel_chunks);
          for (int gate = 0; gate < G; gate += 2) {
            const uint16_t* weights = block + gate * kAmxTileValues;
            for (int64_t tile = tile0; tile < tiles_now; tile += 2) {
              const uint16_t* a = step.h_in + tile * kAmxRows * K_padded;
              const int pair_rows = tile + 1 < tiles_now ? 2 : 1;
              const int pair_gates = gate + 1 < G ? 2 : 1;
              float* const sums[4] = {sums_of(tile, gate), sums_of(tile, gate + pair_gates - 1),
                                      sums_of(tile + pair_rows - 1, gate),
                                      sums_of(tile + pair_rows - 1, gate + pair_gates - 1)};
              const float* const bias[2] = {bias_of(gate, j), bias_of(gate + pair_gates - 1, j)};
              amx_block_of(pair_rows, pair_gates, sums, c0 == 0, bias, a, a_bytes, weights,
                           G * kAmxTileValues, kAmxTileValues, c0, c1);
            }
          }
        }
        for (int64_t b = row0; b < row1; ++b) {
          const int64_t r = b % kAmxRows;
          for (int g = 0; g < G; ++g) {
            const typename Simd::V sum = Simd::load(mask, sums_of(b / kAmxRows, g) + r * kAmxUnits);
            if (step.sums != nullptr) {
              Simd::store(mask, step.sums + b * G * H + g * H + j, sum);
            } else {
              Simd::store(mask, step.product + b * G * H + g * H + j, sum);
            }
          }
          // (A bfloat16 layer's gate math on Bf16Vec: simd_avx512.h's FunctorLanes.)
          apply_units<FunctorLanes<T>::template one>(f, b, j, units);
          if constexpr (sizeof(T) == 2) {
            // h' as stored (bfloat16 bits, no conversion) into both next states.
            const __m256i h = _mm256_maskz_loadu_epi16(mask, step.out + b * H + j);
            _mm256_mask_storeu_epi16(step.h_out + b * K_padded + j, mask, h);
            _mm256_mask_storeu_epi16(step.h_out_stored + b * H + j, mask, h);
          } else {
            // A float32 layer's h': rounded to bfloat16 (to nearest even, as torch's
            // .to(torch.bfloat16)) for the next product, kept whole for h_prev.
            const typename Simd::V h = Simd::load(mask, step.out + b * H + j);
            Simd::store(mask, reinterpret_cast<c10::BFloat16*>(step.h_out + b * K_padded + j), h);
            Simd::store(mask, step.h_out_stored + b * H + j, h);
          }
        }
      }
      if (!by_batch) barrier.wait();
    }
    _tile_release();
  }
}

}  // namespace
}  // namespace cpu
}  // namespace rnnfused

// run_fused_steps_amx (simd.h) for the bfloat16 step functors. Used in namespace
// rnnfused::cpu.
#define RNNFUSED_DEFINE_AMX_LOOP(fn)                                                          \
  template <typename F>                                                                       \
  void fn(const F* steps, const AmxStepRows<typename F::scalar_type>* rows, int64_t count,   \
          const PackedRecurrentAmx& w, int threads) {                                         \
    fused_steps_amx(steps, rows, count, w, threads);                                          \
  }                                                                                           \
  template void fn(const ::rnnfused::RnnForwardStep<c10::BFloat16>*,                          \
                   const AmxStepRows<c10::BFloat16>*, int64_t, const PackedRecurrentAmx&, int); \
  template void fn(const ::rnnfused::LstmForwardStep<c10::BFloat16, float>*,                  \
                   const AmxStepRows<c10::BFloat16>*, int64_t, const PackedRecurrentAmx&, int); \
  template void fn(const ::rnnfused::GruForwardStep<c10::BFloat16, float>*,                   \
                   const AmxStepRows<c10::BFloat16>*, int64_t, const PackedRecurrentAmx&, int); \
  template void fn(const ::rnnfused::RnnForwardStep<float>*, const AmxStepRows<float>*,        \
                   int64_t, const PackedRecurrentAmx&, int);                                  \
  template void fn(const ::rnnfused::LstmForwardStep<float>*, const AmxStepRows<float>*,       \
                   int64_t, const PackedRecurrentAmx&, int);                                  \
  template void fn(const ::rnnfused::GruForwardStep<float>*, const AmxStepRows<float>*,        \
                   int64_t, const PackedRecurrentAmx&, int)
