// The allocator behind empty_on_huge_pages (huge_pages.h).
#include "huge_pages.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rnnfused {
namespace cpu {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;

void release(void* p) { std::free(p); }

// Requests from kHugePageMinBytes on: whole 2 MB pages, aligned, advised huge;
// smaller ones (a resize_ down, say) from torch's CPU allocator.
class HugePageAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kHugePageMinBytes) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
    void* p = nullptr;
    TORCH_CHECK_WITH(OutOfMemoryError, posix_memalign(&p, kHugePage, bytes) == 0 && p != nullptr,
                     "rnnfused: could not allocate ", n, " bytes on the CPU");
#if defined(__linux__)
    madvise(p, bytes, MADV_HUGEPAGE);  // advice only: 4 KB pages if refused
#endif
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  // Two deleters (ours, and the CPU allocator's for small requests): no raw one.
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

}  // namespace

at::Tensor empty_on_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu());
  const size_t bytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
#if defined(__linux__)
  if (bytes >= kHugePageMinBytes) {
    static HugePageAllocator allocator;  // stateless
    return at::detail::empty_generic(sizes, &allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     options.dtype().toScalarType(), std::nullopt);
  }
#endif
  return at::empty(sizes, options);
}

}  // namespace cpu
}  // namespace rnnfused
