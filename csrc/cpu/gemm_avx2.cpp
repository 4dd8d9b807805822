// out = a @ w^T (+ bias), or a @ w with w stored [K, N], in float32 on AVX2 and
// FMA (simd.h's gemm_avx2): the library's GEMM on CPUs without AVX-512 whose BLAS
// runs a slow path. MKL on AMD's AVX2 CPUs takes its generic kernels: two Zen 2
// cores, 6400 x 2048 x 512 at ~145 GFLOP/s of the 214 the FMA loop reaches, and
// ~15 us of fixed cost a call (a 4 x 64 x 256 product). The layout is
// gemm_avx512.cpp's on 8-lane vectors: each 16-column panel of w is transposed in
// registers (8 x 8 blocks) into [kc, 16] (once for the whole product where several
// row blocks read it, else a depth at a time in an L1 buffer), each 6-row register
// block of `a` packed to [kc, 6] as it is first read (unless a unit's slice
// fits L1: packs_a), and the block's rows
// broadcast against the panel, 6 rows x 16 columns of accumulators at a time (12:
// Zen 2's FMA latency of 5 cycles on 2 ports needs 10), the units of work split
// as there (gemm_split.h). Products of up to 16 rows (or 32) by w [N, K] (a cell's)
// run transposed instead, w's rows read in place (few_rows).
// The standard headers come before the target pragma (see gemm_avx512.cpp).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

#pragma GCC target("avx2,fma,prfchw")

#include <immintrin.h>

#include "avx2_transpose.h"
#include "gemm_split.h"
#include "simd.h"

namespace rnnfused {
namespace cpu {
namespace {

constexpr int64_t kPanel = 16;   // columns of out (rows of w) per panel
constexpr int64_t kDepth = 256;  // k per buffered panel: 16 KB
constexpr int kRowBlock = 6;     // rows of `a` per register block

inline __m256i first_lanes(int64_t n) {
  const int count = static_cast<int>(std::clamp<int64_t>(n, 0, 8));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// dst[k * dst_stride + i] = src[i * ld + k] for k < kc, i < 8 (0 for rows i >=
// rows): 8 rows at a time transposed in registers. 8-float stores: where dst_stride
// is below 8 they spill into the next depth's place, which its store overwrites.
void transpose_rows(const float* src, int64_t ld, int64_t rows, int64_t kc, float* dst,
                    int64_t dst_stride) {
  for (int64_t kb = 0; kb < kc; kb += 8) {
    const __m256i cols = first_lanes(kc - kb);
    __m256 r[8];
    for (int64_t i = 0; i < 8; ++i) {
      r[i] = i < rows ? _mm256_maskload_ps(src + i * ld + kb, cols) : _mm256_setzero_ps();
    }
    transpose8(r);
    const int64_t depth = std::min<int64_t>(8, kc - kb);
    for (int64_t k = 0; k < depth; ++k) _mm256_storeu_ps(dst + (kb + k) * dst_stride, r[k]);
  }
}

// panel[k][c] = w[n0 + c][k0 + k] for k < kc, c < 16; 0 for rows n0 + c >= N.
void transpose_panel(const float* w, int64_t N, int64_t K, int64_t n0, int64_t k0, int64_t kc,
                     float* panel) {
  for (int64_t half = 0; half < 2; ++half) {
    const int64_t row0 = n0 + 8 * half;
    transpose_rows(w + std::min(row0, N) * K + k0, K, N - row0, kc, panel + 8 * half, kPanel);
  }
}

// panel[k][c] = w[k0 + k][n0 + c] for k < kc, c < 16 (0 past N): w stored [K, N]
// (copied all the same, as gemm_avx512.cpp's copy_panel).
void copy_panel(const float* w, int64_t N, int64_t n0, int64_t k0, int64_t kc, float* panel) {
  const __m256i m0 = first_lanes(N - n0), m1 = first_lanes(N - n0 - 8);
  for (int64_t k = 0; k < kc; ++k) {
    const float* row = w + (k0 + k) * N + n0;
    _mm256_store_ps(panel + k * kPanel, _mm256_maskload_ps(row, m0));
    _mm256_store_ps(panel + k * kPanel + 8, _mm256_maskload_ps(row + 8, m1));
  }
}

// A whole vector stored unmasked: Zen 2 runs vmaskmovps stores in microcode.
inline void store_lanes(float* p, __m256i m, bool whole, __m256 v) {
  if (whole) {
    _mm256_storeu_ps(p, v);
  } else {
    _mm256_maskstore_ps(p, m, v);
  }
}

// Rows [r0, r0 + rows) of `a` (rows <= 6; `a` by rows, lda_k 1) over depths
// [k0, k0 + kc) at packed[k * 6 + r], the layout row_block reads: its 6 broadcasts a
// step from one line, the block's whole slice streaming in order. (Read in place
// from L2, six rows' lines at once, the kernel ran at 62-82% of a Zen 2 core's FMA
// peak against 94-100% packed, whatever a's row stride.) Lanes past `rows` are
// zeros; each 8-float store spills 2 of them into the next depth's place, which the
// next store overwrites: `packed` holds kc * 6 + 2 floats.
void pack_rows(const NtGemm& g, int64_t r0, int64_t rows, int64_t k0, int64_t kc, float* packed) {
  transpose_rows(static_cast<const float*>(g.a) + r0 * g.lda + k0, g.lda, rows, kc, packed,
                 kRowBlock);
}

// Floats of one register block's packed slice of `a` (pack_rows), padded to whole lines.
constexpr int64_t kPackedBlockFloats = (kDepth * kRowBlock + 2 + 15) / 16 * 16;

// Rows [r0, r1) of `a` by columns (lda 1: a depth's rows side by side, the next
// depth's lda_k floats on, a page or more away for the weight gradients' d_pre^T)
// over depths [k0, k0 + kc), every register block's slice as pack_rows lays it out,
// kPackedBlockFloats apart: a depth's rows at once, so that each line is read once,
// with the lines kAhead depths on asked for meanwhile. (A block at a time, each
// read its 24 bytes of 256 lines 8 KB apart, which fall in 8 of L2's sets: the
// blocks after it read them again from L3.) Two Zen 2 cores, stand-alone 2048 x 512
// x 6400: ~157 -> ~164 GFLOP/s; in-process A/B, LSTM 100, 64, 512, 512 training
// 1.2-1.3% faster, GRU and RNN unchanged. 8-float stores: lanes 6 and 7 land in the
// next depth's place, which its store overwrites (the last one's in the padding).
void pack_columns(const NtGemm& g, int64_t r0, int64_t r1, int64_t k0, int64_t kc,
                  float* packed) {
  constexpr int64_t kAhead = 3;
  const float* a = static_cast<const float*>(g.a);
  for (int64_t k = 0; k < kc; ++k) {
    const float* depth = a + (k0 + k) * g.lda_k;
    if (k0 + k + kAhead < g.K) {
      const char* ahead = reinterpret_cast<const char*>(depth + kAhead * g.lda_k);
      for (int64_t r = r0; r < r1; r += 16) _mm_prefetch(ahead + r * sizeof(float), _MM_HINT_T0);
    }
    float* block = packed + k * kRowBlock;
    int64_t r = r0;
    // Whole vectors in the unit's rows loaded plainly (lanes 6 and 7 the next block's
    // first rows, overwritten as below), the last block or two masked: one Zen 2 core,
    // 256 x 64 x 50 (a small layer's weight gradient) 75 -> 79 GFLOP/s; large the same.
    for (; r + 8 <= r1; r += kRowBlock, block += kPackedBlockFloats) {
      _mm256_storeu_ps(block, _mm256_loadu_ps(depth + r));
    }
    for (; r < r1; r += kRowBlock, block += kPackedBlockFloats) {
      _mm256_storeu_ps(block, _mm256_maskload_ps(depth + r, first_lanes(r1 - r)));
    }
  }
}

// out[r][c] (+)= sum_k a[r][k] panel[k][c] for r < ROWS, c < 16 (lanes in m0, m1):
// each depth's products summed from 0 in registers, `bias` (last depth only) added
// to them, then out added where from_out (the later depths, or accumulating):
// blocked summation, as BLAS's. A sum of K terms then rounds ~sqrt(kDepth + K /
// kDepth) times a term's error rather than ~sqrt(K): summed straight through, an LSTM's
// (H 512, T 50, B 16) input gradient was 7 times as far from float64's as torch.nn's
// (largest error), its recurrent weight gradient (K = T * B) 4.4 times; now 1.6 and 1.3.
// a[r][k] at a + r * lda + k * ldk, one of the two strides 1 (kPacked: lda, the
// block packed by pack_rows, ldk 6; else ldk, `a` read in place). The loops over r
// are unrolled by pragma: else GCC kept the accumulators in registers and stored each
// to the stack every k as well (90 GFLOP/s against 171).
template <int ROWS, bool kPacked>
void row_block(const float* a, int64_t stride, const float* panel, int64_t kc, float* out,
               int64_t ldo, __m256i m0, __m256i m1, bool whole, const float* bias,
               bool from_out) {
  const int64_t lda = kPacked ? 1 : stride, ldk = kPacked ? stride : 1;
  __m256 acc0[ROWS], acc1[ROWS];
  _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) {
    acc0[r] = _mm256_setzero_ps();
    acc1[r] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 p0 = _mm256_load_ps(panel + k * kPanel);
    const __m256 p1 = _mm256_load_ps(panel + k * kPanel + 8);
    _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) {
      const __m256 x = _mm256_broadcast_ss(a + r * lda + k * ldk);
      acc0[r] = _mm256_fmadd_ps(x, p0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(x, p1, acc1[r]);
    }
  }
  if (bias != nullptr) {
    const __m256 b0 = _mm256_maskload_ps(bias, m0), b1 = _mm256_maskload_ps(bias + 8, m1);
    _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) {
      acc0[r] = _mm256_add_ps(acc0[r], b0);
      acc1[r] = _mm256_add_ps(acc1[r], b1);
    }
  }
  if (from_out) {
    _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) {
      acc0[r] = _mm256_add_ps(acc0[r], _mm256_maskload_ps(out + r * ldo, m0));
      acc1[r] = _mm256_add_ps(acc1[r], _mm256_maskload_ps(out + r * ldo + 8, m1));
    }
  }
  _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) {
    store_lanes(out + r * ldo, m0, whole, acc0[r]);
    store_lanes(out + r * ldo + 8, m1, whole, acc1[r]);
  }
}

using RowBlockFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t,
                            __m256i, __m256i, bool, const float*, bool);
template <bool kPacked>
constexpr RowBlockFn kRowBlocks[kRowBlock] = {
    row_block<1, kPacked>, row_block<2, kPacked>, row_block<3, kPacked>,
    row_block<4, kPacked>, row_block<5, kPacked>, row_block<6, kPacked>};

// Products of few rows (16 or fewer, or 32 in two groups: few_rows; `a` by rows,
// w [N, K]: a cell's, a step's of a small batch) run transposed, out^T = w @ a^T,
// against `a` packed once (few_rows_panel): the panel layout would transpose all of
// w a call, for M rows' use (an RNNCell's 8 x 128 x 128: ~3 of ~7 us on a Zen 2 core). A vector
// holds 4 rows of `a` at 2 depths each, so that one 64-bit broadcast of 2 depths
// of a row of w feeds an FMA per vector of rows, 2 (up to 8 rows) or 4: Zen 2
// issues one broadcast from memory a cycle, and with 8 rows a vector at one depth
// (a broadcast an FMA) the kernel ran at half its FMA rate. 12 accumulators, 6
// columns of out at a time (3 for 4 vectors): 8 (7) loads for 12 FMAs, as
// row_block. Stand-alone, one Zen 2 core: 8 x 128 x 128 38 -> 72 GFLOP/s, 16 x 512 x
// 128 61 -> 88. In-process A/B over 100 cell steps, H 128 (with one thread for an
// RNNCell's products, gemm_avx2), two Zen 2 vCPUs: B 8 GRUCell 15% faster, LSTMCell
// 17%, RNNCell 1-11% (runs differ); B 16 LSTMCell and GRUCell 13%, RNNCell 5%; B 12
// LSTMCell 6%; training 1-4%.
constexpr int64_t kFewRows = 16;
// Columns of out per unit: whole vectors of them, stored unmasked (Zen 2 runs
// masked stores in microcode: in units of 12, each unit's last 4 columns' masked
// stores took ~15% of a 16 x 512 x 128 product).
constexpr int64_t kFewColumns = 24;
constexpr int64_t kFewForkWork = kForkWork + 1;  // see gemm_avx2

// Up to 16 rows, or 32 in two groups of 16 (a batch of 32's step), each group its
// own panel of `a`. Stand-alone, two Zen 2 cores, against the panel path: 32 x 768 x
// 256 117 -> 170 GFLOP/s, 32 x 1024 x 256 140 -> 171, 32 x 512 x 128 123 -> 127;
// in-process over 100 cell steps, B 32, H 256: LSTMCell 17% faster, GRUCell 20%,
// training 4%. Not at other sizes: a part group wastes lanes and reads w again
// (26 x 512 x 128 111 -> 92), and at B 64, H 256 the LSTMCell ran 2% slower (64 x
// 1024 x 256 alone: 166 -> 172).
inline bool few_rows(const NtGemm& g) {
  return (g.M <= kFewRows || g.M == 2 * kFewRows) && g.lda_k == 1 && !g.w_kn;
}

// Vectors of rows of a few-row product's panel of `a` (4 rows each, at 2 depths):
// 2 up to 8 rows, else 4 (a group of 16).
inline int few_rows_vectors(const NtGemm& g) { return g.M <= 8 ? 2 : 4; }

// Floats of a panel of `a` (of a group, of a product of more rows): a vector per 4
// rows per pair of depths.
inline int64_t few_rows_panel_floats(const NtGemm& g) {
  return (g.K + 1) / 2 * 8 * few_rows_vectors(g);
}

// A few-row product's groups of up to kFewRows rows (each its own panel of `a`),
// and its units of kFewColumns columns per group.
inline int64_t few_rows_groups(const NtGemm& g) { return (g.M + kFewRows - 1) / kFewRows; }
inline int64_t few_rows_column_units(const NtGemm& g) {
  return (g.N + kFewColumns - 1) / kFewColumns;
}

// Rows [16 group, 16 group + 16) of few-row product g, as a product of their own.
inline NtGemm few_rows_group(const NtGemm& g, int64_t group) {
  NtGemm part = g;
  const int64_t r0 = group * kFewRows;
  part.M = std::min(kFewRows, g.M - r0);
  part.a = static_cast<const float*>(g.a) + r0 * g.lda;
  part.out = static_cast<float*>(g.out) + r0 * g.ldo;
  return part;
}

// panel[(d * V + v) * 8 + 2r + j] = a[4v + r][2d + j] for V = few_rows_vectors
// (0 past M rows or K depths): each 4 rows a 4 x 4 transpose of depth pairs
// (64-bit lanes).
void few_rows_panel(const NtGemm& g, float* panel) {
  const float* a = static_cast<const float*>(g.a);
  const int64_t pairs = (g.K + 1) / 2, vectors = few_rows_vectors(g);
  for (int64_t v = 0; v < vectors; ++v) {
    for (int64_t kb = 0; kb < g.K; kb += 8) {
      const __m256i depths = first_lanes(g.K - kb);
      __m256d r[4];
      for (int64_t i = 0; i < 4; ++i) {
        const int64_t row = 4 * v + i;
        r[i] = _mm256_castps_pd(row < g.M ? _mm256_maskload_ps(a + row * g.lda + kb, depths)
                                          : _mm256_setzero_ps());
      }
      const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
      const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
      const __m256d pair[4] = {  // pair[i]: depth pair kb / 2 + i of the 4 rows
          _mm256_permute2f128_pd(t0, t2, 0x20), _mm256_permute2f128_pd(t1, t3, 0x20),
          _mm256_permute2f128_pd(t0, t2, 0x31), _mm256_permute2f128_pd(t1, t3, 0x31)};
      const int64_t count = std::min<int64_t>(4, pairs - kb / 2);
      for (int64_t i = 0; i < count; ++i) {
        _mm256_store_pd(reinterpret_cast<double*>(panel + ((kb / 2 + i) * vectors + v) * 8),
                        pair[i]);
      }
    }
  }
}

// The products of depth pair d (kOneDepth: its first depth alone, w's next float
// being past its row, maybe past its end: the broadcast's second lanes are 0, as
// the panel's are, so that an infinite w gives inf there, not inf * 0 = NaN).
template <int COLS, int V, bool kOneDepth>
inline void few_rows_step(const float* w, int64_t K, const float* panel, int64_t d,
                          __m256 (&acc)[COLS][V]) {
  __m256 rows[V];
  _Pragma("GCC unroll 4") for (int v = 0; v < V; ++v) {
    rows[v] = _mm256_load_ps(panel + (d * V + v) * 8);
  }
  _Pragma("GCC unroll 6") for (int c = 0; c < COLS; ++c) {
    const float* depths = w + c * K + 2 * d;
    const __m256 x =
        kOneDepth ? _mm256_castpd_ps(_mm256_broadcastsd_pd(_mm_castps_pd(_mm_load_ss(depths))))
                  : _mm256_castpd_ps(
                        _mm256_broadcast_sd(reinterpret_cast<const double*>(depths)));
    _Pragma("GCC unroll 4") for (int v = 0; v < V; ++v) {
      acc[c][v] = _mm256_fmadd_ps(x, rows[v], acc[c][v]);
    }
  }
}

// sums[c][r] = sum_k w[c][k] a[r][k] for COLS rows c of w (row stride K) and
// every row r < 4V of the panel.
template <int COLS, int V>
void few_rows_block(const float* w, int64_t K, const float* panel, float (*sums)[kFewRows]) {
  __m256 acc[COLS][V];
  _Pragma("GCC unroll 6") for (int c = 0; c < COLS; ++c) {
    _Pragma("GCC unroll 4") for (int v = 0; v < V; ++v) acc[c][v] = _mm256_setzero_ps();
  }
  const int64_t pairs = K / 2;
  for (int64_t d = 0; d < pairs; ++d) few_rows_step<COLS, V, false>(w, K, panel, d, acc);
  if (pairs * 2 < K) few_rows_step<COLS, V, true>(w, K, panel, pairs, acc);
  // Vectors 2i and 2i + 1's lanes summed in pairs: rows [0, 1, 4, 5 | 2, 3, 6, 7]
  // of the 8 they hold, then in row order.
  const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
  _Pragma("GCC unroll 6") for (int c = 0; c < COLS; ++c) {
    _Pragma("GCC unroll 2") for (int v = 0; v < V; v += 2) {
      _mm256_store_ps(sums[c] + 4 * v, _mm256_permutevar8x32_ps(
                                           _mm256_hadd_ps(acc[c][v], acc[c][v + 1]), order));
    }
  }
}

using FewRowsFn = void (*)(const float*, int64_t, const float*, float (*)[kFewRows]);
// [vectors / 4][columns - 1]: 6 columns a block with 2 vectors, 3 with 4.
constexpr FewRowsFn kFewRowsBlocks[2][6] = {
    {few_rows_block<1, 2>, few_rows_block<2, 2>, few_rows_block<3, 2>, few_rows_block<4, 2>,
     few_rows_block<5, 2>, few_rows_block<6, 2>},
    {few_rows_block<1, 4>, few_rows_block<2, 4>, few_rows_block<3, 4>, nullptr, nullptr,
     nullptr}};

// Unit u of a few-row product: out's columns [24u, 24u + 24), its panel at
// `panel`. Stored as row_block stores: out (if accumulating) plus the products,
// plus the bias.
void run_few_rows_unit(const NtGemm& g, int64_t u, const float* panel) {
  const int64_t n0 = u * kFewColumns, cols = std::min(kFewColumns, g.N - n0);
  const int vectors = few_rows_vectors(g);
  const int64_t block = 12 / vectors;  // columns a register block: 12 accumulators
  alignas(32) float sums[kFewColumns][kFewRows];  // rows from 4 * vectors on: unused
  const float* w = static_cast<const float*>(g.w) + n0 * g.K;
  for (int64_t c = 0; c < cols; c += block) {
    kFewRowsBlocks[vectors / 4][std::min(block, cols - c) - 1](w + c * g.K, g.K, panel, sums + c);
  }
  const float* bias = static_cast<const float*>(g.bias);
  float* out = static_cast<float*>(g.out) + n0;
  for (int64_t r0 = 0; r0 < g.M; r0 += 8) {
    for (int64_t c0 = 0; c0 < cols; c0 += 8) {
      __m256 rows[8];
      for (int64_t i = 0; i < 8; ++i) {
        rows[i] = c0 + i < cols ? _mm256_load_ps(sums[c0 + i] + r0) : _mm256_setzero_ps();
      }
      transpose8(rows);  // rows[r][i] = sums[c0 + i][r0 + r]
      const int64_t width = std::min<int64_t>(8, cols - c0);
      const __m256i mask = first_lanes(width);
      const __m256 b =
          bias != nullptr ? _mm256_maskload_ps(bias + n0 + c0, mask) : _mm256_setzero_ps();
      for (int64_t r = 0; r < std::min<int64_t>(8, g.M - r0); ++r) {
        float* dst = out + (r0 + r) * g.ldo + c0;
        const __m256 v =
            g.accumulate ? _mm256_add_ps(_mm256_maskload_ps(dst, mask), rows[r]) : rows[r];
        store_lanes(dst, mask, width == 8, _mm256_add_ps(v, b));
      }
    }
  }
}

inline int64_t few_rows_units(const NtGemm& g) {
  return few_rows_groups(g) * few_rows_column_units(g);
}

// Whether product g's units pack their slices of `a` (pack_rows): always for `a`
// by columns; by rows once a unit's slice of a depth outgrows L1 (a cell's 8 x 128
// is read in place: packed, its step ran 2-4% slower on two Zen 2 vCPUs).
inline bool packs_a(const NtGemm& g, const GemmSplit& s) {
  constexpr int64_t kL1Floats = 32 * 1024 / sizeof(float);
  return g.lda_k != 1 || s.rows * std::min(g.K, kDepth) > kL1Floats;
}

// Panel p of w over depths [k0, k0 + kc) at dst, [kc, 16]: copied where w is
// stored [K, N], else transposed. A unit's L1 buffer takes a depth at a time; the
// packed panels (gemm_split.h's panel_floats) all of K.
void form_panel(const NtGemm& g, int64_t p, int64_t k0, int64_t kc, float* dst) {
  const float* w = static_cast<const float*>(g.w);
  if (g.w_kn) {
    copy_panel(w, g.N, p * kPanel, k0, kc, dst);
  } else {
    transpose_panel(w, g.N, g.K, p * kPanel, k0, kc, dst);
  }
}

// This thread's share of g's panels over all of K, in a parallel region (or alone).
void pack_share(const NtGemm& g, float* packed) {
  pack_thread_share((g.N + kPanel - 1) / kPanel, g.K, kPanel, packed,
                    [&](int64_t p, float* dst) { form_panel(g, p, 0, g.K, dst); });
}

// Unit u of product g (gemm_split.h): its panel group over its row block, the
// panels read from `packed` (pack_share, all of w) when not null, else formed
// a depth at a time in an L1 buffer; its rows' slice of `a` packed a depth at a
// time into `a_packed` (kPackedBlockFloats a register block) as the group's
// first panel reaches them where packs_a, else read in place.
void run_unit(const NtGemm& g, const GemmSplit& s, int64_t u, const float* packed,
              float* a_packed) {
  const float* bias = static_cast<const float*>(g.bias);
  float* out = static_cast<float*>(g.out);
  if (g.K == 0) return fill_without_depth(g.M, g.N, bias, out, g.ldo, g.accumulate);
  alignas(32) float buffer[kDepth * kPanel];
  const float* panel = buffer;
  const int64_t first_panel = s.first_panel(u), first_row = s.first_row(u);
  const int64_t last_row = s.end_row(u, g.M);
  const bool pack_a = packs_a(g, s);
  const bool claim_out = has_prefetchw();
  const float* a_in_place = static_cast<const float*>(g.a);
  walk_unit(
      s, u, g.M, g.K, kDepth,
      [&](int64_t p, int64_t k0, int64_t kc) {
        if (packed != nullptr) {
          panel = packed + (p * g.K + k0) * kPanel;
        } else {
          form_panel(g, p, k0, kc, buffer);
        }
      },
      [&](int64_t r0, int64_t rows, int64_t p, int64_t k0, int64_t kc) {
        const int64_t n0 = p * kPanel;
        const bool last = k0 + kc == g.K;
        const float* a = a_in_place + r0 * g.lda + k0;
        if (pack_a) {
          float* block = a_packed + (r0 - first_row) / kRowBlock * kPackedBlockFloats;
          if (p == first_panel) {
            // By rows a block at a time; by columns all the unit's rows at its first block.
            if (g.lda_k == 1) {
              pack_rows(g, r0, rows, k0, kc, block);
            } else if (r0 == first_row) {
              pack_columns(g, first_row, last_row, k0, kc, a_packed);
            }
          }
          a = block;
        }
        // The next block's out tile asked for now: its lines, a row stride apart
        // (8 KB for a 2048-column projection), otherwise miss when it starts. For
        // writing where the CPU has PREFETCHW: the loops' threads read the input
        // projection's buffer a chunk before (two Zen 2 cores, in-process A/B: LSTM
        // 100, 64, 512, 512 forward 1-3% faster, RNN 2-3%, training unchanged).
        for (int64_t r = r0 + kRowBlock; r < std::min(last_row, r0 + 2 * kRowBlock); ++r) {
          const float* line = out + r * g.ldo + n0;
          if (claim_out) {
            __builtin_prefetch(line, /*rw=*/1, /*locality=*/3);
            __builtin_prefetch(line + kPanel - 1, 1, 3);  // the tile's second line, if any
          } else {
            _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T0);
          }
        }
        (pack_a ? kRowBlocks<true> : kRowBlocks<false>)[rows - 1](
            a, pack_a ? kRowBlock : g.lda, panel, kc, out + r0 * g.ldo + n0, g.ldo,
            first_lanes(g.N - n0), first_lanes(g.N - n0 - 8), g.N - n0 >= kPanel,
            last && bias ? bias + n0 : nullptr, k0 > 0 || g.accumulate);
      });
}

}  // namespace

void gemm_avx2(const NtGemm* gemms, int count) {
  GemmSplit splits[kMaxNtGemms];
  int64_t first[kMaxNtGemms + 1] = {0};  // product j's units: [first[j], first[j + 1])
  // Product j's panels packed once for all its units where more than one row
  // block reads each and the caller has not (NtGemm::w_packed); without the
  // memory, each unit forms its panels. (Two Zen 2 cores, 6400 x 2048 x 512 NT:
  // 131 -> 151 GFLOP/s, best of four.)
  std::unique_ptr<float[], FreeDeleter> packed[kMaxNtGemms];
  bool any_packed = false;
  int64_t work = 0, most_rows = 0, most_few_floats = 0;
  bool all_few = true;
  for (int j = 0; j < count; ++j) {
    const NtGemm& g = gemms[j];
    work += g.M * g.N * g.K;
    const bool few = few_rows(g);
    all_few = all_few && few;
    if (few) {
      first[j + 1] = first[j] + few_rows_units(g);
      most_few_floats =
          std::max(most_few_floats, few_rows_groups(g) * few_rows_panel_floats(g));
      continue;
    }
    // Here, not in the threads: split_gemm reads omp_get_max_threads(), which a
    // parallel region may answer differently.
    // Each unit over up to 32 panels (all of N up to 512), so that a row block's
    // slice of `a` is packed once a depth for 32 panels, not 8. `a` by columns (the
    // weight gradients' d_pre^T, its reads a line a page apart per step of k): two
    // Zen 2 cores, LSTM 100, 64, 512, 512's 2048 x 6400 x 512 103 -> 143 GFLOP/s
    // (MKL 139); by rows, with split_gemm's row blocks even: the input projection's
    // 512-row chunks, 512 x 2048 x 512, 150 -> 181 (173 in groups of 8; 64 and 128
    // panels the same as 32), 6400 x 2048 x 512 164 -> 179, the other shapes of the
    // layers the same or up to 8% faster. From M 1024, `a` by columns takes units of
    // 64 register blocks (split_gemm's a_by_columns): 2048 x 6400 x 512 -> 161;
    // 512 x 1600 x 128 (a bidirectional layer's): 144, against 117 in the taller units.
    constexpr int64_t kTallColumnsRows = 1024;
    constexpr int64_t kMostGroup = 32;
    const bool columns = g.lda_k != 1;
    splits[j] = split_gemm(g.M, g.N, g.K, /*a_by_columns=*/columns && g.M >= kTallColumnsRows,
                           kPanel, kRowBlock, kMostGroup);
    most_rows = std::max(most_rows, splits[j].rows);
    first[j + 1] = first[j] + splits[j].units();
    if (g.w_packed == nullptr && splits[j].blocks > 1 && !splits[j].no_depth && !splits[j].empty) {
      packed[j] = aligned_floats(gemm_avx2_panel_floats(g.N, g.K));
      any_packed = any_packed || packed[j] != nullptr;
    }
  }
  const int64_t units = first[count];
  // Few-row products fork above 2^18 multiply-adds: an RNNCell's two 8 x 128 x 128
  // (2^18 together) ran 6.6% faster on one thread over B 8, H 128 steps (two Zen 2
  // vCPUs); a GRUCell's pair (3 x 2^18) is faster split.
  const int threads = gemm_threads(work, units, all_few ? kFewForkWork : kForkWork);
  // Each thread's packed slices of `a`: a unit's rows, a register block at a time.
  // Or, for few rows, the panels of `a`, one a group (few_rows_panel: each thread
  // packs all of a product's for its units of it, which read all of them).
  const int64_t slice_floats = std::max(
      kPackedBlockFloats * std::max<int64_t>(1, most_rows / kRowBlock), most_few_floats);
  float* const slices = calling_thread_scratch(slice_floats * threads);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    float* const a_packed = slices + slice_floats * omp_get_thread_num();
    if (any_packed) {
      for (int j = 0; j < count; ++j) {
        if (packed[j] != nullptr) pack_share(gemms[j], packed[j].get());
      }
#pragma omp barrier
    }
    int paneled = -1;  // the product whose few-row panels a_packed holds
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) {
      int j = 0;
      while (u >= first[j + 1]) ++j;
      if (few_rows(gemms[j])) {
        // Every group's panel packed once by each thread; each column unit's groups in
        // turn, so that they read its columns of w from cache.
        const NtGemm& g = gemms[j];
        const int64_t groups = few_rows_groups(g), group_floats = few_rows_panel_floats(g);
        if (paneled != j) {
          for (int64_t i = 0; i < groups; ++i) {
            few_rows_panel(few_rows_group(g, i), a_packed + i * group_floats);
          }
        }
        paneled = j;
        const int64_t group = (u - first[j]) % groups;
        run_few_rows_unit(few_rows_group(g, group), (u - first[j]) / groups,
                          a_packed + group * group_floats);
        continue;
      }
      run_unit(gemms[j], splits[j], u - first[j],
               gemms[j].w_packed != nullptr ? gemms[j].w_packed : packed[j].get(), a_packed);
    }
  }
}

int64_t gemm_avx2_panel_floats(int64_t N, int64_t K) { return panel_floats(N, K, kPanel); }

void pack_gemm_avx2_panels(const NtGemm& g, float* dst) {
  pack_all_panels(g.N, g.K, kPanel, dst,
                  [&](int64_t p, float* at) { form_panel(g, p, 0, g.K, at); });
}

}  // namespace cpu
}  // namespace rnnfused
