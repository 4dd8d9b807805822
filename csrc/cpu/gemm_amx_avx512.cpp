// Products on bfloat16 operands on AMX tiles (simd.h's amx_gemm_bf16,
// pack_amx_gemm_b): the per-step products d_pre @ W_hh of a bfloat16 layer's backward
// where the CPU has AMX-BF16, and of a float32 one's under torch's "medium" float32
// matmul precision, its operands rounded to bfloat16 (CpuLaunch::takes_amx_gemm), in
// place of oneDNN's GEMM, which repacks its right operand at every call (two Xeon
// vCPUs, a step's 64 x 2048 x 512 in bfloat16: ~195 us; ~130 on oneDNN's own API with
// W_hh packed once). Here the right operand is packed
// once per loop into the tiles TDPBF16PS multiplies, each thread keeps its share of
// it (its column tiles, where the rows are few) in its L2 from step to step, and
// runs blocks of 2 x 2 sum tiles (32 rows x 32 columns) over 512-deep panels, the
// sums kept in its scratch between panels (amx_tiles.h's operations, shared with the
// forward's tile loop). The left operand's rows go through a zero-padded copy a panel
// at a time (PanelRows), so that no tile reads past a row. Large products whose
// operands stream from L3 (the weight gradients, 6400 x 2048 x 512) run here at
// 1.5-1.8 TF/s, oneDNN's at 1.8-2.2: they stay there.
// The standard headers before the target pragma (as gemm_avx512.cpp).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

// Only called where amx_tiles_enabled(), which asks for AVX512-BF16: the rounding to
// bfloat16 is its instruction (bf16_avx512.h).
#define RNNFUSED_TARGET_AVX512_BF16 1

#include "bf16_avx512.h"
#include "gemm_split.h"
#include "simd.h"
#include "amx_tiles.h"

namespace rnnfused {
namespace cpu {
namespace {

constexpr int64_t kPanelChunks = 16;  // 32-deep chunks of a panel: 512 deep
constexpr int64_t kScratchBytes = int64_t{256} << 10;  // a thread's sums between panels
constexpr int64_t kMaxChunkGroups = 4;  // row groups copied together: 4 x 34 KB

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << std::max<int64_t>(n, 0)) - 1);
}

// 32 values of a from a[offset] as bfloat16, the first n of them (the rest 0).
inline __m512i load_chunk(const AmxGemm& g, int64_t offset, int64_t n) {
  if (!g.float32) {
    const __mmask32 mask = n >= 32 ? ~__mmask32(0) : (__mmask32(1) << n) - 1;
    return _mm512_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(g.a) + offset);
  }
  const float* a = static_cast<const float*>(g.a) + offset;
  const __m256i low = narrow_bf16(_mm512_maskz_loadu_ps(first_lanes(n), a));
  const __m256i high = narrow_bf16(_mm512_maskz_loadu_ps(first_lanes(n - 16), a + 16));
  return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
}

// A thread's copy of the left operand's rows for a few row groups (32 rows each)
// over one panel of chunks: each row (kPanelChunks + 1) * 32 values, zero past M and
// K, so that no tile reads past a's rows, and tile rows 4 KB apart (K 2048: a
// step's d_pre rows) do not fall in one L1 set (the extra 64 bytes a row).
constexpr int64_t kPanelStride = (kPanelChunks + 1) * kAmxDepth;  // values a row
constexpr int64_t kGroupValues = 2 * kAmxRows * kPanelStride;     // a row group's

class PanelRows {
 public:
  explicit PanelRows(int64_t groups) : values_(groups * kGroupValues + 32) {}
  // Row group i's 32 rows.
  uint16_t* group(int64_t i) {
    return reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(values_.data()) + 63) &
                                       ~uintptr_t{63}) + i * kGroupValues;
  }
  // a's rows [row0, row0 + 32 * groups) (those below M) and chunks [c0, c1); a
  // float32 a rounded to bfloat16.
  void copy(const AmxGemm& g, int64_t row0, int64_t groups, int64_t c0, int64_t c1) {
    for (int64_t i = 0; i < groups; ++i) {
      for (int64_t r = 0; r < 2 * kAmxRows; ++r) {
        const int64_t row = row0 + i * 2 * kAmxRows + r;
        uint16_t* const dst = group(i) + r * kPanelStride;
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t k0 = c * kAmxDepth, n = row < g.M ? std::min(kAmxDepth, g.K - k0) : 0;
          _mm512_store_si512(dst + (c - c0) * kAmxDepth, load_chunk(g, row * g.lda + k0, n));
        }
      }
    }
  }

 private:
  std::vector<uint16_t> values_;
};

// The sum tiles of a R x N block += the panel's chunks (a: the copy of its row
// tiles) by the packed operand's column tiles (b: the first column tile's first
// chunk of the panel; the second's b_step values further; the next chunk's tiles
// kAmxTileValues further).
template <int R, int N>
RNNFUSED_AMX_TARGET void run_block(float* const* sums, bool first, const uint16_t* a,
                                   const uint16_t* b, int64_t b_step, int64_t chunks) {
  const float* const no_bias[2] = {nullptr, nullptr};
  amx_load_sums<R, N>(sums, first, no_bias);
  for (int64_t c = 0; c < chunks; ++c) {
    amx_chunk<R, N>(a + c * kAmxDepth, kPanelStride * 2, b + c * kAmxTileValues, b_step);
  }
  amx_store_sums<R, N>(sums);
}

RNNFUSED_AMX_TARGET void run_block_of(int rows, int columns, float* const* sums, bool first,
                                      const uint16_t* a, const uint16_t* b, int64_t b_step,
                                      int64_t chunks) {
  if (columns == 2) {
    if (rows == 2) {
      run_block<2, 2>(sums, first, a, b, b_step, chunks);
    } else {
      run_block<1, 2>(sums, first, a, b, b_step, chunks);
    }
  } else if (rows == 2) {
    run_block<2, 1>(sums, first, a, b, b_step, chunks);
  } else {
    run_block<1, 1>(sums, first, a, b, b_step, chunks);
  }
}

// out's rows [row0, row0 + 16 * rows) x columns [col0, col0 + 16 * columns) from the
// block's float32 sums (2r + n: row tile r, column tile n), rounded once, plus out's
// values where accumulate; only rows < M and columns < N.
void write_block(const AmxGemm& g, int rows, int columns, float* const* sums, int64_t row0,
                 int64_t col0) {
  for (int r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < kAmxRows; ++i) {
      const int64_t row = row0 + r * kAmxRows + i;
      if (row >= g.M) return;
      for (int n = 0; n < columns; ++n) {
        const int64_t col = col0 + n * kAmxUnits;
        const __mmask16 mask = first_lanes(g.N - col);
        __m512 v = _mm512_load_ps(sums[2 * r + n] + i * kAmxUnits);
        if (g.float32) {
          float* const dst = static_cast<float*>(g.out) + row * g.ldo + col;
          if (g.accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, dst));
          _mm512_mask_storeu_ps(dst, mask, v);
        } else {
          uint16_t* const dst = static_cast<uint16_t*>(g.out) + row * g.ldo + col;
          if (g.accumulate) v = _mm512_add_ps(v, widen_bf16(_mm256_maskz_loadu_epi16(mask, dst)));
          _mm256_mask_storeu_epi16(dst, mask, narrow_bf16(v));
        }
      }
    }
  }
}

}  // namespace

int64_t amx_gemm_b_values(int64_t K, int64_t N) {
  return ceil_div(N, kAmxUnits) * ceil_div(K, kAmxDepth) * kAmxTileValues;
}

void pack_amx_gemm_b(const void* b, int64_t K, int64_t N, int64_t ldb, void* dst,
                     bool float32) {
  auto* packed = static_cast<uint16_t*>(dst);
  // 16 values of row k from column n0 as bfloat16, the first `mask` of them.
  const auto row_values = [&](int64_t k, int64_t n0, __mmask16 mask) {
    if (k >= K) return _mm256_setzero_si256();
    if (float32) {
      return narrow_bf16(_mm512_maskz_loadu_ps(mask, static_cast<const float*>(b) + k * ldb + n0));
    }
    return _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(b) + k * ldb + n0);
  };
  const int64_t chunks = ceil_div(K, kAmxDepth), blocks = ceil_div(N, kAmxUnits);
  const int threads = gemm_threads(K * N, chunks, int64_t{1} << 16);
  // Tile (block, chunk) row p: columns [16 block, 16 block + 16)'s pairs (b[k][n],
  // b[k + 1][n]) for k = 32 chunk + 2p: the lower 16 bits the even row's.
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t p = 0; p < kAmxDepth / 2; ++p) {
      const int64_t k = c * kAmxDepth + 2 * p;
      for (int64_t block = 0; block < blocks; ++block) {
        const int64_t n0 = block * kAmxUnits;
        const __mmask16 mask = first_lanes(N - n0);
        const __m256i e = row_values(k, n0, mask), o = row_values(k + 1, n0, mask);
        const __m512i pairs = _mm512_or_si512(_mm512_cvtepu16_epi32(e),
                                              _mm512_slli_epi32(_mm512_cvtepu16_epi32(o), 16));
        _mm512_storeu_si512(packed + ((block * chunks + c) * (kAmxDepth / 2) + p) * 2 * kAmxUnits,
                            pairs);
      }
    }
  }
}

namespace {

RNNFUSED_AMX_TARGET void run_amx_gemm(const AmxGemm& g) {
  if (g.M <= 0 || g.N <= 0) return;
  if (g.K <= 0) {  // an empty sum: out = 0, or unchanged
    for (int64_t r = 0; r < g.M && !g.accumulate; ++r) {
      if (g.float32) {
        std::fill_n(static_cast<float*>(g.out) + r * g.ldo, g.N, 0.0f);
      } else {
        std::fill_n(static_cast<uint16_t*>(g.out) + r * g.ldo, g.N, uint16_t{0});
      }
    }
    return;
  }
  const auto* b = static_cast<const uint16_t*>(g.b_packed);
  const int64_t chunks = ceil_div(g.K, kAmxDepth);
  const int64_t row_tiles = ceil_div(g.M, kAmxRows), row_groups = ceil_div(row_tiles, 2);
  const int64_t col_tiles = ceil_div(g.N, kAmxUnits), col_pairs = ceil_div(col_tiles, 2);
  const int64_t b_step = chunks * kAmxTileValues;  // one column tile's values
  // The threads split the row groups (pairs of row tiles) where there are as many
  // as column pairs, else the column pairs (a step's few rows: each thread's share
  // of W_hh stays in its L2 from step to step).
  const bool split_rows = row_groups >= col_pairs;
  const int threads = gemm_threads(g.M * g.N * g.K, split_rows ? row_groups : col_pairs);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const TileConfig config;
    _tile_loadconfig(&config);
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t g0 = split_rows ? row_groups * t / nt : 0;
    const int64_t g1 = split_rows ? row_groups * (t + 1) / nt : row_groups;
    const int64_t p0 = split_rows ? 0 : col_pairs * t / nt;
    const int64_t p1 = split_rows ? col_pairs : col_pairs * (t + 1) / nt;
    const int64_t pairs = p1 - p0;
    const bool one_panel = chunks <= kPanelChunks;
    // Row groups a few at a time, so that their blocks' sums between panels stay in
    // L2 (kScratchBytes) while the packed operand streams past once per few groups.
    const int64_t chunk_groups = std::min<int64_t>(
        kMaxChunkGroups, one_panel ? kMaxChunkGroups
                                   : std::max<int64_t>(1, kScratchBytes / (pairs * 4 * kAmxSumValues * 4)));
    SumTiles scratch(one_panel ? 4 : chunk_groups * pairs * 4);
    PanelRows panel(chunk_groups);
    for (int64_t r0 = g0; r0 < g1; r0 += chunk_groups) {
      const int64_t r1 = std::min(g1, r0 + chunk_groups);
      for (int64_t c0 = 0; c0 < chunks; c0 += kPanelChunks) {
        const int64_t c1 = std::min(chunks, c0 + kPanelChunks);
        panel.copy(g, r0 * 2 * kAmxRows, r1 - r0, c0, c1);
        for (int64_t gi = r0; gi < r1; ++gi) {
          const int64_t row0 = gi * 2 * kAmxRows;
          const int tiles = 2 * gi + 1 < row_tiles ? 2 : 1;
          for (int64_t pi = p0; pi < p1; ++pi) {
            const int columns = 2 * pi + 1 < col_tiles ? 2 : 1;
            const int64_t block = one_panel ? 0 : ((gi - r0) * pairs + (pi - p0)) * 4;
            float* const sums[4] = {scratch.tile(block), scratch.tile(block + 1),
                                    scratch.tile(block + 2), scratch.tile(block + 3)};
            run_block_of(tiles, columns, sums, c0 == 0, panel.group(gi - r0),
                         b + 2 * pi * b_step + c0 * kAmxTileValues, b_step, c1 - c0);
            if (c1 == chunks) write_block(g, tiles, columns, sums, row0, 2 * pi * kAmxUnits);
          }
        }
      }
    }
    _tile_release();
  }
}

}  // namespace

// (With the AMX target of its own the exported function would be a clone of
// another name.)
void amx_gemm_bf16(const AmxGemm& g) { run_amx_gemm(g); }

}  // namespace cpu
}  // namespace rnnfused
