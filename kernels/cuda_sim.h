// A small CUDA execution simulator: the kernels of snn_cuda_kernels.cuh, unchanged, compiled by the
// host C++ compiler and executed on the CPU with CUDA's semantics where our kernels depend on them.
//
//   blocks     run one after another (x fastest, then y, then z); every block's threads are real OS threads
//              (blockDim.x of them, created once per launch), so ThreadSanitizer sees their races
//   __syncthreads   a barrier of the block's threads; one that not every thread reaches, or that
//              meets a thread which has left the kernel (a divergent barrier), stops the process
//              naming it, as does a barrier nobody completes within kDeadlockSeconds
//   __ballot_sync   the 32 lanes of a warp exchange their votes through a warp barrier (all lanes
//              must take part: the kernels pass the full mask)
//   __syncwarp a barrier of the warp's 32 lanes (full mask)
//   __shared__ static storage of the kernel function: one copy, used by the one block running
//   atomicAdd  compare-and-swap on the float's bits (relaxed), fetch-add on ints
//   CUDA_KERNEL_ASSERT   a failed one prints the condition and ends the process, as a device assert
//              ends a CUDA context
//
// What it cannot show: races between blocks (blocks never overlap), the GPU memory model (every
// access here is sequentially consistent at the barriers), warp-synchronous code without
// __syncwarp (none in our kernels), nvcc's code generation and the GPU's speed. compute-sanitizer
// on a GPU covers those (benchmarks/gpu_check.sh).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <tuple>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct int2 {
  int x, y;
};
struct int4 {
  int x, y, z, w;
};
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

namespace lzo_sim {

constexpr int kDeadlockSeconds = 120;

[[noreturn]] inline void fail(const char* what, const char* file, int line) {
  std::fprintf(stderr, "cuda_sim: %s (%s:%d)\n", what, file, line);
  std::fflush(stderr);
  std::abort();
}

// A reusable barrier of n threads. Each generation remembers which kind of barrier the first thread
// arrived at; a thread arriving at another kind (a __syncthreads meeting the end of the block) is a
// divergent barrier. Arrivals are counted under a mutex; the waiters spin on the generation with
// sched_yield instead of sleeping on a condition variable: with 64 threads on 2 cores a barrier took
// ~1 ms through notify_all and ~0.13 ms so (a 64-thread micro-benchmark). The last arrival's release store
// and the waiters' acquire loads order everything before the barrier against everything after it, as
// ThreadSanitizer sees.
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait(int kind, const char* where) {
    uint64_t gen;
    {
      std::lock_guard<std::mutex> lock(m_);
      if (waiting_ == 0) kind_ = kind;
      if (kind != kind_) fail(where, __FILE__, __LINE__);
      gen = gen_.load(std::memory_order_relaxed);
      if (++waiting_ == n_) {
        waiting_ = 0;
        gen_.store(gen + 1, std::memory_order_release);
        return;
      }
    }
    const auto start = std::chrono::steady_clock::now();
    for (uint32_t spin = 1; gen_.load(std::memory_order_acquire) == gen; ++spin) {
      std::this_thread::yield();
      if (spin % 4096 == 0 &&
          std::chrono::steady_clock::now() - start > std::chrono::seconds(kDeadlockSeconds))
        fail("deadlock: a barrier was not reached by every thread of the block", __FILE__, __LINE__);
    }
  }

 private:
  std::mutex m_;
  int n_, waiting_ = 0, kind_ = 0;
  std::atomic<uint64_t> gen_{0};
};

enum BarrierKind : int { SYNCTHREADS = 1, BLOCK_END = 2, WARP_VOTE = 3, WARP_SYNC = 4 };

struct Warp {
  Barrier barrier{32};
  bool votes[32] = {};
};

struct Block {
  explicit Block(int threads) : barrier(threads), warps(static_cast<size_t>(threads / 32)) {}
  Barrier barrier;
  std::vector<Warp> warps;
};

inline thread_local dim3 thread_idx(0, 0, 0), block_idx(0, 0, 0);
inline dim3 block_dim, grid_dim;
inline Block* block = nullptr;

// Runs kernel(args...) on every thread of every block of the grid.
template <typename... P, typename... A>
void run(void (*kernel)(P...), dim3 blocks, dim3 threads, A&&... args) {
  if (threads.x % 32 != 0 || threads.y != 1 || threads.z != 1)
    fail("the simulator runs 1-D blocks of a multiple of 32 threads", __FILE__, __LINE__);
  const std::tuple<P...> params(std::forward<A>(args)...);  // converted to the kernel's parameter types once
  Block state(static_cast<int>(threads.x));
  block = &state;
  block_dim = threads;
  grid_dim = blocks;
  std::vector<std::thread> pool;
  pool.reserve(threads.x);
  for (unsigned tid = 0; tid < threads.x; ++tid)
    pool.emplace_back([&, tid] {
      thread_idx = dim3(tid, 0, 0);
      for (unsigned bz = 0; bz < blocks.z; ++bz)
        for (unsigned by = 0; by < blocks.y; ++by)
          for (unsigned bx = 0; bx < blocks.x; ++bx) {
            block_idx = dim3(bx, by, bz);
            std::apply(kernel, params);
            state.barrier.wait(BLOCK_END, "divergent __syncthreads: a barrier met a thread that had left the kernel");
          }
    });
  for (auto& t : pool) t.join();
  block = nullptr;
}

// The launch log: with LZO_SIM_LAUNCH_LOG=path in the environment, every launch appends one line
// "kernel grid.x grid.y grid.z block.x dynamic_shared_bytes" to path (the variable is read at every launch, so a
// process starts and stops the log by setting and unsetting it; benchmarks/launch_shapes.py reads it). Our
// kernels use static __shared__ only: the dynamic bytes are 0.
inline void log_launch(const char* name, dim3 g, dim3 b, unsigned shared) {
  const char* path = std::getenv("LZO_SIM_LAUNCH_LOG");
  if (!path || !*path) return;
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  if (FILE* f = std::fopen(path, "a")) {
    std::fprintf(f, "%s %u %u %u %u %u\n", name, g.x, g.y, g.z, b.x, shared);
    std::fclose(f);
  }
}

// launch(&kernel, blocks, threads[, name])(args...): the <<<blocks, threads>>> of the simulator.
template <typename... P>
struct Launch {
  void (*kernel)(P...);
  dim3 blocks, threads;
  const char* name;
  template <typename... A>
  void operator()(A&&... args) const {
    log_launch(name, blocks, threads, 0);
    run(kernel, blocks, threads, std::forward<A>(args)...);
  }
};

template <typename... P>
Launch<P...> launch(void (*kernel)(P...), dim3 blocks, dim3 threads, const char* name = "kernel") {
  return {kernel, blocks, threads, name};
}

}  // namespace lzo_sim

#define threadIdx (::lzo_sim::thread_idx)
#define blockIdx (::lzo_sim::block_idx)
#define blockDim (::lzo_sim::block_dim)
#define gridDim (::lzo_sim::grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

inline void __syncthreads() {
  ::lzo_sim::block->barrier.wait(::lzo_sim::SYNCTHREADS,
                                 "divergent __syncthreads: a thread left the kernel while others wait at a barrier");
}

inline unsigned __ballot_sync(unsigned mask, bool vote) {
  if (mask != 0xFFFFFFFFu) ::lzo_sim::fail("__ballot_sync: only the full mask is simulated", __FILE__, __LINE__);
  auto& warp = ::lzo_sim::block->warps[threadIdx.x / 32];
  warp.votes[threadIdx.x % 32] = vote;
  warp.barrier.wait(::lzo_sim::WARP_VOTE, "__ballot_sync: lanes of one warp at different votes");
  unsigned out = 0;
  for (unsigned lane = 0; lane < 32; ++lane) out |= static_cast<unsigned>(warp.votes[lane]) << lane;
  warp.barrier.wait(::lzo_sim::WARP_VOTE, "__ballot_sync: lanes of one warp at different votes");
  return out;
}

// A barrier of the warp's 32 lanes (all must take part: the kernels pass the full mask); like the GPU's, it
// orders the lanes' memory accesses before it against those after it.
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu) {
  if (mask != 0xFFFFFFFFu) ::lzo_sim::fail("__syncwarp: only the full mask is simulated", __FILE__, __LINE__);
  ::lzo_sim::block->warps[threadIdx.x / 32].barrier.wait(::lzo_sim::WARP_SYNC,
                                                          "__syncwarp: lanes of one warp at different warp barriers");
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }

inline float atomicAdd(float* address, float value) {
  uint32_t* bits = reinterpret_cast<uint32_t*>(address);
  uint32_t seen = __atomic_load_n(bits, __ATOMIC_RELAXED);
  for (;;) {
    float old;
    __builtin_memcpy(&old, &seen, sizeof old);
    const float sum = old + value;
    uint32_t want;
    __builtin_memcpy(&want, &sum, sizeof want);
    if (__atomic_compare_exchange_n(bits, &seen, want, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return old;
  }
}

inline int atomicAdd(int* address, int value) { return __atomic_fetch_add(address, value, __ATOMIC_RELAXED); }

#undef CUDA_KERNEL_ASSERT
#define CUDA_KERNEL_ASSERT(cond) \
  do {                           \
    if (!(cond)) ::lzo_sim::fail("device assert failed: " #cond, __FILE__, __LINE__); \
  } while (0)
