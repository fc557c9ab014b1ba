// The CUDA event ops (the math of each op in snn_cpu.cpp's header, per-element math in lzo_math.h,
// the kernels in snn_cuda_kernels.cuh). The lists have the CPU layout (CSR over rows r = b*T + t,
// int32 row pointers and columns), and nothing waits for the host inside an op:
//   - a list an op makes (spikes, active entries) is sized by its bound, B*T*N entries: its valid
//     prefix is ptr[B*T] long (kept on the device; SpikeEvents.nnz reads it when asked);
//   - row pointers come from a device cumsum of per-row counts;
//   - loops are grid-stride, so any size runs with the grids capped at g_max_grid blocks
//     (65535; lzo::set_cuda_max_grid lowers it so tests make the loops take several passes);
//   - a list an op receives is validated on the device (validate_list_kernel, at most kValidateBlocks
//     blocks), without a host read, unless the caller says the extension made it (lzo::own_lists: the
//     network's autograd node, for every list after the first layer's input; thread-local).
// Exception: to_events (a dense tensor from the user) reads its event count back once, since its
// bound would be twice the dense tensor.
//
// Work split (docs/ARCHITECTURE.md §5b; the GPU issue):
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
//              (plain adds; groups sized so the partials fit kDeterministicBytes), summed after; when
//              that leaves few blocks, the neurons j are split into slices (grid z) as well, and a
//              step's input x_i is gathered by its thread in list order (no shared atomics), so a
//              column listed twice in a row adds as on the CPU; the dense rows of rows_from_events
//              likewise (scatter_rows_ordered_kernel): the deterministic mode is bitwise repeatable.
//              (torch then also needs CUBLAS_WORKSPACE_CONFIG=:4096:8 for the GEMMs of `surrogate`
//              and of a forced GEMM current.)
//   dL/ds of the previous layer: blocks over (input tile, batch row), the reverse recurrence
//              y_i = beta*y_i + sum_{entries at t} e*W[i, j] per thread, read at the previous
//              layer's active entries through shared memory.
//   readout    one thread per (b, c) walking t (C is 10 or 20).
//   conv layers (issue 22) see the section above conv_lif_forward_cuda.
// The dense backward (surrogate) always forms dW by one GEMM from the input rows (a conv layer's by cuDNN).
//
// The kernels themselves are in snn_cuda_kernels.cuh. This file is the host side, written once for
// two builds: nvcc (the CUDA ops, torch.ops.lzo on CUDA tensors) and, with LZO_CUDA_SIM defined by
// snn_cuda_sim.cpp, the host compiler against cuda_sim.h (the same kernels executed on the CPU by the
// simulator, torch.ops.lzo_sim on CPU tensors). The macros below are the only difference.
#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <tuple>

#include "lif_common.h"

#ifdef LZO_CUDA_SIM
#include "cuda_sim.h"
#define LZO_LAUNCH(kernel, blocks, threads) ::lzo_sim::launch(&kernel, dim3(blocks), dim3(threads), #kernel)
#define LZO_LAUNCH_CHECK() ((void)0)     // a failed device assert already ended the process
#define LZO_GUARD(device) ((void)0)
#define LZO_ON_DEVICE(t) ((t).is_cpu())  // the simulator's "device" memory is the CPU's
#define LZO_DEVICE_NAME "the simulator (CPU tensors)"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define LZO_LAUNCH(kernel, blocks, threads) kernel<<<(blocks), (threads), 0, stream()>>>
#define LZO_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#define LZO_GUARD(device) const c10::cuda::CUDAGuard guard(device)
#define LZO_ON_DEVICE(t) ((t).is_cuda())
#define LZO_DEVICE_NAME "one CUDA device"
#endif

#include "snn_cuda_kernels.cuh"

namespace lzo {

using at::Tensor;

namespace {

constexpr auto kPtr = at::kInt;
int64_t g_max_grid = 65535;  // blocks per grid dimension; lzo::set_cuda_max_grid lowers it for tests
constexpr int64_t kDeterministicBytes = int64_t(256) << 20;
constexpr int64_t kTargetBlocks = 1024;  // the sparse dW's grid in the deterministic mode: ~8 blocks per SM of an H100/H200
constexpr int64_t kMaxSlices = 64;       // each slice re-reads the rows' entries and input events
constexpr unsigned kValidateBlocks = 528;  // validate_list_kernel's grid: 4 blocks per SM of an H100 (132 SMs); it grid-strides
thread_local bool t_own_lists = false;    // lzo::own_lists: the lists handed in were made by the extension

#ifndef LZO_CUDA_SIM
inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }
#endif

inline unsigned grid(int64_t items, int64_t per_block = kThreads) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((items + per_block - 1) / per_block, g_max_grid)));
}

void check_on_gpu(const Tensor& weight, const char* op) {
  TORCH_CHECK(LZO_ON_DEVICE(weight), op, ": CUDA kernel called with the weights on ", weight.device(),
              "; move the weights and lists to " LZO_DEVICE_NAME);
}

void check_cuda(const Tensor& t, const Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.numel() == 0 || t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but weight is on ",
              ref.device(), "; move both to one device");
}

void check_list(const Tensor& ptr, const Tensor& col, const Tensor& val, int64_t rows, int64_t width,
                const Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(ptr.scalar_type() == kPtr && ptr.dim() == 1 && ptr.is_contiguous() && rows >= 0 && ptr.numel() == rows + 1,
              op, ": ", name, "_ptr must be a contiguous int32 tensor of B*T + 1 = ", rows + 1,
              " row pointers (at least 1)");
  TORCH_CHECK(col.scalar_type() == at::kInt && col.dim() == 1 && col.is_contiguous(), op, ": ", name,
              "_col must be a contiguous 1-D int32 tensor");
  TORCH_CHECK(val.numel() == 0 || (val.scalar_type() == at::kFloat && val.is_contiguous() && val.numel() == col.numel()),
              op, ": ", name, "_val must be empty or hold one float32 per event");
  check_cuda(ptr, ref, op, name);
  check_cuda(col, ref, op, name);
  check_cuda(val, ref, op, name);
  TORCH_CHECK(LZO_ON_DEVICE(ptr) && LZO_ON_DEVICE(col), op, ": ", name, " list must be on the weights' device");
  if (t_own_lists) return;  // made by our own ops (a layer's spikes, an active list, a pooled list): valid
  LZO_GUARD(ptr.device());
  LZO_LAUNCH(validate_list_kernel, std::min(grid(std::max<int64_t>(rows, col.numel())), kValidateBlocks), kThreads)(
      ptr.data_ptr<Ptr>(), col.data_ptr<int32_t>(), rows, col.numel(), width);
  LZO_LAUNCH_CHECK();
}

// The sparse backward ops' lists and values on the weights' device: the active list over a layer of n neurons,
// the input list over n_in units, the previous layer's entries (when given) over n_prev units.
void check_backward_lists(const Tensor& grad_act, const Tensor& act_ptr, const Tensor& act_col, const Tensor& act_gate,
                          const Tensor& count_grad, const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val,
                          const Tensor& prev_ptr, const Tensor& prev_col, const Tensor& weight, int64_t n, int64_t n_in,
                          int64_t n_prev, const char* op) {
  const int64_t rows = act_ptr.numel() - 1;
  const Tensor empty = at::empty({0}, weight.options());
  check_list(act_ptr, act_col, empty, rows, n, weight, op, "active");
  check_list(x_ptr, x_col, x_val, rows, n_in, weight, op, "x");
  check_cuda(grad_act, weight, op, "grad_act");
  check_cuda(act_gate, weight, op, "active_gate");
  check_cuda(count_grad, weight, op, "count_grad");
  if (prev_ptr.numel() > 0) check_list(prev_ptr, prev_col, empty, rows, n_prev, weight, op, "prev");
}

// The dense backward ops' inputs on the weights' device: grad, gate, dL/dcount and the input list over n_in units.
void check_dense_backward_lists(const Tensor& grad, const Tensor& gate, const Tensor& count_grad, const Tensor& x_ptr,
                                const Tensor& x_col, const Tensor& x_val, const Tensor& weight, int64_t n_in,
                                const char* op) {
  check_list(x_ptr, x_col, x_val, grad.size(0), n_in, weight, op, "x");
  check_cuda(grad, weight, op, "grad");
  check_cuda(gate, weight, op, "gate");
  check_cuda(count_grad, weight, op, "count_grad");
}

// A list's bound B*T*N must be addressable by the int32 row pointers.
void check_bound(int64_t rows, int64_t width, const char* op) {
  TORCH_CHECK(rows * width < (int64_t(1) << 31), op, ": B*T*N = ", rows * width,
              " entries exceed the 2^31 - 1 its int32 row pointers address; use a smaller batch");
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
    LZO_LAUNCH(compact_kernel<T>, grid(rows * kWarp), kThreads)(slot.data_ptr<T>(), ptr.data_ptr<Ptr>(),
                                                                     out.data_ptr<T>(), rows, width);
  LZO_LAUNCH_CHECK();
  return out;
}

// e = (dL/ds + dL/dcount) * gamma on the active list of a layer of N neurons.
Tensor active_errors(const Tensor& grad_act, const Tensor& act_ptr, const Tensor& act_col, const Tensor& act_gate,
                     const Tensor& count_grad, int64_t T, int64_t N) {
  const int64_t rows = act_ptr.numel() - 1;
  const Tensor cg = count_grad.contiguous(), ga = grad_act.contiguous(), gam = act_gate.contiguous();
  Tensor e = at::empty({act_col.numel()}, grad_act.options());
  if (rows > 0 && act_col.numel() > 0)
    LZO_LAUNCH(active_error_kernel, grid(rows * kWarp), kThreads)(
        act_ptr.data_ptr<Ptr>(), act_col.data_ptr<int32_t>(), ga.data_ptr<float>(), gam.data_ptr<float>(),
        count_grad.numel() > 0 ? cg.data_ptr<float>() : nullptr, e.data_ptr<float>(), rows, T, N);
  LZO_LAUNCH_CHECK();
  return e;
}

// ghat[t] = (dL/ds[t] + dL/dcount) * gamma[t] + beta * ghat[t+1] over grad, gate [B*T, N]: the dense rule's dL/du.
Tensor dense_ghat(const Tensor& grad, const Tensor& gate, const Tensor& count_grad, int64_t T, double beta) {
  const int64_t rows = grad.size(0), N = grad.size(1), B = rows / T;
  const Tensor cg = count_grad.contiguous(), gc = grad.contiguous(), gtc = gate.contiguous();
  Tensor ghat = at::empty({rows, N}, grad.options());
  if (B * N > 0)
    LZO_LAUNCH(dense_reverse_kernel, grid(B * N), kThreads)(
        gc.data_ptr<float>(), gtc.data_ptr<float>(), count_grad.numel() > 0 ? cg.data_ptr<float>() : nullptr,
        ghat.data_ptr<float>(), T, B, N, static_cast<float>(beta));
  LZO_LAUNCH_CHECK();
  return ghat;
}

// The non-zero entries of x [T, B, N] as a list over rows r = b*T + t (dense rows [R, N]: T = 1, B = R), in
// column order. cap < 0: exactly nnz long, read back once; else allocated at the bound cap, no host read.
std::tuple<Tensor, Tensor, Tensor> list_of_nonzeros(const Tensor& x, int64_t T, int64_t B, int64_t N, int64_t cap) {
  const int64_t rows = T * B;
  Tensor cnt = at::zeros({rows}, x.options().dtype(kPtr));
  if (rows > 0 && N > 0)
    LZO_LAUNCH(count_nonzero_rows_kernel, grid(rows * kWarp), kThreads)(x.data_ptr<float>(), cnt.data_ptr<Ptr>(), T,
                                                                             B, N);
  LZO_LAUNCH_CHECK();
  Tensor ptr = row_pointers_from_counts(cnt);
  const int64_t len = cap < 0 ? ptr[rows].item<int64_t>() : cap;
  Tensor col = at::empty({len}, x.options().dtype(at::kInt));
  Tensor val = at::empty({len}, x.options());
  if (rows > 0 && len > 0)
    LZO_LAUNCH(fill_events_kernel, grid(rows * kWarp), kThreads)(
        x.data_ptr<float>(), ptr.data_ptr<Ptr>(), col.data_ptr<int32_t>(), val.data_ptr<float>(), T, B, N);
  LZO_LAUNCH_CHECK();
  return {ptr, col, val};
}

// Dense rows [rows, width] from a list; a column listed twice in a row adds: by atomics (any order), or in the
// deterministic mode in list order (the CPU's), so the bits repeat.
Tensor rows_from_events(const Tensor& ptr, const Tensor& col, const Tensor& val, int64_t rows, int64_t width,
                        const at::TensorOptions& opts) {
  Tensor out = at::zeros({rows, width}, opts);
  const float* v = val.numel() ? val.data_ptr<float>() : nullptr;
  if (rows > 0 && col.numel() > 0) {
    if (at::globalContext().deterministicAlgorithms())
      LZO_LAUNCH(scatter_rows_ordered_kernel, grid(rows * kWarp), kThreads)(
          ptr.data_ptr<Ptr>(), col.data_ptr<int32_t>(), v, out.data_ptr<float>(), rows, width);
    else
      LZO_LAUNCH(scatter_rows_kernel, grid(rows * kWarp), kThreads)(
          ptr.data_ptr<Ptr>(), col.data_ptr<int32_t>(), v, out.data_ptr<float>(), rows, width);
  }
  LZO_LAUNCH_CHECK();
  return out;
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> to_events_cuda(const Tensor& x) {
  TORCH_CHECK(x.dim() == 3, "lzo::to_events: x must have shape [T, B, N], got rank ", x.dim());
  check_float(x, "lzo::to_events", "x");
  check_on_gpu(x, "lzo::to_events");
  LZO_GUARD(x.device());
  const Tensor xc = x.contiguous();
  const int64_t T = x.size(0), B = x.size(1), N = x.size(2), rows = T * B;
  check_bound(rows, N, "lzo::to_events");
  return list_of_nonzeros(xc, T, B, N, -1);  // exactly nnz long: the one host read of the event ops (the header)
}

namespace {

using ForwardOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// The LIF scan with the fused gate over N neurons, the current from `current` (DenseCurrent, ConvCurrent) or
// cur_all [B*T, N]; then the spike and active lists compacted -> the forward ops' outputs.
template <typename Current>
ForwardOut scan_layer(const Current& current, const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val,
                      const Tensor& cur_all, const GateParams& g, int64_t T, int64_t N, double beta, double theta,
                      int64_t method, const at::TensorOptions& fopts) {
  const int64_t rows = x_ptr.numel() - 1, B = rows / T;
  const auto iopts = fopts.dtype(at::kInt);
  const bool sparse = method >= SPARSEGRAD;
  Tensor u = at::zeros({B, N}, fopts), s = at::zeros({B, N}, fopts), counts = at::zeros({B, N}, fopts);
  Tensor spk_slot = at::empty({rows * N}, iopts), spk_cnt = at::empty({rows}, iopts);
  Tensor act_slot = at::empty({sparse ? rows * N : 0}, iopts), act_slot_val = at::empty({sparse ? rows * N : 0}, fopts);
  Tensor act_cnt = at::empty({sparse ? rows : 0}, iopts);
  Tensor dense_gate = method == SURROGATE ? at::empty({rows, N}, fopts) : at::empty({0}, fopts);
  if (rows > 0 && N > 0)
    LZO_LAUNCH(events_forward_kernel<Current>, grid(B, 1), kThreads)(
        x_ptr.data_ptr<Ptr>(), x_col.data_ptr<int32_t>(), x_val.numel() ? x_val.data_ptr<float>() : nullptr, current,
        cur_all.defined() ? cur_all.data_ptr<float>() : nullptr, g, T, B, N, static_cast<float>(beta),
        static_cast<float>(theta), u.data_ptr<float>(), s.data_ptr<float>(), counts.data_ptr<float>(),
        spk_slot.data_ptr<int32_t>(), spk_cnt.data_ptr<Ptr>(), sparse ? act_slot.data_ptr<int32_t>() : nullptr,
        sparse ? act_slot_val.data_ptr<float>() : nullptr, sparse ? act_cnt.data_ptr<Ptr>() : nullptr,
        method == SURROGATE ? dense_gate.data_ptr<float>() : nullptr);
  LZO_LAUNCH_CHECK();
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

}  // namespace

ForwardOut lif_events_forward_cuda(
    const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val, const Tensor& weight, const Tensor& table,
    int64_t steps, double beta, double theta, int64_t method, int64_t sample_kind, int64_t surrogate_kind,
    double delta, double bth, double k, double band, double term_scale, int64_t samples, int64_t alpha,
    int64_t seed, int64_t update, int64_t layer, int64_t current_mode) {
  const char* op = "lzo::lif_events_forward";
  check_on_gpu(weight, op);
  check_events_forward_args(x_ptr, weight, table, steps, op);
  check_gate_args(table, method, sample_kind, surrogate_kind, samples, alpha, op);
  check_current_mode(current_mode, op);
  const int64_t rows = x_ptr.numel() - 1, Nin = weight.size(0), N = weight.size(1);
  check_list(x_ptr, x_col, x_val, rows, weight.size(0), weight, op, "x");
  check_cuda(table, weight, op, "table");
  check_bound(rows, N, op);
  LZO_GUARD(weight.device());
  const Tensor W = weight.contiguous(), tc = table.contiguous();
  const GateParams g = make_params(method, sample_kind, surrogate_kind, delta, bth, k, band, term_scale, samples,
                                   alpha, seed, update, layer, tc);
  Tensor cur_all;
  if (current_mode == 2) cur_all = at::mm(rows_from_events(x_ptr, x_col, x_val, rows, Nin, W.options()), W);
  return scan_layer(DenseCurrent{W.data_ptr<float>(), Nin, N}, x_ptr, x_col, x_val, cur_all, g, steps, N, beta, theta,
                    method, W.options());
}

Tensor readout_forward_cuda(const Tensor& s_ptr, const Tensor& s_col, const Tensor& w_out, int64_t steps,
                            double beta_out) {
  const char* op = "lzo::readout_forward";
  check_on_gpu(w_out, op);
  check_readout_forward_args(s_ptr, w_out, steps, op);
  const int64_t rows = s_ptr.numel() - 1, T = steps, B = rows / T, C = w_out.size(1);
  check_list(s_ptr, s_col, at::empty({0}, w_out.options()), rows, w_out.size(0), w_out, op, "s");
  LZO_GUARD(w_out.device());
  const Tensor W = w_out.contiguous();
  Tensor o = at::empty({T, B, C}, w_out.options());
  if (B * C > 0)
    LZO_LAUNCH(readout_forward_kernel, grid(B * C), kThreads)(
        s_ptr.data_ptr<Ptr>(), s_col.data_ptr<int32_t>(), W.data_ptr<float>(), o.data_ptr<float>(), T, B, W.size(0), C,
        static_cast<float>(beta_out), static_cast<float>(1.0 - beta_out));
  LZO_LAUNCH_CHECK();
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
  LZO_GUARD(w_out.device());
  const Tensor go = grad_o.contiguous(), W = w_out.contiguous();
  Tensor d_a = at::empty({rows, C}, w_out.options());
  const bool per_row = B * N * C * 4 <= kDeterministicBytes;
  if (!per_row) at::globalContext().alertNotDeterministic("lzo::readout_backward (atomicAdd into dW_out)");
  Tensor dw = per_row ? at::zeros({B, N, C}, w_out.options()) : at::zeros({N, C}, w_out.options());
  if (B * C > 0)
    LZO_LAUNCH(readout_backward_kernel, grid(B * C), kThreads)(
        go.data_ptr<float>(), s_ptr.data_ptr<Ptr>(), s_col.data_ptr<int32_t>(), d_a.data_ptr<float>(),
        dw.data_ptr<float>(), per_row, T, B, C, N, static_cast<float>(beta_out), static_cast<float>(1.0 - beta_out));
  LZO_LAUNCH_CHECK();
  Tensor dw_out = per_row ? dw.sum(0) : dw;
  Tensor g_act = at::empty({with_act ? act_col.numel() : 0}, w_out.options());  // every valid entry written
  if (with_act && act_col.numel() > 0)
    LZO_LAUNCH(readout_active_grad_kernel, grid(rows * kWarp), kThreads)(
        act_ptr.data_ptr<Ptr>(), act_col.data_ptr<int32_t>(), d_a.data_ptr<float>(), W.data_ptr<float>(),
        g_act.data_ptr<float>(), rows, C);
  LZO_LAUNCH_CHECK();
  return {dw_out, d_a, g_act};
}

std::tuple<Tensor, Tensor> lif_sparse_backward_cuda(
    const Tensor& grad_act, const Tensor& act_ptr, const Tensor& act_col, const Tensor& act_gate,
    const Tensor& count_grad, const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val, const Tensor& weight,
    double beta, int64_t steps, const Tensor& prev_ptr, const Tensor& prev_col) {
  const char* op = "lzo::lif_sparse_backward";
  check_on_gpu(weight, op);
  check_sparse_backward_args(grad_act, act_ptr, act_col, act_gate, count_grad, weight, weight.size(1), steps, op);
  const int64_t Nin = weight.size(0), N = weight.size(1);
  const int64_t rows = act_ptr.numel() - 1, T = steps, B = rows / T;
  const Tensor empty = at::empty({0}, weight.options());
  check_backward_lists(grad_act, act_ptr, act_col, act_gate, count_grad, x_ptr, x_col, x_val, prev_ptr, prev_col,
                       weight, N, Nin, Nin, op);
  const bool with_prev = prev_ptr.numel() > 0;
  LZO_GUARD(weight.device());
  const Tensor W = weight.contiguous();
  const Tensor e = active_errors(grad_act, act_ptr, act_col, act_gate, count_grad, T, N);
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
  // Few groups (a large dW^T in the deterministic mode: 1 group once N*Nin >= 2^26, so tiles = Nin/256
  // blocks) leave the GPU idle: split the neurons j into slices until about kTargetBlocks blocks run.
  const int64_t base_blocks = static_cast<int64_t>(tiles) * std::min<int64_t>(groups, g_max_grid);
  const int64_t slices = deterministic
      ? std::max<int64_t>(1, std::min<int64_t>({(kTargetBlocks + base_blocks - 1) / base_blocks, N, kMaxSlices}))
      : 1;
  if (B > 0 && Nin > 0 && act_col.numel() > 0)
    LZO_LAUNCH(sparse_dw_kernel, dim3(tiles, static_cast<unsigned>(std::min<int64_t>(groups, g_max_grid)),
                                      static_cast<unsigned>(slices)), kThreads)(act_ptr.data_ptr<Ptr>(), act_col.data_ptr<int32_t>(), e.data_ptr<float>(),
                                   x_ptr.data_ptr<Ptr>(), x_col.data_ptr<int32_t>(),
                                   x_val.numel() ? x_val.data_ptr<float>() : nullptr, dwt.data_ptr<float>(), T, B,
                                   Nin, N, static_cast<float>(beta), group_rows, groups, !deterministic,
                                   deterministic);
  LZO_LAUNCH_CHECK();
  Tensor dw = (deterministic ? dwt.sum(0) : dwt).t().contiguous();
  if (!with_prev) return {dw, empty};
  Tensor g_prev = at::empty({prev_col.numel()}, weight.options());  // every valid entry written
  const Tensor wt = W.t().contiguous();  // [N, N_in]
  if (B > 0 && Nin > 0 && prev_col.numel() > 0)
    LZO_LAUNCH(sparse_dx_kernel, dim3(tiles, static_cast<unsigned>(std::min<int64_t>(B, g_max_grid))), kThreads)(
        act_ptr.data_ptr<Ptr>(), act_col.data_ptr<int32_t>(), e.data_ptr<float>(), wt.data_ptr<float>(),
        prev_ptr.data_ptr<Ptr>(), prev_col.data_ptr<int32_t>(), g_prev.data_ptr<float>(), T, B, Nin,
        static_cast<float>(beta));
  LZO_LAUNCH_CHECK();
  return {dw, g_prev};
}

std::tuple<Tensor, Tensor> lif_dense_backward_cuda(const Tensor& grad, const Tensor& gate_t, const Tensor& count_grad,
                                                   const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val,
                                                   const Tensor& weight, double beta, int64_t steps, bool input_grad,
                                                   int64_t current_mode) {
  const char* op = "lzo::lif_dense_backward";
  check_on_gpu(weight, op);
  check_dense_backward_args(grad, gate_t, count_grad, weight, weight.size(1), steps, op);
  const int64_t Nin = weight.size(0), rows = grad.size(0);
  check_dense_backward_lists(grad, gate_t, count_grad, x_ptr, x_col, x_val, weight, Nin, op);
  (void)current_mode;  // the GPU always forms dW by one GEMM
  LZO_GUARD(weight.device());
  const Tensor W = weight.contiguous();
  const Tensor ghat = dense_ghat(grad, gate_t, count_grad, steps, beta);
  Tensor dw = at::mm(rows_from_events(x_ptr, x_col, x_val, rows, Nin, weight.options()).t(), ghat);
  Tensor dx = input_grad ? at::mm(ghat, W.t()) : at::empty({0}, weight.options());
  return {dw, dx};
}

// ---- Convolutional layers (issue 22): the conv ops of cpu_conv.cpp on the GPU. The forward is the dense layers'
// scan with the current gathered per output (ConvCurrent) or, forced, one cuDNN convolution. The sparse backward
// forms the input traces as dense rows (one scan), then adds C_in*K*K taps per active entry into dW partials
// (conv_dw_kernel, one writer per address: deterministic) and into the input gradient rows (conv_dx_scatter_kernel),
// whose reverse scan is read at the previous layer's entries. The dense rule and pooling as in the kernels' comments.
constexpr int64_t kConvDwWarps = 4096;  // the sparse conv dW's parts: about 30 warps per SM of an H100/H200

ForwardOut conv_lif_forward_cuda(
    const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val, const Tensor& weight, c10::IntArrayRef shape,
    const Tensor& table, int64_t steps, double beta, double theta, int64_t method, int64_t sample_kind,
    int64_t surrogate_kind, double delta, double bth, double k, double band, double term_scale, int64_t samples,
    int64_t alpha, int64_t seed, int64_t update, int64_t layer, int64_t current_mode) {
  const char* op = "lzo::conv_lif_forward";
  check_on_gpu(weight, op);
  check_events_forward_args(x_ptr, weight, table, steps, op);
  check_gate_args(table, method, sample_kind, surrogate_kind, samples, alpha, op);
  check_current_mode(current_mode, op);
  const Tensor W = weight.contiguous();
  const ConvGeom cg = conv_geom(shape, W, op);
  const int64_t rows = x_ptr.numel() - 1, nin = cg.units_in() + (cg.bias ? 1 : 0), N = cg.units_out();
  check_list(x_ptr, x_col, x_val, rows, nin, W, op, "x");
  check_cuda(table, W, op, "table");
  check_bound(rows, N, op);
  LZO_GUARD(W.device());
  const Tensor tc = table.contiguous();
  const GateParams g = make_params(method, sample_kind, surrogate_kind, delta, bth, k, band, term_scale, samples,
                                   alpha, seed, update, layer, tc);
  Tensor cur_all;
  if (current_mode == 2) cur_all = conv_current_rows(rows_from_events(x_ptr, x_col, x_val, rows, nin, W.options()), W, cg);
  const Tensor wf = conv_taps_last(W, cg), bias = cg.bias ? conv_bias(W, cg) : Tensor();
  return scan_layer(ConvCurrent{cg, wf.data_ptr<float>(), cg.bias ? bias.data_ptr<float>() : nullptr}, x_ptr, x_col,
                    x_val, cur_all, g, steps, N, beta, theta, method, W.options());
}

std::tuple<Tensor, Tensor> conv_sparse_backward_cuda(
    const Tensor& grad_act, const Tensor& act_ptr, const Tensor& act_col, const Tensor& act_gate,
    const Tensor& count_grad, const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val, const Tensor& weight,
    c10::IntArrayRef shape, double beta, int64_t steps, const Tensor& prev_ptr, const Tensor& prev_col) {
  const char* op = "lzo::conv_sparse_backward";
  check_on_gpu(weight, op);
  const Tensor W = weight.contiguous();
  const ConvGeom cg = conv_geom(shape, W, op);
  const int64_t N = cg.units_out(), units = cg.units_in(), nin = units + (cg.bias ? 1 : 0);
  check_sparse_backward_args(grad_act, act_ptr, act_col, act_gate, count_grad, W, N, steps, op);
  const int64_t rows = act_ptr.numel() - 1, T = steps, B = rows / T;
  const Tensor empty = at::empty({0}, W.options());
  check_backward_lists(grad_act, act_ptr, act_col, act_gate, count_grad, x_ptr, x_col, x_val, prev_ptr, prev_col, W,
                       N, nin, units, op);
  constexpr int64_t k31 = int64_t(1) << 31;  // the conv kernels' 32-bit tap and offset arithmetic (TapWalk)
  TORCH_CHECK(cg.cout * cg.weight_cols() < k31 && nin < k31 && N < k31, op,
              ": C_out*(C_in*K*K + 1), C_in*H*W + 1 and H_o*W_o*C_out must stay below 2^31");
  const bool with_prev = prev_ptr.numel() > 0;
  LZO_GUARD(W.device());
  const Tensor e = active_errors(grad_act, act_ptr, act_col, act_gate, count_grad, T, N);
  Tensor xbar = rows_from_events(x_ptr, x_col, x_val, rows, nin, W.options());
  if (B * nin > 0)
    LZO_LAUNCH(scan_rows_kernel, grid(B * nin), kThreads)(xbar.data_ptr<float>(), T, B, nin,
                                                          static_cast<float>(beta), false);
  LZO_LAUNCH_CHECK();
  const int64_t part_bytes = cg.cout * cg.weight_cols() * 4;
  // no more parts than the grid's warps (a capped grid, in the tests, makes each part take several rows)
  const int64_t warps = g_max_grid * (kThreads / kWarp);
  const int64_t want = std::max<int64_t>(1, std::min({rows, kConvDwWarps, warps, kDeterministicBytes / part_bytes}));
  const int64_t rows_per = std::max<int64_t>(1, (rows + want - 1) / want);
  const int64_t parts = std::max<int64_t>(1, (rows + rows_per - 1) / rows_per);
  Tensor dw_parts = at::zeros({parts, cg.cout, cg.weight_cols()}, W.options());
  if (rows > 0 && act_col.numel() > 0)
    LZO_LAUNCH(conv_dw_kernel, grid(parts * kWarp), kThreads)(
        act_ptr.data_ptr<Ptr>(), act_col.data_ptr<int32_t>(), e.data_ptr<float>(), xbar.data_ptr<float>(),
        dw_parts.data_ptr<float>(), cg, rows, rows_per, parts);
  LZO_LAUNCH_CHECK();
  Tensor dw = dw_parts.sum(0);
  if (!with_prev) return {dw, empty};
  xbar = Tensor();  // its memory serves the input gradient rows
  Tensor dy = at::zeros({rows, units}, W.options());
  if (rows > 0 && act_col.numel() > 0)
    LZO_LAUNCH(conv_dx_scatter_kernel, grid(rows * kWarp), kThreads)(
        act_ptr.data_ptr<Ptr>(), act_col.data_ptr<int32_t>(), e.data_ptr<float>(), W.data_ptr<float>(),
        dy.data_ptr<float>(), cg, rows);
  LZO_LAUNCH_CHECK();
  if (B * units > 0)
    LZO_LAUNCH(scan_rows_kernel, grid(B * units), kThreads)(dy.data_ptr<float>(), T, B, units,
                                                            static_cast<float>(beta), true);
  LZO_LAUNCH_CHECK();
  Tensor g_prev = at::empty({prev_col.numel()}, W.options());  // every valid entry written
  if (rows > 0 && prev_col.numel() > 0)
    LZO_LAUNCH(gather_rows_kernel, grid(rows * kWarp), kThreads)(
        prev_ptr.data_ptr<Ptr>(), prev_col.data_ptr<int32_t>(), dy.data_ptr<float>(), g_prev.data_ptr<float>(), rows,
        units);
  LZO_LAUNCH_CHECK();
  return {dw, g_prev};
}

// The dense rule: ghat by the reverse scan, dW by cuDNN's weight backward, dx by a transposed convolution.
std::tuple<Tensor, Tensor> conv_dense_backward_cuda(const Tensor& grad, const Tensor& gate, const Tensor& count_grad,
                                                    const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val,
                                                    const Tensor& weight, c10::IntArrayRef shape, double beta,
                                                    int64_t steps, bool input_grad, int64_t current_mode) {
  const char* op = "lzo::conv_dense_backward";
  check_on_gpu(weight, op);
  const Tensor W = weight.contiguous();
  const ConvGeom cg = conv_geom(shape, W, op);
  check_dense_backward_args(grad, gate, count_grad, W, cg.units_out(), steps, op);
  const int64_t rows = grad.size(0), nin = cg.units_in() + (cg.bias ? 1 : 0);
  check_dense_backward_lists(grad, gate, count_grad, x_ptr, x_col, x_val, W, nin, op);
  (void)current_mode;  // the GPU always forms dW by the convolution's weight backward
  LZO_GUARD(W.device());
  const Tensor ghat = dense_ghat(grad, gate, count_grad, steps, beta);
  const Tensor dw = conv_gemm_dw(ghat, rows_from_events(x_ptr, x_col, x_val, rows, nin, W.options()), W, cg);
  return {dw, input_grad ? conv_input_grad(ghat, W, cg) : at::empty({0}, W.options())};
}

// Sum pooling of a list: dense pooled rows (pool_rows_kernel), then compacted as to_events does, into a list sized
// by its bound: min(the input's length, since pooling never adds events; rows * pooled width, since a pooled row
// holds each unit once). At 2x2 pooling the second is 4x smaller (N-MNIST's conv layer at B = 32: 104 MB for
// the columns instead of the input's 415 MB).
std::tuple<Tensor, Tensor, Tensor> pool_events_cuda(const Tensor& ptr, const Tensor& col, const Tensor& val,
                                                    c10::IntArrayRef frame, int64_t pool) {
  const char* op = "lzo::pool_events";
  check_on_gpu(ptr, op);
  check_pool_args(frame, pool, op);
  const int64_t C = frame[0], H = frame[1], W = frame[2], rows = ptr.numel() - 1;
  const int64_t width = (H / pool) * (W / pool) * C;
  check_list(ptr, col, val, rows, C * H * W, ptr, op, "x");
  check_bound(rows, width, op);
  LZO_GUARD(ptr.device());
  const auto fopts = ptr.options().dtype(at::kFloat);
  Tensor dense = at::zeros({rows, width}, fopts);
  if (rows > 0)
    LZO_LAUNCH(pool_rows_kernel, grid(rows), kThreads)(ptr.data_ptr<Ptr>(), col.data_ptr<int32_t>(),
                                                       val.numel() ? val.data_ptr<float>() : nullptr,
                                                       dense.data_ptr<float>(), rows, C, H, W, pool);
  LZO_LAUNCH_CHECK();
  return list_of_nonzeros(dense, 1, rows, width, std::min(col.numel(), rows * width));
}

// The grid cap of every launch (at most 65535, the default); returns the previous cap. Tests lower it
// so that each grid-stride loop takes several passes.
int64_t set_cuda_max_grid(int64_t blocks) {
  TORCH_CHECK(blocks >= 1 && blocks <= 65535, "lzo::set_cuda_max_grid: blocks must lie in [1, 65535], got ", blocks);
  const int64_t old = g_max_grid;
  g_max_grid = blocks;
  return old;
}

// Whether the lists handed to this thread's ops were made by the extension itself (the device-side validation is
// then skipped; the host-side shape checks stay); returns the previous setting. Thread-local: the autograd engine
// runs a CUDA backward in its own thread, which says so itself (lzo_bench.ops.library.own_lists).
bool own_lists(bool own) {
  const bool old = t_own_lists;
  t_own_lists = own;
  return old;
}

#ifdef LZO_CUDA_SIM
// The simulated ops: the event ops' schemas (lif_common.h) under their own namespace, on CPU tensors.
TORCH_LIBRARY(lzo_sim, m) {
  LZO_EVENT_OP_SCHEMAS(m);
  LZO_CONV_OP_SCHEMAS(m);
  m.def("set_cuda_max_grid(int blocks) -> int", &set_cuda_max_grid);
  m.def("own_lists(bool own) -> bool", &own_lists);
}
TORCH_LIBRARY_IMPL(lzo_sim, CPU, m) {
#else
TORCH_LIBRARY_FRAGMENT(lzo, m) {
  m.def("set_cuda_max_grid(int blocks) -> int", &set_cuda_max_grid);
  m.def("own_lists(bool own) -> bool", &own_lists);
}

TORCH_LIBRARY_IMPL(lzo, CUDA, m) {
#endif
  m.impl("to_events", &to_events_cuda);
  m.impl("lif_events_forward", &lif_events_forward_cuda);
  m.impl("readout_forward", &readout_forward_cuda);
  m.impl("readout_backward", &readout_backward_cuda);
  m.impl("lif_sparse_backward", &lif_sparse_backward_cuda);
  m.impl("lif_dense_backward", &lif_dense_backward_cuda);
  m.impl("conv_lif_forward", &conv_lif_forward_cuda);
  m.impl("conv_sparse_backward", &conv_sparse_backward_cuda);
  m.impl("conv_dense_backward", &conv_dense_backward_cuda);
  m.impl("pool_events", &pool_events_cuda);
}

}  // namespace lzo
