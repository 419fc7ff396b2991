// cuda_emu.h: run minicomp's generated CUDA C on the CPU, unchanged (tests).
//
// g++ compiles the .cu text after this header. Each block's threads run as
// fibers (ucontext) on one OS thread: a fiber runs until it finishes or
// reaches __syncthreads() / a warp shuffle, then the next one runs. A barrier
// releases when every thread of the block has reached it, so a shared-memory
// read that lacks its barrier sees memory the other threads have not written
// yet, and the test comparing against the reference fails. Launches without
// barriers or shuffles run their threads as plain calls. Blocks are spread
// over the host's cores; __shared__ memory is per OS thread, hence per block.
#pragma once
#define MC_CUDA_EMU 1

#include <math.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static thread_local

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

struct alignas(16) float4 {
  float x, y, z, w;
};

typedef _Float16 __half;
inline float __half2float(__half h) { return (float)h; }
inline __half __float2half_rn(float f) { return (__half)f; }

namespace mc_emu {

enum State { RUNNING, AT_BARRIER, AT_WARP_SYNC, DONE };

// A fiber starts once through ucontext; after that, switches use _setjmp /
// _longjmp, which skip the signal-mask system calls swapcontext makes.
struct Lane {
  ucontext_t context;
  jmp_buf resume;
  bool started = false;
  State state = RUNNING;
  dim3 index;
};

// The block this OS thread is running.
struct BlockRun {
  jmp_buf scheduler;
  std::vector<Lane> lanes;
  std::vector<double> exchange;  // one slot per lane for warp shuffles
  const std::function<void()>* body = nullptr;
  int current = 0;
};

thread_local BlockRun* run_ = nullptr;
static std::atomic<int> failed{0};
static std::string failure;

inline void fail(const char* message) {
  if (failed.exchange(1) == 0) failure = message;
}

inline void yield_at(State s) {
  Lane& lane = run_->lanes[run_->current];
  lane.state = s;
  if (!_setjmp(lane.resume)) _longjmp(run_->scheduler, 1);
}

inline void lane_main() {
  (*run_->body)();
  run_->lanes[run_->current].state = DONE;
  _longjmp(run_->scheduler, 1);  // never returns: the scheduler goes on
}

inline int lane_id() {
  return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
}

inline int linear_id() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

const size_t stack_bytes = 128 * 1024;

// Fiber stacks of one OS thread (never zeroed), freed when the thread ends.
struct Stacks {
  std::vector<char*> all;
  ~Stacks() {
    for (char* s : all) free(s);
  }
};

inline char* stack_of(int lane) {
  thread_local Stacks stacks;
  while ((int)stacks.all.size() <= lane) stacks.all.push_back((char*)malloc(stack_bytes));
  return stacks.all[lane];
}

// Run one block's threads as fibers until all are done.
inline void run_block_fibers(BlockRun& r, int n) {
  r.lanes.assign(n, Lane());
  r.exchange.assign(n, 0.0);
  ucontext_t blank;
  getcontext(&blank);
  for (int i = 0; i < n; ++i) {
    Lane& l = r.lanes[i];
    l.index.x = i % blockDim.x;
    l.index.y = (i / blockDim.x) % blockDim.y;
    l.index.z = i / (blockDim.x * blockDim.y);
    l.context = blank;
    l.context.uc_stack.ss_sp = stack_of(i);
    l.context.uc_stack.ss_size = stack_bytes;
    l.context.uc_link = nullptr;
    makecontext(&l.context, (void (*)())lane_main, 0);
  }
  for (;;) {
    for (int i = 0; i < n; ++i) {
      if (r.lanes[i].state != RUNNING) continue;
      r.current = i;
      threadIdx = r.lanes[i].index;
      if (!_setjmp(r.scheduler)) {
        if (r.lanes[i].started) _longjmp(r.lanes[i].resume, 1);
        r.lanes[i].started = true;
        setcontext(&r.lanes[i].context);
      }
    }
    int done = 0, at_barrier = 0;
    for (auto& l : r.lanes) {
      done += l.state == DONE;
      at_barrier += l.state == AT_BARRIER;
    }
    if (done == n) return;
    bool released = false;
    if (at_barrier == n) {
      for (auto& l : r.lanes) l.state = RUNNING;
      released = true;
    } else if (at_barrier > 0 && at_barrier + done == n) {
      fail("__syncthreads() reached by some threads of a block while others had finished");
      return;
    }
    for (int w = 0; w < n; w += 32) {  // a warp sync releases when its whole warp is there
      int end = w + 32 < n ? w + 32 : n, waiting = 0, alive = 0;
      for (int i = w; i < end; ++i) {
        alive += r.lanes[i].state != DONE;
        waiting += r.lanes[i].state == AT_WARP_SYNC;
      }
      if (waiting > 0 && waiting == alive) {
        for (int i = w; i < end; ++i)
          if (r.lanes[i].state == AT_WARP_SYNC) r.lanes[i].state = RUNNING;
        released = true;
      }
    }
    if (!released) {
      fail("threads of a block wait at different barriers (__syncthreads or a warp shuffle): deadlock");
      return;
    }
  }
}

inline int launch(dim3 grid, dim3 block, bool syncs, const std::function<void()>& body) {
  failed = 0;
  const long blocks = (long)grid.x * grid.y * grid.z;
  const int n = block.x * block.y * block.z;
  unsigned workers = std::thread::hardware_concurrency();
  if (workers < 1) workers = 1;
  if ((long)workers > blocks) workers = blocks > 0 ? (unsigned)blocks : 1;
  auto work = [&](unsigned w) {
    BlockRun r;
    r.body = &body;
    run_ = &r;
    gridDim = grid;
    blockDim = block;
    for (long b = w; b < blocks && !failed; b += workers) {
      blockIdx.x = b % grid.x;
      blockIdx.y = (b / grid.x) % grid.y;
      blockIdx.z = b / ((long)grid.x * grid.y);
      if (syncs) {
        run_block_fibers(r, n);
      } else {
        for (int i = 0; i < n; ++i) {
          threadIdx.x = i % block.x;
          threadIdx.y = (i / block.x) % block.y;
          threadIdx.z = i / (block.x * block.y);
          body();
        }
      }
    }
    run_ = nullptr;
  };
  if (workers == 1) {
    work(0);
  } else {
    std::vector<std::thread> pool;
    for (unsigned w = 0; w < workers; ++w) pool.emplace_back(work, w);
    for (auto& t : pool) t.join();
  }
  return failed.load();
}

}  // namespace mc_emu

extern "C" const char* mc_emu_failure() { return mc_emu::failure.c_str(); }

inline void __syncthreads() {
  if (!mc_emu::run_) {
    mc_emu::fail("__syncthreads() in a launch the emulator ran without fibers");
    return;
  }
  mc_emu::yield_at(mc_emu::AT_BARRIER);
}

// Every lane writes its value, the warp meets, every lane reads its partner's,
// the warp meets again (so no lane overwrites a slot before it is read).
template <class T>
inline T __shfl_xor_sync(unsigned, T value, int lane_mask, int = 32) {
  if (!mc_emu::run_) {
    mc_emu::fail("a warp shuffle in a launch the emulator ran without fibers");
    return value;
  }
  auto& slots = mc_emu::run_->exchange;
  const int me = mc_emu::linear_id();
  const int partner = (me & ~31) | ((me & 31) ^ lane_mask);
  static_assert(sizeof(T) <= sizeof(double), "shuffle of a type wider than 8 bytes");
  memcpy(&slots[me], &value, sizeof(T));
  mc_emu::yield_at(mc_emu::AT_WARP_SYNC);
  T out = value;
  if (partner < (int)slots.size()) memcpy(&out, &slots[partner], sizeof(T));
  mc_emu::yield_at(mc_emu::AT_WARP_SYNC);
  return out;
}

inline float atomicAdd(float* address, float value) {
  float old, desired;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  do {
    desired = old + value;
  } while (!__atomic_compare_exchange(address, &old, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
  return old;
}
