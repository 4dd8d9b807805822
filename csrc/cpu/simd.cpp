// Run-time choice of the vectorised step kernels (simd.h).
#include "simd.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>

#if defined(__linux__)
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace rnnfused {
namespace cpu {

namespace {

Isa detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // The AVX-512 kernels use F, BW, VL and DQ (every AVX-512 CPU but Xeon Phi has them).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

Isa requested(Isa supported) {
  const char* env = std::getenv("RNNFUSED_CPU_ISA");
  if (env == nullptr) return supported;
  Isa wanted = supported;
  if (std::strcmp(env, "scalar") == 0) wanted = Isa::kScalar;
  if (std::strcmp(env, "avx2") == 0) wanted = Isa::kAvx2;
  if (std::strcmp(env, "avx512") == 0) wanted = Isa::kAvx512;
  return static_cast<int>(wanted) < static_cast<int>(supported) ? wanted : supported;
}

}  // namespace

Isa active_isa() {
  static const Isa isa = requested(detect());
  return isa;
}

namespace {

// The bfloat16 extensions, read once (GCC names AMX from version 11 on).
struct Bf16Features {
  bool avx512 = false, amx = false;
};

const Bf16Features& bf16_features() {
  static const Bf16Features features = [] {
    Bf16Features f;
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    __builtin_cpu_init();
    f.avx512 = __builtin_cpu_supports("avx512bf16") != 0;
#if __GNUC__ >= 11
    f.amx = __builtin_cpu_supports("amx-bf16") != 0;
#endif
#endif
    return f;
  }();
  return features;
}

}  // namespace

bool has_amx_bf16() { return bf16_features().amx; }

namespace {

int read_usable_cpus() {
#if defined(__linux__)
  cpu_set_t mask;
  CPU_ZERO(&mask);
  if (sched_getaffinity(0, sizeof(mask), &mask) == 0) return CPU_COUNT(&mask);
#endif
  return static_cast<int>(std::thread::hardware_concurrency());
}

// The CPUs this process may run on (its affinity mask; where that can't be read, the
// machine's count, or 0 where unknown). Read again at most every 100 ms (the syscall
// costs ~0.2 us, a cell's step asks for each product): a process may change its mask
// after it starts.
int usable_cpus() {
  using Clock = std::chrono::steady_clock;
  constexpr int64_t kRereadNs = 100'000'000;
  static std::atomic<int64_t> read_at{0};  // ns on Clock; 0: never read
  static std::atomic<int> cpus{0};
  const int64_t now =
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
          .count();
  const int64_t last = read_at.load(std::memory_order_acquire);
  if (last == 0 || now - last >= kRereadNs) {
    // Racing threads each read the mask and store the same answer.
    cpus.store(read_usable_cpus(), std::memory_order_relaxed);
    read_at.store(now == 0 ? 1 : now, std::memory_order_release);
  }
  return cpus.load(std::memory_order_relaxed);
}

}  // namespace

int capped_threads(int threads) {
  if (threads <= 1) return std::max(threads, 1);
  const int cpus = usable_cpus();
  return cpus > 0 ? std::min(threads, cpus) : threads;
}

bool has_prefetchw() {
  static const bool has = [] {
#if defined(__x86_64__) || defined(__i386__)
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid(0x80000001, &eax, &ebx, &ecx, &edx) != 0 && (ecx & (1u << 8)) != 0;
#else
    return false;
#endif
  }();
  return has;
}

bool amx_tiles_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("RNNFUSED_CPU_AMX");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    // The tile loop is compiled with AVX512-BF16 (step_avx512_bf16.cpp), which every
    // CPU with AMX-BF16 has; asked for all the same.
    if (!has_amx_bf16() || !has_avx512_bf16() || active_isa() != Isa::kAvx512) return false;
#if defined(__linux__) && defined(__x86_64__)
    // Linux hands out the 8 KB of tile state only to a process that asks
    // (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); oneDNN asks the same way.
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return enabled;
}

bool has_avx512_bf16() { return bf16_features().avx512; }

bool has_fast_bf16_dot() { return has_avx512_bf16() && !blas_runs_avx512(); }

bool bf16_dot_loops() {
  static const bool enabled = [] {
    const char* env = std::getenv("RNNFUSED_CPU_BF16_DOT");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    return active_isa() == Isa::kAvx512 && has_fast_bf16_dot();
  }();
  return enabled;
}

bool has_fast_bf16_gemm() { return has_amx_bf16() || has_fast_bf16_dot(); }

bool has_fast_f16_gemm() {
  static const bool has = [] {
#if defined(__x86_64__) || defined(__i386__)
    // CPUID leaf 7: subleaf 0 EDX bit 23 AVX512-FP16, subleaf 1 EAX bit 21 AMX-FP16.
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) != 0 && (edx & (1u << 23)) != 0) {
      return true;
    }
    return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) != 0 && (eax & (1u << 21)) != 0;
#else
    return false;
#endif
  }();
  return has;
}

bool blas_runs_avx512() {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  static const bool intel = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("intel") != 0;
  }();
  return intel;
#else
  return false;
#endif
}

int64_t l2_cache_bytes() {
  static const int64_t bytes = [] {
    constexpr int64_t kUnknown = int64_t{1} << 20;
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long size = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return size > 0 ? static_cast<int64_t>(size) : kUnknown;
#else
    return kUnknown;
#endif
  }();
  return bytes;
}

bool small_l1_cache() {
  static const bool small = [] {
#if defined(_SC_LEVEL1_DCACHE_SIZE)
    const long bytes = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    return bytes > 0 && bytes <= 32 * 1024;
#else
    return false;
#endif
  }();
  return small;
}

int64_t gradient_row_floats(int64_t columns) {
  // RNNFUSED_CPU_PAD_GRADIENTS: 1 pads every float32 gradient's rows (the tests
  // judge the padded strides on any CPU), 0 none; else the rule below.
  static const int forced = [] {
    const char* env = std::getenv("RNNFUSED_CPU_PAD_GRADIENTS");
    if (env == nullptr) return -1;
    return std::strcmp(env, "1") == 0 ? 1 : std::strcmp(env, "0") == 0 ? 0 : -1;
  }();
  constexpr int64_t kLineFloats = 16;        // one 64-byte line
  constexpr int64_t kAliasingFloats = 512;   // 2 KB
  constexpr int64_t kInPlaceFloats = 4096;   // 16 KB: read in place as fast
  const bool pads =
      forced == 1 ||
      (forced == -1 && active_isa() == Isa::kAvx512 && !blas_runs_avx512() && small_l1_cache() &&
       columns % kAliasingFloats == 0 && columns > 0 && columns < kInPlaceFloats);
  return pads ? columns + kLineFloats : columns;
}

bool own_gemm_avx2() { return active_isa() == Isa::kAvx2 && !blas_runs_avx512(); }

namespace {
thread_local int64_t gemms_stay_below = 0;
}  // namespace

int64_t calling_thread_gemm_work() { return gemms_stay_below; }

GemmsOnCallingThread::GemmsOnCallingThread(bool on, int64_t below_work)
    : previous_(gemms_stay_below) {
  if (on) gemms_stay_below = std::max(gemms_stay_below, below_work);
}

GemmsOnCallingThread::~GemmsOnCallingThread() { gemms_stay_below = previous_; }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

}  // namespace cpu
}  // namespace rnnfused
