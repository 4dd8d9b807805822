// out = a @ w^T (+ bias), or a @ w with w stored [K, N], in float32 on AVX2 and
// FMA (simd.h's gemm_avx2): the library's GEMM on CPUs without AVX-512 whose BLAS
// runs a slow path. MKL on AMD's AVX2 CPUs takes its generic kernels: two Zen 2
// cores, 6400 x 2048 x 512 at ~145 GFLOP/s of the 214 the FMA loop reaches, and
// ~15 us of fixed cost a call (a 4 x 64 x 256 product). The layout is
// gemm_avx512.cpp's on 8-lane vectors: each 16-column panel of w is transposed in
// registers (8 x 8 blocks) into an L1 buffer [kc, 16] and the rows of `a` are
// broadcast against it, 6 rows x 16 columns of accumulators at a time (12: Zen 2's
// FMA latency of 5 cycles on 2 ports needs 10), the units of work split as there
// (gemm_split.h).
// The standard headers come before the target pragma (see gemm_avx512.cpp).
#include <omp.h>

#include <algorithm>
#include <cstdint>

#pragma GCC target("avx2,fma")

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

// panel[k][c] = w[n0 + c][k0 + k] for k < kc, c < 16; 0 for rows n0 + c >= N.
void transpose_panel(const float* w, int64_t N, int64_t K, int64_t n0, int64_t k0, int64_t kc,
                     float* panel) {
  for (int64_t half = 0; half < 2; ++half) {
    const int64_t row0 = n0 + 8 * half;
    for (int64_t kb = 0; kb < kc; kb += 8) {
      const __m256i cols = first_lanes(kc - kb);
      __m256 r[8];
      for (int64_t i = 0; i < 8; ++i) {
        r[i] = row0 + i < N ? _mm256_maskload_ps(w + (row0 + i) * K + k0 + kb, cols)
                            : _mm256_setzero_ps();
      }
      transpose8(r);
      const int64_t depth = std::min<int64_t>(8, kc - kb);
      for (int64_t k = 0; k < depth; ++k) {
        _mm256_store_ps(panel + (kb + k) * kPanel + 8 * half, r[k]);
      }
    }
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

// out[r][c] (+)= sum_k a[r][k] panel[k][c] for r < ROWS, c < 16 (lanes in m0, m1), as
// gemm_avx512.cpp's row_block: from 0 on the first panel depth, from out on the
// later ones; `bias` (last depth only) added after the products. a[r][k] at
// a + r * lda + k * ldk, one of the two strides 1 (kColumns: lda). The loops over
// r are unrolled by pragma: else GCC kept the accumulators in registers and
// stored each to the stack every k as well (90 GFLOP/s against 171).
template <int ROWS, bool kColumns>
void row_block(const float* a, int64_t stride, const float* panel, int64_t kc, float* out,
               int64_t ldo, __m256i m0, __m256i m1, bool whole, const float* bias,
               bool from_out) {
  const int64_t lda = kColumns ? 1 : stride, ldk = kColumns ? stride : 1;
  __m256 acc0[ROWS], acc1[ROWS];
  _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) {
    acc0[r] = from_out ? _mm256_maskload_ps(out + r * ldo, m0) : _mm256_setzero_ps();
    acc1[r] = from_out ? _mm256_maskload_ps(out + r * ldo + 8, m1) : _mm256_setzero_ps();
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
  _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) {
    store_lanes(out + r * ldo, m0, whole, acc0[r]);
    store_lanes(out + r * ldo + 8, m1, whole, acc1[r]);
  }
}

using RowBlockFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t,
                            __m256i, __m256i, bool, const float*, bool);
template <bool kColumns>
constexpr RowBlockFn kRowBlocks[kRowBlock] = {
    row_block<1, kColumns>, row_block<2, kColumns>, row_block<3, kColumns>,
    row_block<4, kColumns>, row_block<5, kColumns>, row_block<6, kColumns>};

// Unit u of product g (gemm_split.h): its panel group over its row block.
void run_unit(const NtGemm& g, const GemmSplit& s, int64_t u) {
  const float* a = static_cast<const float*>(g.a);
  const float* w = static_cast<const float*>(g.w);
  const float* bias = static_cast<const float*>(g.bias);
  float* out = static_cast<float*>(g.out);
  if (g.K == 0) return fill_without_depth(g.M, g.N, bias, out, g.ldo, g.accumulate);
  alignas(32) float panel[kDepth * kPanel];
  const bool columns = g.lda_k != 1;  // then lda is 1 (NtGemm)
  const RowBlockFn* blocks = columns ? kRowBlocks<true> : kRowBlocks<false>;
  const int64_t stride = columns ? g.lda_k : g.lda;
  walk_unit(
      s, u, g.M, g.K, kDepth, kRowBlock,
      [&](int64_t p, int64_t k0, int64_t kc) {
        if (g.w_kn) {
          copy_panel(w, g.N, p * kPanel, k0, kc, panel);
        } else {
          transpose_panel(w, g.N, g.K, p * kPanel, k0, kc, panel);
        }
      },
      [&](int64_t r0, int64_t rows, int64_t p, int64_t k0, int64_t kc) {
        const int64_t n0 = p * kPanel;
        const bool last = k0 + kc == g.K;
        blocks[rows - 1](a + r0 * g.lda + k0 * g.lda_k, stride, panel, kc, out + r0 * g.ldo + n0,
                         g.ldo, first_lanes(g.N - n0), first_lanes(g.N - n0 - 8),
                         g.N - n0 >= kPanel, last && bias ? bias + n0 : nullptr,
                         k0 > 0 || g.accumulate);
      });
}

}  // namespace

void gemm_avx2(const NtGemm* gemms, int count) {
  GemmSplit splits[kMaxNtGemms];
  int64_t first[kMaxNtGemms + 1] = {0};  // product j's units: [first[j], first[j + 1])
  int64_t work = 0;
  for (int j = 0; j < count; ++j) {
    const NtGemm& g = gemms[j];
    // Here, not in the threads: split_gemm reads omp_get_max_threads(), which a
    // parallel region may answer differently.
    splits[j] = split_gemm(g.M, g.N, g.K, g.lda_k != 1, kPanel, kRowBlock);
    first[j + 1] = first[j] + splits[j].units();
    work += g.M * g.N * g.K;
  }
  const int64_t units = first[count];
  const int threads = gemm_threads(work, units);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t u = 0; u < units; ++u) {
    int j = 0;
    while (u >= first[j + 1]) ++j;
    run_unit(gemms[j], splits[j], u - first[j]);
  }
}

}  // namespace cpu
}  // namespace rnnfused
