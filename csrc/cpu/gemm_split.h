// How the library's GEMMs (gemm_avx512.cpp, gemm_avx2.cpp) split a product into
// units of work for their threads, and how many threads they fork: written once
// for both, each passing its panel width and register block of rows.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

#include "simd.h"

namespace rnnfused {
namespace cpu {
namespace {

// A product of M rows split into row blocks of up to `rows` rows (whole register
// blocks dealt evenly: 512 rows in 90-row blocks left the last 62 and one of two
// threads idle a tenth of the product), each with its panels
// (of `panel` columns) in groups of `group`. A unit walks K a depth at a time and,
// per depth, forms each panel of its group and runs its block's rows over it: the
// block's slice of `a` for that depth stays in L1/L2 while the group's panels
// reuse it, and the unit's out tile in L2 between depths. (Each panel over all of
// M streamed `a` again per panel: 6400 x 2048 x 512 NN 234 GFLOP/s on two Zen 5
// cores; one panel per unit over 128+-row blocks streamed the block's whole K per
// panel: 2048 x 6400 x 512 TN 238; now ~390 and ~300-350.) Blocks of `a` by
// columns (TN: its rows 8 KB apart, 32 bytes of a line per row block) are taller:
// 64 register blocks (TN 2048 x 6400 x 512: 241 / 311 / 335 / 353 GFLOP/s at 64 /
// 128 / 256 / 512 rows), else 16. Groups of up to most_group panels (8: the
// caller may take more), shrinking until every thread has two units or more.
struct GemmSplit {
  int64_t rows = 0, blocks = 0, group = 0, groups = 0, panels = 0;  // as above
  // M's register blocks (of row_block rows, the last one the rest), dealt to the
  // `blocks` row blocks as evenly as whole register blocks go: `rows` is the most
  // one holds.
  int64_t register_blocks = 0, row_block = 0;
  bool empty = true;     // M or N is 0: nothing to do
  bool no_depth = false;  // K is 0: out = bias (or 0), one unit

  int64_t units() const { return empty ? 0 : no_depth ? 1 : blocks * groups; }
  // Unit u's first panel, and its rows [first_row(u), end_row(u, M)).
  int64_t first_panel(int64_t u) const { return u % groups * group; }
  int64_t first_row(int64_t u) const { return block_start(u / groups); }
  int64_t end_row(int64_t u, int64_t M) const { return std::min(M, block_start(u / groups + 1)); }

 private:
  int64_t block_start(int64_t block) const { return block * register_blocks / blocks * row_block; }
};

inline GemmSplit split_gemm(int64_t M, int64_t N, int64_t K, bool a_by_columns, int64_t panel,
                            int64_t row_block, int64_t most_group = 8) {
  GemmSplit s{};
  if (M == 0 || N == 0) return s;
  s.empty = false;
  s.no_depth = K == 0;
  const int64_t most_rows = (a_by_columns ? 64 : 16) * row_block;
  s.panels = (N + panel - 1) / panel;
  s.blocks = (M + most_rows - 1) / most_rows;
  s.row_block = row_block;
  s.register_blocks = (M + row_block - 1) / row_block;
  s.rows = (s.register_blocks + s.blocks - 1) / s.blocks * row_block;
  s.group = std::min(most_group, s.panels);
  const int64_t wanted = 2 * capped_threads(omp_get_max_threads());
  while (s.group > 1 && s.blocks * ((s.panels + s.group - 1) / s.group) < wanted) s.group /= 2;
  s.groups = (s.panels + s.group - 1) / s.group;
  return s;
}

// A product of depth K = 0 (its one unit): out = bias (or 0), or out += 0 when
// `accumulate`. out [M, N] with row stride ldo, bias [N] or null.
inline void fill_without_depth(int64_t M, int64_t N, const float* bias, float* out, int64_t ldo,
                               bool accumulate) {
  if (accumulate) return;
  for (int64_t r = 0; r < M; ++r) {
    for (int64_t c = 0; c < N; ++c) out[r * ldo + c] = bias ? bias[c] : 0.0f;
  }
}

// Unit u's walk (of split s, a product of M rows and depth K): a depth of K at a
// time ([k0, k0 + kc), kc <= depth), each panel p of its group formed by
// form_panel(p, k0, kc), then every register block of its rows run over it by
// run_block(r0, rows, p, k0, kc) (rows <= s.row_block: the last block's the rest).
template <typename FormPanel, typename RunBlock>
void walk_unit(const GemmSplit& s, int64_t u, int64_t M, int64_t K, int64_t depth,
               const FormPanel& form_panel, const RunBlock& run_block) {
  const int64_t row_block = s.row_block;
  const int64_t p_begin = s.first_panel(u), p_end = std::min(s.panels, p_begin + s.group);
  const int64_t m_begin = s.first_row(u), m_end = s.end_row(u, M);
  for (int64_t k0 = 0; k0 < K; k0 += depth) {
    const int64_t kc = std::min(depth, K - k0);
    for (int64_t p = p_begin; p < p_end; ++p) {
      form_panel(p, k0, kc);
      for (int64_t r0 = m_begin; r0 < m_end; r0 += row_block) {
        run_block(r0, std::min(row_block, m_end - r0), p, k0, kc);
      }
    }
  }
}

// Threads for products of `work` multiply-adds in `units` units: two or more (up
// to the units) once they are worth a fork, from fork_work multiply-adds (2^18:
// alternated in one process on two Intel vCPUs, an RNNCell's 8 x 128 x 128
// backward products, 2^17, 5% faster over a B 8, H 128 training loop on one
// thread; a GRUCell's 8 x 384 x 128 still faster split), at most one per CPU the
// process may run on (capped_threads); one inside a parallel region or below a
// GemmsOnCallingThread's limit (simd.h).
constexpr int64_t kForkWork = int64_t{1} << 18;
inline int gemm_threads(int64_t work, int64_t units, int64_t fork_work = kForkWork) {
  return work >= std::max(fork_work, calling_thread_gemm_work()) && !omp_in_parallel()
             ? static_cast<int>(
                   std::max<int64_t>(1, std::min<int64_t>(capped_threads(omp_get_max_threads()), units)))
             : 1;
}

// w [N, K] packed as its panels of `panel` columns, each over all of K (panel p's
// depth k at (p * K + k) * panel: the layout a GEMM forms a depth at a time in its
// L1 buffer), for the products that would each form them again: panel_floats in all.
inline int64_t panel_floats(int64_t N, int64_t K, int64_t panel) {
  return (N + panel - 1) / panel * K * panel;
}

// form(p, dst) for this thread's share of `panels` panels, panel p at dst = packed
// + p * K * panel (panel_floats' layout), in a parallel region (or alone).
template <typename Form>
void pack_thread_share(int64_t panels, int64_t K, int64_t panel, float* packed, const Form& form) {
  const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
  for (int64_t p = panels * t / nt; p < panels * (t + 1) / nt; ++p) form(p, packed + p * K * panel);
}

// The same over all of w's panels, forked as gemm_threads forks a product: w's N x
// K values counted as 8 multiply-adds each (a chosen weight, not measured: the fork
// from 32K values).
template <typename Form>
void pack_all_panels(int64_t N, int64_t K, int64_t panel, float* packed, const Form& form) {
  constexpr int64_t kWorkPerValue = 8;
  const int64_t panels = (N + panel - 1) / panel;
  const int threads = gemm_threads(N * K * kWorkPerValue, panels);
#pragma omp parallel num_threads(threads) if (threads > 1)
  pack_thread_share(panels, K, panel, packed, form);
}

// Scratch of the library's GEMMs (both kernels).
struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};

// `floats` floats, 64-byte aligned, or null when the memory is not there.
std::unique_ptr<float[], FreeDeleter> aligned_floats(int64_t floats) {
  const size_t bytes = (static_cast<size_t>(floats) * sizeof(float) + 63) / 64 * 64;
  return std::unique_ptr<float[], FreeDeleter>(static_cast<float*>(std::aligned_alloc(64, bytes)));
}

// The calling thread's scratch of at least `floats` floats, kept between calls
// (a cell's products take microseconds: no allocation a call), or null when the
// memory is not there.
float* calling_thread_scratch_or_null(int64_t floats) {
  thread_local std::unique_ptr<float[], FreeDeleter> scratch;
  thread_local int64_t size = 0;
  if (size < floats) {
    scratch = aligned_floats(floats);
    size = scratch != nullptr ? floats : 0;
  }
  return scratch.get();
}

// The same, throwing std::bad_alloc when the memory is not there. An exception
// must not leave an OpenMP region: the GEMMs run outside any, or on the threads of
// a region that catches and rethrows after it (a bidirectional layer's directions:
// directions.cpp's run_two); the fused loops' regions call none.
float* calling_thread_scratch(int64_t floats) {
  float* scratch = calling_thread_scratch_or_null(floats);
  if (scratch == nullptr) throw std::bad_alloc();
  return scratch;
}

}  // namespace
}  // namespace cpu
}  // namespace rnnfused
