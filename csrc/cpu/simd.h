// Which vectorised step kernels this CPU runs, and their entry points. The
// kernels live in step_avx512.cpp and step_avx2.cpp (the persistent loops of both
// from fused_loop.h; the bfloat16 loops on vdpbf16ps in step_avx512_bf16.cpp),
// gemm_avx512.cpp and peak_avx512.cpp / peak_avx2.cpp, compiled for those
// instruction sets; everything else runs on any x86-64 (or other) CPU.
// No ATen here: the ISA translation units include this header.
#pragma once

#include <cstdint>

namespace rnnfused {
namespace cpu {

enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The best instruction set both the CPU and the build support, capped by the
// environment variable RNNFUSED_CPU_ISA ("scalar", "avx2", "avx512") when set.
// Decided once per process.
Isa active_isa();
const char* isa_name(Isa isa);

// Whether the CPU has AMX's bfloat16 tile products. Decided once per process.
bool has_amx_bf16();
// Whether the CPU has PREFETCHW (CPUID 0x80000001 ECX bit 8: AMD's CPUs, Intel's from
// Broadwell on), which the persistent forward loops (fused_loop.h) and gemm_avx2 issue
// for the rows they are about to write. Decided once per process.
bool has_prefetchw();
// Whether the bfloat16 persistent forward loop runs its products on AMX tiles
// (run_fused_steps_amx): AMX-BF16 and AVX512-BF16, the AVX-512 kernels active, the kernel's
// permission to use the tile state granted (Linux's ARCH_REQ_XCOMP_PERM, asked for
// once), and RNNFUSED_CPU_AMX not "0". Decided once per process.
bool amx_tiles_enabled();
// Whether AVX512-BF16's dot product vdpbf16ps runs at the FMA's instruction rate,
// twice its FLOPs: AVX512-BF16 on a CPU other than Intel's (Zen 4/5; Intel's CPUs
// without AMX run it at half the float32 FMA rate, 87 vs 176 GFLOP/s a core).
bool has_fast_bf16_dot();
// Whether oneDNN's bfloat16 GEMM outruns the float32 ones here: with AMX-BF16 (the
// tiles), or where has_fast_bf16_dot() (Zen 4/5 run vdpbf16ps at twice the float32
// FMA rate: two Zen 5 cores, oneDNN bf16 64 x 512 x 2048 at 576
// GFLOP/s, 512 rows 763, against ~400 for float32 on the library's kernel). Intel's
// AVX512-BF16 CPUs without AMX run it at half the float32 rate.
bool has_fast_bf16_gemm();
// Whether oneDNN's float16 GEMM runs here, which ATen's float16 products take: with
// AVX512-FP16 or AMX-FP16 (Intel's Sapphire Rapids on). Elsewhere ATen's float16
// GEMM is a loop of dot products (two Zen 5 cores, 512 x 2048 x 512: 42 GFLOP/s
// against 185 for float32 on MKL). Decided once per process.
bool has_fast_f16_gemm();
// `threads`, at most one per CPU the process may run on (its affinity mask, where
// known): what the CPU kernels fork. With more threads than CPUs a spinning thread
// keeps a CPU from one still working: the persistent loops' barrier at every step
// (fused_loop.h's StepBarrier spins ~16K pauses before it yields), OpenMP's at the
// end of every product. Two Zen 5 vCPUs, torch.set_num_threads(4): LSTM 100, 64,
// 512, 512 forward 95 ms on 4 threads, 56 on 2 (torch.nn 67 on 4).
int capped_threads(int threads);

// Whether torch's CPU BLAS (MKL) runs AVX-512 GEMM kernels here: on Intel CPUs.
// On AMD's AVX-512 CPUs (Zen 4, Zen 5) its sgemm takes a path at ~40% of the
// FMA peak (two Zen 5 cores: ~195 GFLOP/s of ~470), so the library's own GEMM
// (gemm_nt_small_avx512, ~400) takes every float32 product there.
bool blas_runs_avx512();

// Bytes of a core's L2 cache (sysconf; 1 MB where the system does not say): two
// Intel Xeon vCPUs 2 MB, two Zen 5 vCPUs 1 MB. Read once per process.
int64_t l2_cache_bytes();

// Whether a core's L1 data cache is 32 KB or less (Zen 4's: 32 KB, 8-way), from
// sysconf (false where the system does not say). The AVX-512 GEMM was tuned on 48
// KB L1s (Zen 5, Intel); on a small one it copies `a` at some strides
// (gemm_avx512.cpp's packs_a). Read once per process.
bool small_l1_cache();

// The row stride, in floats, of the backward's float32 gradients on the
// pre-activations (d_pre [N, columns], a GRU's d_x and d_h: CpuLaunch::gradient_rows),
// which the input gradient's GEMM reads as rows of `a` and the weight gradients'
// as columns of `a` (d_pre^T): `columns`, or a 64-byte line more where those reads
// are slow at `columns` and the GEMMs are the library's (AVX-512, not Intel's:
// blas_runs_avx512) on a small L1 (small_l1_cache): rows of 2 KB multiples below
// 16 KB, where packs_a would copy `a`, and reading padded rows in place beats the
// copy. Two Zen 4 vCPUs, GFLOP/s, M x K x N copied -> padded: TN 2048 x 6400 x 512
// 170 -> 181, 512 x 6400 x 512 158 -> 173, 1024 x 6400 x 512 153 -> 164; NN 6400 x
// 2048 x 512 157 -> 168-176, 6400 x 1024 x 512 157 -> 169; at rows of 1536 and
// 3072 floats (not copied) TN even / 186 -> 190, NN 178 -> 186 / 180 -> 191; at 16
// KB TN in place ran 189 against 181 padded (left). Layers, training, in-process
// A/B (13 rounds): LSTM 100, 64, 512, 512 2.5-7% faster, 100, 32, 256, 256 4.5-5.5%,
// 200, 8, 64, 256 5.5-7%, RNN 100, 64, 512, 512 2-4%, the 2-layer bidirectional
// LSTM 100, 16, 128, 128 3-5%; GRU 512, RNN 1024 and LSTM 1024 (all rows padded)
// even.
int64_t gradient_row_floats(int64_t columns);

// Run the step functor `f` (step_functors.h) over rows [row_begin, row_end) and
// all of its H units, 16 (AVX-512: float, bfloat16 and float16 storage), 8 (AVX2:
// float) or 4 (AVX2: double, where avx2_float64_math()) units per call.
template <typename F>
void run_rows_avx512(const F& f, int64_t row_begin, int64_t row_end);
template <typename F>
void run_rows_avx2(const F& f, int64_t row_begin, int64_t row_end);
// Whether run_rows_avx2 has its float64 exp and tanh (SLEEF's, in libtorch_cpu).
bool avx2_float64_math();
// Units a float64 step functor call runs where float64_vectors(): one 256-bit vector.
constexpr int64_t kFloat64Lanes = 4;
// Whether float64 step functors run kFloat64Lanes units a call (run_rows_avx2): AVX2
// or AVX-512 active (either CPU runs the AVX2 code) and avx2_float64_math().
inline bool float64_vectors() { return active_isa() != Isa::kScalar && avx2_float64_math(); }

// W_hh [G*H, K] packed by tiles of L hidden units (L = the vector's floats: 16 for
// AVX-512, 8 for AVX2): w[u][k][g * L + l] = W_hh[g * H + L u + l][k], zero past H.
// One tile's product for a row is G vectors: gate g of units Lu .. Lu + L - 1.
// w_input: W_ih [G*H, I] in the same layout, [tiles, I, G * L], where the loop forms
// the input projection itself (FusedStepRows::x_in), else null; input_bias: the
// projection's bias [G*H] in float32 there, or null. product_bias: where the loop
// reads a projection formed without its bias (ProjectedInput::leave_bias_to_loop),
// that bias [G*H] (float32), added to the recurrent product; else null.
struct PackedRecurrent {
  const float* w;  // [tiles, K, G * L]
  int64_t K, H, G, tiles;
  const float* w_input = nullptr;
  int64_t I = 0;
  const float* input_bias = nullptr;
  const float* product_bias = nullptr;
};

// Tiles [begin, end) of W [G*H, K] (float32, contiguous) in PackedRecurrent's layout,
// written from dst on (the tile `begin`'s place): L = 16 (AVX-512) or 8 (AVX2).
void pack_recurrent_tiles_avx512(const float* w, int64_t G, int64_t H, int64_t K, int64_t begin,
                                 int64_t end, float* dst);
void pack_recurrent_tiles_avx2(const float* w, int64_t G, int64_t H, int64_t K, int64_t begin,
                               int64_t end, float* dst);

// One forward step of the persistent loop, for a layer stored in T (float or
// c10::BFloat16, c10::Half). The state and the sums are float32 whatever T: 16-bit values
// widen exactly, and the product of two is exact in a float's 24 bits.
template <typename T>
struct FusedStepRows {
  int64_t rows;         // batch rows active at this step
  const float* h_in;    // [>= rows, K]  state before the step
  float* partial;       // [rows, G * H] the product's partial sums between panels
  T* product;           // [rows, G * H] out: h_in @ W_hh^T (rounded to T), read by the
                        //   step functor; float32: the same buffer as `partial`
  const T* out;         // [rows, H]     the functor's h'
  float* h_out;         // [>= rows, H]  out: h' (as float) copied here, the next step's h_in,
                        //   or null (the next step reads `out`: float32)
  T* h_out_stored;      // [>= rows, H]  out: h' copied here too, the next step's h_prev for
                        //   the functor (GRU), or null (float32: the functor's h_prev is
                        //   the next step's h_in)
  const T* x_proj;      // [rows, G * H] the input projection the functor reads (prefetched)
  // Where the loop forms that projection (PackedRecurrent::w_input; float32 layers,
  // and bfloat16 ones on the dot product, whose input rows are read as pairs): the
  // step's input rows, x_stride floats (pairs) apart, and x_proj's writable address;
  // else null.
  const float* x_in = nullptr;
  int64_t x_stride = 0;
  T* x_proj_out = nullptr;
};

// Runs `count` forward steps in one parallel region: each thread owns a range
// of unit tiles for the whole run; per step it forms the recurrent product of
// its tiles for all rows, applies steps[s] to them while they are in cache,
// and a barrier closes the step. AVX-512: float32, bfloat16 and float16 layers; AVX2: float32.
template <typename F>
void run_fused_steps_avx512(const F* steps, const FusedStepRows<typename F::scalar_type>* rows,
                            int64_t count, const PackedRecurrent& w, int threads);
template <typename F>
void run_fused_steps_avx2(const F* steps, const FusedStepRows<typename F::scalar_type>* rows,
                          int64_t count, const PackedRecurrent& w, int threads);

// Whether bfloat16 layers run their persistent loops on it (run_fused_steps_dpbf16,
// and run_fused_backward_dpbf16 where W_hh's rows pair up) rather than in float32 on
// widened values: has_fast_bf16_dot() with the AVX-512 kernels active, and
// RNNFUSED_CPU_BF16_DOT not "0". Where amx_tiles_enabled() the tile loop runs the
// forward instead (but for the narrowest states: bfloat16_products_on_amx). Decided
// once per process.
bool bf16_dot_loops();

// run_fused_steps_avx512 for a bfloat16 layer with the products on vdpbf16ps (only
// where bf16_dot_loops()): each k of the reduction is a pair of state units, so
// w is W_hh [G*H, 2K] (zero-padded to an even width) packed as PackedRecurrent
// packs a float32 [G*H, K] whose elements are the bfloat16 pairs (the even unit in
// the lower half), and each row's h_in and h_out hold K such pairs (bfloat16 values
// 2K apart, zero past the layer's state). Where the loop forms the input projection
// (w_input), W_ih is packed the same way, I its pairs, and the input rows are read as
// pairs (FusedStepRows::x_in).
template <typename F>
void run_fused_steps_dpbf16(const F* steps, const FusedStepRows<typename F::scalar_type>* rows,
                            int64_t count, const PackedRecurrent& w, int threads);

// The AMX loop's tile geometry, shared by the packing and buffers (fused_forward_cpu.h)
// and the kernel (amx_loop.h): every tile is 16 rows of 64 bytes.
constexpr int64_t kAmxRows = 16;   // state rows per tile
constexpr int64_t kAmxUnits = 16;  // hidden units per block (float32 sums a tile row)
constexpr int64_t kAmxDepth = 32;  // state units per chunk (bfloat16 values a tile row)
constexpr int64_t kAmxTileValues = kAmxRows * kAmxDepth;  // bfloat16 values a weight tile
constexpr int64_t kAmxSumValues = kAmxRows * kAmxUnits;   // float32 sums a sum tile

// The palette-1 configuration that _tile_loadconfig takes: all 8 tiles 16 rows of 64
// bytes (16 float32 sums, or 32 bfloat16 values, a row). The AMX loop (amx_loop.h) and
// the tiles' peak (peak_avx512.cpp) load it on each thread.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t row_bytes[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int t = 0; t < 8; ++t) {
      row_bytes[t] = 64;
      rows[t] = kAmxRows;
    }
  }
};

// W_hh [G*H, K] in bfloat16 packed as AMX tiles (pack_recurrent_amx): for each
// block u of 16 hidden units and chunk c of 32 state units, G tiles of 16 rows of
// 64 bytes, gate g's w[u][c][g][p][n][e] = W_hh[g * H + 16 u + n][32 c + 2 p + e]
// (the pairs along k that TDPBF16PS multiplies together), zero past H and K.
struct PackedRecurrentAmx {
  const uint16_t* w;  // [blocks, chunks, G, 16, 32] bfloat16 bits
  int64_t K, H, G, blocks, chunks;
  // [G, 16 * blocks] float32, zero past H, or null: the sums' starting values where
  // the input projection is formed without its bias (LSTM, RNN: b_ih + b_hh).
  const float* sum_bias = nullptr;
};

// One forward step of the AMX loop: a bfloat16 layer (T = c10::BFloat16), or a float32
// one whose products torch lets run in bfloat16 (T = float, float32_products_on_amx).
// The tiles' operands are bfloat16 bits whatever T.
template <typename T>
struct AmxStepRows {
  int64_t rows;            // batch rows active at this step
  const uint16_t* h_in;    // [16 * ceil(rows / 16) at least, 32 * chunks] the state before
                           //   the step in bfloat16, the tiles' left operand: zero past K
  float* sums;             // [rows, G * H] out: h_in @ W_hh^T, read by the step functor, or null:
  T* product;              // [rows, G * H] out: the same in T (RNN: the output rows)
  const T* out;            // [rows, H] the functor's h'
  uint16_t* h_out;         // [>= rows, 32 * chunks] out: h' rounded to bfloat16 here, the
                           //   next step's h_in
  T* h_out_stored;         // [>= rows, H] out: h' copied here too, the next step's h_prev (GRU)
};

// Runs `count` forward steps of a bfloat16 layer, or of a float32 one on bfloat16
// operands, in one parallel region, as run_fused_steps_avx512 does (each thread owns
// a range of 16-unit blocks for the whole run, a barrier closes each step; or, where
// W_hh fits, a range of the batch's 16-row tiles, no barrier), the products on AMX
// tiles with float32 sums. Only where amx_tiles_enabled().
template <typename F>
void run_fused_steps_amx(const F* steps, const AmxStepRows<typename F::scalar_type>* rows,
                         int64_t count, const PackedRecurrentAmx& w, int threads);

// A product on AMX tiles (gemm_amx_avx512.cpp; only where amx_tiles_enabled()):
// out[M, N] (+)= a[M, K] @ b[K, N], a's rows lda values apart with unit stride along
// K, b packed by pack_amx_gemm_b, out's rows ldo apart; a and out bfloat16, or
// float32 (a rounded to bfloat16 to nearest even, as torch's "medium" float32 matmul
// precision has oneDNN do); float32 sums, rounded once to a bfloat16 out (out's
// value added first where accumulate).
struct AmxGemm {
  int64_t M, N, K;
  const void* a;
  int64_t lda;
  const void* b_packed;
  void* out;
  int64_t ldo;
  bool accumulate;
  bool float32 = false;
};
void amx_gemm_bf16(const AmxGemm& g);
// b [K, N] bfloat16 (or float32, rounded to bfloat16), rows ldb values apart, as the
// tiles amx_gemm_bf16 multiplies: for each block of 16 columns and chunk of 32 rows,
// 16 rows of the 16 columns' pairs (b[k][n], b[k + 1][n]); zero past K and N.
// amx_gemm_b_values(K, N) bfloat16 values.
int64_t amx_gemm_b_values(int64_t K, int64_t N);
void pack_amx_gemm_b(const void* b, int64_t K, int64_t N, int64_t ldb, void* dst,
                     bool float32 = false);

// W_hh [J = G*H, K] packed by blocks of 2L state units for the backward's
// product d_h = d_pre @ W_hh: w[q][j][l] = W_hh[j][2L q + l], zero past K.
struct PackedRecurrentT {
  const float* w;  // [blocks, J, 2L]
  int64_t J, K, blocks;
};

// One backward step of the persistent loop (steps run in reverse order), for a
// layer stored in T (float, c10::BFloat16, c10::Half); the products' sums are float32.
template <typename T>
struct FusedBackwardRows {
  int64_t rows;               // batch rows active at this step
  T* d_h;                     // [>= rows, K] in: gradient on h' from later steps;
                              //   out: gradient on the state before this step
  float* d_h_partial;         // [>= rows, K] the product's partial sums between panels
                              //   (float32: d_h itself)
  const T* d_recurrent;       // [rows, J]  the functor's gradient on h_prev @ W_hh^T
  float* d_recurrent_float;   // [rows, J]  out: the same widened, which the product reads
                              //   (float32: d_recurrent itself, not written)
  int64_t d_recurrent_stride; // d_recurrent_float's row stride in floats: float32 d_recurrent's
                              //   (>= J: CpuLaunch::gradient_rows), 16-bit the rows' J (the
                              //   dot product's J / 2 pairs), contiguous
  bool accumulate;            // d_h = the functor's direct part + product (GRU), else product
  bool product;               // whether to form the product (the first step's only feeds the
                              //   gradient on h0)
};

// run_fused_backward_avx512 for a bfloat16 layer with the product on vdpbf16ps (only
// where bf16_dot_loops()): each j of the reduction a pair of W_hh's rows, so w is
// W_hh [2J, K] (an even number of rows) packed as [blocks, J, 2L] pairs of bfloat16
// (as 32-bit values, the even row's in the lower half; pack_recurrent_t_pairs), and
// each row's d_recurrent_float is the functor's bfloat16 d_recurrent itself, J
// pairs a row (not widened).
template <typename F>
void run_fused_backward_dpbf16(const F* steps,
                               const FusedBackwardRows<typename F::scalar_type>* rows,
                               int64_t count, const PackedRecurrentT& w, int threads);

// Runs `count` backward steps in one parallel region. Each thread owns a range
// of 2L-unit blocks (32 units on AVX-512, 16 on AVX2), and a share by rows of
// those left over where they do not divide evenly: per step it runs steps[s] on its
// units (the functor adds the step's grad_output to d_h as it reads it), and
// after a barrier forms its units of the next d_h from every unit's d_recurrent.
// A thread only ever reads the d_h it formed, so one barrier per step suffices.
template <typename F>
void run_fused_backward_avx512(const F* steps,
                               const FusedBackwardRows<typename F::scalar_type>* rows,
                               int64_t count, const PackedRecurrentT& w, int threads);
template <typename F>
void run_fused_backward_avx2(const F* steps, const FusedBackwardRows<typename F::scalar_type>* rows,
                             int64_t count, const PackedRecurrentT& w, int threads);

// The element type of a few-row product's operands.
enum class Storage : int { kFloat32, kBFloat16, kFloat16 };

// out = a @ w^T (+ bias): a [M, K] with row stride lda, w [N, K] contiguous, bias
// [N] or null, out [M, N] with row stride ldo; all of type `type` (16-bit: the
// bits): products and sums in float32, a 16-bit out rounded once.
// w_kn: w is stored [K, N] instead (out = a @ w); accumulate: out += the product.
// lda_k: a's stride along k (a[m][k] at a + m * lda + k * lda_k): 1, or else
// lda is 1 (a transposed: the backward's d_pre^T @ x), float32 with w_kn only.
struct NtGemm {
  int64_t M, N, K;
  const void* a;
  int64_t lda;
  const void* w;
  const void* bias;
  void* out;
  int64_t ldo;
  Storage type = Storage::kFloat32;
  bool w_kn = false;
  bool accumulate = false;
  int64_t lda_k = 1;
  // w already in the panel layout of the GEMM that runs the product
  // (pack_gemm_avx512_panels, pack_gemm_avx2_panels), or null.
  const float* w_packed = nullptr;
};
constexpr int kMaxNtGemms = 2;

// `count` (<= kMaxNtGemms) independent products for few rows M (gemm_avx512.cpp),
// in one parallel region. The CPU BLAS runs this "NT" product at about half the
// rate it reaches with w^T stored; here w is transposed a panel at a time in
// registers (dot products below 4 rows).
void gemm_nt_small_avx512(const NtGemm* products, int count);
// Its panels of w (NtGemm's N, K, w, type, w_kn; the rest unread): ceil(N / 32)
// panels of K x 32 floats, gemm_avx512_panel_floats(N, K) in all, written at dst
// on the threads of one parallel region (as gemm_avx2's below).
int64_t gemm_avx512_panel_floats(int64_t N, int64_t K);
void pack_gemm_avx512_panels(const NtGemm& g, float* dst);
// dst [cols, rows] = src [rows, cols]^T for 16-bit values, both contiguous
// (gemm_avx512.cpp): 32 x 32 blocks through the registers, a block of rows at a time,
// the blocks split between the threads from 64K values.
void transpose_16bit_avx512(const void* src, int64_t rows, int64_t cols, void* dst);

// The same products in float32 on AVX2 (gemm_avx2.cpp), 2 rows of `a` or more:
// where the CPU lacks AVX-512 and its BLAS is slow (not Intel's: own_gemm_avx2).
void gemm_avx2(const NtGemm* products, int count);
// gemm_avx2's panels of a float32 product's w (NtGemm's N, K, w, w_kn; the rest
// unread): ceil(N / 16) panels of K x 16 floats, gemm_avx2_panel_floats(N, K) in
// all, written at dst on the threads of one parallel region. A w read by many
// products (the input projection's chunks) packed once for all of them
// (NtGemm::w_packed): else each product packs it anew.
int64_t gemm_avx2_panel_floats(int64_t N, int64_t K);
void pack_gemm_avx2_panels(const NtGemm& g, float* dst);
// Whether gemm_avx2 takes the float32 products of 2+ rows: the AVX2 kernels
// active and the CPU not Intel's (blas_runs_avx512 false: MKL's generic path).
bool own_gemm_avx2();

// The library GEMMs (gemm_avx512, gemm_avx2) called on this thread run on it alone
// (gemm_threads) below this many multiply-adds: 0, or the largest limit of the
// GemmsOnCallingThread scopes living on it.
int64_t calling_thread_gemm_work();

// Keeps the library GEMMs of fewer than `below_work` multiply-adds (every one by
// default) called on this thread on it while it lives, when `on`: the products
// next to a loop that ran on one thread, whose rows sit in that core's cache. A
// layer whose steps run on one thread forms its input projection there (LSTM T 50,
// B 1, H 64 on two Zen 2 vCPUs: the op 135 -> 122 us, its 50 x 64 x 256
// projection unsplit; split, half of it crosses cores during the loop), and the
// backward's products over the gradients such a loop wrote (CpuLaunch::GemmsWhereLoopRan).
class GemmsOnCallingThread {
 public:
  explicit GemmsOnCallingThread(bool on, int64_t below_work = INT64_MAX);
  ~GemmsOnCallingThread();
  GemmsOnCallingThread(const GemmsOnCallingThread&) = delete;
  GemmsOnCallingThread& operator=(const GemmsOnCallingThread&) = delete;

 private:
  int64_t previous_;
};

// The float32 FMA ceiling in GFLOP/s: `threads` threads running independent
// AVX-512 (AVX2) FMA chains from registers for `seconds` (peak_loop.h).
double fma_peak_gflops_avx512(double seconds, int threads);
double fma_peak_gflops_avx2(double seconds, int threads);
// The same for AVX512-BF16's dot product vdpbf16ps (64 FLOP an instruction); the
// caller checks that the CPU has it.
double bf16_dot_peak_gflops_avx512(double seconds, int threads);
// The same for AMX-BF16's tdpbf16ps on tiles in registers (16 x 16 x 32 x 2 FLOP an
// instruction); the caller checks amx_tiles_enabled().
double amx_bf16_peak_gflops(double seconds, int threads);
bool has_avx512_bf16();
// sigmoid and tanh of x[0, n) as a bfloat16 layer's gate math on AVX-512 forms them
// (simd_avx512.h's Bf16Vec): for the tests, which measure their error.
void bf16_gate_math_avx512(const float* x, float* sigmoid_out, float* tanh_out, int64_t n);

}  // namespace cpu
}  // namespace rnnfused
