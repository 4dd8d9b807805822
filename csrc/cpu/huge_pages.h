// Large CPU buffers on transparent huge pages: the layers' per-call tensors that
// grow with the sequence (outputs, the saved workspace, the backward's gradients
// on the pre-activations, the input projection's chunk).
#pragma once

#include <ATen/ATen.h>

namespace rnnfused {
namespace cpu {

// Buffers from this size on take huge pages; below it, the default allocator.
// glibc's largest dynamic mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit):
// smaller buffers come back from its heap, already mapped, once one of their
// size has been freed; on huge pages every call would map and clear them afresh
// (a T100 B64 H512 LSTM forward, whose 4 MB projection chunk and 13 MB output
// took huge pages from 4 MB: 85-97 -> 78-80 ms, training unchanged).
constexpr size_t kHugePageMinBytes = size_t{32} << 20;

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
