// LIF layer ops (namespace lzo): schema and CPU kernels.
//
// lif_forward  x [T,B,N_in], W [N_in,N] -> spikes [T,B,N] and what the backward needs:
//   dense rule (method 0):  active_gate = gamma for every (t,b,j) [T,B,N], saved = empty (x is kept)
//   sparse rules (1, 2):    active_idx = flat (t*B + b)*N + j of non-zero gates (sorted),
//                           active_gate = their gamma, saved = input trace xbar [T,B,N_in],
//                           xbar[t] = beta*xbar[t-1] + x[t]  (DESIGN.md section 5)
//   method -1:              spikes only (inference)
// lif_backward  grad_spikes -> (grad_x, grad_W), with e = grad_spikes * gamma:
//   dense:  ghat[t] = e[t] + beta*ghat[t+1];  dW = x^T ghat;  dx = ghat W^T
//   sparse: dW[:, j] += e * xbar[t,b,:] over active entries (cost nnz*N_in);
//           dx only at the previous layer's active (t,b,i): sum over entries t' >= t of
//           beta^(t'-t) e W[i,j], kept as one lazily decayed vector per batch row.
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "lif_common.h"

namespace lzo {

using at::Tensor;

namespace {

constexpr int64_t kRowGrain = 256;

std::vector<float> beta_powers(double beta, int64_t T) {
  std::vector<float> p(static_cast<size_t>(T + 1));
  for (int64_t k = 0; k <= T; ++k) p[k] = static_cast<float>(std::pow(beta, static_cast<double>(k)));
  return p;
}

// Forward scan over time for all rows (b, j); rows are contiguous in memory at each t.
void scan_cpu(const float* cur, float* spikes, float* gates, const GateParams& g, int64_t T,
              int64_t B, int64_t N, float beta, float theta) {
  const int64_t rows = B * N;
  at::parallel_for(0, rows, kRowGrain, [&](int64_t r0, int64_t r1) {
    std::vector<float> u(r1 - r0, 0.0f), s(r1 - r0, 0.0f);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t base = t * rows;
      for (int64_t r = r0; r < r1; ++r) {
        float* ur = &u[r - r0];
        float v = lif_step(ur, cur[base + r], s[r - r0], beta, theta);
        float spike = v > 0.0f ? 1.0f : 0.0f;
        s[r - r0] = spike;
        spikes[base + r] = spike;
        if (gates) gates[base + r] = gate(g, v, static_cast<int>(t), static_cast<int>(r / N),
                                          static_cast<int>(r % N));
      }
    }
  });
}

// xbar[t] = beta * xbar[t-1] + x[t]
Tensor input_trace_cpu(const Tensor& x, float beta) {
  auto trace = at::empty_like(x);
  const int64_t T = x.size(0), rows = x.size(1) * x.size(2);
  const float* xp = x.data_ptr<float>();
  float* tp = trace.data_ptr<float>();
  at::parallel_for(0, rows, kRowGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) tp[r] = xp[r];
    for (int64_t t = 1; t < T; ++t) {
      const float* prev = tp + (t - 1) * rows;
      float* cur = tp + t * rows;
      const float* xt = xp + t * rows;
      for (int64_t r = r0; r < r1; ++r) cur[r] = beta * prev[r] + xt[r];
    }
  });
  return trace;
}

// ghat[t] = e[t] + beta * ghat[t+1], in place.
void reverse_scan_cpu(float* e, int64_t T, int64_t rows, float beta) {
  at::parallel_for(0, rows, kRowGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t t = T - 2; t >= 0; --t) {
      float* cur = e + t * rows;
      const float* next = e + (t + 1) * rows;
      for (int64_t r = r0; r < r1; ++r) cur[r] = cur[r] + beta * next[r];
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> lif_forward_cpu(
    const Tensor& x, const Tensor& weight, const Tensor& table, const c10::optional<Tensor>& prev_idx,
    double beta, double theta, int64_t method, int64_t sample_kind, int64_t surrogate_kind,
    double delta, double bth, double k, double band, double term_scale, int64_t samples,
    int64_t alpha, int64_t seed, int64_t update, int64_t layer) {
  (void)prev_idx;  // kept by the autograd registration for the backward's input gradient
  const auto s = check_forward_args(x, weight, table, method, sample_kind, surrogate_kind, samples, alpha);
  TORCH_CHECK(x.device().is_cpu(), "lzo::lif_forward: CPU kernel called with x on ", x.device());
  const Tensor xc = x.contiguous();
  const Tensor tc = table.contiguous();
  const Tensor current = at::matmul(xc.view({s.T * s.B, s.Nin}), weight.contiguous()).view({s.T, s.B, s.N});
  Tensor spikes = at::empty({s.T, s.B, s.N}, x.options());
  const GateParams g = make_params(method, sample_kind, surrogate_kind, delta, bth, k, band,
                                   term_scale, samples, alpha, seed, update, layer, tc);
  auto empty_f = at::empty({0}, x.options());
  auto empty_i = at::empty({0}, x.options().dtype(at::kLong));
  if (method < 0) {
    scan_cpu(current.data_ptr<float>(), spikes.data_ptr<float>(), nullptr, g, s.T, s.B, s.N,
             static_cast<float>(beta), static_cast<float>(theta));
    return {spikes, empty_i, empty_f, at::empty({0}, x.options())};  // outputs must not alias
  }
  Tensor gates = at::empty({s.T, s.B, s.N}, x.options());
  scan_cpu(current.data_ptr<float>(), spikes.data_ptr<float>(), gates.data_ptr<float>(), g, s.T,
           s.B, s.N, static_cast<float>(beta), static_cast<float>(theta));
  if (method == SURROGATE) return {spikes, empty_i, gates, empty_f};
  auto flat = gates.view({-1});
  Tensor idx = at::nonzero(flat).view({-1});
  Tensor vals = flat.index_select(0, idx);
  return {spikes, idx, vals, input_trace_cpu(xc, static_cast<float>(beta))};
}

namespace {

// dW = sum over active entries of e * xbar[t,b,:] into column j; per-thread dW^T buffers.
Tensor sparse_weight_grad_cpu(const Tensor& idx, const Tensor& e, const Tensor& trace, int64_t N,
                              int64_t Nin) {
  const int64_t nnz = idx.size(0);
  const int64_t* ip = idx.data_ptr<int64_t>();
  const float* ep = e.data_ptr<float>();
  const float* xp = trace.data_ptr<float>();
  std::vector<std::vector<float>> partial(static_cast<size_t>(at::get_num_threads()));
  at::parallel_for(0, nnz, 64, [&](int64_t k0, int64_t k1) {
    auto& acc = partial[static_cast<size_t>(at::get_thread_num())];
    if (acc.empty()) acc.assign(static_cast<size_t>(N * Nin), 0.0f);
    for (int64_t kk = k0; kk < k1; ++kk) {
      const int64_t row = ip[kk] / N, j = ip[kk] % N;  // row = t*B + b
      const float ev = ep[kk];
      const float* xr = xp + row * Nin;
      float* dst = acc.data() + j * Nin;
      for (int64_t i = 0; i < Nin; ++i) dst[i] += ev * xr[i];
    }
  });
  Tensor dwt = at::zeros({N, Nin}, trace.options());
  float* dwp = dwt.data_ptr<float>();
  for (const auto& acc : partial) {
    if (acc.empty()) continue;
    for (int64_t q = 0; q < N * Nin; ++q) dwp[q] += acc[static_cast<size_t>(q)];
  }
  return dwt.t().contiguous();
}

// dx[t,b,i] = sum_{entries (t',b,j), t' >= t} beta^(t'-t) e W[i,j], only at prev (t,b,i).
// Per batch row, h = sum of e W[:,j] over the entries seen so far, decayed lazily by beta^dt.
Tensor sparse_input_grad_cpu(const Tensor& idx, const Tensor& e, const Tensor& prev_idx,
                             const Tensor& weight, double beta, int64_t T, int64_t B, int64_t N) {
  const int64_t Nin = weight.size(0);
  Tensor dx = at::zeros({T, B, Nin}, e.options());
  const Tensor ptr = row_pointers(idx, T * B, N);
  const Tensor pptr = row_pointers(prev_idx, T * B, Nin);
  const int64_t* ip = idx.data_ptr<int64_t>();
  const float* ep = e.data_ptr<float>();
  const int64_t* rp = ptr.data_ptr<int64_t>();
  const int64_t* pp = pptr.data_ptr<int64_t>();
  const int64_t* pi = prev_idx.data_ptr<int64_t>();
  const Tensor wt = weight.t().contiguous();  // [N, N_in]
  const float* wtp = wt.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  const std::vector<float> pw = beta_powers(beta, T);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> h(static_cast<size_t>(Nin));
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(h.begin(), h.end(), 0.0f);
      int64_t th = -1;  // time of the latest entry folded into h; -1: none yet
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t row = t * B + b;
        if (rp[row + 1] > rp[row]) {
          if (th >= 0) {
            const float f = pw[th - t];
            for (int64_t i = 0; i < Nin; ++i) h[i] *= f;
          }
          for (int64_t kk = rp[row]; kk < rp[row + 1]; ++kk) {
            const float ev = ep[kk];
            const float* wr = wtp + (ip[kk] % N) * Nin;
            for (int64_t i = 0; i < Nin; ++i) h[i] += ev * wr[i];
          }
          th = t;
        }
        if (th < 0) continue;
        const float f = pw[th - t];
        for (int64_t q = pp[row]; q < pp[row + 1]; ++q) {
          const int64_t i = pi[q] % Nin;
          dxp[row * Nin + i] = h[i] * f;
        }
      }
    }
  });
  return dx;
}

// ghat = reverse-filtered e (dense [T,B,N]); e given densely or as active entries.
Tensor dense_ghat_cpu(const Tensor& e_dense, double beta) {
  Tensor ghat = e_dense.contiguous().clone();
  reverse_scan_cpu(ghat.data_ptr<float>(), ghat.size(0), ghat.size(1) * ghat.size(2),
                   static_cast<float>(beta));
  return ghat;
}

}  // namespace

std::tuple<Tensor, Tensor> lif_backward_cpu(const Tensor& grad_spikes, const Tensor& saved,
                                            const Tensor& weight, const Tensor& idx,
                                            const Tensor& gate, const c10::optional<Tensor>& prev_idx,
                                            double beta, int64_t method, bool input_grad) {
  check_backward_args(grad_spikes, saved, weight, idx, gate, method);
  TORCH_CHECK(grad_spikes.device().is_cpu(), "lzo::lif_backward: CPU kernel called with ",
              grad_spikes.device());
  const int64_t T = grad_spikes.size(0), B = grad_spikes.size(1), N = grad_spikes.size(2);
  const int64_t Nin = weight.size(0);
  const Tensor gs = grad_spikes.contiguous();
  const Tensor w = weight.contiguous();
  const Tensor sv = saved.contiguous();
  const Tensor empty = at::empty({0}, gs.options());

  if (method == SURROGATE) {  // the fused dense baseline: sv is x
    const Tensor ghat = dense_ghat_cpu(gs * gate, beta).view({T * B, N});
    const Tensor dw = at::matmul(sv.view({T * B, Nin}).t(), ghat);
    return {input_grad ? at::matmul(ghat, w.t()).view({T, B, Nin}) : empty, dw};
  }
  const Tensor ic = idx.contiguous();
  const Tensor e = gs.view({-1}).index_select(0, ic) * gate.contiguous();  // e at the active entries
  const Tensor dw = sparse_weight_grad_cpu(ic, e, sv, N, Nin);
  if (!input_grad) return {empty, dw};
  if (prev_idx.has_value()) {
    TORCH_CHECK(prev_idx->scalar_type() == at::kLong, "lzo::lif_backward: prev_idx must be int64");
    return {sparse_input_grad_cpu(ic, e, prev_idx->contiguous(), w, beta, T, B, N), dw};
  }
  // no active list of the previous layer: the input gradient everywhere
  Tensor e_dense = at::zeros({T * B * N}, gs.options());
  e_dense.index_put_({ic}, e);
  const Tensor ghat = dense_ghat_cpu(e_dense.view({T, B, N}), beta).view({T * B, N});
  return {at::matmul(ghat, w.t()).view({T, B, Nin}), dw};
}

TORCH_LIBRARY(lzo, m) {
  m.def(
      "lif_forward(Tensor x, Tensor weight, Tensor table, Tensor? prev_idx, float beta, float theta, "
      "int method, int sample_kind, int surrogate_kind, float delta, float bth, float k, float band, "
      "float term_scale, int samples, int alpha, int seed, int update, int layer) "
      "-> (Tensor spikes, Tensor active_idx, Tensor active_gate, Tensor saved)");
  m.def(
      "lif_backward(Tensor grad_spikes, Tensor saved, Tensor weight, Tensor active_idx, "
      "Tensor active_gate, Tensor? prev_idx, float beta, int method, bool input_grad) "
      "-> (Tensor grad_x, Tensor grad_weight)");
}

TORCH_LIBRARY_IMPL(lzo, CPU, m) {
  m.impl("lif_forward", &lif_forward_cpu);
  m.impl("lif_backward", &lif_backward_cpu);
}

}  // namespace lzo
