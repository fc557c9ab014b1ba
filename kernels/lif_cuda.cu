// CUDA kernels of the lzo LIF layer ops (schema and the math of each op in lif_cpu.cpp;
// per-element math in lzo_math.h).
// Only c10's CUDA headers are used (not ATen/cuda/CUDAContext.h, which needs the cuSPARSE and
// cuBLAS headers), so a bare CUDA toolkit compiles it.
// All launches go to the current stream. Active entries come out sorted (at::nonzero), so the
// list is identical to the CPU one; dW accumulates with atomicAdd, so its float rounding
// order varies between runs (within the tolerance the tests use).
//
// These are the per-layer ops (lzo::lif_forward / lif_backward, dense [T, B, N] spikes in and out),
// kept for torch.compile and the layer benchmarks. Training on a GPU runs the event ops of
// snn_cuda.cu, which mirror the CPU's sparse-end-to-end structures (one Python autograd node, one
// set of op schemas):
//   - event lists as CSR over rows r = b*T + t: ptr [B*T+1] int64, col int32, val float (empty = 1);
//     input spikes, each layer's spikes (the next layer's input) and each layer's active list
//     (col = neuron, gate values beside) all use it, rows pointers produced by the forward;
//   - lzo::lif_events_forward: current from the input events (or one GEMM above kGemmDensity), the
//     LIF scan fused with the gate, outputs spike events, per-(b, j) spike counts [B, N], the active
//     list (sparse rules) or the dense gate [B*T, N] (surrogate); no [T, B, N] current or potential;
//   - lzo::readout_forward / readout_backward: the leaky readout from spike events; the backward
//     returns dL/ds only at the last layer's active entries;
//   - lzo::lif_sparse_backward: e = (g + dL/dcount) * gamma on the active list, dW from the input
//     trace, and the previous layer's dL/ds only at its active entries (values, no dense tensor);
//   - lzo::lif_dense_backward: the dense rule on the same forward (reverse scan, dW from events).
// The work split the CPU uses (one batch row per task, walking t) is the natural CUDA grid too:
// one block per batch row and time chunk, the block's threads over neurons (forward) or inputs
// (dW, dx), the trace re-based every kRebaseSteps; dW per output neuron in a transposed layout
// accumulated per block, then reduced, instead of contended atomics.
#include <torch/library.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "lif_common.h"

namespace lzo {

using at::Tensor;

namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 20));
}

__global__ void scan_kernel(const float* __restrict__ cur, float* __restrict__ spikes,
                            float* __restrict__ gates, GateParams g, int64_t T, int64_t B, int64_t N,
                            float beta, float theta) {
  const int64_t rows = B * N;
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  const int b = static_cast<int>(r / N), j = static_cast<int>(r % N);
  float u = 0.0f, s = 0.0f;
  for (int64_t t = 0; t < T; ++t) {
    const float v = lif_step(&u, cur[t * rows + r], s, beta, theta);
    s = v > 0.0f ? 1.0f : 0.0f;
    spikes[t * rows + r] = s;
    if (gates) gates[t * rows + r] = gate(g, v, static_cast<int>(t), b, j);
  }
}

__global__ void reverse_scan_kernel(float* __restrict__ e, int64_t T, int64_t rows, float beta) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  for (int64_t t = T - 2; t >= 0; --t) e[t * rows + r] = e[t * rows + r] + beta * e[(t + 1) * rows + r];
}

// One block per batch row b, walking t upwards with the input trace rebuilt from the events
// in shared memory (xbar[t] = beta^(t-tr) H, re-based every kRebase steps), threads over i.
constexpr int64_t kRebase = 32;

__global__ void sparse_dw_kernel(const int64_t* __restrict__ idx, const float* __restrict__ e,
                                 const int64_t* __restrict__ ptr, const int64_t* __restrict__ in_idx,
                                 const float* __restrict__ in_val, const int64_t* __restrict__ iptr,
                                 float* __restrict__ dw, double beta, int64_t T, int64_t B,
                                 int64_t N, int64_t Nin) {
  extern __shared__ float h[];
  const int64_t b = blockIdx.x;
  for (int64_t i = threadIdx.x; i < Nin; i += blockDim.x) h[i] = 0.0f;
  __syncthreads();
  bool any = false;
  int64_t tr = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = t * B + b;
    const bool events = iptr[row + 1] > iptr[row];
    if (!any && !events) continue;
    if (!any || t - tr > kRebase) {
      if (any) {
        const float f = static_cast<float>(pow(beta, static_cast<double>(t - tr)));
        for (int64_t i = threadIdx.x; i < Nin; i += blockDim.x) h[i] *= f;
      }
      tr = t;
    }
    any = true;
    __syncthreads();  // the re-base above scaled slots that other threads' events add to next
    const float up = static_cast<float>(pow(beta, -static_cast<double>(t - tr)));
    for (int64_t q = iptr[row] + threadIdx.x; q < iptr[row + 1]; q += blockDim.x)
      h[in_idx[q] % Nin] += in_val[q] * up;  // distinct i within a row: no race
    __syncthreads();
    const float down = static_cast<float>(pow(beta, static_cast<double>(t - tr)));
    for (int64_t k = ptr[row]; k < ptr[row + 1]; ++k) {
      const float f = e[k] * down;
      const int64_t j = idx[k] % N;
      for (int64_t i = threadIdx.x; i < Nin; i += blockDim.x)
        if (h[i] != 0.0f) atomicAdd(&dw[i * N + j], f * h[i]);
    }
    __syncthreads();
  }
}

// One thread per active entry (t,b,i) of the previous layer: sum over this layer's entries of
// row b at t' >= t of beta^(t'-t) e W[i,j].
__global__ void sparse_dx_kernel(const int64_t* __restrict__ idx, const float* __restrict__ e,
                                 const int64_t* __restrict__ ptr, const int64_t* __restrict__ pidx,
                                 const float* __restrict__ w, const float* __restrict__ pw,
                                 float* __restrict__ dx, int64_t nprev, int64_t T, int64_t B,
                                 int64_t N, int64_t Nin) {
  const int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (q >= nprev) return;
  const int64_t flat = pidx[q];
  const int64_t row = flat / Nin, i = flat % Nin;
  const int64_t t = row / B, b = row % B;
  float acc = 0.0f;
  for (int64_t tp = t; tp < T; ++tp) {
    const int64_t r = tp * B + b;
    for (int64_t k = ptr[r]; k < ptr[r + 1]; ++k) acc += pw[tp - t] * (e[k] * w[i * N + idx[k] % N]);
  }
  dx[flat] = acc;
}

Tensor beta_powers_cuda(double beta, int64_t T, const at::TensorOptions& opts) {
  std::vector<float> p(static_cast<size_t>(T + 1));
  for (int64_t k = 0; k <= T; ++k) p[k] = static_cast<float>(std::pow(beta, static_cast<double>(k)));
  return at::tensor(p, at::TensorOptions().dtype(at::kFloat)).to(opts.device());
}

Tensor dense_ghat_cuda(const Tensor& e_dense, double beta) {
  Tensor ghat = e_dense.contiguous().clone();
  const int64_t rows = ghat.size(1) * ghat.size(2);
  auto stream = c10::cuda::getCurrentCUDAStream();
  reverse_scan_kernel<<<blocks_for(rows), kThreads, 0, stream>>>(ghat.data_ptr<float>(), ghat.size(0),
                                                                 rows, static_cast<float>(beta));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return ghat;
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lif_forward_cuda(
    const Tensor& x, const Tensor& weight, const Tensor& table, const c10::optional<Tensor>& prev_idx,
    double beta, double theta, int64_t method, int64_t sample_kind, int64_t surrogate_kind,
    double delta, double bth, double k, double band, double term_scale, int64_t samples,
    int64_t alpha, int64_t seed, int64_t update, int64_t layer) {
  (void)prev_idx;
  const auto s = check_forward_args(x, weight, table, method, sample_kind, surrogate_kind, samples, alpha);
  TORCH_CHECK(x.is_cuda(), "lzo::lif_forward: CUDA kernel called with x on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const Tensor xc = x.contiguous();
  const Tensor tc = table.contiguous();
  const Tensor current = at::matmul(xc.view({s.T * s.B, s.Nin}), weight.contiguous()).view({s.T, s.B, s.N});
  Tensor spikes = at::empty({s.T, s.B, s.N}, x.options());
  const GateParams g = make_params(method, sample_kind, surrogate_kind, delta, bth, k, band,
                                   term_scale, samples, alpha, seed, update, layer, tc);
  auto empty_f = [&] { return at::empty({0}, x.options()); };  // outputs must not alias
  auto empty_i = [&] { return at::empty({0}, x.options().dtype(at::kLong)); };
  Tensor gates = method < 0 ? empty_f() : at::empty({s.T, s.B, s.N}, x.options());
  const int64_t rows = s.B * s.N;
  scan_kernel<<<blocks_for(rows), kThreads, 0, stream>>>(
      current.data_ptr<float>(), spikes.data_ptr<float>(), method < 0 ? nullptr : gates.data_ptr<float>(),
      g, s.T, s.B, s.N, static_cast<float>(beta), static_cast<float>(theta));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (method <= SURROGATE) return {spikes, empty_i(), gates, empty_i(), empty_f()};
  auto flat = gates.view({-1});
  Tensor idx = at::nonzero(flat).view({-1});
  Tensor vals = flat.index_select(0, idx);
  auto xflat = xc.view({-1});
  Tensor in_idx = at::nonzero(xflat).view({-1});
  Tensor in_val = xflat.index_select(0, in_idx);
  return {spikes, idx, vals, in_idx, in_val};
}

std::tuple<Tensor, Tensor> lif_backward_cuda(const Tensor& grad_spikes, const Tensor& x,
                                             const Tensor& input_idx, const Tensor& input_val,
                                             const Tensor& weight, const Tensor& idx,
                                             const Tensor& gate, const c10::optional<Tensor>& prev_idx,
                                             double beta, int64_t method, bool input_grad) {
  check_backward_args(grad_spikes, x, input_idx, input_val, weight, idx, gate, method);
  TORCH_CHECK(grad_spikes.is_cuda(), "lzo::lif_backward: CUDA kernel called with ", grad_spikes.device());
  const c10::cuda::CUDAGuard guard(grad_spikes.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t T = grad_spikes.size(0), B = grad_spikes.size(1), N = grad_spikes.size(2);
  const int64_t Nin = weight.size(0);
  const Tensor gs = grad_spikes.contiguous();
  const Tensor w = weight.contiguous();
  const Tensor empty = at::empty({0}, gs.options());

  if (method == SURROGATE) {
    const Tensor ghat = dense_ghat_cuda(gs * gate, beta).view({T * B, N});
    const Tensor dw = at::matmul(x.contiguous().view({T * B, Nin}).t(), ghat);
    return {input_grad ? at::matmul(ghat, w.t()).view({T, B, Nin}) : empty, dw};
  }
  const Tensor ic = idx.contiguous();
  const int64_t nnz = ic.size(0);
  const Tensor e = gs.view({-1}).index_select(0, ic) * gate.contiguous();
  Tensor dw = at::zeros({Nin, N}, gs.options());
  if (nnz) {
    const Tensor ptr = row_pointers(ic, T * B, N);
    const Tensor ii = input_idx.contiguous();
    const Tensor iv = input_val.contiguous();
    const Tensor iptr = row_pointers(ii, T * B, Nin);
    TORCH_CHECK(Nin * sizeof(float) <= 48 * 1024, "lzo::lif_backward: N_in = ", Nin,
                " exceeds the 12288 inputs one block's shared memory holds");
    sparse_dw_kernel<<<static_cast<unsigned>(B), 128, Nin * sizeof(float), stream>>>(
        ic.data_ptr<int64_t>(), e.data_ptr<float>(), ptr.data_ptr<int64_t>(), ii.data_ptr<int64_t>(),
        iv.data_ptr<float>(), iptr.data_ptr<int64_t>(), dw.data_ptr<float>(), beta, T, B, N, Nin);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (!input_grad) return {empty, dw};
  if (prev_idx.has_value()) {
    TORCH_CHECK(prev_idx->scalar_type() == at::kLong, "lzo::lif_backward: prev_idx must be int64");
    const Tensor pidx = prev_idx->contiguous();
    Tensor dx = at::zeros({T, B, Nin}, gs.options());
    const int64_t nprev = pidx.size(0);
    if (nprev && nnz) {
      const Tensor ptr = row_pointers(ic, T * B, N);  // (recomputed: cheap, T*B+1 searches)
      const Tensor pw = beta_powers_cuda(beta, T, gs.options());
      sparse_dx_kernel<<<blocks_for(nprev), kThreads, 0, stream>>>(
          ic.data_ptr<int64_t>(), e.data_ptr<float>(), ptr.data_ptr<int64_t>(), pidx.data_ptr<int64_t>(),
          w.data_ptr<float>(), pw.data_ptr<float>(), dx.data_ptr<float>(), nprev, T, B, N, Nin);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return {dx, dw};
  }
  Tensor e_dense = at::zeros({T * B * N}, gs.options());
  e_dense.index_put_({ic}, e);
  const Tensor ghat = dense_ghat_cuda(e_dense.view({T, B, N}), beta).view({T * B, N});
  return {at::matmul(ghat, w.t()).view({T, B, Nin}), dw};
}

TORCH_LIBRARY_IMPL(lzo, CUDA, m) {
  m.impl("lif_forward", &lif_forward_cuda);
  m.impl("lif_backward", &lif_backward_cuda);
}

}  // namespace lzo
