// out = a @ w^T (+ bias) for few rows of `a` or small products, float32, AVX-512
// (simd.h's gemm_nt_small_avx512). A cell's step, the per-step GEMMs of the
// unfused loops and small input projections multiply few rows by weights stored
// [N, K], the layout torch.nn keeps: the CPU BLAS runs that "NT" product at about
// half its rate for the same product with w^T stored (61 vs 141 GFLOP/s at
// 8 x 128 x 512 on one core). From 4 rows each 32-row panel of w is transposed in
// registers (16 x 16 blocks) into an L1 buffer [kc, 32] (or read from the panels a
// caller packed once for several products: pack_gemm_avx512_panels), and the rows
// of `a` are broadcast against it, 12 rows x 32 columns of accumulators at a time
// (24 of the 32 registers), read in place or, at strides that read slowly on a 32
// KB L1 (Zen 4), from a per-thread copy made a depth at a time (packs_a); below 4
// rows, dot products along k. The panels of one or two
// products are split between the threads in one parallel region. 16-bit
// (bfloat16, float16) weights widen as they load; 16-bit rows, bias and out go
// through float32 copies.
// The standard headers come before the target pragma: GCC 13 fails to inline
// std::allocator's members into implicitly defined destructors declared after it
// ("target specific option mismatch", fixed in GCC 14.2).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include "avx512_transpose.h"
#include "bf16_avx512.h"
#include "gemm_split.h"
#include "simd.h"

namespace rnnfused {
namespace cpu {
namespace {

constexpr int64_t kPanel = 32;   // columns of out (rows of w) per panel
// 12 rows x 256 deep rather than 8 x 128: two Zen 5 cores, alternating builds,
// 6400 x 512 x 2048 NN 425 -> 475 GFLOP/s, 512 x 2048 x 512 NT (the input
// projection's chunks) 444 -> 490, 2048 x 512 x 6400 TN (weight gradients) 381 ->
// 430, 8 x 512 x 128 unchanged; 14 rows no better. (Packing `a` by columns for the
// TN, as gemm_avx2 does: no gain there at 768-row units, slower at 192; on 32 KB
// L1s it is copied at some strides: packs_a.)
constexpr int64_t kDepth = 256;  // k per buffered panel: 32 KB
constexpr int kRowBlock = 12;    // rows of `a` per register block

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << n) - 1);
}

// The 16-bit element types, as their bits.
struct Bf16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};

// The first lanes (mask m) of 16 values from p, widened to float32
// (bf16_avx512.h), and 16 floats rounded to a 16-bit type.
inline __m512 load_lanes(__mmask16 m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load_lanes(__mmask16 m, const Bf16* p) {
  return widen_bf16(_mm256_maskz_loadu_epi16(m, p));
}
inline __m512 load_lanes(__mmask16 m, const F16* p) {
  return widen_f16(_mm256_maskz_loadu_epi16(m, p));
}
inline __m256i rounded(__m512 v, const Bf16*) { return narrow_bf16(v); }
inline __m256i rounded(__m512 v, const F16*) { return narrow_f16(v); }

// rows x n 16-bit values (row stride ld_from) -> float32 (row stride ld_to) and
// back, 16 at a time.
template <typename T>
void widen(const T* from, int64_t ld_from, float* to, int64_t ld_to, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = first_lanes(n - i);
      _mm512_mask_storeu_ps(to + r * ld_to + i, m, load_lanes(m, from + r * ld_from + i));
    }
  }
}

template <typename T>
void narrow(const float* from, int64_t ld_from, T* to, int64_t ld_to, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = first_lanes(n - i);
      const __m512 v = _mm512_maskz_loadu_ps(m, from + r * ld_from + i);
      _mm256_mask_storeu_epi16(to + r * ld_to + i, m, rounded(v, to));
    }
  }
}

// dst[k * ld_dst + i] = src[i * ld_src + k] for k < kc and the lanes i of `stored`
// (0 for i >= rows), widened to float32: up to 16 rows transposed into depth-major
// order, 16 x 16 blocks through the registers.
template <typename W>
void transpose_rows(const W* src, int64_t ld_src, int64_t rows, int64_t kc, float* dst,
                    int64_t ld_dst, __mmask16 stored) {
  for (int64_t kb = 0; kb < kc; kb += 16) {
    const __mmask16 cols = first_lanes(kc - kb);
    __m512 r[16];
    for (int64_t i = 0; i < 16; ++i) {
      r[i] = i < rows ? load_lanes(cols, src + i * ld_src + kb) : _mm512_setzero_ps();
    }
    transpose16(r);
    for (int64_t k = 0; k < std::min<int64_t>(16, kc - kb); ++k) {
      _mm512_mask_storeu_ps(dst + (kb + k) * ld_dst, stored, r[k]);
    }
  }
}

// panel[k][c] = w[n0 + c][k0 + k] for k < kc, c < 32; 0 for rows n0 + c >= N.
template <typename W>
void transpose_panel(const W* w, int64_t N, int64_t K, int64_t n0, int64_t k0, int64_t kc,
                     float* panel) {
  for (int64_t half = 0; half < 2; ++half) {
    const int64_t row0 = n0 + 16 * half, rows = std::max<int64_t>(0, N - row0);
    transpose_rows(rows > 0 ? w + row0 * K + k0 : w, K, rows, kc, panel + 16 * half, kPanel,
                   __mmask16(0xffff));
  }
}

// panel[k][c] = w[k0 + k][n0 + c] for k < kc, c < 32 (0 past N): w stored [K, N],
// its rows already the panel's (copied all the same: read in place, at N's row
// stride, the product ran at half the rate).
template <typename W>
void copy_panel(const W* w, int64_t N, int64_t n0, int64_t k0, int64_t kc, float* panel) {
  const __mmask16 m0 = first_lanes(N - n0);
  const __mmask16 m1 = N - n0 > 16 ? first_lanes(N - n0 - 16) : __mmask16(0);
  for (int64_t k = 0; k < kc; ++k) {
    const W* row = w + (k0 + k) * N + n0;
    _mm512_store_ps(panel + k * kPanel, load_lanes(m0, row));
    _mm512_store_ps(panel + k * kPanel + 16, load_lanes(m1, row + 16));
  }
}

// The loops over a register block's rows and columns below are unrolled by
// pragma: past GCC's own limit (12 rows) it kept the accumulator arrays on the
// stack outside the k loop, zeroed by REP STOSQ and spilled after it (a fixed cost
// a call: two Zen 5 cores, large products 5% faster unrolled, few rows 7-10%).
// out[r][c] (+)= sum_k a[r][k] panel[k][c] for r < ROWS, c < 32 (lanes in `m0`, `m1`):
// each depth's products summed from 0 in registers, `bias` (on the last depth, else
// null) added to them, then out itself where from_out (the later depths, or
// accumulating), as the BLAS adds C: blocked summation (gemm_avx2.cpp's row_block).
// a[r][k] at a + r * lda + k * ldk with one of the two strides 1 (kColumns: lda,
// a the transpose of a contiguous matrix, the weight gradients' d_pre^T; else
// ldk), so that the row block's eight broadcasts are fixed offsets from one
// address that moves once a step (a runtime stride for both: 2x slower).
template <int ROWS, bool kColumns>
void row_block(const float* a, int64_t stride, const float* panel, int64_t kc, float* out,
               int64_t ldo, __mmask16 m0, __mmask16 m1, const float* bias, bool from_out) {
  const int64_t lda = kColumns ? 1 : stride, ldk = kColumns ? stride : 1;
  __m512 acc0[ROWS], acc1[ROWS];
#pragma GCC unroll 16
  for (int r = 0; r < ROWS; ++r) {
    acc0[r] = _mm512_setzero_ps();
    acc1[r] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 p0 = _mm512_load_ps(panel + k * kPanel);
    const __m512 p1 = _mm512_load_ps(panel + k * kPanel + 16);
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * lda + k * ldk]);
      acc0[r] = _mm512_fmadd_ps(x, p0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(x, p1, acc1[r]);
    }
  }
  if (bias != nullptr) {
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, bias), b1 = _mm512_maskz_loadu_ps(m1, bias + 16);
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
      acc0[r] = _mm512_add_ps(acc0[r], b0);
      acc1[r] = _mm512_add_ps(acc1[r], b1);
    }
  }
  if (from_out) {
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) {
      acc0[r] = _mm512_add_ps(acc0[r], _mm512_maskz_loadu_ps(m0, out + r * ldo));
      acc1[r] = _mm512_add_ps(acc1[r], _mm512_maskz_loadu_ps(m1, out + r * ldo + 16));
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < ROWS; ++r) {
    _mm512_mask_storeu_ps(out + r * ldo, m0, acc0[r]);
    _mm512_mask_storeu_ps(out + r * ldo + 16, m1, acc1[r]);
  }
}

using RowBlockFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t,
                            __mmask16, __mmask16, const float*, bool);
template <bool kColumns>
constexpr RowBlockFn kRowBlocks[kRowBlock] = {
    row_block<1, kColumns>, row_block<2, kColumns>, row_block<3, kColumns>,
    row_block<4, kColumns>, row_block<5, kColumns>, row_block<6, kColumns>,
    row_block<7, kColumns>, row_block<8, kColumns>, row_block<9, kColumns>,
    row_block<10, kColumns>, row_block<11, kColumns>, row_block<12, kColumns>};

// v[16] -> one vector whose lane p is the sum of v[p]'s lanes (pairs of vectors
// interleaved and added, four times).
inline __m512 sum_lanes16(const __m512 (&v)[16]) {
  __m512 s[8], r[4], q[2];
  for (int i = 0; i < 8; ++i) {
    s[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d c = _mm512_castps_pd(s[2 * i]), d = _mm512_castps_pd(s[2 * i + 1]);
    r[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(c, d)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)));
  }
  for (int i = 0; i < 2; ++i) {
    q[i] = _mm512_add_ps(_mm512_shuffle_f32x4(r[2 * i], r[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(r[2 * i], r[2 * i + 1], 0xdd));
  }
  return _mm512_add_ps(_mm512_shuffle_f32x4(q[0], q[1], 0x88),
                       _mm512_shuffle_f32x4(q[0], q[1], 0xdd));
}

// out[i][j] = sum_k a[i][k] w[j][k] (+ bias[j]) for i < mr <= MR, j < nr <= NR as
// dot products along k: MR * NR = 16 vectors of partial sums, reduced together at
// the end. For 1-3 rows, where transposing w would cost more than the products.
// Rows past mr / nr repeat the last one (their sums are not stored).
template <int MR, int NR, typename W>
void dot_block(int64_t mr, int64_t nr, int64_t K, const float* a, int64_t lda, const W* w,
               int64_t ldw, const float* bias, float* out, int64_t ldo) {
  static_assert(MR * NR == 16 && (NR == 8 || NR == 16), "1 x 16 or 2 x 8 outputs");
  __m512 acc[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  const W* w_rows[NR];
  const float* a_rows[MR];
#pragma GCC unroll 16
  for (int j = 0; j < NR; ++j) w_rows[j] = w + std::min<int64_t>(j, nr - 1) * ldw;
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) a_rows[i] = a + std::min<int64_t>(i, mr - 1) * lda;
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 m = first_lanes(K - k);
    __m512 wv[NR];
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) wv[j] = load_lanes(m, w_rows[j] + k);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_maskz_loadu_ps(m, a_rows[i] + k);
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) acc[i * NR + j] = _mm512_fmadd_ps(av, wv[j], acc[i * NR + j]);
    }
  }
  __m512 sums = sum_lanes16(acc);  // lane i * NR + j: out[i][j]
  if (bias != nullptr) {
    __m512 b = _mm512_maskz_loadu_ps(first_lanes(nr), bias);  // lanes j < nr
    if (NR == 8) b = _mm512_shuffle_f32x4(b, b, 0x44);         // both rows' lanes
    sums = _mm512_add_ps(sums, b);
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sums);
  for (int64_t i = 0; i < mr; ++i) {
    for (int64_t j = 0; j < nr; ++j) out[i * ldo + j] = lanes[i * NR + j];
  }
}

// Rows [r0, r1) of out by dot_block, MR rows x NR columns at a time.
template <int MR, int NR, typename W>
void dot_rows(int64_t r0, int64_t r1, int64_t N, int64_t K, const float* a, int64_t lda,
              const W* w, const float* bias, float* out, int64_t ldo) {
  for (int64_t n0 = 0; n0 < N; n0 += NR) {
    for (int64_t m0 = r0; m0 < r1; m0 += MR) {
      dot_block<MR, NR, W>(std::min<int64_t>(MR, r1 - m0), std::min<int64_t>(NR, N - n0), K,
                           a + m0 * lda, lda, w + n0 * K, K, bias ? bias + n0 : nullptr,
                           out + m0 * ldo + n0, ldo);
    }
  }
}


using Split = GemmSplit;  // of a product of 4+ rows (split_of)

// One product as the kernels take it: rows, bias and out in float32, the weights
// float32 or 16-bit (`W` of the kernels).
struct Product {
  int64_t M, N, K;
  const float* a;
  int64_t lda;
  const void* w;
  Storage w_type;
  const float* bias;
  float* out;
  int64_t ldo;
  bool w_kn;        // w stored [K, N]: panels copied, not transposed
  bool accumulate;  // out += the product
  int64_t lda_k;    // a's stride along k: 1, or lda is 1 (float32 w_kn only)
  // w's panels over all of K (pack_gemm_avx512_panels), or null: each unit then
  // forms its own a depth at a time. Packed by the caller only: here, packing all
  // of w for one product ran slower than forming each panel per row block (two Zen
  // 5 cores, 512 x 2048 x 512 NT 470 against 520 GFLOP/s, 2048 x 2048 x 512 even;
  // for w stored [K, N] 1-3% faster, the LSTM's training within 1%).
  const float* w_packed;
  Split split{};    // set once, before the units run (their threads read it)
};

// Units of work of one product: its 32-column panels over a block of rows where
// the panel kernel runs (4 rows or more), its 64-column slices where the dot
// products run, else (K = 0) the whole product.
constexpr int64_t kDotColumns = 64;

// Dot products for 1-3 rows of w stored [N, K]; w stored [K, N] needs no transpose.
bool takes_dots(const Product& g) { return g.M < 4 && !g.w_kn; }

// How a product of 4+ rows splits into units (gemm_split.h).
Split split_of(const Product& g) {
  return split_gemm(g.M, g.N, g.K, g.lda_k != 1, kPanel, kRowBlock);
}

int64_t units_of(const Product& g) {
  if (!g.split.empty && !g.split.no_depth && takes_dots(g)) {
    return (g.N + kDotColumns - 1) / kDotColumns;
  }
  return g.split.units();  // the panels' units, 1 at K = 0, none without rows or columns
}

// Columns [u * kDotColumns, ...) of a product of 1-3 rows: 2 x 8 or 1 x 16 outputs at a time.
template <typename W>
void run_dot_slice(const Product& g, int64_t u) {
  const int64_t n0 = u * kDotColumns, n = std::min(kDotColumns, g.N - n0);
  const W* w = static_cast<const W*>(g.w) + n0 * g.K;
  const float* bias = g.bias ? g.bias + n0 : nullptr;
  float* out = g.out + n0;
  if (g.M >= 2) dot_rows<2, 8>(0, 2, n, g.K, g.a, g.lda, w, bias, out, g.ldo);
  if (g.M % 2 == 1) dot_rows<1, 16>(g.M - 1, g.M, n, g.K, g.a, g.lda, w, bias, out, g.ldo);
}

// Panel p of g's w over depths [k0, k0 + kc) at dst, [kc, 32]: copied where w is
// stored [K, N], else transposed. run_panel's L1 buffer takes a depth at a time;
// the packed panels (pack_gemm_avx512_panels, gemm_split.h's panel_floats) all of K.
template <typename W>
void form_panel(const Product& g, int64_t p, int64_t k0, int64_t kc, float* dst) {
  const W* w = static_cast<const W*>(g.w);
  if (g.w_kn) {
    copy_panel(w, g.N, p * kPanel, k0, kc, dst);
  } else {
    transpose_panel(w, g.N, g.K, p * kPanel, k0, kc, dst);
  }
}

// Whether g's units copy their rows of `a` a depth at a time (pack_rows,
// pack_columns) rather than read them in place: on a small L1 (small_l1_cache), where
// a's stride is one at which reading in place measured slow (the backward's own
// gradients on the pre-activations, which the measurements below were made on, now
// have rows padded past these strides instead: gradient_row_floats, simd.h). By
// rows (an input projection, a cell's products): a multiple of 4 KB, a block's 12
// rows then in one set of the 8-way L1 (from 9 rows: 8 fit its ways; LSTMCell B 8,
// H 1024 steps 3.5% and RNNCell B 4 6% slower copied, B 16 RNN / GRU cells 10-17%
// faster, in-process A/B, noise ~5%). By columns (a d_pre^T, a line per depth, its
// stride a layer's G * H): 2, 4 or 8 KB, in units of 4 panels
// or more, each of which reuses the copy. Two Zen 4 vCPUs, alone, M x K x N in GFLOP/s, in place ->
// copied: NN 6400 x 2048 x 512 175 -> 193, 6400 x 1024 x 512 169 -> 185, a
// stride of 3072 floats 135 -> 175; TN 512 x 6400 x 512 142 -> 168, 1024 x 3200 x
// 256 135 -> 159, 2048 x 6400 x 512 163 -> 181; but TN at strides of 1536 (a GRU
// of 512 units) 176 -> 169 and 16 KB 197-201 -> 161-176, NN at 2 KB 163 -> 159 and
// TN in units of one panel (512 x 1600 x 128) -35%, which read in place; NT (the
// input projection, `a` by rows) as NN: 6400 x 1024 x 1024 150 -> 179, 512 x 2048 x
// 1536 164 -> 180. Layers, in-process A/B, training: LSTM 100, 64, 512, 512 5-9%
// faster, 100, 32, 256, 256 12-17%, 100, 16, 1024, 1024 13%, RNN 100, 64, 512, 512
// 6-8%, 50, 32, 1024, 1024 13%; forward: LSTM 100, 16, 1024, 1024 13%, RNN and GRU
// with I 1024-2048 within 2%; shapes where nothing is copied within the noise (4%).
bool packs_a(const Product& g) {
  if (!small_l1_cache()) return false;
  constexpr int64_t kKb = 1024 / sizeof(float);
  constexpr int64_t kL1Ways = 8;
  if (g.lda_k != 1) {
    const bool power_of_two = (g.lda_k & (g.lda_k - 1)) == 0;
    return g.split.group >= 4 && power_of_two && g.lda_k >= 2 * kKb && g.lda_k <= 8 * kKb;
  }
  return g.M > kL1Ways && g.lda % (4 * kKb) == 0;
}

// Floats of one register block's copy of `a` (packs_a) over a depth, and of a
// unit's (up to split.rows rows).
constexpr int64_t kPackedBlockFloats = kDepth * kRowBlock;
int64_t packed_a_floats(const Product& g) {
  return packs_a(g) ? g.split.rows / kRowBlock * kPackedBlockFloats : 0;
}

// Rows [r0, r0 + rows) of `a` by rows (rows <= kRowBlock) over depths [k0, k0 +
// kc), transposed in registers (16 x 16 blocks): depth k's rows at packed + k *
// kRowBlock (the layout row_block<ROWS, true> reads with stride kRowBlock).
void pack_rows(const Product& g, int64_t r0, int64_t rows, int64_t k0, int64_t kc,
               float* packed) {
  transpose_rows(g.a + r0 * g.lda + k0, g.lda, rows, kc, packed, kRowBlock,
                 first_lanes(kRowBlock));
}

// Rows [r0, r1) of `a` by columns (lda 1: a depth's rows side by side, the next
// depth's lda_k floats on) over depths [k0, k0 + kc), each register block's as
// pack_rows lays it out, kPackedBlockFloats apart: a depth's rows at once, each
// line read once, with the lines kAhead depths on asked for meanwhile.
void pack_columns(const Product& g, int64_t r0, int64_t r1, int64_t k0, int64_t kc,
                  float* packed) {
  constexpr int64_t kAhead = 4;
  const __mmask16 block_lanes = first_lanes(kRowBlock);
  for (int64_t k = 0; k < kc; ++k) {
    const float* depth = g.a + (k0 + k) * g.lda_k;
    if (k0 + k + kAhead < g.K) {
      const char* ahead = reinterpret_cast<const char*>(depth + kAhead * g.lda_k);
      for (int64_t r = r0; r < r1; r += 16) _mm_prefetch(ahead + r * sizeof(float), _MM_HINT_T0);
    }
    float* block = packed + k * kRowBlock;
    for (int64_t r = r0; r < r1; r += kRowBlock, block += kPackedBlockFloats) {
      _mm512_mask_storeu_ps(block, block_lanes,
                            _mm512_maskz_loadu_ps(first_lanes(r1 - r), depth + r));
    }
  }
}

// Unit u: panel group u % groups over row block u / groups (g.split), its panels
// read from g.w_packed where there, else formed a depth at a time in an L1 buffer;
// its rows of `a` read in place, or copied into `a_packed` (packed_a_floats(g)) a
// depth at a time as the group's first panel reaches them (packs_a).
template <typename W>
void run_panel(const Product& g, int64_t u, float* a_packed) {
  alignas(64) float buffer[kDepth * kPanel];
  const float* panel = buffer;
  const bool columns = g.lda_k != 1;  // then lda is 1 (Product)
  const bool pack_a = a_packed != nullptr && packs_a(g);
  const RowBlockFn* blocks = columns || pack_a ? kRowBlocks<true> : kRowBlocks<false>;
  const int64_t stride = pack_a ? kRowBlock : columns ? g.lda_k : g.lda;
  const int64_t first_panel = g.split.first_panel(u), first_row = g.split.first_row(u);
  const int64_t end_row = g.split.end_row(u, g.M);
  walk_unit(
      g.split, u, g.M, g.K, kDepth,
      [&](int64_t p, int64_t k0, int64_t kc) {
        if (g.w_packed != nullptr) {
          panel = g.w_packed + (p * g.K + k0) * kPanel;
        } else {
          form_panel<W>(g, p, k0, kc, buffer);
        }
      },
      [&](int64_t r0, int64_t rows, int64_t p, int64_t k0, int64_t kc) {
        const int64_t n0 = p * kPanel;
        const __mmask16 m0 = first_lanes(g.N - n0);
        const __mmask16 m1 = g.N - n0 > 16 ? first_lanes(g.N - n0 - 16) : __mmask16(0);
        const bool last = k0 + kc == g.K;
        const float* a = g.a + r0 * g.lda + k0 * g.lda_k;
        if (pack_a) {
          float* block = a_packed + (r0 - first_row) / kRowBlock * kPackedBlockFloats;
          if (p == first_panel) {
            // By rows a block at a time; by columns all the unit's rows at its first block.
            if (!columns) {
              pack_rows(g, r0, rows, k0, kc, block);
            } else if (r0 == first_row) {
              pack_columns(g, first_row, end_row, k0, kc, a_packed);
            }
          }
          a = block;
        }
        blocks[rows - 1](a, stride, panel, kc, g.out + r0 * g.ldo + n0, g.ldo, m0, m1,
                         last && g.bias ? g.bias + n0 : nullptr, k0 > 0 || g.accumulate);
      });
}

void run_unit(const Product& g, int64_t u, float* a_packed) {
  if (g.K == 0) {
    fill_without_depth(g.M, g.N, g.bias, g.out, g.ldo, g.accumulate);
  } else if (takes_dots(g)) {
    switch (g.w_type) {
      case Storage::kBFloat16: return run_dot_slice<Bf16>(g, u);
      case Storage::kFloat16: return run_dot_slice<F16>(g, u);
      default: return run_dot_slice<float>(g, u);
    }
  } else {
    switch (g.w_type) {
      case Storage::kBFloat16: return run_panel<Bf16>(g, u, a_packed);
      case Storage::kFloat16: return run_panel<F16>(g, u, a_packed);
      default: return run_panel<float>(g, u, a_packed);
    }
  }
}

// The float32 copies a 16-bit product computes through: its rows, bias and out.
struct Widened {
  std::vector<float> a, bias, out;
};

template <typename T>
Product prepare_widened(const NtGemm& g, Widened& wide) {
  wide.a.resize(g.M * g.K);
  widen(static_cast<const T*>(g.a), g.lda, wide.a.data(), g.K, g.M, g.K);
  if (g.bias != nullptr) {
    wide.bias.resize(g.N);
    widen(static_cast<const T*>(g.bias), 0, wide.bias.data(), 0, 1, g.N);
  }
  wide.out.resize(g.M * g.N);
  if (g.accumulate) {
    widen(static_cast<const T*>(g.out), g.ldo, wide.out.data(), g.N, g.M, g.N);
  }
  return {g.M, g.N, g.K, wide.a.data(), g.K, g.w, g.type,
          g.bias != nullptr ? wide.bias.data() : nullptr, wide.out.data(), g.N, g.w_kn,
          g.accumulate, 1, g.w_packed};
}

Product prepare(const NtGemm& g, Widened& wide) {
  switch (g.type) {
    case Storage::kBFloat16: return prepare_widened<Bf16>(g, wide);
    case Storage::kFloat16: return prepare_widened<F16>(g, wide);
    default:
      return {g.M, g.N, g.K, static_cast<const float*>(g.a), g.lda, g.w, Storage::kFloat32,
              static_cast<const float*>(g.bias), static_cast<float*>(g.out), g.ldo, g.w_kn,
              g.accumulate, g.lda_k, g.w_packed};
  }
}

// out = the float32 result, rounded (16-bit products only).
void narrow_out(const NtGemm& g, const Product& p) {
  switch (g.type) {
    case Storage::kBFloat16: return narrow(p.out, p.ldo, static_cast<Bf16*>(g.out), g.ldo, g.M, g.N);
    case Storage::kFloat16: return narrow(p.out, p.ldo, static_cast<F16*>(g.out), g.ldo, g.M, g.N);
    default: return;
  }
}

}  // namespace

void gemm_nt_small_avx512(const NtGemm* gemms, int count) {
  Widened wide[kMaxNtGemms];
  Product products[kMaxNtGemms];
  int64_t first[kMaxNtGemms + 1] = {0};  // product j's units: [first[j], first[j + 1])
  int64_t work = 0;
  for (int j = 0; j < count; ++j) {
    products[j] = prepare(gemms[j], wide[j]);
    // Here, not in the threads: split_of reads omp_get_max_threads(), which a
    // parallel region may answer differently.
    products[j].split = split_of(products[j]);
    first[j + 1] = first[j] + units_of(products[j]);
    work += products[j].M * products[j].N * products[j].K;
  }
  const int64_t units = first[count];
  const int threads = gemm_threads(work, units);
  // Each thread's copy of its unit's rows of `a` where a product takes one (packs_a);
  // without the memory, read in place rather than fail the product.
  int64_t slice_floats = 0;
  for (int j = 0; j < count; ++j) {
    if (!takes_dots(products[j])) {
      slice_floats = std::max(slice_floats, packed_a_floats(products[j]));
    }
  }
  float* const slices =
      slice_floats > 0 ? calling_thread_scratch_or_null(slice_floats * threads) : nullptr;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t u = 0; u < units; ++u) {
    int j = 0;
    while (u >= first[j + 1]) ++j;
    run_unit(products[j], u - first[j],
             slices != nullptr ? slices + slice_floats * omp_get_thread_num() : nullptr);
  }
  for (int j = 0; j < count; ++j) narrow_out(gemms[j], products[j]);
}

int64_t gemm_avx512_panel_floats(int64_t N, int64_t K) { return panel_floats(N, K, kPanel); }

void pack_gemm_avx512_panels(const NtGemm& g, float* dst) {
  Product p{};  // what form_panel reads
  p.N = g.N;
  p.K = g.K;
  p.w = g.w;
  p.w_type = g.type;
  p.w_kn = g.w_kn;
  auto pack = [&](auto w_type) {
    using W = decltype(w_type);
    pack_all_panels(g.N, g.K, kPanel, dst,
                    [&](int64_t u, float* at) { form_panel<W>(p, u, 0, g.K, at); });
  };
  switch (g.type) {
    case Storage::kBFloat16: return pack(Bf16{});
    case Storage::kFloat16: return pack(F16{});
    default: return pack(float{});
  }
}


void transpose_16bit_avx512(const void* src, int64_t rows, int64_t cols, void* dst) {
  constexpr int64_t kBlock = 32;                 // rows and columns of a block
  constexpr int64_t kMinForkElements = 1 << 16;  // 128 KB read and written
  // Output row 2p (2p + 1) from the transposed pairs of two 16-row halves: the
  // halves' even (odd) 16-bit values, the first half's rows then the second's (index
  // 2i of the pair a:b for lane i < 32).
  alignas(64) int16_t even_index[kBlock];
  for (int i = 0; i < kBlock; ++i) even_index[i] = static_cast<int16_t>(2 * i);
  const __m512i even = _mm512_load_si512(even_index);
  const __m512i odd = _mm512_add_epi16(even, _mm512_set1_epi16(1));
  const auto* from = static_cast<const uint16_t*>(src);
  auto* to = static_cast<uint16_t*>(dst);
  // A block of rows at a time, all of its columns: each row read in sequence.
  const int64_t row_blocks = (rows + kBlock - 1) / kBlock;
  const int threads = gemm_threads(rows * cols, row_blocks, kMinForkElements);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t rb = 0; rb < row_blocks; ++rb) {
    const int64_t r0 = rb * kBlock, block_rows = std::min(kBlock, rows - r0);
    const __mmask32 row_mask = block_rows >= kBlock ? ~__mmask32(0)
                                                    : (__mmask32(1) << block_rows) - 1;
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
      const int64_t block_cols = std::min(kBlock, cols - c0);
      const __mmask32 col_mask = block_cols >= kBlock ? ~__mmask32(0)
                                                      : (__mmask32(1) << block_cols) - 1;
      // half[h][i]: row 16h + i's 32 values as 16 pairs; absent rows zero.
      __m512 half[2][16];
      for (int h = 0; h < 2; ++h) {
        for (int i = 0; i < 16; ++i) {
          const int64_t r = 16 * h + i;
          half[h][i] = r < block_rows ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(
                                            col_mask, from + (r0 + r) * cols + c0))
                                      : _mm512_setzero_ps();
        }
        transpose16(half[h]);  // half[h][p]: pair p (columns 2p, 2p + 1) of the 16 rows
      }
      for (int64_t p = 0; 2 * p < block_cols; ++p) {
        const __m512i a = _mm512_castps_si512(half[0][p]), b = _mm512_castps_si512(half[1][p]);
        uint16_t* column = to + (c0 + 2 * p) * rows + r0;
        _mm512_mask_storeu_epi16(column, row_mask, _mm512_permutex2var_epi16(a, even, b));
        if (2 * p + 1 < block_cols) {
          _mm512_mask_storeu_epi16(column + rows, row_mask, _mm512_permutex2var_epi16(a, odd, b));
        }
      }
    }
  }
}

}  // namespace cpu
}  // namespace rnnfused
