// Large CPU buffers on transparent huge pages, kept for reuse: the layers' per-call
// tensors that grow with the sequence (outputs, the saved workspace, the backward's
// gradients on the pre-activations, the input projection's chunk) and the fused
// loops' packed weights (streamed through the L2 every step).
#pragma once

#include <ATen/ATen.h>

#include <cstddef>

namespace rnnfused {
namespace cpu {

// Buffers from kHugePageMinBytes on (two huge pages) take huge pages while the cache
// below is on; from kCachedMinBytes the cache keeps them too (malloc's alignment, 4 KB
// pages); smaller ones, at::empty. Without the cache, only from glibc's largest
// dynamic mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit): smaller buffers come back from
// its heap, already mapped, once one of their size has been freed, where fresh huge
// pages would be mapped and cleared every call (a T100 B64 H512 LSTM forward with
// its 4 MB projection chunk and 13 MB output on them: 78-80 -> 85-97 ms).
// The 1-4 MB buffers of a small layer's training step (T 100, B 16, H 128: the
// workspace 3.3 MB) from glibc came back as fresh pages as often as not (its heap
// trimmed between steps): 2,800-4,300 page faults a step of a 2-layer
// bidirectional LSTM. Cached: 700-1,250, and 21-25 -> 17.4-18.4 ms (processes
// alternating, two Zen 5 cores), the GRU 14.6-18.7 -> 13.4-15.1, LSTM 100, 64, 256,
// 256 2.5% and 20, 256, 128, 128 2% faster, forward and H 512 within noise.
constexpr size_t kHugePageMinBytes = size_t{4} << 20;
constexpr size_t kCachedMinBytes = size_t{1} << 20;
constexpr size_t kUncachedHugePageMinBytes = size_t{32} << 20;

// What the cache keeps at most unless RNNFUSED_CPU_CACHE_MB says otherwise.
constexpr size_t kDefaultCacheBytes = size_t{1} << 30;

// at::empty(sizes, options) on the CPU. From kHugePageMinBytes on, the memory is
// 2 MB aligned and advised MADV_HUGEPAGE (Linux; elsewhere the default allocator);
// from kCachedMinBytes on (while the cache is on), a freed buffer goes to a cache
// (least recently freed out first, at most RNNFUSED_CPU_CACHE_MB, read once: default
// 1024, 0 or not a number turns it off) that serves the next request it fits (up
// to a quarter larger). Fresh memory costs a page fault and the kernel's clearing
// of every page at first touch, each call again, since glibc maps buffers this
// large afresh and unmaps them on free:
// at T 100, B 64, H 512 in training, 10% of an LSTM's or GRU's step (fp32) and 16%
// of a bfloat16 LSTM's, and the other thread of a fused loop waits out each fault
// at the next step barrier. The storage stays resizable and is freed (to the
// cache) with its tensor.
at::Tensor empty_on_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options);

// Bytes the cache holds now (free blocks, not the ones in use).
size_t cached_bytes();

// Frees every block the cache holds (rnnfused.empty_cache()).
void release_cached_blocks();

}  // namespace cpu
}  // namespace rnnfused
