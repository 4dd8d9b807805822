// Large CPU buffers on transparent huge pages: the layers' per-call tensors that
// grow with the sequence (outputs, the saved workspace, the backward's gradients
// on the pre-activations, the input projection's chunk).
#pragma once

#include <ATen/ATen.h>

namespace rnnfused {
namespace cpu {

// Buffers from this size on take huge pages; below it, the default allocator.
constexpr size_t kHugePageMinBytes = size_t{4} << 20;

// at::empty(sizes, options) on the CPU. From kHugePageMinBytes on, the memory is
// 2 MB aligned and advised MADV_HUGEPAGE (Linux; elsewhere the default allocator):
// such buffers are mapped fresh every call (glibc mmaps them and unmaps them on
// free), and their first touch then takes one fault per 2 MB instead of one per
// 4 KB (a 52 MB workspace: 11.7 -> 4.8 ms to allocate and fill, two threads). This
// is what torch's own allocator does under THP_MEM_ALLOC_ENABLE=1, for these
// buffers only. The storage stays resizable and is freed with its tensor.
at::Tensor empty_on_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace cpu
}  // namespace rnnfused
