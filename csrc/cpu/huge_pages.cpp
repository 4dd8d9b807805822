// The allocator behind empty_on_huge_pages (huge_pages.h).
#include "huge_pages.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cstdlib>
#include <list>
#include <mutex>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace rnnfused {
namespace cpu {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kSmallBlockStep = size_t{256} << 10;
constexpr size_t kSmallBlockAlignment = 64;

// A block (whole huge pages from kHugePageMinBytes); the DataPtr's context while a
// tensor holds it.
struct Block {
  void* data;
  size_t bytes;
};

// Requests are rounded up to 256 KB below kHugePageMinBytes, to 2 MB from there, and
// from 32 MB on to a sixteenth of their leading power of two, so that sizes a few
// steps apart share blocks. n > 0 (from kCachedMinBytes on). No std::bit_floor: torch
// before 2.13 builds extensions as C++17.
size_t size_class(size_t n) {
  const size_t leading_power = size_t{1} << (63 - __builtin_clzll(n));
  const size_t step = n < kHugePageMinBytes ? kSmallBlockStep
                                             : std::max(kHugePage, leading_power >> 4);
  return (n + step - 1) / step * step;
}

// Fresh memory, or nullptr: huge pages from kHugePageMinBytes on, else as malloc aligns.
void* map_block(size_t bytes) {
  const bool huge = bytes >= kHugePageMinBytes;
  void* p = nullptr;
  if (posix_memalign(&p, huge ? kHugePage : kSmallBlockAlignment, bytes) != 0) return nullptr;
#if defined(__linux__)
  if (huge) madvise(p, bytes, MADV_HUGEPAGE);  // advice only: 4 KB pages if refused
#endif
  return p;
}

// Free blocks, most recently freed first; one per process, behind a mutex (tensors
// are freed on any thread: autograd's, the user's).
class BlockCache {
 public:
  // Leaked on purpose: tensors alive at exit are freed after static destructors run.
  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();
    return *cache;
  }

  // fork() while another thread holds the mutex (a tensor freed on an autograd
  // or DataLoader thread) would leave it locked forever in the child: the forking
  // thread takes it first and both sides release it.
  void lock_for_fork() { mutex_.lock(); }
  void unlock_after_fork() { mutex_.unlock(); }

  // The smallest free block of bytes to bytes * 5 / 4, or nullptr.
  Block* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->bytes >= bytes && it->bytes <= bytes + bytes / 4 &&
          (best == free_.end() || it->bytes < best->bytes)) {
        best = it;
      }
    }
    if (best == free_.end()) return nullptr;
    Block* block = new Block(*best);
    held_ -= best->bytes;
    free_.erase(best);
    return block;
  }

  // Keeps the block, then frees the least recently freed ones beyond the limit;
  // a block larger than the whole limit is freed at once.
  void give(Block* block) {
    std::vector<void*> to_free;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (block->bytes > limit_) {
        to_free.push_back(block->data);
      } else {
        free_.push_front(*block);
        held_ += block->bytes;
        while (held_ > limit_) {
          to_free.push_back(free_.back().data);
          held_ -= free_.back().bytes;
          free_.pop_back();
        }
      }
    }
    delete block;
    for (void* p : to_free) std::free(p);
  }

  void release_all() {
    std::list<Block> all;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      all.swap(free_);
      held_ = 0;
    }
    for (const Block& block : all) std::free(block.data);
  }

  bool enabled() const { return limit_ > 0; }

  size_t held() {
    std::lock_guard<std::mutex> lock(mutex_);
    return held_;
  }

 private:
  BlockCache() {
    if (const char* env = std::getenv("RNNFUSED_CPU_CACHE_MB")) {
      limit_ = static_cast<size_t>(std::strtoull(env, nullptr, 10)) << 20;
    }
#if defined(__linux__)
    pthread_atfork([] { instance().lock_for_fork(); }, [] { instance().unlock_after_fork(); },
                   [] { instance().unlock_after_fork(); });
#endif
  }

  std::mutex mutex_;
  std::list<Block> free_;
  size_t held_ = 0;
  size_t limit_ = kDefaultCacheBytes;
};

void release(void* block) { BlockCache::instance().give(static_cast<Block*>(block)); }

// Requests from kCachedMinBytes on: a cached block, else fresh memory (huge pages
// from kHugePageMinBytes); smaller ones (a resize_ down, say) from torch's CPU
// allocator.
class HugePageAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kCachedMinBytes) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = size_class(n);
    BlockCache& cache = BlockCache::instance();
    Block* block = cache.take(bytes);
    if (block == nullptr) {
      void* p = map_block(bytes);
      if (p == nullptr) {  // the cached blocks of other sizes go back first
        cache.release_all();
        p = map_block(bytes);
      }
      TORCH_CHECK_WITH(OutOfMemoryError, p != nullptr, "rnnfused: could not allocate ", n,
                       " bytes on the CPU");
      block = new Block{p, bytes};
    }
    return {block->data, block, &release, c10::Device(c10::DeviceType::CPU)};
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
  static const size_t min_bytes =
      BlockCache::instance().enabled() ? kCachedMinBytes : kUncachedHugePageMinBytes;
  if (bytes >= min_bytes) {
    static HugePageAllocator allocator;  // its state is the process's BlockCache
    return at::detail::empty_generic(sizes, &allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     options.dtype().toScalarType(), std::nullopt);
  }
#endif
  return at::empty(sizes, options);
}

size_t cached_bytes() { return BlockCache::instance().held(); }

void release_cached_blocks() { BlockCache::instance().release_all(); }

}  // namespace cpu
}  // namespace rnnfused
