// The CUDA kernels of the event ops, in plain CUDA (threadIdx, __syncthreads, __ballot_sync,
// atomicAdd, __shared__) and nothing else: no torch, no host code. snn_cuda.cu includes them for
// nvcc; snn_cuda_sim.cpp includes them for the host compiler against cuda_sim.h, the CUDA execution
// simulator that runs them on the CPU (tests/test_cuda_sim.py, benchmarks/cuda_sim_sanitize.sh).
// What each kernel computes, and the work split: snn_cuda.cu's header.
#pragma once

#include <cstdint>

#include "lzo_math.h"

namespace lzo {
namespace {

using Ptr = int32_t;  // row pointers and columns of the event lists (snn_cpu.cpp)
#ifndef LZO_THREADS
#define LZO_THREADS 256  // threads per block; the simulator builds with fewer (a multiple of 32)
#endif
constexpr int kThreads = LZO_THREADS;
constexpr int kWarp = 32;
static_assert(kThreads % kWarp == 0 && kThreads <= 1024, "threads per block: a multiple of 32, at most 1024");

// A list from outside (a CPU-made list moved to the GPU, say) checked on the device without a host
// read: row pointers from 0, never decreasing, within the arrays, columns in [0, width). A bad list
// stops at a device-side assert naming the rule instead of reading past the arrays.
__global__ void validate_list_kernel(const Ptr* __restrict__ ptr, const int32_t* __restrict__ col, int64_t rows,
                                     int64_t cap, int64_t width) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (first == 0) {
    CUDA_KERNEL_ASSERT(ptr[0] == 0 && "event list: ptr[0] must be 0");
    CUDA_KERNEL_ASSERT(ptr[rows] <= cap && "event list: ptr[B*T] must not exceed the number of columns");
  }
  for (int64_t r = first; r < rows; r += stride)
    CUDA_KERNEL_ASSERT(ptr[r] <= ptr[r + 1] && "event list: row pointers must not decrease");
  const int64_t n = ptr[rows] < cap ? ptr[rows] : cap;
  for (int64_t q = first; q < n; q += stride)
    CUDA_KERNEL_ASSERT(col[q] >= 0 && col[q] < width && "event list: a column is outside [0, width)");
}

// Rank of this thread's flag among the block's set flags (thread order) and the block's count.
// Every thread of the block must call it (it holds barriers); blockDim.x is a multiple of 32.
__device__ int2 block_rank(bool flag, int* sh /* shared, 33 ints */) {
  const int lane = threadIdx.x & (kWarp - 1), warp = threadIdx.x / kWarp;
  const unsigned ballot = __ballot_sync(0xFFFFFFFFu, flag);
  if (lane == 0) sh[warp] = __popc(ballot);
  __syncthreads();
  if (threadIdx.x == 0) {
    int run = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x) / kWarp; ++w) {
      const int c = sh[w];
      sh[w] = run;
      run += c;
    }
    sh[32] = run;
  }
  __syncthreads();
  const int2 out = make_int2(sh[warp] + __popc(ballot & ((1u << lane) - 1u)), sh[32]);
  __syncthreads();
  return out;
}

// block_rank for two flags with one set of barriers: (rank, count) of `a` in .x/.y, of `b` in .z/.w.
__device__ int4 block_rank2(bool a, bool b, int* sh /* shared, 66 ints */) {
  const int lane = threadIdx.x & (kWarp - 1), warp = threadIdx.x / kWarp;
  const unsigned ba = __ballot_sync(0xFFFFFFFFu, a), bb = __ballot_sync(0xFFFFFFFFu, b);
  if (lane == 0) {
    sh[warp] = __popc(ba);
    sh[33 + warp] = __popc(bb);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int ra = 0, rb = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x) / kWarp; ++w) {
      const int ca = sh[w], cb = sh[33 + w];
      sh[w] = ra;
      sh[33 + w] = rb;
      ra += ca;
      rb += cb;
    }
    sh[32] = ra;
    sh[65] = rb;
  }
  __syncthreads();
  const unsigned below = (1u << lane) - 1u;
  const int4 out = make_int4(sh[warp] + __popc(ba & below), sh[32], sh[33 + warp] + __popc(bb & below), sh[65]);
  __syncthreads();
  return out;
}

// The current of neuron j at row r from the row's input events: sum_q val*W[col_q, j] (a dense layer).
struct DenseCurrent {
  const float* W;  // [N_in, N]
  int64_t nin, n;
  __device__ float operator()(const Ptr* __restrict__ xptr, const int32_t* __restrict__ xcol,
                              const float* __restrict__ xval, int64_t r, int64_t j) const {
    float cur = 0.0f;
    for (int64_t q = xptr[r]; q < xptr[r + 1]; ++q) {
      CUDA_KERNEL_ASSERT(xcol[q] >= 0 && xcol[q] < nin);
      cur += (xval ? xval[q] : 1.0f) * W[static_cast<int64_t>(xcol[q]) * n + j];
    }
    return cur;
  }
};

// The same for a conv layer (ConvGeom): output j = (oy, ox, o) gathers the row's events (y, x, c) that fall in
// its window, at tap (c, y + pad - oy*stride, x + pad - ox*stride) of wf [C_in, K, K, C_out] (reads coalesced over
// o); the bias unit adds bias[o]. Events are taken in list order, as the CPU scatters them.
struct ConvCurrent {
  ConvGeom g;
  const float* wf;    // [C_in, K, K, C_out]
  const float* bias;  // [C_out], or null without a bias
  __device__ float operator()(const Ptr* __restrict__ xptr, const int32_t* __restrict__ xcol,
                              const float* __restrict__ xval, int64_t r, int64_t j) const {
    const int64_t o = j % g.cout, pos = j / g.cout;
    const int64_t y0 = (pos / g.wo) * g.stride - g.pad, x0 = (pos % g.wo) * g.stride - g.pad;
    const int64_t units = g.units_in();
    float cur = 0.0f;
    for (int64_t q = xptr[r]; q < xptr[r + 1]; ++q) {
      const int64_t i = xcol[q];
      CUDA_KERNEL_ASSERT(i >= 0 && i < units + (bias ? 1 : 0));
      if (i == units) {
        cur += (xval ? xval[q] : 1.0f) * bias[o];
        continue;
      }
      const int64_t c = i % g.cin, at = i / g.cin, ky = at / g.w - y0, kx = at % g.w - x0;
      if (ky < 0 || ky >= g.k || kx < 0 || kx >= g.k) continue;
      cur += (xval ? xval[q] : 1.0f) * wf[((c * g.k + ky) * g.k + kx) * g.cout + o];
    }
    return cur;
  }
};

template <typename Current>
__global__ void events_forward_kernel(const Ptr* __restrict__ xptr, const int32_t* __restrict__ xcol,
                                      const float* __restrict__ xval, Current current,
                                      const float* __restrict__ cur_all, GateParams g, int64_t T, int64_t B,
                                      int64_t N, float beta, float theta, float* __restrict__ u_buf,
                                      float* __restrict__ s_buf, float* __restrict__ counts,
                                      int32_t* __restrict__ spk_slot, Ptr* __restrict__ spk_cnt,
                                      int32_t* __restrict__ act_slot, float* __restrict__ act_slot_val,
                                      Ptr* __restrict__ act_cnt, float* __restrict__ dense_gate) {
  __shared__ int sh[66];
  const bool sparse = g.method >= SPARSEGRAD;
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t r = b * T + t;
      int n_spk = 0, n_act = 0;
      for (int64_t j0 = 0; j0 < N; j0 += blockDim.x) {
        const int64_t j = j0 + threadIdx.x;
        bool spike = false;
        float gv = 0.0f;
        if (j < N) {
          const float cur = cur_all ? cur_all[r * N + j] : current(xptr, xcol, xval, r, j);
          float u = u_buf[b * N + j];
          const float v = lif_step(&u, cur, s_buf[b * N + j], beta, theta);
          spike = v > 0.0f;
          u_buf[b * N + j] = u;
          s_buf[b * N + j] = spike ? 1.0f : 0.0f;
          if (spike) counts[b * N + j] += 1.0f;
          if (dense_gate) {
            dense_gate[r * N + j] = gate(g, v, static_cast<int>(t), static_cast<int>(b), static_cast<int>(j));
          } else if (sparse) {
            gv = gate(g, v, static_cast<int>(t), static_cast<int>(b), static_cast<int>(j));
          }
        }
        if (sparse) {  // spikes and active entries ranked together: one set of barriers
          const int4 rk = block_rank2(spike, gv != 0.0f, sh);
          if (spike) spk_slot[r * N + n_spk + rk.x] = static_cast<int32_t>(j);
          if (gv != 0.0f) {
            act_slot[r * N + n_act + rk.z] = static_cast<int32_t>(j);
            act_slot_val[r * N + n_act + rk.z] = gv;
          }
          n_spk += rk.y;
          n_act += rk.w;
        } else {
          const int2 rs = block_rank(spike, sh);
          if (spike) spk_slot[r * N + n_spk + rs.x] = static_cast<int32_t>(j);
          n_spk += rs.y;
        }
      }
      if (threadIdx.x == 0) {
        spk_cnt[r] = n_spk;
        if (sparse) act_cnt[r] = n_act;
      }
    }
  }
}

// Row r's entries from slot r*width to ptr[r] (one warp per row).
template <typename T>
__global__ void compact_kernel(const T* __restrict__ slot, const Ptr* __restrict__ ptr, T* __restrict__ out,
                               int64_t rows, int64_t width) {
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; r < rows; r += warps) {
    const Ptr n = ptr[r + 1] - ptr[r];
    for (int64_t q = lane; q < n; q += kWarp) out[ptr[r] + q] = slot[r * width + q];
  }
}

// Dense rows [rows, width] from an event list (one warp per row); out must be zeroed.
__global__ void scatter_rows_kernel(const Ptr* __restrict__ ptr, const int32_t* __restrict__ col,
                                    const float* __restrict__ val, float* __restrict__ out, int64_t rows,
                                    int64_t width) {
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; r < rows; r += warps)
    for (int64_t q = ptr[r] + lane; q < ptr[r + 1]; q += kWarp) {
      CUDA_KERNEL_ASSERT(col[q] >= 0 && col[q] < width);
      atomicAdd(&out[r * width + col[q]], val ? val[q] : 1.0f);  // a column listed twice in a row adds
    }
}

// scatter_rows_kernel for the deterministic mode: lane l of a row's warp owns the columns c with c % 32 == l and
// walks the whole row, adding its own columns' values in list order (the CPU's order) with plain adds, so a
// column listed twice in a row gives the same bits on every run. Each lane reads every entry of the row (a
// broadcast load per entry for the warp): the row costs its length per lane instead of length / 32.
__global__ void scatter_rows_ordered_kernel(const Ptr* __restrict__ ptr, const int32_t* __restrict__ col,
                                            const float* __restrict__ val, float* __restrict__ out, int64_t rows,
                                            int64_t width) {
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; r < rows; r += warps)
    for (int64_t q = ptr[r]; q < ptr[r + 1]; ++q) {
      const int32_t c = col[q];
      CUDA_KERNEL_ASSERT(c >= 0 && c < width);
      if ((c & (kWarp - 1)) == lane) out[r * width + c] += val ? val[q] : 1.0f;
    }
}

__global__ void readout_forward_kernel(const Ptr* __restrict__ sptr, const int32_t* __restrict__ scol,
                                       const float* __restrict__ W, float* __restrict__ o, int64_t T, int64_t B,
                                       int64_t N, int64_t C, float bo, float omb) {
  for (int64_t id = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; id < B * C;
       id += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = id / C, c = id % C;
    float acc = 0.0f;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t r = b * T + t;
      float a = 0.0f;
      for (int64_t q = sptr[r]; q < sptr[r + 1]; ++q) {
        CUDA_KERNEL_ASSERT(scol[q] >= 0 && scol[q] < N);
        a += W[static_cast<int64_t>(scol[q]) * C + c];
      }
      acc = bo * acc + omb * a;
      o[(t * B + b) * C + c] = acc;
    }
  }
}

// d_a and dW_out: partial[b or 0][j, c] (atomic when partial is shared).
__global__ void readout_backward_kernel(const float* __restrict__ go, const Ptr* __restrict__ sptr,
                                        const int32_t* __restrict__ scol, float* __restrict__ d_a,
                                        float* __restrict__ dw, bool per_row, int64_t T, int64_t B, int64_t C,
                                        int64_t N, float bo, float omb) {
  for (int64_t id = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; id < B * C;
       id += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = id / C, c = id % C;
    float* dst = per_row ? dw + b * N * C : dw;
    float acc = 0.0f;
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t r = b * T + t;
      acc = go[(t * B + b) * C + c] + bo * acc;
      const float da = omb * acc;
      d_a[r * C + c] = da;
      for (int64_t q = sptr[r]; q < sptr[r + 1]; ++q) {
        float* p = dst + static_cast<int64_t>(scol[q]) * C + c;
        if (per_row) *p += da;
        else atomicAdd(p, da);
      }
    }
  }
}

// dL/ds at the active entries: d_a[r, :] . W_out[j, :] (one warp per row).
__global__ void readout_active_grad_kernel(const Ptr* __restrict__ aptr, const int32_t* __restrict__ acol,
                                           const float* __restrict__ d_a, const float* __restrict__ W,
                                           float* __restrict__ out, int64_t rows, int64_t C) {
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; r < rows; r += warps)
    for (int64_t q = aptr[r] + lane; q < aptr[r + 1]; q += kWarp) {
      const float* w = W + static_cast<int64_t>(acol[q]) * C;
      float sum = 0.0f;
      for (int64_t c = 0; c < C; ++c) sum += d_a[r * C + c] * w[c];
      out[q] = sum;
    }
}

// e = (dL/ds + dL/dcount) * gamma on the active list (one warp per row).
__global__ void active_error_kernel(const Ptr* __restrict__ aptr, const int32_t* __restrict__ acol,
                                    const float* __restrict__ grad, const float* __restrict__ gam,
                                    const float* __restrict__ cg, float* __restrict__ e, int64_t rows, int64_t T,
                                    int64_t N) {
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; r < rows; r += warps)
    for (int64_t q = aptr[r] + lane; q < aptr[r + 1]; q += kWarp) {
      const float gsum = cg ? grad[q] + cg[(r / T) * N + acol[q]] : grad[q];
      e[q] = gsum * gam[q];
    }
}

// dW^T[j, i] += e * xbar[t, b, i] over the active entries (t, b, j); blocks over (input tile, group of
// rows, slice of neurons j): a block adds only the entries whose j lies in its slice (blockIdx.z of
// gridDim.z), so slices write disjoint rows of dW^T and the deterministic mode, which has few groups
// when dW^T is large, still fills the GPU. A step's input x_i is gathered through shared memory with
// atomics (a column listed twice in a row adds in any order) or, ordered_x (the deterministic mode), by
// each thread walking the row's events in list order for its own input (the row's length per thread
// instead of length / blockDim, no barrier).
__global__ void sparse_dw_kernel(const Ptr* __restrict__ aptr, const int32_t* __restrict__ acol,
                                 const float* __restrict__ e, const Ptr* __restrict__ xptr,
                                 const int32_t* __restrict__ xcol, const float* __restrict__ xval,
                                 float* __restrict__ dwt, int64_t T, int64_t B, int64_t Nin, int64_t N, float beta,
                                 int64_t group_rows, int64_t groups, bool shared_out, bool ordered_x) {
  __shared__ float sh_x[kThreads];
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * blockDim.x, i = i0 + threadIdx.x;
  const bool mine = i < Nin;
  const int64_t j_lo = N * blockIdx.z / gridDim.z, j_hi = N * (blockIdx.z + 1) / gridDim.z;
  for (int64_t grp = blockIdx.y; grp < groups; grp += gridDim.y) {
    float* dst = shared_out ? dwt : dwt + grp * N * Nin;
    const int64_t b_end = std::min<int64_t>(B, (grp + 1) * group_rows);
    for (int64_t b = grp * group_rows; b < b_end; ++b) {
      const Ptr last = aptr[(b + 1) * T];
      if (aptr[b * T] == last) continue;  // no active entry in this batch row
      float h = 0.0f;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t r = b * T + t;
        if (aptr[r] == last) break;  // no active entry left in this batch row
        float x = 0.0f;
        if (ordered_x) {  // deterministic mode: own input's events in list order (the CPU's), no shared atomics
          if (mine)
            for (int64_t q = xptr[r]; q < xptr[r + 1]; ++q)
              if (xcol[q] == i) x += xval ? xval[q] : 1.0f;
        } else if (xptr[r + 1] > xptr[r]) {  // this step's inputs of the tile, through shared memory
          sh_x[threadIdx.x] = 0.0f;
          __syncthreads();
          for (int64_t q = xptr[r] + threadIdx.x; q < xptr[r + 1]; q += blockDim.x) {
            const int64_t c = xcol[q];  // a column listed twice in a row adds, as on the CPU
            if (c >= i0 && c < i0 + blockDim.x) atomicAdd(&sh_x[c - i0], xval ? xval[q] : 1.0f);
          }
          __syncthreads();
          x = sh_x[threadIdx.x];  // own slot: the next step zeroes it before its first barrier
        }
        h = beta * h + x;
        if (!mine) continue;
        for (int64_t q = aptr[r]; q < aptr[r + 1]; ++q) {
          const int64_t j = acol[q];
          if (j < j_lo || j >= j_hi) continue;
          float* p = dst + j * Nin + i;
          if (shared_out) atomicAdd(p, e[q] * h);
          else *p += e[q] * h;
        }
      }
    }
  }
}

// dL/ds_prev at prev's entries: y = beta*y + sum_{entries at t} e*W^T[j, i], walking t down.
__global__ void sparse_dx_kernel(const Ptr* __restrict__ aptr, const int32_t* __restrict__ acol,
                                 const float* __restrict__ e, const float* __restrict__ wt,
                                 const Ptr* __restrict__ pptr, const int32_t* __restrict__ pcol,
                                 float* __restrict__ g_prev, int64_t T, int64_t B, int64_t Nin, float beta) {
  __shared__ float sh_y[kThreads];
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * blockDim.x, i = i0 + threadIdx.x;
  const bool mine = i < Nin;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const Ptr first = pptr[b * T];
    if (pptr[(b + 1) * T] == first) continue;  // no previous-layer entry in this batch row
    float y = 0.0f;
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t r = b * T + t;
      if (pptr[r + 1] == first) break;  // no previous-layer entry at or before t
      y = beta * y;
      if (mine)
        for (int64_t q = aptr[r]; q < aptr[r + 1]; ++q) y += e[q] * wt[static_cast<int64_t>(acol[q]) * Nin + i];
      if (pptr[r + 1] == pptr[r]) continue;
      sh_y[threadIdx.x] = y;
      __syncthreads();
      for (int64_t q = pptr[r] + threadIdx.x; q < pptr[r + 1]; q += blockDim.x) {
        const int64_t c = pcol[q];
        if (c >= i0 && c < i0 + blockDim.x) g_prev[q] = sh_y[c - i0];
      }
      __syncthreads();
    }
  }
}

// ghat[t] = (g + dL/dcount) * gamma + beta * ghat[t+1], one thread per (b, j).
__global__ void dense_reverse_kernel(const float* __restrict__ grad, const float* __restrict__ gam,
                                     const float* __restrict__ cg, float* __restrict__ ghat, int64_t T, int64_t B,
                                     int64_t N, float beta) {
  for (int64_t id = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; id < B * N;
       id += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = id / N, j = id % N;
    const float c = cg ? cg[b * N + j] : 0.0f;
    float next = 0.0f;
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t q = (b * T + t) * N + j;
      next = (grad[q] + c) * gam[q] + beta * next;
      ghat[q] = next;
    }
  }
}

// Per-row non-zero counts of x [T, B, N] for rows r = b*T + t (one warp per row).
__global__ void count_nonzero_rows_kernel(const float* __restrict__ x, Ptr* __restrict__ cnt, int64_t T, int64_t B,
                                          int64_t N) {
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; r < T * B; r += warps) {
    const float* src = x + ((r % T) * B + r / T) * N;
    int c = 0;
    for (int64_t i0 = 0; i0 < N; i0 += kWarp) {
      const bool nz = i0 + lane < N && src[i0 + lane] != 0.0f;
      c += __popc(__ballot_sync(0xFFFFFFFFu, nz));
    }
    if (lane == 0) cnt[r] = c;
  }
}

// The non-zero entries of each row in column order (one warp per row, ballot ranks).
__global__ void fill_events_kernel(const float* __restrict__ x, const Ptr* __restrict__ ptr,
                                   int32_t* __restrict__ col, float* __restrict__ val, int64_t T, int64_t B,
                                   int64_t N) {
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; r < T * B; r += warps) {
    const float* src = x + ((r % T) * B + r / T) * N;
    int64_t k = ptr[r];
    for (int64_t i0 = 0; i0 < N; i0 += kWarp) {
      const float v = i0 + lane < N ? src[i0 + lane] : 0.0f;
      const unsigned ballot = __ballot_sync(0xFFFFFFFFu, v != 0.0f);
      if (v != 0.0f) {
        const int64_t at = k + __popc(ballot & ((1u << lane) - 1u));
        col[at] = static_cast<int32_t>(i0 + lane);
        val[at] = v;
      }
      k += __popc(ballot);
    }
  }
}

// ---- Convolutional layers (issue 22). The sparse backward works on dense rows [B*T, width] (rows r = b*T + t):
// the input traces for dW, the input gradient before its reverse scan; the per-entry work, C_in*K*K taps per
// active entry, is all that depends on the entries.

// In place over rows r = b*T + t, one thread per (b, i): forward, buf[t] = beta*buf[t-1] + buf[t] (the input
// trace xbar); reverse, buf[t] = beta*buf[t+1] + buf[t] (the input gradient's sum over later steps).
__global__ void scan_rows_kernel(float* __restrict__ buf, int64_t T, int64_t B, int64_t width, float beta,
                                 bool reverse) {
  for (int64_t id = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; id < B * width;
       id += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = id / width, i = id % width;
    float acc = 0.0f;
    for (int64_t s = 0; s < T; ++s) {
      float* p = buf + (b * T + (reverse ? T - 1 - s : s)) * width + i;
      acc = beta * acc + *p;
      *p = acc;
    }
  }
}

// The taps (c, ky, kx) of tap = (c*K + ky)*K + kx that lane `lane` of a warp visits, tap = lane, lane + 32, ...:
// decoded once per lane (TapWalk), then stepped by kWarp taps as a mixed-radix increment with carries (kx + dkx
// < 2K and ky + 1 + dky < 2K, so one carry each), so the conv kernels' entry loops divide by nothing but the
// output's shape. 32-bit throughout: conv_sparse_backward_cuda checks C_out*(C_in*K*K + 1), C_in*H*W and
// H_o*W_o*C_out below 2^31 (a column is an int32 in any case), so every in-row offset, tap and output index fits.
struct TapWalk {
  int32_t c0, ky0, kx0, dc, dky, dkx;
  __device__ TapWalk(const ConvGeom& g, int lane) {
    const int32_t k = static_cast<int32_t>(g.k), kk = k * k;
    c0 = lane / kk, ky0 = lane % kk / k, kx0 = lane % k;
    dc = kWarp / kk, dky = kWarp % kk / k, dkx = kWarp % k;
  }
};

// An active entry's output j = (oy, ox, o) as its channel o and the input corner (y0, x0) of its window.
struct ConvEntry {
  int32_t o, y0, x0;
  __device__ ConvEntry(const ConvGeom& g, int32_t j) {
    const uint32_t cout = static_cast<uint32_t>(g.cout), wo = static_cast<uint32_t>(g.wo);
    const uint32_t uj = static_cast<uint32_t>(j), pos = uj / cout;  // j >= 0: a validated column
    o = static_cast<int32_t>(uj - pos * cout);
    const uint32_t oy = pos / wo, ox = pos - oy * wo;
    y0 = static_cast<int32_t>(oy) * static_cast<int32_t>(g.stride) - static_cast<int32_t>(g.pad);
    x0 = static_cast<int32_t>(ox) * static_cast<int32_t>(g.stride) - static_cast<int32_t>(g.pad);
  }
};

// dW[part, o, tap] += e * xbar[r, input of tap] over the active entries (r, j = (oy, ox, o)) of rows
// [part*rows_per, (part+1)*rows_per): one warp per part, its lanes over the taps (c, ky, kx) of one entry at a
// time. A tap's address is a function of (o, tap) and tap a function of the lane, so every address has one
// writer: plain adds in a fixed order, no atomics (the parts are summed after, in order).
__global__ void conv_dw_kernel(const Ptr* __restrict__ aptr, const int32_t* __restrict__ acol,
                               const float* __restrict__ e, const float* __restrict__ xbar, float* __restrict__ dw,
                               ConvGeom g, int64_t rows, int64_t rows_per, int64_t parts) {
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  const int64_t nin = g.units_in() + (g.bias ? 1 : 0);
  const int32_t cols = static_cast<int32_t>(g.weight_cols()), taps = static_cast<int32_t>(g.taps());
  const int32_t k = static_cast<int32_t>(g.k), H = static_cast<int32_t>(g.h), W = static_cast<int32_t>(g.w);
  const int32_t cin = static_cast<int32_t>(g.cin), units = static_cast<int32_t>(g.units_in());
  const TapWalk tw(g, lane);
  for (int64_t part = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; part < parts;
       part += warps) {
    float* dst = dw + part * g.cout * cols;
    const int64_t r_end = std::min<int64_t>(rows, (part + 1) * rows_per);
    for (int64_t r = part * rows_per; r < r_end; ++r) {
      const float* h = xbar + r * nin;
      for (int64_t q = aptr[r]; q < aptr[r + 1]; ++q) {
        const ConvEntry en(g, acol[q]);
        const float f = e[q];
        float* row = dst + en.o * cols;
        int32_t c = tw.c0, ky = tw.ky0, kx = tw.kx0;
        for (int32_t tap = lane; tap < taps; tap += kWarp) {
          const int32_t iy = en.y0 + ky, ix = en.x0 + kx;
          if (iy >= 0 && iy < H && ix >= 0 && ix < W) row[tap] += f * h[(iy * W + ix) * cin + c];
          kx += tw.dkx;
          if (kx >= k) kx -= k, ++ky;
          ky += tw.dky;
          if (ky >= k) ky -= k, ++c;
          c += tw.dc;
        }
        if (g.bias && lane == 0) row[taps] += f * h[units];
      }
    }
  }
}

// dy[r, input of tap] += e * W[o, tap] over the active entries (r, j = (oy, ox, o)) of row r: one warp per row,
// its lanes over the taps of one entry at a time. Two entries of a row reach one input through different taps
// (so different lanes): the warp meets at __syncwarp between entries, which orders their adds.
__global__ void conv_dx_scatter_kernel(const Ptr* __restrict__ aptr, const int32_t* __restrict__ acol,
                                       const float* __restrict__ e, const float* __restrict__ W,
                                       float* __restrict__ dy, ConvGeom g, int64_t rows) {
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  const int32_t cols = static_cast<int32_t>(g.weight_cols()), taps = static_cast<int32_t>(g.taps());
  const int32_t k = static_cast<int32_t>(g.k), H = static_cast<int32_t>(g.h), Wd = static_cast<int32_t>(g.w);
  const int32_t cin = static_cast<int32_t>(g.cin);
  const int64_t units = g.units_in();
  const TapWalk tw(g, lane);
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; r < rows; r += warps) {
    float* out = dy + r * units;
    for (int64_t q = aptr[r]; q < aptr[r + 1]; ++q) {
      const ConvEntry en(g, acol[q]);
      const float f = e[q];
      const float* wrow = W + en.o * cols;
      int32_t c = tw.c0, ky = tw.ky0, kx = tw.kx0;
      for (int32_t tap = lane; tap < taps; tap += kWarp) {
        const int32_t iy = en.y0 + ky, ix = en.x0 + kx;
        if (iy >= 0 && iy < H && ix >= 0 && ix < Wd) out[(iy * Wd + ix) * cin + c] += f * wrow[tap];
        kx += tw.dkx;
        if (kx >= k) kx -= k, ++ky;
        ky += tw.dky;
        if (ky >= k) ky -= k, ++c;
        c += tw.dc;
      }
      __syncwarp();
    }
  }
}

// out[q] = buf[r, col[q]] at the entries of each row r (one warp per row).
__global__ void gather_rows_kernel(const Ptr* __restrict__ ptr, const int32_t* __restrict__ col,
                                   const float* __restrict__ buf, float* __restrict__ out, int64_t rows,
                                   int64_t width) {
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; r < rows; r += warps)
    for (int64_t q = ptr[r] + lane; q < ptr[r + 1]; q += kWarp) {
      CUDA_KERNEL_ASSERT(col[q] >= 0 && col[q] < width);
      out[q] = buf[r * width + col[q]];
    }
}

// Sum pooling of channels-last events (units (y*W + x)*C + c of a [C, H, W] frame) into dense rows
// [rows, (H/pool)*(W/pool)*C]: one thread per row adding its events in list order (the CPU's order); units
// past the last whole window are dropped. out must be zeroed.
__global__ void pool_rows_kernel(const Ptr* __restrict__ ptr, const int32_t* __restrict__ col,
                                 const float* __restrict__ val, float* __restrict__ out, int64_t rows, int64_t C,
                                 int64_t H, int64_t W, int64_t pool) {
  const int64_t hp = H / pool, wp = W / pool, width = hp * wp * C;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x)
    for (int64_t q = ptr[r]; q < ptr[r + 1]; ++q) {
      const int64_t i = col[q], c = i % C, y = i / C / W / pool, x = i / C % W / pool;
      if (y < hp && x < wp) out[r * width + (y * wp + x) * C + c] += val ? val[q] : 1.0f;
    }
}

}  // namespace
}  // namespace lzo
