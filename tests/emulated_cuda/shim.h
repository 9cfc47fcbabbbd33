// CUDA's kernel language on the host, for running csrc/cuda/loops.cuh's kernels on the CPU
// (tests/emulated_cuda/build.py makes the source; tests/test_cuda_emulated.py runs it). The
// blocks of a launch run one after another (no kernel here shares anything between blocks but
// what it writes for a later launch); a block's threads are fibers on one OS thread, switched at
// barriers: __syncthreads is the block's barrier, a warp shuffle the warp's, and a thread that
// returns leaves both, as an exited CUDA thread no longer holds a barrier up. A barrier some
// threads never reach is an error. __shared__ memory is static (one block at a time); the dynamic
// shared memory is filled with 0xff bytes (NaN) before each block, so a read of what no thread
// wrote shows. The launch refuses what CUDA would: an empty grid or one beyond 2^31 - 1 blocks,
// and dynamic shared memory beyond 48 KB.
//
// What this does not show: anything of the GPU's own (timing, the memory model between blocks,
// warps' lockstep, FMA contraction, the occupancy API: a "device" here has kEmulatedSMs SMs of one
// block each, so the flat kernels' grids are short and their grid-stride loops go round), nor
// races: a block's threads run in turn between barriers (odd blocks from the last thread), which
// shows a missing barrier only where that order reads what is not yet written.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)
#define C10_CUDA_CHECK(expr) ((void)(expr))

using std::max;
using std::min;

using cudaStream_t = void*;
using cudaError_t = int;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount };

namespace emu {

constexpr int kEmulatedSMs = 2;

struct Dim3 {
  unsigned x = 0, y = 1, z = 1;
};

// The CUDA thread running now, its block, and the launch's shape.
inline Dim3 thread_idx, block_idx, block_dim, grid_dim;

// One block's threads as fibers (ucontext) on the calling OS thread: a fiber runs until it
// returns or waits at a barrier (its block's, or its warp's in a shuffle); once every fiber has
// returned or waits, the barriers whose threads all wait (those that have returned left them)
// let theirs go. None to let go while some wait: a barrier that some threads never reach, which
// on a GPU hangs or is undefined; here an error.
class Block {
 public:
  enum Wait : uint8_t { kRunning, kBlock, kWarp, kDone };

  Block(int threads, size_t shared_bytes, std::function<void()> body)
      : threads_(threads),
        body_(std::move(body)),
        fibers_(threads),
        lanes_(threads),
        shared_(new unsigned char[shared_bytes + 1]) {
    std::memset(shared_.get(), 0xff, shared_bytes + 1);
  }

  void run() {
    current_block() = this;
    static std::vector<std::unique_ptr<char[]>> stacks;  // kept for the next blocks
    while (static_cast<int>(stacks.size()) < threads_) stacks.emplace_back(new char[kStackBytes]);
    for (int t = 0; t < threads_; ++t) {
      Fiber& f = fibers_[t];
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = stacks[t].get();
      f.ctx.uc_stack.ss_size = kStackBytes;
      f.ctx.uc_link = &scheduler_;
      makecontext(&f.ctx, reinterpret_cast<void (*)()>(&Block::entry), 0);
    }
    for (int live = threads_; live > 0;) {
      // Odd blocks sweep their threads from the last: an order a missing barrier may show in.
      for (int i = 0; i < threads_; ++i) {
        const int t = block_idx.x % 2 ? threads_ - 1 - i : i;
        if (fibers_[t].wait != kRunning) continue;
        thread_idx.x = static_cast<unsigned>(t);
        swapcontext(&scheduler_, &fibers_[t].ctx);
      }
      live = 0;
      int at_block = 0;
      for (const Fiber& f : fibers_) {
        live += f.wait != kDone;
        at_block += f.wait == kBlock;
      }
      bool released = false;
      if (live > 0 && at_block == live) {
        for (Fiber& f : fibers_) f.wait = f.wait == kBlock ? kRunning : f.wait;
        released = true;
      }
      for (int w = 0; w * 32 < threads_; ++w) {
        int lanes_live = 0, lanes_waiting = 0;
        for (int t = w * 32; t < std::min(threads_, w * 32 + 32); ++t) {
          lanes_live += fibers_[t].wait != kDone;
          lanes_waiting += fibers_[t].wait == kWarp;
        }
        if (lanes_waiting > 0 && lanes_waiting == lanes_live) {
          for (int t = w * 32; t < std::min(threads_, w * 32 + 32); ++t)
            if (fibers_[t].wait == kWarp) fibers_[t].wait = kRunning;
          released = true;
        }
      }
      if (live > 0 && !released)
        throw std::runtime_error("emulated CUDA: a barrier that some threads never reach");
    }
    current_block() = nullptr;
  }

  // The running thread waits at its block's barrier (kBlock) or its warp's (kWarp).
  void wait(Wait at) {
    Fiber& f = fibers_[thread_idx.x];
    f.wait = at;
    swapcontext(&f.ctx, &scheduler_);
  }

  uint64_t& lane(int t) { return lanes_[t]; }
  unsigned char* shared() { return shared_.get(); }
  static Block*& current_block() {
    static Block* block = nullptr;
    return block;
  }

 private:
  static constexpr size_t kStackBytes = 256 << 10;
  struct Fiber {
    ucontext_t ctx;
    Wait wait = kRunning;
  };

  static void entry() {
    Block& b = *current_block();
    b.body_();
    b.fibers_[thread_idx.x].wait = kDone;  // then uc_link: back to the scheduler
  }

  int threads_;
  std::function<void()> body_;
  std::vector<Fiber> fibers_;
  std::vector<uint64_t> lanes_;
  std::unique_ptr<unsigned char[]> shared_;
  ucontext_t scheduler_;
};

inline unsigned char* dynamic_shared() { return Block::current_block()->shared(); }

// The kernels ask x.get_device() for the SM count's cache: a CPU tensor's is -1.
inline int device_of(const at::Tensor&) { return 0; }

template <typename... P, typename... A>
void launch(void (*kernel)(P...), int64_t grid, int threads, size_t shared_bytes, cudaStream_t,
            A&&... args) {
  if (grid < 1 || grid > INT32_MAX)
    throw std::runtime_error("emulated launch: grid of " + std::to_string(grid) + " blocks");
  if (threads < 1 || threads > 1024) throw std::runtime_error("emulated launch: block size");
  if (shared_bytes > (size_t{48} << 10))
    throw std::runtime_error("emulated launch: dynamic shared memory beyond 48 KB");
  // The arguments as the kernel takes them (a launch converts them, as a call does).
  const std::tuple<P...> converted(static_cast<P>(args)...);
  grid_dim.x = static_cast<unsigned>(grid);
  block_dim.x = static_cast<unsigned>(threads);
  for (int64_t b = 0; b < grid; ++b) {
    block_idx.x = static_cast<unsigned>(b);
    Block(threads, shared_bytes, [&] { std::apply(kernel, converted); }).run();
  }
}

inline void syncthreads() { Block::current_block()->wait(Block::kBlock); }

template <typename T>
T shfl_down_sync(unsigned, T v, int offset) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  Block& b = *Block::current_block();
  const int t = static_cast<int>(thread_idx.x);
  std::memcpy(&b.lane(t), &v, sizeof(T));
  b.wait(Block::kWarp);
  T r = v;
  if (t % 32 + offset < 32 && t + offset < static_cast<int>(block_dim.x))
    std::memcpy(&r, &b.lane(t + offset), sizeof(T));
  b.wait(Block::kWarp);
  return r;
}

}  // namespace emu

inline void __syncthreads() { emu::syncthreads(); }
template <typename T>
T __shfl_down_sync(unsigned mask, T v, int offset) {
  return emu::shfl_down_sync(mask, v, offset);
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = emu::kEmulatedSMs;
  return 0;
}
template <typename K>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, K, int, size_t) {
  *blocks = 1;
  return 0;
}

namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
struct EmulatedStream {
  cudaStream_t stream() const { return nullptr; }
};
inline EmulatedStream getCurrentCUDAStream(int) { return {}; }
}  // namespace cuda
}  // namespace c10

#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define blockDim emu::block_dim
#define gridDim emu::grid_dim
