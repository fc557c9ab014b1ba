// CUDA kernels of the event ops (schemas and the math of each op in snn_cpu.cpp; per-element math
// in lzo_math.h). The lists have the CPU layout (CSR over rows r = b*T + t, int32 row pointers and
// columns), and nothing waits for the host inside an op:
//   - a list an op makes (spikes, active entries) is sized by its bound, B*T*N entries: its valid
//     prefix is ptr[B*T] long (kept on the device; SpikeEvents.nnz reads it when asked);
//   - row pointers come from a device cumsum of per-row counts;
//   - loops are grid-stride, so any size runs with the grids capped at g_max_grid blocks
//     (65535; lzo::set_cuda_max_grid lowers it so tests make the loops take several passes);
//   - a list an op receives is validated on the device (validate_list_kernel), without a host read.
// Exception: to_events (a dense tensor from the user) reads its event count back once, since its
// bound would be twice the dense tensor.
//
// Work split (DESIGN.md 5b; the GPU issue):
//   forward    one block per batch row b walking t, the block's threads over neurons j: the current
//              sum_q val*W[col_q, j] is read coalesced over j, the LIF step and the gate are fused,
//              and the row's spikes and active entries are compacted in j order with warp ballots
//              (the CPU's order). GEMM current when forced (current_mode 2); on the GPU `auto` means
//              events, since choosing by density would need the event count on the host.
//   dW         blocks over (input tile of kThreads inputs, group of batch rows), each thread holding
//              the input trace xbar_i = beta*xbar_i + x_i of one input in a register and adding
//              e*xbar_i into dW^T[j, i] (coalesced over i) for each active entry (j) of the row.
//              Default: atomicAdd into one dW^T (float rounding order varies run to run). With
//              torch.use_deterministic_algorithms(True): every group of rows owns a partial dW^T
//              (plain adds; groups sized so the partials fit kDeterministicBytes), summed after.
//              (torch then also needs CUBLAS_WORKSPACE_CONFIG=:4096:8 for the GEMMs of `surrogate`
//              and of a forced GEMM current.)
//   dL/ds of the previous layer: blocks over (input tile, batch row), the reverse recurrence
//              y_i = beta*y_i + sum_{entries at t} e*W[i, j] per thread, read at the previous
//              layer's active entries through shared memory.
//   readout    one thread per (b, c) walking t (C is 10 or 20).
// The dense backward (surrogate) always forms dW by one GEMM from the input rows.
#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cfloat>
#include <tuple>

#include "lif_common.h"

namespace lzo {

using at::Tensor;

namespace {

using Ptr = int32_t;
constexpr auto kPtr = at::kInt;
constexpr int kThreads = 256;
constexpr int kWarp = 32;
int64_t g_max_grid = 65535;  // blocks per grid dimension; lzo::set_cuda_max_grid lowers it for tests
constexpr int64_t kDeterministicBytes = int64_t(256) << 20;

inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

inline unsigned grid(int64_t items, int64_t per_block = kThreads) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((items + per_block - 1) / per_block, g_max_grid)));
}

void check_on_gpu(const Tensor& weight, const char* op) {
  TORCH_CHECK(weight.is_cuda(), op, ": CUDA kernel called with the weights on ", weight.device(),
              "; move the weights and lists to one CUDA device");
}

void check_cuda(const Tensor& t, const Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.numel() == 0 || t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but weight is on ",
              ref.device(), "; move both to one device");
}

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

void check_list(const Tensor& ptr, const Tensor& col, const Tensor& val, int64_t rows, int64_t width,
                const Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(ptr.scalar_type() == kPtr && ptr.dim() == 1 && ptr.is_contiguous() && ptr.numel() == rows + 1, op, ": ",
              name, "_ptr must be a contiguous int32 tensor of B*T + 1 = ", rows + 1, " row pointers");
  TORCH_CHECK(col.scalar_type() == at::kInt && col.dim() == 1 && col.is_contiguous(), op, ": ", name,
              "_col must be a contiguous 1-D int32 tensor");
  TORCH_CHECK(val.numel() == 0 || (val.scalar_type() == at::kFloat && val.is_contiguous() && val.numel() == col.numel()),
              op, ": ", name, "_val must be empty or hold one float32 per event");
  check_cuda(ptr, ref, op, name);
  check_cuda(col, ref, op, name);
  check_cuda(val, ref, op, name);
  TORCH_CHECK(ptr.is_cuda() && col.is_cuda(), op, ": ", name, " list must be on the GPU with the weights");
  const c10::cuda::CUDAGuard guard(ptr.device());
  validate_list_kernel<<<grid(std::max<int64_t>(rows, col.numel())), kThreads, 0, stream()>>>(
      ptr.data_ptr<Ptr>(), col.data_ptr<int32_t>(), rows, col.numel(), width);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// A list's bound B*T*N must be addressable by the int32 row pointers.
void check_bound(int64_t rows, int64_t width, const char* op) {
  TORCH_CHECK(rows * width < (int64_t(1) << 31), op, ": B*T*N = ", rows * width,
              " entries exceed the 2^31 - 1 its int32 row pointers address; use a smaller batch");
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

__global__ void events_forward_kernel(const Ptr* __restrict__ xptr, const int32_t* __restrict__ xcol,
                                      const float* __restrict__ xval, const float* __restrict__ W,
                                      const float* __restrict__ cur_all, GateParams g, int64_t T, int64_t B,
                                      int64_t Nin, int64_t N, float beta, float theta, float* __restrict__ u_buf,
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
          float cur = 0.0f;
          if (cur_all) {
            cur = cur_all[r * N + j];
          } else {
            for (int64_t q = xptr[r]; q < xptr[r + 1]; ++q) {
              CUDA_KERNEL_ASSERT(xcol[q] >= 0 && xcol[q] < Nin);
              cur += (xval ? xval[q] : 1.0f) * W[static_cast<int64_t>(xcol[q]) * N + j];
            }
          }
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

// ptr = [0, cumsum(counts)] on the device.
Tensor row_pointers_from_counts(const Tensor& counts) {
  Tensor ptr = at::zeros({counts.numel() + 1}, counts.options());
  ptr.narrow(0, 1, counts.numel()).copy_(at::cumsum(counts, 0, kPtr));
  return ptr;
}

template <typename T>
Tensor compact(const Tensor& slot, const Tensor& ptr, int64_t rows, int64_t width) {
  Tensor out = at::empty_like(slot);
  if (rows > 0)
    compact_kernel<T><<<grid(rows * kWarp), kThreads, 0, stream()>>>(slot.data_ptr<T>(), ptr.data_ptr<Ptr>(),
                                                                     out.data_ptr<T>(), rows, width);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

Tensor rows_from_events(const Tensor& ptr, const Tensor& col, const Tensor& val, int64_t rows, int64_t width,
                        const at::TensorOptions& opts) {
  Tensor out = at::zeros({rows, width}, opts);
  if (rows > 0 && col.numel() > 0)
    scatter_rows_kernel<<<grid(rows * kWarp), kThreads, 0, stream()>>>(
        ptr.data_ptr<Ptr>(), col.data_ptr<int32_t>(), val.numel() ? val.data_ptr<float>() : nullptr,
        out.data_ptr<float>(), rows, width);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
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

// dW^T[j, i] += e * xbar[t, b, i] over the active entries (t, b, j); blocks over (input tile, group of rows).
__global__ void sparse_dw_kernel(const Ptr* __restrict__ aptr, const int32_t* __restrict__ acol,
                                 const float* __restrict__ e, const Ptr* __restrict__ xptr,
                                 const int32_t* __restrict__ xcol, const float* __restrict__ xval,
                                 float* __restrict__ dwt, int64_t T, int64_t B, int64_t Nin, int64_t N, float beta,
                                 int64_t group_rows, int64_t groups, bool shared_out) {
  __shared__ float sh_x[kThreads];
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * blockDim.x, i = i0 + threadIdx.x;
  const bool mine = i < Nin;
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
        if (xptr[r + 1] > xptr[r]) {  // this step's inputs of the tile, through shared memory
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
          float* p = dst + static_cast<int64_t>(acol[q]) * Nin + i;
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

}  // namespace

std::tuple<Tensor, Tensor, Tensor> to_events_cuda(const Tensor& x) {
  TORCH_CHECK(x.dim() == 3, "lzo::to_events: x must have shape [T, B, N], got rank ", x.dim());
  check_float(x, "lzo::to_events", "x");
  check_on_gpu(x, "lzo::to_events");
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor xc = x.contiguous();
  const int64_t T = x.size(0), B = x.size(1), N = x.size(2), rows = T * B;
  check_bound(rows, N, "lzo::to_events");
  Tensor cnt = at::zeros({rows}, x.options().dtype(kPtr));
  if (rows > 0 && N > 0)
    count_nonzero_rows_kernel<<<grid(rows * kWarp), kThreads, 0, stream()>>>(xc.data_ptr<float>(),
                                                                             cnt.data_ptr<Ptr>(), T, B, N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  Tensor ptr = row_pointers_from_counts(cnt);
  const int64_t nnz = ptr[rows].item<int64_t>();  // the one host read of the event ops (see the header)
  Tensor col = at::empty({nnz}, x.options().dtype(at::kInt));
  Tensor val = at::empty({nnz}, x.options());
  if (nnz > 0)
    fill_events_kernel<<<grid(rows * kWarp), kThreads, 0, stream()>>>(
        xc.data_ptr<float>(), ptr.data_ptr<Ptr>(), col.data_ptr<int32_t>(), val.data_ptr<float>(), T, B, N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {ptr, col, val};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lif_events_forward_cuda(
    const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val, const Tensor& weight, const Tensor& table,
    int64_t steps, double beta, double theta, int64_t method, int64_t sample_kind, int64_t surrogate_kind,
    double delta, double bth, double k, double band, double term_scale, int64_t samples, int64_t alpha,
    int64_t seed, int64_t update, int64_t layer, int64_t current_mode) {
  const char* op = "lzo::lif_events_forward";
  check_on_gpu(weight, op);
  check_events_forward_args(x_ptr, weight, table, steps, op);
  check_gate_args(table, method, sample_kind, surrogate_kind, samples, alpha, op);
  check_current_mode(current_mode, op);
  const int64_t rows = x_ptr.numel() - 1, T = steps, B = rows / T, Nin = weight.size(0), N = weight.size(1);
  check_list(x_ptr, x_col, x_val, rows, weight.size(0), weight, op, "x");
  check_cuda(table, weight, op, "table");
  check_bound(rows, N, op);
  const c10::cuda::CUDAGuard guard(weight.device());
  const Tensor W = weight.contiguous(), tc = table.contiguous();
  const GateParams g = make_params(method, sample_kind, surrogate_kind, delta, bth, k, band, term_scale, samples,
                                   alpha, seed, update, layer, tc);
  const auto fopts = weight.options();
  const auto iopts = fopts.dtype(at::kInt);
  const bool sparse = method >= SPARSEGRAD;
  Tensor cur_all;
  if (current_mode == 2) cur_all = at::mm(rows_from_events(x_ptr, x_col, x_val, rows, Nin, fopts), W);
  Tensor u = at::zeros({B, N}, fopts), s = at::zeros({B, N}, fopts), counts = at::zeros({B, N}, fopts);
  Tensor spk_slot = at::empty({rows * N}, iopts), spk_cnt = at::empty({rows}, iopts);
  Tensor act_slot = at::empty({sparse ? rows * N : 0}, iopts), act_slot_val = at::empty({sparse ? rows * N : 0}, fopts);
  Tensor act_cnt = at::empty({sparse ? rows : 0}, iopts);
  Tensor dense_gate = method == SURROGATE ? at::empty({rows, N}, fopts) : at::empty({0}, fopts);
  if (rows > 0 && N > 0)
    events_forward_kernel<<<grid(B, 1), kThreads, 0, stream()>>>(
        x_ptr.data_ptr<Ptr>(), x_col.data_ptr<int32_t>(), x_val.numel() ? x_val.data_ptr<float>() : nullptr,
        W.data_ptr<float>(), cur_all.defined() ? cur_all.data_ptr<float>() : nullptr, g, T, B, Nin, N,
        static_cast<float>(beta), static_cast<float>(theta), u.data_ptr<float>(), s.data_ptr<float>(),
        counts.data_ptr<float>(), spk_slot.data_ptr<int32_t>(), spk_cnt.data_ptr<Ptr>(),
        sparse ? act_slot.data_ptr<int32_t>() : nullptr, sparse ? act_slot_val.data_ptr<float>() : nullptr,
        sparse ? act_cnt.data_ptr<Ptr>() : nullptr, method == SURROGATE ? dense_gate.data_ptr<float>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (rows == 0 || N == 0) spk_cnt.zero_(), act_cnt.zero_();
  Tensor spk_ptr = row_pointers_from_counts(spk_cnt);
  Tensor spk_col = compact<int32_t>(spk_slot, spk_ptr, rows, N);
  Tensor act_ptr = at::zeros({1}, iopts), act_col = at::empty({0}, iopts), act_gate = at::empty({0}, fopts);
  if (sparse) {
    act_ptr = row_pointers_from_counts(act_cnt);
    act_col = compact<int32_t>(act_slot, act_ptr, rows, N);
    act_gate = compact<float>(act_slot_val, act_ptr, rows, N);
  }
  return {spk_ptr, spk_col, counts, act_ptr, act_col, act_gate, dense_gate};
}

Tensor readout_forward_cuda(const Tensor& s_ptr, const Tensor& s_col, const Tensor& w_out, int64_t steps,
                            double beta_out) {
  const char* op = "lzo::readout_forward";
  check_on_gpu(w_out, op);
  check_readout_forward_args(s_ptr, w_out, steps, op);
  const int64_t rows = s_ptr.numel() - 1, T = steps, B = rows / T, C = w_out.size(1);
  check_list(s_ptr, s_col, at::empty({0}, w_out.options()), rows, w_out.size(0), w_out, op, "s");
  const c10::cuda::CUDAGuard guard(w_out.device());
  const Tensor W = w_out.contiguous();
  Tensor o = at::empty({T, B, C}, w_out.options());
  if (B * C > 0)
    readout_forward_kernel<<<grid(B * C), kThreads, 0, stream()>>>(
        s_ptr.data_ptr<Ptr>(), s_col.data_ptr<int32_t>(), W.data_ptr<float>(), o.data_ptr<float>(), T, B, W.size(0), C,
        static_cast<float>(beta_out), static_cast<float>(1.0 - beta_out));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return o;
}

std::tuple<Tensor, Tensor, Tensor> readout_backward_cuda(const Tensor& grad_o, const Tensor& s_ptr,
                                                         const Tensor& s_col, const Tensor& w_out, double beta_out,
                                                         const Tensor& act_ptr, const Tensor& act_col) {
  const char* op = "lzo::readout_backward";
  check_on_gpu(w_out, op);
  check_readout_backward_args(grad_o, w_out, op);
  const int64_t T = grad_o.size(0), B = grad_o.size(1), C = grad_o.size(2), N = w_out.size(0), rows = T * B;
  const Tensor empty = at::empty({0}, w_out.options());
  check_cuda(grad_o, w_out, op, "grad_o");
  check_list(s_ptr, s_col, empty, rows, N, w_out, op, "s");
  const bool with_act = act_ptr.numel() > 0;
  if (with_act) check_list(act_ptr, act_col, empty, rows, N, w_out, op, "active");
  const c10::cuda::CUDAGuard guard(w_out.device());
  const Tensor go = grad_o.contiguous(), W = w_out.contiguous();
  Tensor d_a = at::empty({rows, C}, w_out.options());
  const bool per_row = B * N * C * 4 <= kDeterministicBytes;
  if (!per_row) at::globalContext().alertNotDeterministic("lzo::readout_backward (atomicAdd into dW_out)");
  Tensor dw = per_row ? at::zeros({B, N, C}, w_out.options()) : at::zeros({N, C}, w_out.options());
  if (B * C > 0)
    readout_backward_kernel<<<grid(B * C), kThreads, 0, stream()>>>(
        go.data_ptr<float>(), s_ptr.data_ptr<Ptr>(), s_col.data_ptr<int32_t>(), d_a.data_ptr<float>(),
        dw.data_ptr<float>(), per_row, T, B, C, N, static_cast<float>(beta_out), static_cast<float>(1.0 - beta_out));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  Tensor dw_out = per_row ? dw.sum(0) : dw;
  Tensor g_act = at::empty({with_act ? act_col.numel() : 0}, w_out.options());  // every valid entry written
  if (with_act && act_col.numel() > 0)
    readout_active_grad_kernel<<<grid(rows * kWarp), kThreads, 0, stream()>>>(
        act_ptr.data_ptr<Ptr>(), act_col.data_ptr<int32_t>(), d_a.data_ptr<float>(), W.data_ptr<float>(),
        g_act.data_ptr<float>(), rows, C);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dw_out, d_a, g_act};
}

std::tuple<Tensor, Tensor> lif_sparse_backward_cuda(
    const Tensor& grad_act, const Tensor& act_ptr, const Tensor& act_col, const Tensor& act_gate,
    const Tensor& count_grad, const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val, const Tensor& weight,
    double beta, int64_t steps, const Tensor& prev_ptr, const Tensor& prev_col) {
  const char* op = "lzo::lif_sparse_backward";
  check_on_gpu(weight, op);
  check_sparse_backward_args(grad_act, act_ptr, act_col, act_gate, count_grad, weight, steps, op);
  const int64_t Nin = weight.size(0), N = weight.size(1);
  const int64_t rows = act_ptr.numel() - 1, T = steps, B = rows / T;
  const Tensor empty = at::empty({0}, weight.options());
  check_list(act_ptr, act_col, empty, rows, N, weight, op, "active");
  check_list(x_ptr, x_col, x_val, rows, weight.size(0), weight, op, "x");
  check_cuda(grad_act, weight, op, "grad_act");
  check_cuda(act_gate, weight, op, "active_gate");
  check_cuda(count_grad, weight, op, "count_grad");
  const bool with_cg = count_grad.numel() > 0;
  const bool with_prev = prev_ptr.numel() > 0;
  if (with_prev) check_list(prev_ptr, prev_col, empty, rows, Nin, weight, op, "prev");
  const c10::cuda::CUDAGuard guard(weight.device());
  const Tensor W = weight.contiguous(), cg = count_grad.contiguous(), ga = grad_act.contiguous(),
               gam = act_gate.contiguous();
  Tensor e = at::empty({act_col.numel()}, weight.options());
  if (rows > 0 && act_col.numel() > 0)
    active_error_kernel<<<grid(rows * kWarp), kThreads, 0, stream()>>>(
        act_ptr.data_ptr<Ptr>(), act_col.data_ptr<int32_t>(), ga.data_ptr<float>(), gam.data_ptr<float>(),
        with_cg ? cg.data_ptr<float>() : nullptr, e.data_ptr<float>(), rows, T, N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const unsigned tiles = static_cast<unsigned>((Nin + kThreads - 1) / kThreads);
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  int64_t group_rows = 1, groups = B;
  Tensor dwt;
  if (deterministic) {  // every group of rows owns a partial dW^T: plain adds, summed in a fixed order
    const int64_t fit = std::max<int64_t>(1, std::min(B, kDeterministicBytes / std::max<int64_t>(1, N * Nin * 4)));
    group_rows = std::max<int64_t>(1, (B + fit - 1) / fit);
    groups = (B + group_rows - 1) / group_rows;
    dwt = at::zeros({groups, N, Nin}, weight.options());
  } else {
    dwt = at::zeros({N, Nin}, weight.options());
  }
  if (B > 0 && Nin > 0 && act_col.numel() > 0)
    sparse_dw_kernel<<<dim3(tiles, static_cast<unsigned>(std::min<int64_t>(groups, g_max_grid))), kThreads, 0,
                       stream()>>>(act_ptr.data_ptr<Ptr>(), act_col.data_ptr<int32_t>(), e.data_ptr<float>(),
                                   x_ptr.data_ptr<Ptr>(), x_col.data_ptr<int32_t>(),
                                   x_val.numel() ? x_val.data_ptr<float>() : nullptr, dwt.data_ptr<float>(), T, B,
                                   Nin, N, static_cast<float>(beta), group_rows, groups, !deterministic);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  Tensor dw = (deterministic ? dwt.sum(0) : dwt).t().contiguous();
  if (!with_prev) return {dw, empty};
  Tensor g_prev = at::empty({prev_col.numel()}, weight.options());  // every valid entry written
  const Tensor wt = W.t().contiguous();  // [N, N_in]
  if (B > 0 && Nin > 0 && prev_col.numel() > 0)
    sparse_dx_kernel<<<dim3(tiles, static_cast<unsigned>(std::min<int64_t>(B, g_max_grid))), kThreads, 0, stream()>>>(
        act_ptr.data_ptr<Ptr>(), act_col.data_ptr<int32_t>(), e.data_ptr<float>(), wt.data_ptr<float>(),
        prev_ptr.data_ptr<Ptr>(), prev_col.data_ptr<int32_t>(), g_prev.data_ptr<float>(), T, B, Nin,
        static_cast<float>(beta));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dw, g_prev};
}

std::tuple<Tensor, Tensor> lif_dense_backward_cuda(const Tensor& grad, const Tensor& gate_t, const Tensor& count_grad,
                                                   const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val,
                                                   const Tensor& weight, double beta, int64_t steps, bool input_grad,
                                                   int64_t current_mode) {
  const char* op = "lzo::lif_dense_backward";
  check_on_gpu(weight, op);
  check_dense_backward_args(grad, gate_t, count_grad, weight, steps, op);
  const int64_t Nin = weight.size(0), N = weight.size(1);
  const int64_t rows = grad.size(0), T = steps, B = rows / T;
  check_list(x_ptr, x_col, x_val, rows, weight.size(0), weight, op, "x");
  check_cuda(grad, weight, op, "grad");
  check_cuda(gate_t, weight, op, "gate");
  check_cuda(count_grad, weight, op, "count_grad");
  const bool with_cg = count_grad.numel() > 0;
  (void)current_mode;  // the GPU always forms dW by one GEMM
  const c10::cuda::CUDAGuard guard(weight.device());
  const Tensor W = weight.contiguous(), cg = count_grad.contiguous(), gc = grad.contiguous(), gtc = gate_t.contiguous();
  Tensor ghat = at::empty({rows, N}, weight.options());
  if (B * N > 0)
    dense_reverse_kernel<<<grid(B * N), kThreads, 0, stream()>>>(
        gc.data_ptr<float>(), gtc.data_ptr<float>(), with_cg ? cg.data_ptr<float>() : nullptr,
        ghat.data_ptr<float>(), T, B, N, static_cast<float>(beta));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  Tensor dw = at::mm(rows_from_events(x_ptr, x_col, x_val, rows, Nin, weight.options()).t(), ghat);
  Tensor dx = input_grad ? at::mm(ghat, W.t()) : at::empty({0}, weight.options());
  return {dw, dx};
}

// The grid cap of every launch (at most 65535, the default); returns the previous cap. Tests lower it
// so that each grid-stride loop takes several passes.
int64_t set_cuda_max_grid(int64_t blocks) {
  TORCH_CHECK(blocks >= 1 && blocks <= 65535, "lzo::set_cuda_max_grid: blocks must lie in [1, 65535], got ", blocks);
  const int64_t old = g_max_grid;
  g_max_grid = blocks;
  return old;
}

TORCH_LIBRARY_FRAGMENT(lzo, m) { m.def("set_cuda_max_grid(int blocks) -> int", &set_cuda_max_grid); }

TORCH_LIBRARY_IMPL(lzo, CUDA, m) {
  m.impl("to_events", &to_events_cuda);
  m.impl("lif_events_forward", &lif_events_forward_cuda);
  m.impl("readout_forward", &readout_forward_cuda);
  m.impl("readout_backward", &readout_backward_cuda);
  m.impl("lif_sparse_backward", &lif_sparse_backward_cuda);
  m.impl("lif_dense_backward", &lif_dense_backward_cuda);
}

}  // namespace lzo
