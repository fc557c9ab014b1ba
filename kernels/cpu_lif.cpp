// The fully connected layers' CPU ops: lif_events_forward, lif_sparse_backward and lif_dense_backward (the
// bodies of cpu_layer_map.h with a DenseMap), and the leaky readout's readout_forward / readout_backward.
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "cpu_layer_map.h"
#include "cpu_lists.h"
#include "lif_common.h"

namespace lzo {

using at::Tensor;
using namespace cpu;

// -> (spike_ptr, spike_col, counts [B, N], active_ptr, active_col, active_gate, dense_gate)
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lif_events_forward_cpu(
    const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val, const Tensor& weight, const Tensor& table,
    int64_t steps, double beta, double theta, int64_t method, int64_t sample_kind, int64_t surrogate_kind,
    double delta, double bth, double k, double band, double term_scale, int64_t samples, int64_t alpha,
    int64_t seed, int64_t update, int64_t layer, int64_t current_mode) {
  const char* op = "lzo::lif_events_forward";
  check_events_forward_args(x_ptr, weight, table, steps, op);
  TORCH_CHECK(weight.device().is_cpu(), op, ": CPU kernel called with weight on ", weight.device());
  check_gate_args(table, method, sample_kind, surrogate_kind, samples, alpha, op);
  check_current_mode(current_mode, op);
  const int64_t rows = x_ptr.numel() - 1, T = steps, B = rows / T;
  const int64_t Nin = weight.size(0), N = weight.size(1);
  TORCH_CHECK(N < (int64_t(1) << 31) && B < (int64_t(1) << 31) && T < (int64_t(1) << 31), op, ": layer too large");
  check_events(x_ptr, x_col, x_val, rows, op, "x");
  check_columns(x_col, Nin, op, "x");
  const Tensor W = weight.contiguous();
  const Tensor tc = table.contiguous();
  const GateParams g = make_params(method, sample_kind, surrogate_kind, delta, bth, k, band, term_scale, samples,
                                   alpha, seed, update, layer, tc);
  const EventView ev = view(x_ptr, x_col, x_val);
  Tensor cur_all;
  if (use_gemm(current_mode, x_col.numel(), rows, Nin)) cur_all = at::mm(rows_from_events(ev, rows, Nin, weight.options()), W);
  return forward_rows(DenseMap{Nin, N, W.data_ptr<float>()}, ev, cur_all, rows, T, g, beta, theta, method,
                      weight.options());
}

// o [T, B, C] of the leaky readout driven by the spike events.
Tensor readout_forward_cpu(const Tensor& s_ptr, const Tensor& s_col, const Tensor& w_out, int64_t steps,
                           double beta_out) {
  const char* op = "lzo::readout_forward";
  check_readout_forward_args(s_ptr, w_out, steps, op);
  const int64_t rows = s_ptr.numel() - 1, T = steps, B = rows / T, C = w_out.size(1);
  const Tensor empty = at::empty({0}, w_out.options());
  check_events(s_ptr, s_col, empty, rows, op, "s");
  check_columns(s_col, w_out.size(0), op, "s");
  const Tensor W = w_out.contiguous();
  const float* wp = W.data_ptr<float>();
  const EventView ev = view(s_ptr, s_col, empty);
  Tensor o = at::empty({T, B, C}, w_out.options());
  float* op_ = o.data_ptr<float>();
  const float bo = static_cast<float>(beta_out), omb = static_cast<float>(1.0 - beta_out);
  at::parallel_for(0, B, 8, [&](int64_t b0, int64_t b1) {
    std::vector<float> a(C), acc(C);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t r = b * T + t;
        event_current(ev, r, wp, C, a.data());
        float* dst = op_ + (t * B + b) * C;
        for (int64_t c = 0; c < C; ++c) {
          acc[c] = bo * acc[c] + omb * a[c];
          dst[c] = acc[c];
        }
      }
    }
  });
  return o;
}

// -> (dW_out [N, C], d_a [B*T, C], dL/ds at the active entries [nnz_act])
std::tuple<Tensor, Tensor, Tensor> readout_backward_cpu(const Tensor& grad_o, const Tensor& s_ptr,
                                                        const Tensor& s_col, const Tensor& w_out, double beta_out,
                                                        const Tensor& act_ptr, const Tensor& act_col) {
  const char* op = "lzo::readout_backward";
  check_readout_backward_args(grad_o, w_out, op);
  const int64_t T = grad_o.size(0), B = grad_o.size(1), C = grad_o.size(2), N = w_out.size(0), rows = T * B;
  const Tensor empty = at::empty({0}, w_out.options());
  check_events(s_ptr, s_col, empty, rows, op, "s");
  const bool with_act = act_ptr.numel() > 0;
  if (with_act) check_events(act_ptr, act_col, empty, rows, op, "active");
  const Tensor go = grad_o.contiguous(), W = w_out.contiguous();
  const float* gp = go.data_ptr<float>();
  const float* wp = W.data_ptr<float>();
  const EventView sv = view(s_ptr, s_col, empty);
  const EventView av = with_act ? view(act_ptr, act_col, empty) : EventView{nullptr, nullptr, nullptr};
  Tensor d_a = at::empty({rows, C}, w_out.options());
  Tensor g_act = at::empty({with_act ? act_col.numel() : 0}, w_out.options());
  float* dap = d_a.data_ptr<float>();
  float* gap = g_act.data_ptr<float>();
  const float bo = static_cast<float>(beta_out), omb = static_cast<float>(1.0 - beta_out);
  std::vector<std::vector<float>> partial(static_cast<size_t>(at::get_num_threads()));
  at::parallel_for(0, B, 8, [&](int64_t b0, int64_t b1) {
    auto& dw = partial[static_cast<size_t>(at::get_thread_num())];
    if (dw.empty()) dw.assign(static_cast<size_t>(N * C), 0.0f);
    std::vector<float> acc(C);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t r = b * T + t;
        const float* src = gp + (t * B + b) * C;
        float* da = dap + r * C;
        for (int64_t c = 0; c < C; ++c) {
          acc[c] = src[c] + bo * acc[c];
          da[c] = omb * acc[c];
        }
        for (int64_t q = sv.ptr[r]; q < sv.ptr[r + 1]; ++q) {
          float* dst = dw.data() + static_cast<int64_t>(sv.col[q]) * C;
          for (int64_t c = 0; c < C; ++c) dst[c] += da[c];
        }
        if (!with_act) continue;
        for (int64_t q = av.ptr[r]; q < av.ptr[r + 1]; ++q) {
          const float* w = wp + static_cast<int64_t>(av.col[q]) * C;
          float sum = 0.0f;
          for (int64_t c = 0; c < C; ++c) sum += da[c] * w[c];
          gap[q] = sum;
        }
      }
    }
  });
  Tensor dw_out = at::zeros({N, C}, w_out.options());
  float* dwp = dw_out.data_ptr<float>();
  for (const auto& p : partial)
    if (!p.empty())
      for (int64_t q = 0; q < N * C; ++q) dwp[q] += p[static_cast<size_t>(q)];
  return {dw_out, d_a, g_act};
}

// -> (dW [N_in, N], dL/ds of the previous layer at its active entries [nnz_prev])
std::tuple<Tensor, Tensor> lif_sparse_backward_cpu(
    const Tensor& grad_act, const Tensor& act_ptr, const Tensor& act_col, const Tensor& act_gate,
    const Tensor& count_grad, const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val, const Tensor& weight,
    double beta, int64_t steps, const Tensor& prev_ptr, const Tensor& prev_col) {
  const char* op = "lzo::lif_sparse_backward";
  check_sparse_backward_args(grad_act, act_ptr, act_col, act_gate, count_grad, weight, weight.size(1), steps, op);
  const int64_t Nin = weight.size(0), N = weight.size(1);
  const Tensor W = weight.contiguous();
  const Tensor wt = prev_ptr.numel() > 0 ? W.t().contiguous() : Tensor();  // [N, N_in]
  const DenseMap map{Nin, N, W.data_ptr<float>(), wt.defined() ? wt.data_ptr<float>() : nullptr};
  auto [dwt, g_prev] = sparse_backward_rows(map, grad_act, act_ptr, act_col, act_gate, count_grad, x_ptr, x_col,
                                            x_val, beta, steps, prev_ptr, prev_col, weight.options(), op);
  return {dwt.view({N, Nin}).t().contiguous(), g_prev};
}

// The dense rule. grad [B*T, N] (rows b*T + t), gate [B*T, N] -> (dW [N_in, N], dx [B*T, N_in] or empty)
std::tuple<Tensor, Tensor> lif_dense_backward_cpu(const Tensor& grad, const Tensor& gate, const Tensor& count_grad,
                                                  const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val,
                                                  const Tensor& weight, double beta, int64_t steps, bool input_grad,
                                                  int64_t current_mode) {
  const char* op = "lzo::lif_dense_backward";
  check_dense_backward_args(grad, gate, count_grad, weight, weight.size(1), steps, op);
  const int64_t Nin = weight.size(0), N = weight.size(1);
  const int64_t rows = grad.size(0);
  check_events(x_ptr, x_col, x_val, rows, op, "x");
  const Tensor W = weight.contiguous();
  const Tensor ghat = dense_ghat(grad, gate, count_grad, beta, steps);
  const EventView xv = view(x_ptr, x_col, x_val);
  Tensor dw;
  if (use_gemm(current_mode, x_col.numel(), rows, Nin)) {
    dw = at::mm(rows_from_events(xv, rows, Nin, weight.options()).t(), ghat);
  } else {
    dw = event_dw(DenseMap{Nin, N, W.data_ptr<float>()}, xv, ghat, steps, weight.options()).view({Nin, N});
  }
  Tensor dx = input_grad ? at::mm(ghat, W.t()) : at::empty({0}, weight.options());
  return {dw, dx};
}

TORCH_LIBRARY_IMPL(lzo, CPU, m) {
  m.impl("lif_events_forward", &lif_events_forward_cpu);
  m.impl("readout_forward", &readout_forward_cpu);
  m.impl("readout_backward", &readout_backward_cpu);
  m.impl("lif_sparse_backward", &lif_sparse_backward_cpu);
  m.impl("lif_dense_backward", &lif_dense_backward_cpu);
}

}  // namespace lzo
