// Runs a step functor (step_functors.h) over [0, n) on the CPU, split over
// at::parallel_for's threads (at most one per CPU the process may run on:
// capped_parallel_for) once there is enough work to pay for them. Float
// steps run 16 (AVX-512) or 8 (AVX2) units per call where the CPU has them
// (simd.h), bfloat16 and float16 steps 16 units per call with AVX-512, double
// steps 4 with AVX2; CPUs without those instructions run one unit at a time.
#pragma once

#include <ATen/Parallel.h>
#include <c10/core/Device.h>

#include <algorithm>
#include <array>
#include <type_traits>

#include "huge_pages.h"
#include "simd.h"
#if defined(__x86_64__)
#include "fused_forward_cpu.h"
#endif
#include "../layers/common.h"

namespace rnnfused {

struct CpuLaunch {
  // Nothing to set on the CPU; the type keeps the op entry points device-generic.
  struct Guard {
    explicit Guard(c10::Device) {}
  };

  // A layer's buffer that grows with the sequence: on huge pages from 32 MB
  // (huge_pages.h), else at::empty.
  static at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return cpu::empty_on_huge_pages(sizes, options);
  }

  // The backward's gradients on the pre-activations [rows, columns] (d_pre; a GRU's
  // d_x and d_h), which the input and weight gradients' GEMMs read: float32 rows
  // cpu::gradient_row_floats(columns) apart (a line longer where that reads faster),
  // else contiguous.
  static at::Tensor gradient_rows(int64_t rows, int64_t columns, const at::TensorOptions& options) {
#if defined(__x86_64__)
    const int64_t stride =
        options.dtype() == at::kFloat ? cpu::gradient_row_floats(columns) : columns;
    if (stride != columns) return empty({rows, stride}, options).narrow(1, 0, columns);
#endif
    return empty({rows, columns}, options);
  }

  // The 16-bit storage types the AVX-512 kernels take (math in float32).
  template <typename T>
  static constexpr bool is_16bit() {
    return std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;
  }

  // Whether a forward layer of these sizes runs as one persistent fused loop
  // (fused_forward_cpu.h) instead of a GEMM and a functor launch per step:
  // float32, and bfloat16 and float16 on AVX-512; a bfloat16 layer at every size
  // where its products run on AMX tiles (cpu::amx_tiles_enabled) or on vdpbf16ps
  // (cpu::bf16_dot_loops), else only below the sizes bf16_gemm_steps gives to oneDNN.
  template <typename scalar_t>
  static bool fuses_forward(const LayerSizes& sz) {
#if defined(__x86_64__)
    constexpr bool k16Bit = is_16bit<scalar_t>();
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      if (cpu::amx_tiles_enabled() || cpu::bf16_dot_loops()) {
        return cpu::fused_forward_applies(sz, true);
      }
      if (bf16_gemm_steps(sz)) return false;
    }
    return (std::is_same_v<scalar_t, float> || k16Bit) && cpu::fused_forward_applies(sz, k16Bit);
#else
    return false;
#endif
  }

  // Whether the backward of such a layer runs as one persistent fused loop: the
  // same conditions, but a bfloat16 layer's large steps take a GEMM each (bf16_gemm_steps:
  // on the AMX tiles with W_hh packed once where the CPU has them, takes_amx_gemm; else
  // oneDNN's), and so do a float32 layer's under torch's "medium" float32 matmul
  // precision where its forward runs on AMX tiles (float32_gemm_steps).
  // Where a bfloat16 backward's product runs on vdpbf16ps
  // (cpu::backward_on_bf16_pairs) the loop takes every size: two Zen 5 cores, training
  // LSTM 100, 64, 512, 512 98.6-99.9 -> 89.8 ms against a oneDNN GEMM a step, GRU
  // 77.9 -> 69.6; 100, 8, 256, 256 against the float32 loop on widened values 5.3 ->
  // 4.1 ms.
  template <typename scalar_t>
  static bool fuses_backward(const LayerSizes& sz) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      if (!cpu::backward_on_bf16_pairs(sz.gates * sz.hidden) && bf16_gemm_steps(sz)) {
        return false;
      }
    }
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (float32_gemm_steps(sz)) return false;
    }
#endif
    return fuses_forward<scalar_t>(sz);
  }

  // Runs the layer's forward steps when fuses_forward<scalar_t> said so; returns h_n.
  template <typename scalar_t, typename XProj, typename MakeStep>
  static at::Tensor fused_forward(const LayerSizes& sz, const Schedule& sched, XProj& x_proj,
                                  const at::Tensor& h0,
                                  const at::Tensor& w_hh, at::Tensor& output,
                                  const at::Tensor& product, MakeStep make_step) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<scalar_t, float> || is_16bit<scalar_t>()) {
      return cpu::fused_forward<scalar_t>(sz, sched, x_proj, h0, w_hh, output, product,
                                          make_step);
    }
#endif
    TORCH_INTERNAL_ASSERT(false, "rnnfused: the fused forward loop runs float32 and 16-bit floats only");
    return at::Tensor();
  }

  // Runs the layer's backward steps when fuses_backward<scalar_t> said so; returns
  // whether they ran on the calling thread alone (GemmsWhereLoopRan).
  template <typename scalar_t, typename MakeStep>
  static bool fused_backward(const LayerSizes& sz, const Schedule& sched,
                             const at::Tensor& grad_output, const at::Tensor& w_hh,
                             at::Tensor& d_h, const at::Tensor& d_recurrent, bool accumulate,
                             bool initial_state_grad, MakeStep make_step) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<scalar_t, float> || is_16bit<scalar_t>()) {
      return cpu::fused_backward<scalar_t>(sz, sched, grad_output, w_hh, d_h, d_recurrent,
                                           accumulate, initial_state_grad, make_step);
    }
#endif
    TORCH_INTERNAL_ASSERT(false, "rnnfused: the fused backward loop runs float32 and 16-bit floats only");
    return false;
  }

  // While it lives, where the backward loop ran on the calling thread alone
  // (`loop_on_one_thread`) and the gradients it wrote (`written`, d_pre) take at
  // most kBytes, the library GEMMs below kWork multiply-adds stay on the calling
  // thread: the backward's input and weight gradients read d_pre from that core's
  // cache instead of half of it crossing to the other core's. Two Zen 2 vCPUs,
  // training step in-process against the products split, alternated with torch.nn
  // as bench.py does: the host runs in two states, one where torch.nn's LSTM 50, 1,
  // 64, 64 step takes ~1.1 ms and crossing cores is dear, one where it takes ~0.83
  // and crossing is cheap. In the first, LSTM 50, 1, 64, 64 (its 50 x 256 x 64
  // products, d_pre 50 KB) 4% faster, GRU 6-7%, LSTM B 2 8-9%, GRU T 100, H 32
  // 11%; in the second LSTM 50, 1, 64, 64 3-4% slower (the split's time there 10%
  // below the first state's, this one's 1-2%). Longer or wider d_pre, where the
  // products' rows are many and short and two cores' bandwidth counts, stays
  // split (LSTM T 20, B 256, H 4, 320 KB: 4-5% slower on one thread; B 64, H 8, 160
  // KB: 1-4%; T 200, B 1, 200 KB: even), and so do products past kWork (T 1000, B
  // 1: 16M multiply-adds, 6% slower on one thread).
  struct GemmsWhereLoopRan : cpu::GemmsOnCallingThread {
    static constexpr int64_t kBytes = int64_t{128} << 10;
    static constexpr int64_t kWork = int64_t{1} << 22;
    GemmsWhereLoopRan(bool loop_on_one_thread, const at::Tensor& written)
        : cpu::GemmsOnCallingThread(
              loop_on_one_thread && static_cast<int64_t>(written.nbytes()) <= kBytes, kWork) {}
  };

  // Where gemm_nt takes gemm_nt_small_avx512 instead of MKL: up to 16 rows of `a`,
  // or up to 2^23 multiply-adds (measured on two threads against MKL's NT GEMM:
  // 8 x 128 x 512 12 vs 16 us, 50 x 64 x 256 8 vs 19, 64 x 128 x 512 34 vs 46,
  // 16 x 512 x 2048 199 vs 415; MKL is ahead by ~10% from 512 x 128 x 512 on).
  // bfloat16 and float16 up to 16 rows only: there oneDNN's 16-bit GEMMs cost
  // ~20 us (bf16) to ~45 us (f16, 8 x 128 x 512) a call, more than the products.
  // Past kSmallGemmWork MKL is ahead where it runs AVX-512 (Intel); elsewhere
  // (AMD) the library's kernel takes every size (cpu::blas_runs_avx512; two Zen 5
  // cores, 512 x 512 x 2048 NT: 440 vs 200 GFLOP/s, 6400 x 2048 x 512 NN: 396 vs
  // 191, 2048 x 6400 x 512 TN: 300-350 vs 193).
  // On AVX2 CPUs other than Intel's (cpu::own_gemm_avx2) gemm_avx2 takes the float32
  // products of 2 rows or more, every size (two Zen 2 cores against MKL's generic
  // path: 512 x 2048 x 512 NT with bias 171 vs 149 GFLOP/s, 6400 x 512 x 2048 NN
  // 178 vs 154, 50 x 2048 x 512 159 vs 109, 50 x 256 x 64 21 vs 29 us, 4 x 2048 x 512
  // 157 vs 292 us), and from 2 rows up to 16 (and 32) its few-row kernel (in-process
  // A/B against MKL over 100 cell steps: LSTMCell B 2, H 128 15% faster, GRUCell B 3
  // 30%, GRUCell B 2 training 10%); one row stays on MKL (its product of one row is ahead:
  // LSTMCell B 1, H 128 13% slower on the kernel).
  static constexpr int64_t kSmallGemmRows = 16;
  static constexpr int64_t kSmallGemmWork = int64_t{1} << 23;
  static constexpr int64_t kAvx2GemmRows = 2;
  static bool within_own_gemm(int64_t work) {
    return work <= kSmallGemmWork || !cpu::blas_runs_avx512();
  }

  // Each product out = a @ w^T (+ bias) (common.h's NtProduct), those the library's
  // GEMM takes (takes_small_gemm) together in one call of it, large bfloat16 ones
  // widened (widens_16bit), the others on ATen.
  template <typename... Products>
  static void gemm_nt(const Products&... each) {
    constexpr size_t n = sizeof...(Products);
    const std::array<NtProduct, n> products{each...};
#if defined(__x86_64__)
    static_assert(n <= cpu::kMaxNtGemms, "gemm_nt_small_avx512 takes kMaxNtGemms at most");
    std::array<cpu::NtGemm, n> small;
    int count = 0;
    for (const NtProduct& p : products) {
      if (takes_small_gemm(p)) {
        small[count] = {p.a.size(0), p.w.size(0), p.a.size(1), p.a.data_ptr(),
                        p.a.stride(0), p.w.data_ptr(),
                        p.bias.defined() ? p.bias.data_ptr() : nullptr,
                        p.out.data_ptr(), p.out.stride(0), storage_of(p.out)};
        if (p.w_panels.defined()) small[count].w_packed = p.w_panels.data_ptr<float>();
        ++count;
      } else if (widens_16bit(p.a)) {
        gemm_nt_widened(p);
      } else {
        gemm_nt_aten(p);
      }
    }
    if (count > 0) own_gemm(small.data(), count);
#else
    for (const NtProduct& p : products) gemm_nt_aten(p);
#endif
  }

  // The weights of `chunk` (an NtProduct: its w [N, K]) in the panels of the
  // library's GEMM (own_gemm), for products that share them, where that GEMM takes
  // a float32 product like `chunk` (takes_small_gemm); else undefined. The input
  // projection's chunks: without, each chunk's product forms them again (an LSTM
  // of T 100, B 64, H 512: 13 times on AVX2, 39 on AVX-512, once per 192-row
  // block; packed once, its forward 2.4% faster on two Zen 5 cores, in-process A/B).
  static at::Tensor pack_gemm_weights(const NtProduct& chunk) {
#if defined(__x86_64__)
    const at::Tensor& w = chunk.w;
    if (w.scalar_type() == at::kFloat && w.numel() > 0 && takes_small_gemm(chunk)) {
      const int64_t N = w.size(0), K = w.size(1);
      const bool avx512 = cpu::active_isa() == cpu::Isa::kAvx512;
      at::Tensor panels = cpu::empty_on_huge_pages(
          {avx512 ? cpu::gemm_avx512_panel_floats(N, K) : cpu::gemm_avx2_panel_floats(N, K)},
          w.options());
      cpu::NtGemm g{};
      g.N = N;
      g.K = K;
      g.w = w.data_ptr();
      if (avx512) {
        cpu::pack_gemm_avx512_panels(g, panels.data_ptr<float>());
      } else {
        cpu::pack_gemm_avx2_panels(g, panels.data_ptr<float>());
      }
      return panels;
    }
#endif
    return at::Tensor();
  }

  // Whether gemm_nn runs a step loop's product out (+)= a @ w, w packed once for
  // the loop (pack_gemm_nn_weights), on the AMX tiles (cpu::amx_gemm_bf16):
  // bfloat16, or float32 where torch lets its products run on bfloat16 operands
  // (cpu::float32_products_in_bf16: "medium"), with more rows than the few-row kernel
  // takes and rows of unit stride. In place of oneDNN's GEMM, which repacks w at
  // every call (and rounds a float32 one to bfloat16 again): two Xeon vCPUs, a
  // step's 64 x 2048 x 512 (d_pre @ W_hh, LSTM H 512) ~195 us on oneDNN in bfloat16,
  // ~130 on its own API with W_hh packed once (mkldnn::_linear_pointwise). The
  // layers' other products (the input and weight gradients: one call each, their
  // operands in L3) stay on oneDNN: this kernel's 2 x 2 tile blocks run them at
  // 1.5-1.8 TF/s, oneDNN at 1.8-2.2 (6400 x 2048 x 512, packing included on both sides).
  static bool takes_amx_gemm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& w) {
#if defined(__x86_64__)
    const at::ScalarType type = out.scalar_type();
    return (type == at::kBFloat16 || type == at::kFloat) && a.scalar_type() == type &&
           w.scalar_type() == type && a.size(0) > kSmallGemmRows &&
           (a.size(1) <= 1 || a.stride(1) == 1) && (out.size(1) <= 1 || out.stride(1) == 1) &&
           (type == at::kBFloat16 ? cpu::amx_tiles_enabled() : cpu::float32_products_in_bf16());
#else
    return false;
#endif
  }

  // w [K, N] packed once for a step loop's products gemm_nn runs on the AMX tiles
  // (takes_amx_gemm; cpu::pack_amx_gemm_b; rows: the loop's widest step), else
  // undefined (the products then read w as it is).
  static at::Tensor pack_gemm_nn_weights(const at::Tensor& w, int64_t rows) {
#if defined(__x86_64__)
    const bool float32 = w.scalar_type() == at::kFloat;
    if (rows > kSmallGemmRows && w.dim() == 2 &&
        (float32 ? cpu::float32_products_in_bf16()
                 : w.scalar_type() == at::kBFloat16 && cpu::amx_tiles_enabled())) {
      return cpu::pack_amx_gemm_weights(w);
    }
#endif
    return at::Tensor();
  }

  // Whether a bfloat16 weight gradient out = d^T @ x (a = d^T by columns: d [K, M] of
  // unit-stride rows; x = w [K, N] contiguous) is faster as out^T = x^T @ d
  // (gemm_nn_transposed) on oneDNN with AMX: its GEMM takes d^T as a view at about half
  // the rate of stored operands (two Xeon vCPUs, K 6400: M 2048 x N 512 14.2 against 7.7
  // ms for x^T @ d; x^T @ d over M 256-4096, N 64-1024 at 0.49-0.86 of the time but where
  // M is 512 with N 384 or more and M 768 with N 768 or more, 1.2-1.6: M in (256, 768]
  // with N from 384 keeps the view), and x^T and out^T cost little beside it
  // (cpu::transpose_16bit_avx512: x is K x N, not K x M); from 2^19 values of out. (Its
  // buffers from at::empty: fresh pages at every call, ~6.5 MB for x^T at K 6400, N 512.)
  // In-process A/B, bfloat16 training: LSTM 100, 64, 512, 512 11% faster, GRU 5%, LSTM
  // 35, 20, 650, 650 1.4%.
  static bool transposed_product_is_faster(const at::Tensor& out, const at::Tensor& a,
                                           const at::Tensor& w) {
#if defined(__x86_64__)
    const int64_t M = a.size(0), N = w.size(1);
    const bool slow_for_onednn = M > 256 && M <= 768 && N >= 384;
    return out.scalar_type() == at::kBFloat16 && a.scalar_type() == at::kBFloat16 &&
           w.scalar_type() == at::kBFloat16 && a.dim() == 2 && M > 1 && a.size(1) > 1 &&
           a.stride(0) == 1 && a.stride(1) >= M && w.is_contiguous() && M * N >= (int64_t{1} << 19) &&
           !slow_for_onednn && cpu::active_isa() == cpu::Isa::kAvx512 && cpu::has_amx_bf16();
#else
    return false;
#endif
  }

#if defined(__x86_64__)
  // out (+)= a @ w as (w^T @ a^T)^T: a^T = d [K, M] as stored, w^T and the product's
  // transpose by cpu::transpose_16bit_avx512 (transposed_product_is_faster).
  static void gemm_nn_transposed(const at::Tensor& out, const at::Tensor& a, const at::Tensor& w,
                                 bool accumulate) {
    const int64_t K = w.size(0), N = w.size(1), M = a.size(0);
    at::Tensor w_t = at::empty({N, K}, w.options());
    cpu::transpose_16bit_avx512(w.data_ptr(), K, N, w_t.data_ptr());
    const at::Tensor product_t = at::mm(w_t, a.t());  // [N, M]
    const bool direct = !accumulate && out.is_contiguous();
    at::Tensor product = direct ? out : at::empty({M, N}, out.options());
    cpu::transpose_16bit_avx512(product_t.data_ptr(), N, M, product.data_ptr());
    if (accumulate) {
      out.add_(product);
    } else if (!direct) {
      out.copy_(product);
    }
  }
#endif

  // out (+)= a @ w, w [K, N] as stored (the backward's d_pre @ W_hh and its
  // large products). float32 products of 2+ rows within_own_gemm (a's rows or
  // columns contiguous: the weight gradients' d_pre^T) and up to 16 rows in 16-bit
  // types (oneDNN's fixed cost per call, as above) take gemm_nt_small_avx512 (w_kn:
  // its panels copied, not transposed; two threads, 50 x 256 x 64 NN: 8 vs 18 us
  // on MKL, 128 x 1024 x 64: 44 vs 100); bfloat16 with more rows the float32 BLAS
  // on widened copies (widens_16bit; float16 too); the rest ATen.
  static void gemm_nn(const at::Tensor& out, const at::Tensor& a, const at::Tensor& w,
                      bool accumulate, const at::Tensor& w_packed = at::Tensor()) {
#if defined(__x86_64__)
    if (w_packed.defined() && takes_amx_gemm(out, a, w)) {
      cpu::amx_gemm_bf16({a.size(0), w.size(1), a.size(1), a.data_ptr(), a.stride(0),
                          w_packed.data_ptr(), out.data_ptr(), out.stride(0), accumulate,
                          out.scalar_type() == at::kFloat});
      return;
    }
    if (transposed_product_is_faster(out, a, w)) {
      gemm_nn_transposed(out, a, w, accumulate);
      return;
    }
    const bool f32 = out.scalar_type() == at::kFloat;
    const bool by_columns = f32 && !(a.size(1) <= 1 || a.stride(1) == 1) &&
                            (a.size(0) <= 1 || a.stride(0) == 1);
    // float32 from 2 rows (kAvx2GemmRows, both kernels): MKL's one-row product is
    // ahead (1 x 256 x 64: 2.1 vs 3.4 us). gemm_avx2 by rows or by columns (the
    // weight gradients' d_pre^T, its units over all of N: gemm_avx2.cpp; in-process
    // A/B against MKL on two Zen 2 vCPUs, training: LSTM 100, 64, 512, 512 586 ->
    // 543 ms, GRU 412 -> 397, the 2-layer bidirectional LSTM 100, 16, 128, 128
    // 53.0 -> 50.4, LSTM 50, 1, 64, 64 0.574 -> 0.558, LSTMCell B 8, H 128 x 100
    // steps 28.8 -> 27.3; RNN 144 -> 146).
    const bool small = f32 ? a.size(0) >= kAvx2GemmRows &&
                                 within_own_gemm(a.size(0) * a.size(1) * w.size(1))
                           : a.size(0) <= kSmallGemmRows;
    if (small &&
        small_gemm_layout(out, a, w, at::Tensor(), /*a_by_columns=*/by_columns)) {
      const cpu::NtGemm g{a.size(0), w.size(1), a.size(1), a.data_ptr(),
                          by_columns ? 1 : a.stride(0), w.data_ptr(), nullptr, out.data_ptr(),
                          out.stride(0), storage_of(out), /*w_kn=*/true, accumulate,
                          by_columns ? a.stride(1) : 1};
      own_gemm(&g, 1);
      return;
    }
    if (widens_16bit(a) && out.scalar_type() == a.scalar_type() && w.scalar_type() == a.scalar_type()) {
      const at::Tensor w32 = w.to(at::kFloat);
      for_row_blocks(a.size(0), a.size(1) + w.size(1), [&](int64_t r, int64_t rows) {
        const at::Tensor a32 = a.narrow(0, r, rows).to(at::kFloat);
        at::Tensor out_rows = out.narrow(0, r, rows);
        at::Tensor out32 = accumulate ? out_rows.to(at::kFloat)
                                      : at::empty({rows, w.size(1)}, a32.options());
        gemm_nn(out32, a32, w32, accumulate);  // the float32 product's own choice
        out_rows.copy_(out32);
      });
      return;
    }
#endif
    if (accumulate) {
      // The product formed apart and then added, rather than the BLAS's C += A B
      // (addmm_): MKL sums a row's terms onto C's (the GRU's direct state-gradient
      // part, large beside them), 20-40 times as far from float64 for one row (1 x
      // 1536 x 512, RMS), 1.5-3 times for 8-64.
      out.add_(at::mm(a, w));
      return;
    }
    gemm_nn_aten(out, a, w, /*accumulate=*/false);
  }

#if defined(__x86_64__)
  // The library's GEMM of this CPU: gemm_nt_small_avx512, or gemm_avx2 where
  // cpu::own_gemm_avx2 (small_gemm_layout says which products either takes).
  static void own_gemm(const cpu::NtGemm* products, int count) {
    if (cpu::active_isa() == cpu::Isa::kAvx512) {
      cpu::gemm_nt_small_avx512(products, count);
    } else {
      cpu::gemm_avx2(products, count);
    }
  }

  // What own_gemm takes, sizes aside: AVX-512 with out, a, w (and bias) all
  // float32, all bfloat16 or all float16, or cpu::own_gemm_avx2 with all float32;
  // rows of out, and of a unless a_by_columns (its columns then contiguous: the
  // caller checks), with unit stride; w and bias contiguous.
  static bool small_gemm_layout(const at::Tensor& out, const at::Tensor& a, const at::Tensor& w,
                                const at::Tensor& bias, bool a_by_columns = false) {
    const at::ScalarType type = out.scalar_type();
    const bool avx512 = cpu::active_isa() == cpu::Isa::kAvx512;
    return (avx512 || (cpu::own_gemm_avx2() && type == at::kFloat)) &&
           (type == at::kFloat || type == at::kBFloat16 || type == at::kHalf) &&
           a.scalar_type() == type &&
           w.scalar_type() == type && (!bias.defined() || bias.scalar_type() == type) &&
           (a_by_columns || a.size(1) <= 1 || a.stride(1) == 1) &&
           (out.size(1) <= 1 || out.stride(1) == 1) &&
           w.is_contiguous() && (!bias.defined() || bias.is_contiguous());
  }

  // Whether a bfloat16 layer's steps are better as one GEMM each (oneDNN's; with AMX
  // tiles the library's, takes_amx_gemm) than as the persistent float32 loop: where
  // oneDNN's bf16 GEMM is fast
  // (cpu::has_fast_bf16_gemm). With AMX-BF16 it runs a step's product on the
  // tiles, 3-4x the float32 rate once it is large (two threads, 64 x 512 x 2048:
  // 170 vs 590 us for MKL's float32 GEMM; 16 x 128 x 512: 27 vs 15 us, oneDNN's
  // ~20 us of set-up a call). Whole layers, forward: even at 32 x 256 x 1024 a
  // step (LSTM 100, 32, 256, 256: 10.7 vs 9.8 ms), ahead from twice that (100, 64,
  // 256, 256: 17.8 vs 19.6; 100, 32, 512, 512: 28.8 vs 34.8). On two Zen 5 cores
  // (vdpbf16ps): 64 x 512 x 2048 in 233 us against ~430 in the float32 loop, 16
  // rows even (110 us). Where the forward runs on AMX tiles (amx_tiles_enabled) or on
  // vdpbf16ps (bf16_dot_loops) this decides the backward only: those loops' forwards are
  // ahead of both at every size measured (LSTM 100, 64, 512, 512: AMX 17.8 ms against
  // 28.2 a GEMM a step; two Zen 5 cores, vdpbf16ps 27.9 against 39.3).
  // With AMX tiles the steps' products run on them (takes_amx_gemm), W_hh packed once,
  // and the backward takes them from half the work a step: in-process A/B against the
  // float32 loop, training, T 100: LSTM B 32 H 256 22% faster, RNN B 64 H 256 18%, GRU
  // B 32 H 256 11%, B 48 H 192 6%; below 2^22 within 5% either way (LSTM B 24-32 H 128
  // 2-3% faster, B 64-128 H 64 4.5% slower).
  static bool bf16_gemm_steps(const LayerSizes& sz) {
    constexpr int64_t kMinStepWork = int64_t{1} << 23;  // multiply-adds of one step's product
    constexpr int64_t kMinAmxStepWork = int64_t{1} << 22;
    const int64_t work = sz.batch * sz.output * sz.gates * sz.hidden;
    return cpu::has_fast_bf16_gemm() && sz.batch > kSmallGemmRows &&
           (work > kMinStepWork || (work >= kMinAmxStepWork && cpu::amx_tiles_enabled()));
  }

  // Whether a float32 layer's backward steps are better as one GEMM each on bfloat16
  // operands, as torch's "medium" float32 matmul precision lets them run, than as the
  // float32 loop: where the forward's products run on AMX tiles
  // (cpu::float32_products_on_amx: that setting, the tiles, their sizes), the steps'
  // products then on the tiles too with W_hh packed once (takes_amx_gemm), from 17 rows
  // and 2^22 multiply-adds a step. Two Xeon vCPUs, training under "medium", in-process
  // A/B against the float32 loop: T 100, B 32, H 512 LSTM 20% faster, RNN 20%, GRU 14%;
  // H 256 LSTM B 32 6.5%, RNN B 64 6%, GRU B 64 3%; GRU B 48 H 192 2%. (With at::mm a
  // step, oneDNN, which rounds and repacks W_hh at every call, from 64 rows and 2^24:
  // B 64 H 512 LSTM 11.6%, GRU 12.1%, RNN 18.9%, GRU H 256 B 64 9% and H 512 B 32 7%
  // slower; the tiles are 11-12% faster again at B 64 H 512, in-process A/B.)
  static bool float32_gemm_steps(const LayerSizes& sz) {
    constexpr int64_t kMinStepWork = int64_t{1} << 22;  // multiply-adds of one step's product
    return sz.batch > kSmallGemmRows &&
           sz.batch * sz.output * sz.gates * sz.hidden >= kMinStepWork &&
           cpu::float32_products_on_amx(sz);
  }

  // bfloat16 products past the few-row kernel, where oneDNN's bf16 GEMM is slow
  // (!cpu::has_fast_bf16_gemm: Intel without AMX): it runs on vdpbf16ps there, at
  // half the float32 FMA rate (87 vs 176 GFLOP/s a core), so the float32 GEMM on
  // widened copies is faster, conversions included (512 x 512 x 2048 with bias:
  // 5.1 vs 8.5 ms on two threads). The same sums in float32, rounded once, as
  // oneDNN's; the float32 product goes where a float32 one would (gemm_nt / gemm_nn).
  // float16 likewise where oneDNN's float16 GEMM does not run (!cpu::has_fast_f16_gemm:
  // no AVX512-FP16): there ATen's float16 GEMM is a loop of dot products (two Zen 2
  // vCPUs: LSTM 50, 16, 128, 128 float16 forward at 0.72 times torch.nn's speed, the
  // products ~45% of it; two Zen 5 cores, AVX-512 without FP16: LSTM 100, 64, 512, 512
  // float16 forward 322 ms, 5.6 times float32's).
  static bool widens_16bit(const at::Tensor& a) {
    switch (a.scalar_type()) {
      case at::kBFloat16: return !cpu::has_fast_bf16_gemm();
      case at::kHalf: return !cpu::has_fast_f16_gemm();
      default: return false;
    }
  }

  // The widened copies of `a` and the float32 result a block of rows at a time
  // (~8 MB of them): scratch bounded whatever M, the block's rows still in cache
  // when they are rounded. f(first_row, rows) per block; row_floats: a's row + out's.
  template <typename F>
  static void for_row_blocks(int64_t M, int64_t row_floats, const F& f) {
    const int64_t block = std::max<int64_t>(256, (int64_t{1} << 21) / std::max<int64_t>(1, row_floats));
    for (int64_t r = 0; r < M; r += block) f(r, std::min(block, M - r));
  }

  static void gemm_nt_widened(const NtProduct& p) {
    const at::Tensor w = p.w.to(at::kFloat);
    const at::Tensor bias = p.bias.defined() ? p.bias.to(at::kFloat) : at::Tensor();
    for_row_blocks(p.a.size(0), p.a.size(1) + p.w.size(0), [&](int64_t r, int64_t rows) {
      const at::Tensor a = p.a.narrow(0, r, rows).to(at::kFloat);
      const at::Tensor out32 = at::empty({rows, w.size(0)}, a.options());
      gemm_nt(NtProduct{out32, a, w, bias});  // the float32 product's own choice
      p.out.narrow(0, r, rows).copy_(out32);
    });
  }

  static cpu::Storage storage_of(const at::Tensor& t) {
    switch (t.scalar_type()) {
      case at::kBFloat16: return cpu::Storage::kBFloat16;
      case at::kHalf: return cpu::Storage::kFloat16;
      default: return cpu::Storage::kFloat32;
    }
  }

  static bool takes_small_gemm(const NtProduct& p) {
    const int64_t M = p.a.size(0);
    if (cpu::own_gemm_avx2()) {
      return M >= kAvx2GemmRows && small_gemm_layout(p.out, p.a, p.w, p.bias);
    }
    return small_gemm_layout(p.out, p.a, p.w, p.bias) &&
           (M <= kSmallGemmRows || (p.out.scalar_type() == at::kFloat &&
                                    within_own_gemm(M * p.a.size(1) * p.w.size(0))));
  }
#endif

  // Elements per task: below this one thread runs the whole step. A float64 unit
  // costs several float32 ones (4 lanes a call, SLEEF's exp and tanh out of line), so
  // its steps split from 1024 (two Zen 2 vCPUs, forward against 16384: LSTM 100, 64,
  // 256, 256 112 ms against 138, RNN 35.5 against 41.5, torch.nn's 37; LSTM, GRU, RNN
  // 50, 16, 128, 128 20-22% faster).
  static constexpr int64_t kGrainSize = 16384;
  static constexpr int64_t kFloat64GrainSize = 1024;

  template <typename Functor>
  static void run(int64_t n, const Functor& f) {
    if (n == 0) return;
#if defined(__x86_64__)
    using T = typename Functor::scalar_type;
    constexpr bool kFloat = std::is_same_v<T, float>, kDouble = std::is_same_v<T, double>;
    if constexpr (kFloat || kDouble || is_16bit<T>()) {
      const cpu::Isa isa = cpu::active_isa();
      // float: AVX-512 or AVX2; bfloat16 and float16: AVX-512 only; float64: AVX2 (on
      // AVX-512 CPUs too) where its exp and tanh are found, 4 units a call (one at a
      // time, the scalar exp and tanh were most of a step: LSTM 50, 16, 128, 128
      // forward at 0.77 times torch.nn's speed, whose float64 math is vectorised).
      const bool avx2 = kDouble ? cpu::float64_vectors() : kFloat && isa == cpu::Isa::kAvx2;
      if (avx2 || (!kDouble && isa == cpu::Isa::kAvx512)) {
        const int64_t rows = n / f.H;
        const int64_t grain = kDouble ? kFloat64GrainSize : kGrainSize;
        const int64_t grain_rows = (grain + f.H - 1) / f.H;
        cpu::capped_parallel_for(0, rows, grain_rows, [&](int64_t begin, int64_t end) {
          if constexpr (kFloat || kDouble) {
            if (avx2) {
              cpu::run_rows_avx2(f, begin, end);
              return;
            }
          }
          if constexpr (!kDouble) cpu::run_rows_avx512(f, begin, end);
        });
        return;
      }
    }
#endif
    cpu::capped_parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) f(i);
    });
  }
};

}  // namespace rnnfused
