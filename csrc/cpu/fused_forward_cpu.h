// The time loops as persistent, fused loops (simd.h's run_fused_steps_<isa> and
// run_fused_backward_<isa>, fused_loop.h): no LSTM projection; the input projection
// formed in the forward loop where forms_projection_in_loop, else by the caller's
// GEMMs a chunk of steps at a time (common.h's ProjectedInput); float32 on AVX-512 or
// AVX2, bfloat16 and float16 on AVX-512, their products in float32 on widened values
// (Intel's bfloat16 dot product without AMX, vdpbf16ps, was measured at half the
// float32 FMA rate, 87 vs 176 GFLOP/s a core); a bfloat16 layer's loops on
// vdpbf16ps where it runs at the FMA's instruction rate (bf16_dot_loops: AMD's
// Zen 4/5), its forward on AMX tiles where the CPU has them (bfloat16_products_on_amx).
// The layer drivers take them through CpuLaunch::fused_forward / fused_backward where
// they apply.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "../layers/common.h"
#include "huge_pages.h"
#include "simd.h"

namespace rnnfused {
namespace cpu {

// The floats of the persistent loops' vectors on this CPU: their tiles' width.
inline int64_t fused_lanes() { return active_isa() == Isa::kAvx512 ? 16 : 8; }

// at::parallel_for(begin, end, grain, f) with work for at most capped_threads(torch's
// threads) of them: its grain raised so that no more chunks run (ATen's OpenMP
// parallel_for forks all of torch's threads and gives chunks to as many as the grain
// allows; the others return at once). It cuts the range into as many chunks as
// threads, so where torch's threads fit the CPUs the cut is the same. A range of one
// grain or less runs inline there, without asking for the cap.
template <typename F>
void capped_parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (end - begin > grain) {
    const int64_t threads = capped_threads(at::get_num_threads());
    grain = std::max(grain, (end - begin + threads - 1) / threads);
  }
  at::parallel_for(begin, end, grain, f);
}

// w [G*H, K] of 32-bit values (float32, or bfloat16 pairs) -> [tiles, K, G * L] (see
// PackedRecurrent; L = fused_lanes()), zero past H, on the calling ISA's transposes
// (which move bits: pairs pass unchanged). Tiles split over the threads (a large
// W_hh is memory-bound to pack: 16 MB at H = 1024 costs about a step's time on one
// thread); each tile's rows are read as they are written.
inline at::Tensor pack_tiles_in_parallel(const float* w, int64_t G, int64_t H, int64_t K,
                                         int64_t L, const at::TensorOptions& options) {
  const int64_t tiles = (H + L - 1) / L;
  at::Tensor packed = empty_on_huge_pages({tiles, K, G * L}, options.dtype(at::kFloat));
  float* const base = packed.data_ptr<float>();
  const bool avx512 = active_isa() == Isa::kAvx512;
  TORCH_INTERNAL_ASSERT(L == (avx512 ? 16 : 8), "rnnfused: tiles of ", L, " units on this ISA");
  // Tiles in parallel from 64 KB of packed weights a thread (below it, one thread).
  const int64_t grain = std::max<int64_t>(1, (int64_t{16} << 10) / std::max<int64_t>(1, K * G * L));
  capped_parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    float* dst = base + begin * K * G * L;
    if (avx512) {
      pack_recurrent_tiles_avx512(w, G, H, K, begin, end, dst);
    } else {
      pack_recurrent_tiles_avx2(w, G, H, K, begin, end, dst);
    }
  });
  return packed;
}

// W_hh [G*H, K] (float32 or bfloat16) -> float32 [tiles, K, G * L] (PackedRecurrent).
inline at::Tensor pack_recurrent(const at::Tensor& w_hh, int64_t G, int64_t H, int64_t L) {
  const at::Tensor w_float = w_hh.to(at::kFloat).contiguous();  // bfloat16 widens exactly
  return pack_tiles_in_parallel(w_float.data_ptr<float>(), G, H, w_hh.size(1), L,
                                w_float.options());
}

// W_hh [G*H, K] bfloat16 -> [tiles, ceil(K / 2), G * 16] pairs of bfloat16 (as float32
// bits), run_fused_steps_dpbf16's operand: pack_recurrent's layout over W_hh's
// columns taken two at a time (zero-padded to an even K), the even column's value in
// each pair's lower half.
inline at::Tensor pack_recurrent_pairs(const at::Tensor& w_hh, int64_t G, int64_t H) {
  TORCH_INTERNAL_ASSERT(w_hh.scalar_type() == at::kBFloat16, "rnnfused: pairs of bfloat16");
  const int64_t K = w_hh.size(1), pairs = (K + 1) / 2;
  at::Tensor w = w_hh.contiguous();
  if (K % 2 != 0) {
    at::Tensor padded = at::zeros({G * H, 2 * pairs}, w.options());
    padded.narrow(1, 0, K).copy_(w);
    w = padded;
  }
  return pack_tiles_in_parallel(static_cast<const float*>(w.data_ptr()), G, H, pairs,
                                fused_lanes(), w.options());
}

// Rows of W [R * J, K] (contiguous E) by blocks of `width` columns into dst [blocks,
// J, R * width]: block q's row j holds those columns of W's rows R j .. R j + R - 1
// side by side (row R j + r's column q width + l at R l + r), zero past K; each
// block's rows copied in one pass, blocks split over the threads from 64 KB of them.
template <int R, typename E>
void pack_row_blocks(const E* src, int64_t J, int64_t K, int64_t width, E* dst) {
  const int64_t blocks = (K + width - 1) / width, row = R * width;
  const int64_t grain = std::max<int64_t>(1, (int64_t{16} << 10) / std::max<int64_t>(1, J * row));
  capped_parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t first = q * width, count = std::min(width, K - first);
      E* out = dst + q * J * row;
      for (int64_t j = 0; j < J; ++j, out += row) {
        const E* in = src + R * j * K + first;
        if constexpr (R == 1) {
          std::copy_n(in, count, out);
        } else {
          for (int64_t l = 0; l < count; ++l) {
            for (int r = 0; r < R; ++r) out[R * l + r] = in[r * K + l];
          }
        }
        std::fill(out + R * count, out + row, E{0});
      }
    }
  });
}

// W_hh [J, K] (float32 or bfloat16) -> float32 [blocks, J, 2L] (see PackedRecurrentT),
// zero-padded to whole blocks: each block's rows are runs of 2L floats of W_hh's rows.
inline at::Tensor pack_recurrent_t(const at::Tensor& w_hh, int64_t L) {
  const int64_t J = w_hh.size(0), K = w_hh.size(1), width = 2 * L;
  const at::Tensor w_float = w_hh.to(at::kFloat).contiguous();  // bfloat16 widens exactly
  at::Tensor packed = at::empty({(K + width - 1) / width, J, width}, w_float.options());
  pack_row_blocks<1>(w_float.data_ptr<float>(), J, K, width, packed.data_ptr<float>());
  return packed;
}

// W_hh [J, K] bfloat16, J even -> [blocks, J / 2, 2L] pairs of bfloat16 (as float32
// bits), run_fused_backward_dpbf16's operand: pack_recurrent_t's blocks of 2L state
// units with rows 2j and 2j + 1 interleaved (row 2j's value in each pair's lower
// half), zero past K.
inline at::Tensor pack_recurrent_t_pairs(const at::Tensor& w_hh) {
  TORCH_INTERNAL_ASSERT(w_hh.scalar_type() == at::kBFloat16 && w_hh.size(0) % 2 == 0,
                        "rnnfused: pairs of bfloat16 rows");
  const int64_t J = w_hh.size(0), K = w_hh.size(1), width = 2 * fused_lanes();
  const at::Tensor w = w_hh.contiguous();
  at::Tensor packed =
      at::empty({(K + width - 1) / width, J / 2, width}, w.options().dtype(at::kFloat));
  pack_row_blocks<2>(static_cast<const uint16_t*>(w.data_ptr()), J / 2, K, width,
                     static_cast<uint16_t*>(packed.data_ptr()));
  return packed;
}

// W_hh [G*H, K] bfloat16 -> the AMX tiles of PackedRecurrentAmx, [blocks, chunks, G, 16,
// 32] (pairs of state units side by side), zero past H and K.
inline at::Tensor pack_recurrent_amx(const at::Tensor& w_hh, int64_t G, int64_t H) {
  TORCH_INTERNAL_ASSERT(w_hh.scalar_type() == at::kBFloat16, "rnnfused: AMX tiles take bfloat16");
  const int64_t K = w_hh.size(1);
  const int64_t blocks = (H + kAmxUnits - 1) / kAmxUnits, chunks = (K + kAmxDepth - 1) / kAmxDepth;
  const at::Tensor w = w_hh.contiguous();
  at::Tensor packed = at::empty({blocks, chunks, G, kAmxDepth / 2, kAmxUnits, 2}, w.options());
  const uint16_t* src = reinterpret_cast<const uint16_t*>(w.data_ptr());
  uint16_t* const base = reinterpret_cast<uint16_t*>(packed.data_ptr());
  // Blocks in parallel, as pack_recurrent's tiles.
  const int64_t block_bytes = G * chunks * kAmxTileValues * 2;
  const int64_t grain =
      std::max<int64_t>(1, (int64_t{32} << 10) / std::max<int64_t>(1, block_bytes));
  capped_parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    uint16_t* dst = base + begin * chunks * G * kAmxTileValues;
    for (int64_t u = begin; u < end; ++u) {
      for (int64_t c = 0; c < chunks; ++c) {
        for (int64_t g = 0; g < G; ++g) {
          for (int64_t p = 0; p < kAmxDepth / 2; ++p) {
            for (int64_t n = 0; n < kAmxUnits; ++n) {
              const int64_t unit = u * kAmxUnits + n;
              for (int64_t e = 0; e < 2; ++e) {
                const int64_t k = c * kAmxDepth + 2 * p + e;
                *dst++ = unit < H && k < K ? src[(g * H + unit) * K + k] : uint16_t{0};
              }
            }
          }
        }
      }
    }
  });
  return packed;
}

// b [K, N] (bfloat16, or float32 rounded to bfloat16) packed as amx_gemm_bf16's right
// operand (pack_amx_gemm_b): the backward's W_hh once for all its steps
// (CpuLaunch::pack_gemm_nn_weights), and the test op _cpu_amx_matmul's.
inline at::Tensor pack_amx_gemm_weights(const at::Tensor& b) {
  const at::Tensor rows = b.size(1) <= 1 || b.stride(1) == 1 ? b : b.contiguous();
  at::Tensor packed = at::empty({amx_gemm_b_values(b.size(0), b.size(1))},
                                b.options().dtype(at::kBFloat16));
  pack_amx_gemm_b(rows.data_ptr(), b.size(0), b.size(1),
                  b.size(0) > 1 ? rows.stride(0) : b.size(1), packed.data_ptr(),
                  b.scalar_type() == at::kFloat);
  return packed;
}

// Threads for a loop whose steps cost `work` multiply-adds over `parts` units of split:
// torch's, at most one per CPU the process may run on (capped_threads).
inline int loop_threads(int64_t work, int64_t parts) {
  // Small steps run on one thread: a barrier would cost more than the split saves.
  if (work < (int64_t{1} << 16)) return 1;
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(capped_threads(at::get_num_threads()), parts)));
}

// Threads of the AMX tile loop (fused_forward_amx) for a layer of these sizes: its
// steps' work over its 16-unit blocks. The tiles' rules below ask it too.
inline int amx_loop_threads(const LayerSizes& sz) {
  return loop_threads(sz.batch * sz.gates * sz.hidden * sz.output,
                      (sz.hidden + kAmxUnits - 1) / kAmxUnits);
}

// Whether a bfloat16 backward loop over W_hh [J, K] forms its product on vdpbf16ps
// (run_fused_backward_dpbf16): bf16_dot_loops() and W_hh's rows in pairs (J even; the
// functors' d_recurrent rows, J values each, then read as pairs).
inline bool backward_on_bf16_pairs(int64_t J) { return bf16_dot_loops() && J % 2 == 0; }

// Packing W_hh costs about one step's reads of it: worth it from a few steps on
// (a cell's single step takes the GEMM-and-functor path). 16-bit types: AVX-512 only.
inline bool fused_forward_applies(const LayerSizes& sz, bool low_precision) {
  constexpr int64_t kMinSteps = 4;
  const Isa isa = active_isa();
  return (isa == Isa::kAvx512 || (isa == Isa::kAvx2 && !low_precision)) && sz.output == sz.hidden &&
         sz.hidden > 0 && sz.rows >= kMinSteps * sz.batch;
}

// Whether a layer's fused forward forms its input projection in the loop, a step's
// rows at a time (PackedRecurrent::w_input), rather than as a GEMM per chunk of
// ~512 rows (2048 in bfloat16): the input's rows with unit stride, the bias
// contiguous, and for
// - float32: from 2^22 multiply-adds of a step's projection (the widest step's rows
//   x G*H x I), with enough rows per step for W_ih's reads each step to pay: 32, or
//   8 where W_ih and W_hh together fit in 24 MB (3/4 of the last-level cache a Zen 5
//   core shares here). The loop's register blocks run at ~98% of the FMA peak where
//   the chunks' GEMM reached ~90% (two Zen 5 cores; a second pass over K in the
//   loop, timed), and x_proj stays in cache between its forming and its functor.
//   In-process A/B there: LSTM 100, 64, 512, 512 forward 5% faster (training 1%),
//   256, 256 7%, 512 -> 1024 6%, GRU 256, 256 4%, RNN 512, 512 even; T 50, B 8-16, H
//   1024: GRU 10-12%, RNN 13%, LSTM H 768 8-9%; on the AVX2 kernels
//   (RNNFUSED_CPU_ISA=avx2, the same CPU) 1-3%. Few rows make short register blocks
//   that stream all of W_ih each step: at T 50, LSTM H 1024 B 1-8 took 1.45-2x the
//   chunks' time (32 MB of weights), LSTM I 2048, H 512 B 1-4 1.24-2.4x, GRU I 2048,
//   H 1024 B 2 1.63x; so did LSTM 50, 1, 64, 64 (25%), 100, 8, 128, 128 (5%) and
//   100, 32, 64, 64 (9%) below the work bound.
//   On Intel's AVX-512 CPUs (blas_runs_avx512: the chunks' GEMM is MKL's, ~85% of
//   the FMA peak on 512-row chunks) only where W_ih and W_hh take at most half a
//   core's L2 per loop thread: past that each step streams W_ih from an L3 that
//   serves a core far more slowly than Zen 5's. In-process A/B, two Intel Xeon vCPUs
//   (2 MB L2), forward, chunks against the loop: LSTM 100, 64, 512, 512 4% faster
//   (training 1%), T 50 B 16 H 512 21% (training 9%), 35, 20, 650, 650 17%, GRU
//   B 16 H 512 17%, B 64 H 1024 6%, RNN B 16 H 1024 13%, LSTM H 320 B 32 3% (3.3
//   MB); the loop kept at 2 MB and less: LSTM H 256 B 64 3% faster than the chunks,
//   GRU H 256 4%, RNN H 256 4%, 20, 256, 128, 128 4%, RNN H 512 even; on one thread
//   LSTM H 256 (2 MB) 5% slower in the loop, now chunks.
// - bfloat16 on the dot product's loop (`pairs`): an even I (each input row read as
//   I / 2 pairs, 4-byte aligned) and, whatever the work, 8 rows a step (16 for a
//   single-gate layer), 32 where the weights pass 24 MB, or any rows where W_ih and
//   W_hh take at most 64 KB a gate (I = H = 128). The chunks' GEMM is oneDNN's,
//   ~20 us of set-up a call. In-process A/B, two Zen 5 cores, T 50, I = H, forward:
//   H 64 B 1-64 LSTM 22-31% faster, GRU 24-38%, RNN 22-45%; H 128 B 1-64 LSTM
//   7-20%, GRU 15-18% (B 1 3% slower), RNN 4-22%; H 256-1024 B 8-64 LSTM 2-15%, GRU
//   9-18% (H 512 B 8 1% slower); RNN B 64 3-10%, B 16-32 within 4% either way;
//   LSTM 100, 64, 512, 512 9%, training 1.6%. Where the rule leaves the chunks:
//   LSTM, GRU H 256-1024 B 1-4 0-40% slower in the loop, RNN H 256 B 8 18%, H 512-2048
//   B 8 13-41%.
// Neither inside a parallel region (a bidirectional LSTM's or GRU's directions, a
// thread each, both reading their weights at once) nor, in bfloat16, where the loop
// runs on one thread (`threads`): there the chunks' GEMM forks no threads and stays
// ahead. In-process A/B, two Zen 5 cores: float32 bidirectional LSTM T 50, H 256 B
// 32-64 and GRU H 128 B 256 1.5-3.4% faster in chunks (7-8 of 8 rounds; float32 on
// one thread alone: LSTM, GRU, RNN H 512 B 16-64 even, RNN B 16 5% faster in the
// loop); bfloat16 on one thread, T 100, H 128: LSTM B 4-64 3-25%, GRU 0-5%, the
// 2-layer bidirectional LSTM B 4-64 3-13%.
inline bool forms_projection_in_loop(const LayerSizes& sz, const at::Tensor& input,
                                     const at::Tensor& bias, bool pairs, int threads) {
  constexpr int64_t kMinStepWork = int64_t{1} << 22;
  constexpr int64_t kManyRows = 32, kMinRows = 8;
  constexpr int64_t kCachedWeightBytes = int64_t{24} << 20;
  constexpr int64_t kSmallGateBytes = int64_t{64} << 10;
  if (at::in_parallel_region() || (pairs && threads < 2) || input.dim() != 2 ||
      input.size(1) == 0 || input.stride(1) != 1 || (bias.defined() && !bias.is_contiguous())) {
    return false;
  }
  const int64_t I = input.size(1), GH = sz.gates * sz.hidden;
  // The dot product's loop reads each input row as I / 2 pairs of bfloat16.
  const bool rows_as_pairs = I % 2 == 0 && input.stride(0) % 2 == 0 &&
                             reinterpret_cast<uintptr_t>(input.data_ptr()) % 4 == 0;
  if (pairs ? input.scalar_type() != at::kBFloat16 || !rows_as_pairs
            : input.scalar_type() != at::kFloat) {
    return false;
  }
  const int64_t weight_bytes = (I + sz.output) * GH * input.element_size();
  if (pairs) {
    const int64_t min_rows = sz.gates == 1 ? 2 * kMinRows : kMinRows;
    return weight_bytes <= sz.gates * kSmallGateBytes || sz.batch >= kManyRows ||
           (sz.batch >= min_rows && weight_bytes <= kCachedWeightBytes);
  }
  if (blas_runs_avx512() && active_isa() == Isa::kAvx512 &&
      weight_bytes > threads * l2_cache_bytes() / 2) {
    return false;
  }
  return sz.batch * GH * I >= kMinStepWork &&
         (sz.batch >= kManyRows || (sz.batch >= kMinRows && weight_bytes <= kCachedWeightBytes));
}

// The forward steps a chunk of the input projection at a time (its pointers stay
// valid together): make(s, x_proj_s) -> {functor, rows} of step s, then
// run(functors, rows, count) over the chunk's steps.
template <typename Step, typename Rows, typename XProj, typename Make, typename Run>
void run_by_chunks(const Schedule& sched, XProj& x_proj, Make make, Run run) {
  std::vector<Step> steps;
  std::vector<Rows> rows;
  for (int64_t s = 0; s < sched.steps();) {
    x_proj.step(s);
    const int64_t end = x_proj.chunk_end();
    steps.clear();
    rows.clear();
    for (; s < end; ++s) {
      auto [step, row] = make(s, x_proj.step(s));
      steps.push_back(step);
      rows.push_back(row);
    }
    run(steps.data(), rows.data(), static_cast<int64_t>(steps.size()));
  }
}

// Whether torch lets float32 products run on bfloat16 operands here and the AMX
// tiles can run them: torch's "medium" float32 matmul precision (or
// torch.backends.mkldnn.matmul.fp32_precision = "bf16") with oneDNN enabled, and
// amx_tiles_enabled().
inline bool float32_products_in_bf16() {
  const at::Context& context = at::globalContext();
  return context.userEnabledMkldnn() &&
         context.float32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL) ==
             at::Float32Precision::BF16 &&
         amx_tiles_enabled();
}

// Whether a float32 layer's forward forms its recurrent products in bfloat16 on AMX
// tiles (fused_forward_amx): where torch lets float32 matmuls run in bfloat16
// (torch.set_float32_matmul_precision("medium"), or torch.backends.mkldnn.matmul.
// fp32_precision = "bf16", with oneDNN enabled: at::mm then rounds its float32
// operands to bfloat16 on oneDNN, as in torch.nn's GRU and RNN, and so do the input
// projection's chunks here), the CPU has the tiles (amx_tiles_enabled()), and they
// are faster than the float32 loop: a state K of 192 and more from 4 rows, of 96 from
// 32 rows (LSTM, GRU: 16), of 64 for an LSTM or GRU from 32 rows (or 16 on one thread),
// or W_hh of 2^20 values and more at any batch. Two Xeon vCPUs, T 50, I = H, forward
// under "medium", the tiles (with their batch split and bias, amx_loop.h) against the
// float32 loop, in-process A/B: LSTM H 64-256 B 16-128 1.07-2.80x (B 4: 0.80-1.16),
// GRU H 64 B 32-128 1.13-1.23, H 96-256 B 16-128 1.10-2.83 (H 64 B 16 0.85, B 4
// 0.96-1.32), RNN H 192-256 B 4-128 1.09-2.36, H 96-128 B 32-128 1.05-1.30 (B 4-16
// 0.68-0.96, H 64 0.68-1.04). One thread a direction (bidirectional, the forty-first
// session's tiles): LSTM and GRU H 64-128 B 16-64 1.21-1.46, B 1-4 0.85-1.07, RNN H
// 64-128 0.62-0.98. 100, 64, 512, 512 under "medium": torch.nn's RNN 17.1 ms, GRU
// 59.8, LSTM 89.8 (oneDNN's LSTM keeps float32); rnnfused's float32 loop 22.0, 42.3,
// 56.9, on the tiles 9.7, 21.5, 26.9 (the forty-first session's).
inline bool float32_products_on_amx(const LayerSizes& sz) {
  if (!float32_products_in_bf16()) return false;
  const int64_t G = sz.gates, H = sz.hidden, K = sz.output, B = sz.batch;
  const bool one_thread = amx_loop_threads(sz) == 1;
  return G * H * K >= (int64_t{1} << 20) || (B >= 4 && K >= 192) ||
         (K >= 96 && (B >= 32 || (G >= 3 && B >= 16))) ||
         (G >= 3 && ((K >= 64 && B >= 32) || (B >= 16 && one_thread)));
}

// Whether a bfloat16 layer's forward forms its recurrent products on AMX tiles
// (fused_forward_amx) rather than in the float32 loop on widened operands (or the
// vdpbf16ps loops): where the CPU has the tiles (amx_tiles_enabled()), but for the
// narrowest states below 32 rows on two threads or more, where the tile loop's
// threads cannot split the batch (amx_loop.h's by_batch) and wait at a barrier each
// step while a step's few tile products per block cost more than the loop's FMAs:
// one 32-unit chunk (K <= 32) from 64 gate rows (G * B), an RNN's 64-96 units from
// 16 rows. Two Xeon vCPUs, T 100, I = H, forward, the tiles (with their bfloat16
// gate math, Bf16Vec) against the loop, in-process A/B: two threads, LSTM K 32 B 16-24
// 0.77-0.84x, GRU K 32 B 24 0.76, RNN K 64 B 16-24 0.79-0.87, K 96 B 16-24 0.93-0.97;
// from 32 rows, with the split, or with fewer gate rows (LSTM K 32 B 8, GRU K 32 B
// 16, RNN K 32 B 16-24, K 64 B 8-12) 1.01-1.64x; where the loops run on one thread
// (loop_threads: the steps' work below 2^16, or one thread a direction) the tiles
// won every narrow state tried, 1.27-2.0x (LSTM K 16 B 16-31, K 32 B 16-64, GRU K 16
// B 16-31, K 32 B 24, RNN K 48-96 B 16-64) but LSTM K 8 B 16 (0.88, 0.2 ms).
inline bool bfloat16_products_on_amx(const LayerSizes& sz) {
  if (!amx_tiles_enabled()) return false;
  const int64_t G = sz.gates, K = sz.output, B = sz.batch;
  const bool one_thread = amx_loop_threads(sz) == 1;
  const bool one_chunk_many_rows = K <= kAmxDepth && G * B >= 64;
  const bool narrow_rnn = G == 1 && K >= 64 && K <= 96 && B >= 16;
  return one_thread || B >= 2 * kAmxRows || (!one_chunk_many_rows && !narrow_rnn);
}

// fused_forward's loop on AMX tiles: a bfloat16 layer (bfloat16_products_on_amx), or a
// float32 one with its products in bfloat16 (float32_products_on_amx; W_hh and
// each step's state rounded to bfloat16 to nearest even, the sums, the gate math
// and the states in float32).
template <typename scalar_t, typename XProj, typename MakeStep>
at::Tensor fused_forward_amx(const LayerSizes& sz, const Schedule& sched, XProj& x_proj,
                             const at::Tensor& h0, const at::Tensor& w_hh, at::Tensor& output,
                             const at::Tensor& product, MakeStep make_step) {
  constexpr bool kFloat = std::is_same_v<scalar_t, float>;
  const int64_t G = sz.gates, H = sz.hidden, K = sz.output, B = sz.batch;
  const at::Tensor packed = pack_recurrent_amx(w_hh.to(at::kBFloat16), G, H);
  PackedRecurrentAmx w{reinterpret_cast<const uint16_t*>(packed.data_ptr()), K, H, G,
                       packed.size(0), packed.size(1)};
  // The state before and after each step, alternating (one barrier per step, as in
  // fused_forward), as the tiles' left operand in bfloat16: whole tiles of 16 rows,
  // rows of whole 32-unit chunks, zeros past B and K. Both start as h0 (rows that
  // join in reverse over packed input read it from either). Beside them the same
  // unpadded in scalar_t, the functors' h_prev (GRU).
  const int64_t rows_padded = (B + kAmxRows - 1) / kAmxRows * kAmxRows;
  at::Tensor operands[2];
  at::Tensor stored[2];
  for (int i = 0; i < 2; ++i) {
    operands[i] =
        at::zeros({rows_padded, w.chunks * kAmxDepth}, h0.options().dtype(at::kBFloat16));
    operands[i].narrow(0, 0, B).narrow(1, 0, K).copy_(h0);
    stored[i] = h0.clone(at::MemoryFormat::Contiguous);
  }
  // The product's float32 sums, which the functors read unrounded (RNN's, which
  // has no product buffer, go into the output rows it reads): a float32 layer's
  // product buffer itself.
  const at::Tensor sums = product.defined() && !kFloat
                              ? at::empty({B, G * H}, h0.options().dtype(at::kFloat))
                              : product;
  const int threads = amx_loop_threads(sz);

  using Step = decltype(make_step(int64_t{0}, nullptr, nullptr, static_cast<float*>(nullptr),
                                  nullptr));
  // The chunks' GEMMs leave the bias out (ProjectedInput::leave_bias_to_loop; a GEMM
  // with a bias first copies it into every row of its output: oneDNN's bfloat16
  // 1830 x 128 x 512 chunk 0.26 ms without, 0.37-0.42 with) and the loop adds it:
  // LSTM's and RNN's (b_ih + b_hh) as the sum tiles' starting values, a GRU's b_ih
  // in its functor, as the float32 loop does.
  const at::Tensor& input_bias = x_proj.operands().bias;
  at::Tensor sum_bias, functor_bias;
  if (input_bias.defined()) {
    x_proj.leave_bias_to_loop();
    if constexpr (Step::kSumsProjections) {
      sum_bias = at::zeros({G, w.blocks * kAmxUnits}, h0.options().dtype(at::kFloat));
      sum_bias.narrow(1, 0, H).copy_(input_bias.view({G, H}));
      w.sum_bias = sum_bias.data_ptr<float>();
    } else {
      functor_bias = input_bias.contiguous();
    }
  }
  float* sums_out = sums.defined() ? sums.data_ptr<float>() : nullptr;
  auto bits = [](const at::Tensor& t) { return static_cast<uint16_t*>(t.data_ptr()); };
  run_by_chunks<Step, AmxStepRows<scalar_t>>(
      sched, x_proj,
      [&](int64_t s, const scalar_t* x_proj_s) {
        scalar_t* out = output.data_ptr<scalar_t>() + sched.offset(s) * H;
        const AmxStepRows<scalar_t> row{sched.rows(s), bits(operands[s % 2]), sums_out,
                                        sums_out != nullptr ? nullptr : out, out,
                                        bits(operands[(s + 1) % 2]),
                                        stored[(s + 1) % 2].data_ptr<scalar_t>()};
        const scalar_t* h_prev = stored[s % 2].data_ptr<scalar_t>();
        Step functor = make_step(s, x_proj_s, h_prev, sums_out, out);
        if constexpr (requires { functor.b_ih; }) {
          if (functor_bias.defined()) functor.b_ih = functor_bias.data_ptr<scalar_t>();
        }
        return std::make_pair(functor, row);
      },
      [&](const Step* steps, const AmxStepRows<scalar_t>* rows, int64_t count) {
        run_fused_steps_amx(steps, rows, count, w, threads);
      });
  return sched.final_states(output);
}

// Runs every forward step of a layer stored in scalar_t (float, c10::BFloat16, c10::Half);
// returns h_n [B, H].
//   product: [B, G*H] scratch for the recurrent product, or undefined when the
//     functor reads it from its output rows (RNN);
//   make_step(s, x_proj_s, h_in, product, out_rows) -> the step functor.
template <typename scalar_t, typename XProj, typename MakeStep>
at::Tensor fused_forward(const LayerSizes& sz, const Schedule& sched, XProj& x_proj,
                         const at::Tensor& h0, const at::Tensor& w_hh, at::Tensor& output,
                         const at::Tensor& product, MakeStep make_step) {
  const int64_t G = sz.gates, H = sz.hidden, K = sz.output, B = sz.batch;
  if (sched.steps() == 0) return h0.clone(at::MemoryFormat::Contiguous);
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    if (bfloat16_products_on_amx(sz)) {
      return fused_forward_amx<scalar_t>(sz, sched, x_proj, h0, w_hh, output, product, make_step);
    }
  }
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (float32_products_on_amx(sz)) {
      return fused_forward_amx<scalar_t>(sz, sched, x_proj, h0, w_hh, output, product, make_step);
    }
  }
  constexpr bool kFloat = std::is_same_v<scalar_t, float>;
  const bool avx512 = active_isa() == Isa::kAvx512;
  // A bfloat16 layer's products on vdpbf16ps where bf16_dot_loops(): W_hh and the
  // state in pairs of bfloat16 along k, w.K the pairs of a row.
  constexpr bool kBFloat16 = std::is_same_v<scalar_t, c10::BFloat16>;
  const bool pairs = kBFloat16 && bf16_dot_loops();
  const at::Tensor packed =
      pairs ? pack_recurrent_pairs(w_hh, G, H) : pack_recurrent(w_hh, G, H, fused_lanes());
  PackedRecurrent w{packed.data_ptr<float>(), packed.size(1), H, G, packed.size(0)};
  const int threads = loop_threads(sz.batch * G * H * K, w.tiles);
  using Step = decltype(make_step(int64_t{0}, nullptr, nullptr, static_cast<scalar_t*>(nullptr),
                                  nullptr));
  // The input projection formed by the loop, a step's rows at a time, where
  // forms_projection_in_loop: W_ih packed as W_hh is, x_proj one buffer.
  // A bfloat16 layer on the dot product: W_ih in pairs as W_hh, the input rows read
  // as pairs, the bias widened.
  // Else, for a float32 layer, the chunks' GEMMs leave the bias out
  // (ProjectedInput::leave_bias_to_loop) and the loop adds it: where the functor takes
  // x_proj + h_proj (LSTM, RNN: the step functor's kSumsProjections) to the recurrent
  // product's sums in registers (PackedRecurrent::product_bias); a GRU's functor to
  // x_proj's values as it loads them (GruForwardStep::b_ih, as its b_hh). In-process
  // A/B, two Xeon vCPUs, forward: LSTM 100, 64, 512, 512 1.3-1.6% faster (10 and 9 of
  // 12 rounds), T 50 B 16 1.1%, training 0.4%; RNN within noise; GRU 100, 64, 512,
  // 512 1.2-1.4% (10 and 11 of 12), T 50 B 16 0.6%, the 2-layer bidirectional 100, 16,
  // 128, 128 within noise. (Added to x_proj in memory instead, before the functor read
  // it, it cost more than the copy it saved.)
  at::Tensor packed_input, input_bias;
  const float* functor_input_bias = nullptr;
  const float* input_rows = nullptr;
  int64_t input_stride = 0;
  if (kFloat || pairs) {
    const auto operands = x_proj.operands();
    const at::Tensor& input = operands.input;
    const at::Tensor& bias = operands.bias;
    if (forms_projection_in_loop(sz, input, bias, pairs, threads)) {
      x_proj.form_in_loop();
      packed_input = pairs ? pack_recurrent_pairs(operands.w_ih, G, H)
                           : pack_recurrent(operands.w_ih, G, H, fused_lanes());
      input_bias = bias.defined() ? bias.to(at::kFloat) : at::Tensor();
      const int64_t per_k = pairs ? 2 : 1;  // input values a k of the reduction
      w.w_input = packed_input.data_ptr<float>();
      w.I = input.size(1) / per_k;
      w.input_bias = input_bias.defined() ? input_bias.data_ptr<float>() : nullptr;
      input_rows = static_cast<const float*>(input.data_ptr());
      input_stride = input.stride(0) / per_k;
    } else if (kFloat && bias.defined()) {
      x_proj.leave_bias_to_loop();
      input_bias = bias.contiguous();
      if constexpr (Step::kSumsProjections) {
        w.product_bias = input_bias.data_ptr<float>();
      } else {
        functor_input_bias = input_bias.data_ptr<float>();
      }
    }
  }
  // The state before and after each step, alternating, in float32: a step reads
  // one while it writes the other, so one barrier per step is all the threads need.
  // Both start as h0: in reverse over packed input the batch grows, and a row that
  // joins reads its h0 from whichever buffer the step reads. A bfloat16 layer's
  // functors read their h_prev (GRU) from a bfloat16 pair beside them. A float32
  // step (or a bfloat16 one on the dot product, K even: reads_previous_output) whose
  // batch the step before covers reads that step's output rows instead
  // (h' is there already: the copy into the buffer cost 7% of an LSTM 100, 64, 512,
  // 512 layer's steps; in-process A/B, two Zen 2 cores: forward 3% faster, GRU 2%,
  // RNN 5%); the buffers then serve the first step and those where the batch
  // grows, filled by the step before.
  // The dot product's state rows are bfloat16, w.K pairs a row, zero past K.
  const at::TensorOptions f32 = h0.options().dtype(at::kFloat);
  auto state_buffer = [&] {
    if (!pairs) return at::empty({B, K}, f32).copy_(h0);
    at::Tensor state = at::zeros({B, 2 * w.K}, h0.options());
    state.narrow(1, 0, K).copy_(h0);
    return state;
  };
  const at::Tensor states[2] = {state_buffer(), state_buffer()};
  const at::Tensor stored[2] = {
      kFloat ? states[0] : h0.clone(at::MemoryFormat::Contiguous),
      kFloat ? states[1] : h0.clone(at::MemoryFormat::Contiguous)};
  // The product's partial sums between panels: float32 in place for a float32
  // layer, a float32 buffer beside a bfloat16 one.
  const at::Tensor partial = kFloat ? at::Tensor() : at::empty({B, G * H}, f32);
  const GemmsOnCallingThread projection_here(threads == 1);  // the chunks' projections

  // Whether step t reads step t - 1's output rows as its state (else the state
  // buffer that step t - 1 fills): float32, and the dot product's bfloat16 rows where
  // they are whole pairs (K even; in-process A/B, two Zen 5 cores, bf16 forward: RNN
  // 100, 64, 512, 512 5% faster, GRU 1.1%, LSTM 100, 32, 256, 256 1.9%, 512 even).
  const bool outputs_are_states = kFloat || (pairs && K % 2 == 0);
  // The workspace the functors save for the backward (LSTM: gates and cells, GRU: r,
  // z, n and W_hn h + b_hn; (G + 1) H values a row) stored past the caches
  // (Lanes::stream: a line written whole, not read in first) where it cannot stay in
  // the loop threads' L2s until the backward reads it; on every AVX-512 CPU. In-process
  // A/B, training: two Xeon vCPUs, four runs: GRU 100, 64, 512, 512 0.7-5% faster
  // (2-3% typical), 50, 16, 512, 512 3%, 100, 64, 256, 256 1.3%; LSTM 100, 64, 512,
  // 512 0.6-3.7%; the 2-layer bidirectional LSTM and GRU 100, 16, 128, 128 (3-4 MB a
  // direction) within 1% either way. Two Zen 4 vCPUs (32 KB L1, 1 MB L2), 11-15
  // rounds: the bidirectional LSTM 3.8-4.3% faster, LSTM 35, 20, 650, 650 (2 layers)
  // 3.3%, 200, 8, 64, 256 1.2%, GRU 100, 64, 512, 512 0.9-1.3%, 100, 64, 256, 256
  // 2.2%, 20, 256, 64, 64 4.2%, 50, 16, 512, 512 0.8%, LSTM 20, 256, 64, 64 1.9%,
  // 100, 32-64, 256, 256 0.9-1.2%; LSTM 512, 50, 16, 512, 512 and the bidirectional
  // GRU even (Zen 5, 48 KB L1, unmeasured). Streamed, the 64 KB of 50, 1, 64, 64 cost
  // 3-4% (it stays in L2).
  const bool stream_saved =
      avx512 &&
      sz.rows * (G + 1) * H * static_cast<int64_t>(sizeof(scalar_t)) > threads * l2_cache_bytes();
  auto reads_previous_output = [&](int64_t t) {
    return outputs_are_states && t > 0 && sched.rows(t) <= sched.rows(t - 1);
  };

  run_by_chunks<Step, FusedStepRows<scalar_t>>(
      sched, x_proj,
      [&](int64_t s, const scalar_t* x_proj_s) {
        scalar_t* out = output.data_ptr<scalar_t>() + sched.offset(s) * H;
        scalar_t* prod = product.defined() ? product.data_ptr<scalar_t>() : out;
        float* sums = nullptr;
        const float* h_in = static_cast<const float*>(states[s % 2].data_ptr());
        float* h_out = static_cast<float*>(states[(s + 1) % 2].data_ptr());
        const scalar_t* h_prev = stored[s % 2].data_ptr<scalar_t>();
        if (reads_previous_output(s)) {
          h_prev = output.data_ptr<scalar_t>() + sched.offset(s - 1) * H;
          h_in = reinterpret_cast<const float*>(h_prev);
        }
        if (s + 1 == sched.steps() || reads_previous_output(s + 1)) h_out = nullptr;
        if constexpr (kFloat) {
          sums = prod;
        } else {
          sums = partial.data_ptr<float>();
        }
        FusedStepRows<scalar_t> row{
            sched.rows(s), h_in, sums, prod, out, h_out,
            kFloat ? nullptr : stored[(s + 1) % 2].data_ptr<scalar_t>(), x_proj_s};
        if (input_rows != nullptr) {
          row.x_in = input_rows + sched.offset(s) * input_stride;
          row.x_stride = input_stride;
          row.x_proj_out = const_cast<scalar_t*>(x_proj_s);  // the buffer it hands out
        }
        Step functor = make_step(s, x_proj_s, h_prev, prod, out);
        if constexpr (requires { functor.stream_saved; }) functor.stream_saved = stream_saved;
        if constexpr (kFloat && requires { functor.b_ih; }) functor.b_ih = functor_input_bias;
        return std::make_pair(functor, row);
      },
      [&](const Step* steps, const FusedStepRows<scalar_t>* rows, int64_t count) {
        if constexpr (kBFloat16) {
          if (pairs) {
            run_fused_steps_dpbf16(steps, rows, count, w, threads);
            return;
          }
        }
        if (avx512) {
          run_fused_steps_avx512(steps, rows, count, w, threads);
        } else if constexpr (kFloat) {
          run_fused_steps_avx2(steps, rows, count, w, threads);
        }
      });
  return sched.final_states(output);
}

// Runs every backward step of a layer stored in scalar_t (float, c10::BFloat16, c10::Half),
// in reverse; d_h [B, H] holds grad_h_n on entry and the gradient on h0 on return.
//   d_recurrent: [N, G*H], the matrix the step functors write the gradient on
//     h_prev @ W_hh^T into (float32: its rows any stride apart); accumulate: the
//     functor leaves the direct part of d_h in d_h (GRU); initial_state_grad: else
//     the first step's product is skipped (common.h's backward_loop);
//   make_step(s, grad_output rows) -> the step functor, reading d_h's rows plus
//     those (and writing d_h's where it leaves the direct part there: GRU).
// Returns whether the steps ran on the calling thread alone (d_recurrent then in
// its core's cache).
template <typename scalar_t, typename MakeStep>
bool fused_backward(const LayerSizes& sz, const Schedule& sched, const at::Tensor& grad_output,
                    const at::Tensor& w_hh, at::Tensor& d_h, const at::Tensor& d_recurrent,
                    bool accumulate, bool initial_state_grad, MakeStep make_step) {
  const int64_t J = w_hh.size(0), K = sz.output, B = sz.batch;
  constexpr bool kFloat = std::is_same_v<scalar_t, float>;
  const bool avx512 = active_isa() == Isa::kAvx512;
  // A bfloat16 layer's product on vdpbf16ps where backward_on_bf16_pairs: the
  // functors' bfloat16 gradients read as they are, J / 2 pairs a row.
  constexpr bool kBFloat16 = std::is_same_v<scalar_t, c10::BFloat16>;
  const bool pairs = kBFloat16 && backward_on_bf16_pairs(J);
  const at::Tensor packed = pairs ? pack_recurrent_t_pairs(w_hh) : pack_recurrent_t(w_hh, fused_lanes());
  const PackedRecurrentT w{packed.data_ptr<float>(), pairs ? J / 2 : J, K, packed.size(0)};
  // float32 rows may be padded (CpuLaunch::gradient_rows); 16-bit ones are read J apart.
  TORCH_INTERNAL_ASSERT(d_recurrent.stride(1) == 1 && (kFloat || d_recurrent.stride(0) == J));
  const int threads = loop_threads(sz.batch * J * K, w.blocks);
  // A bfloat16 layer's float32 sums between panels, and the functors' gradients on
  // the products widened (but for the dot product), two steps' worth alternating: a
  // thread may start the next step's functors while another still reads this step's.
  const at::TensorOptions f32 = d_h.options().dtype(at::kFloat);
  const at::Tensor partial = kFloat ? at::Tensor() : at::empty({B, K}, f32);
  const at::Tensor widened = kFloat || pairs ? at::Tensor() : at::empty({2, B, J}, f32);
  using Step = decltype(make_step(int64_t{0}, static_cast<const scalar_t*>(nullptr)));
  std::vector<Step> steps;
  std::vector<FusedBackwardRows<scalar_t>> rows;
  for (int64_t s = sched.steps() - 1; s >= 0; --s) {
    const int64_t off = sched.offset(s);
    scalar_t* d_rec = d_recurrent.data_ptr<scalar_t>() + off * d_recurrent.stride(0);
    float* d_h_partial = nullptr;
    float* d_rec_float = nullptr;
    if constexpr (kFloat) {
      d_h_partial = d_h.data_ptr<float>();
      d_rec_float = d_rec;
    } else {
      d_h_partial = partial.data_ptr<float>();
      d_rec_float = pairs ? reinterpret_cast<float*>(d_rec)
                          : widened.data_ptr<float>() + (s % 2) * B * J;
    }
    steps.push_back(make_step(s, grad_output.data_ptr<scalar_t>() + off * K));
    rows.push_back({sched.rows(s), d_h.data_ptr<scalar_t>(), d_h_partial, d_rec, d_rec_float,
                    kFloat ? d_recurrent.stride(0) : w.J, accumulate,
                    /*product=*/s > 0 || initial_state_grad});
  }
  const int64_t n = static_cast<int64_t>(steps.size());
  if constexpr (kBFloat16) {
    if (pairs) {
      run_fused_backward_dpbf16(steps.data(), rows.data(), n, w, threads);
      return threads == 1;
    }
  }
  if (avx512) {
    run_fused_backward_avx512(steps.data(), rows.data(), n, w, threads);
  } else if constexpr (kFloat) {
    run_fused_backward_avx2(steps.data(), rows.data(), n, w, threads);
  }
  return threads == 1;
}

}  // namespace cpu
}  // namespace rnnfused
