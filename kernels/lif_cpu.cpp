// LIF layer ops (namespace lzo): schema and CPU kernels.
//
// lif_forward  x [T,B,N_in], W [N_in,N] -> spikes [T,B,N] and what the backward needs:
//   dense rule (method 0): active_gate = gamma for every (t,b,j) [T,B,N]; x itself is kept.
//   sparse rules (1, 2):   active_idx = flat (t*B + b)*N + j of the non-zero gates, sorted,
//                          active_gate = their gamma; input_idx/input_val = the non-zero
//                          entries of x (flat (t*B + b)*N_in + i). Nothing of size T*B*N is kept.
//   method -1:             spikes only (inference).
// lif_backward  grad_spikes -> (grad_x, grad_W), with e = grad_spikes * gamma:
//   dense:  ghat[t] = e[t] + beta*ghat[t+1];  dW = x^T ghat;  dx = ghat W^T.
//   sparse: dW[:, j] += e * xbar[t,b,:] over the active entries, with the input trace
//           xbar[t] = sum_{tau<=t} beta^(t-tau) x[tau] rebuilt per batch row from the input
//           events (cost nnz(e)*N_in + nnz(x));
//           dx only at the previous layer's active (t,b,i): sum over entries t' >= t of
//           beta^(t'-t) e W[i,j] (cost nnz(e)*N_in + nnz(prev)).  DESIGN.md section 5.
// Per-row running sums (trace, input gradient) are kept relative to a reference time and
// re-based every kRebase steps, so no step costs O(N_in) unless it has entries.
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
constexpr int64_t kRebase = 32;

// beta^d and beta^-d for d = 0..kRebase
struct BetaPowers {
  std::vector<float> down, up;
  explicit BetaPowers(double beta) : down(kRebase + 1), up(kRebase + 1) {
    for (int64_t d = 0; d <= kRebase; ++d) {
      down[d] = static_cast<float>(std::pow(beta, static_cast<double>(d)));
      up[d] = static_cast<float>(std::pow(beta, -static_cast<double>(d)));
    }
  }
};

int64_t chunk_count(int64_t n, int64_t grain) {
  const int64_t by_size = std::max<int64_t>(1, (n + grain - 1) / grain);
  return std::min<int64_t>(by_size, 4 * static_cast<int64_t>(at::get_num_threads()));
}

// Forward scan over time of rows (b, j), rows contiguous at each t. Dense rule: gates into
// `dense_gates`. Sparse rules: the non-zero gates, in (t, b, j) order, into idx/val.
void scan_cpu(const float* cur, float* spikes, const GateParams& g, int64_t T, int64_t B,
              int64_t N, float beta, float theta, float* dense_gates, Tensor* idx, Tensor* val,
              const at::TensorOptions& opts) {
  const int64_t rows = B * N;
  const bool sparse = idx != nullptr;
  const int64_t chunks = chunk_count(rows, kRowGrain);
  std::vector<std::vector<int64_t>> c_idx(chunks);
  std::vector<std::vector<float>> c_val(chunks);
  std::vector<std::vector<int64_t>> c_count(chunks);  // entries per t
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = rows * c / chunks, r1 = rows * (c + 1) / chunks;
      std::vector<float> u(r1 - r0, 0.0f), s(r1 - r0, 0.0f);
      if (sparse) c_count[c].assign(T, 0);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t base = t * rows;
        for (int64_t r = r0; r < r1; ++r) {
          const float v = lif_step(&u[r - r0], cur[base + r], s[r - r0], beta, theta);
          const float spike = v > 0.0f ? 1.0f : 0.0f;
          s[r - r0] = spike;
          spikes[base + r] = spike;
          if (g.method < 0) continue;
          const float gv = gate(g, v, static_cast<int>(t), static_cast<int>(r / N), static_cast<int>(r % N));
          if (!sparse) {
            dense_gates[base + r] = gv;
          } else if (gv != 0.0f) {
            c_idx[c].push_back(base + r);
            c_val[c].push_back(gv);
            ++c_count[c][t];
          }
        }
      }
    }
  });
  if (!sparse) return;
  // global (t, chunk) order = (t, b, j) order
  std::vector<std::vector<int64_t>> offset(chunks, std::vector<int64_t>(T));
  int64_t total = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < chunks; ++c) {
      offset[c][t] = total;
      total += c_count[c][t];
    }
  *idx = at::empty({total}, opts.dtype(at::kLong));
  *val = at::empty({total}, opts.dtype(at::kFloat));
  int64_t* ip = idx->data_ptr<int64_t>();
  float* vp = val->data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t k = 0;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t q = 0; q < c_count[c][t]; ++q, ++k) {
          ip[offset[c][t] + q] = c_idx[c][k];
          vp[offset[c][t] + q] = c_val[c][k];
        }
    }
  });
}

// The non-zero entries of a contiguous float tensor: sorted flat indices and their values.
std::tuple<Tensor, Tensor> compact_nonzero_cpu(const Tensor& x) {
  const int64_t n = x.numel();
  const float* xp = x.data_ptr<float>();
  const int64_t chunks = chunk_count(n, 1 << 16);
  std::vector<int64_t> counts(chunks + 1, 0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t cnt = 0;
      for (int64_t q = n * c / chunks; q < n * (c + 1) / chunks; ++q) cnt += xp[q] != 0.0f;
      counts[c + 1] = cnt;
    }
  });
  for (int64_t c = 0; c < chunks; ++c) counts[c + 1] += counts[c];
  Tensor idx = at::empty({counts[chunks]}, x.options().dtype(at::kLong));
  Tensor val = at::empty({counts[chunks]}, x.options());
  int64_t* ip = idx.data_ptr<int64_t>();
  float* vp = val.data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t k = counts[c];
      for (int64_t q = n * c / chunks; q < n * (c + 1) / chunks; ++q)
        if (xp[q] != 0.0f) {
          ip[k] = q;
          vp[k++] = xp[q];
        }
    }
  });
  return {idx, val};
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

Tensor dense_ghat_cpu(const Tensor& e_dense, double beta) {
  Tensor ghat = e_dense.contiguous().clone();
  reverse_scan_cpu(ghat.data_ptr<float>(), ghat.size(0), ghat.size(1) * ghat.size(2),
                   static_cast<float>(beta));
  return ghat;
}

// dW from the active entries, the input trace rebuilt per batch row from the input events:
// xbar[t] = beta^(t-tr) H with H = sum_{tau<=t} beta^(tr-tau) x[tau] for a reference time tr.
Tensor sparse_weight_grad_cpu(const Tensor& idx, const Tensor& e, const Tensor& in_idx,
                              const Tensor& in_val, double beta, int64_t T, int64_t B, int64_t N,
                              int64_t Nin) {
  const Tensor ptr = row_pointers(idx, T * B, N);
  const Tensor iptr = row_pointers(in_idx, T * B, Nin);
  const int64_t* ip = idx.data_ptr<int64_t>();
  const float* ep = e.data_ptr<float>();
  const int64_t* rp = ptr.data_ptr<int64_t>();
  const int64_t* xi = in_idx.data_ptr<int64_t>();
  const float* xv = in_val.data_ptr<float>();
  const int64_t* xr = iptr.data_ptr<int64_t>();
  const BetaPowers pw(beta);
  std::vector<std::vector<float>> partial(static_cast<size_t>(at::get_num_threads()));
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    auto& acc = partial[static_cast<size_t>(at::get_thread_num())];
    if (acc.empty()) acc.assign(static_cast<size_t>(N * Nin), 0.0f);  // dW^T [N, N_in]
    std::vector<float> h(static_cast<size_t>(Nin));
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(h.begin(), h.end(), 0.0f);
      bool any = false;
      int64_t tr = 0;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t row = t * B + b;
        const bool events = xr[row + 1] > xr[row];
        if (!any && !events) continue;  // trace still zero: entries here add nothing
        if (!any || t - tr > kRebase) {
          if (any) {
            rebase_trace(h.data(), Nin, beta, t - tr);
          }
          tr = t;
        }
        any = true;
        for (int64_t q = xr[row]; q < xr[row + 1]; ++q) h[xi[q] % Nin] += xv[q] * pw.up[t - tr];
        for (int64_t kk = rp[row]; kk < rp[row + 1]; ++kk) {
          const float f = ep[kk] * pw.down[t - tr];
          float* dst = acc.data() + (ip[kk] % N) * Nin;
          for (int64_t i = 0; i < Nin; ++i) dst[i] += f * h[i];
        }
      }
    }
  });
  Tensor dwt = at::zeros({N, Nin}, e.options());
  float* dwp = dwt.data_ptr<float>();
  for (const auto& acc : partial) {
    if (acc.empty()) continue;
    for (int64_t q = 0; q < N * Nin; ++q) dwp[q] += acc[static_cast<size_t>(q)];
  }
  return dwt.t().contiguous();
}

// dx[t,b,i] = sum_{entries (t',b,j), t' >= t} beta^(t'-t) e W[i,j], only at prev (t,b,i).
// Walking t downwards: h = sum of beta^(t'-tr) e W[:,j] over the entries seen, dx = beta^(tr-t) h.
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
  const BetaPowers pw(beta);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> h(static_cast<size_t>(Nin));
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(h.begin(), h.end(), 0.0f);
      bool any = false;
      int64_t tr = T - 1;
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t row = t * B + b;
        const bool entries = rp[row + 1] > rp[row];
        if (!any && !entries) continue;
        if (!any || tr - t > kRebase) {
          if (any) {
            rebase_trace(h.data(), Nin, beta, tr - t);
          }
          tr = t;
        }
        any = true;
        for (int64_t kk = rp[row]; kk < rp[row + 1]; ++kk) {
          const float f = ep[kk] * pw.up[tr - t];
          const float* wr = wtp + (ip[kk] % N) * Nin;
          for (int64_t i = 0; i < Nin; ++i) h[i] += f * wr[i];
        }
        const float f = pw.down[tr - t];
        for (int64_t q = pp[row]; q < pp[row + 1]; ++q) {
          const int64_t i = pi[q] % Nin;
          dxp[row * Nin + i] = h[i] * f;
        }
      }
    }
  });
  return dx;
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lif_forward_cpu(
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
  const float fb = static_cast<float>(beta), ft = static_cast<float>(theta);
  auto empty_f = [&] { return at::empty({0}, x.options()); };  // outputs must not alias
  auto empty_i = [&] { return at::empty({0}, x.options().dtype(at::kLong)); };
  if (method < SURROGATE || method == SURROGATE) {
    Tensor gates = method == SURROGATE ? at::empty({s.T, s.B, s.N}, x.options()) : empty_f();
    scan_cpu(current.data_ptr<float>(), spikes.data_ptr<float>(), g, s.T, s.B, s.N, fb, ft,
             method == SURROGATE ? gates.data_ptr<float>() : nullptr, nullptr, nullptr, x.options());
    return {spikes, empty_i(), gates, empty_i(), empty_f()};
  }
  Tensor idx, vals;
  scan_cpu(current.data_ptr<float>(), spikes.data_ptr<float>(), g, s.T, s.B, s.N, fb, ft, nullptr,
           &idx, &vals, x.options());
  auto [in_idx, in_val] = compact_nonzero_cpu(xc);
  return {spikes, idx, vals, in_idx, in_val};
}

std::tuple<Tensor, Tensor> lif_backward_cpu(const Tensor& grad_spikes, const Tensor& x,
                                            const Tensor& input_idx, const Tensor& input_val,
                                            const Tensor& weight, const Tensor& idx,
                                            const Tensor& gate, const c10::optional<Tensor>& prev_idx,
                                            double beta, int64_t method, bool input_grad) {
  check_backward_args(grad_spikes, x, input_idx, input_val, weight, idx, gate, method);
  TORCH_CHECK(grad_spikes.device().is_cpu(), "lzo::lif_backward: CPU kernel called with ",
              grad_spikes.device());
  const int64_t T = grad_spikes.size(0), B = grad_spikes.size(1), N = grad_spikes.size(2);
  const int64_t Nin = weight.size(0);
  const Tensor gs = grad_spikes.contiguous();
  const Tensor w = weight.contiguous();
  const Tensor empty = at::empty({0}, gs.options());

  if (method == SURROGATE) {  // the fused dense baseline
    const Tensor ghat = dense_ghat_cpu(gs * gate, beta).view({T * B, N});
    const Tensor dw = at::matmul(x.contiguous().view({T * B, Nin}).t(), ghat);
    return {input_grad ? at::matmul(ghat, w.t()).view({T, B, Nin}) : empty, dw};
  }
  const Tensor ic = idx.contiguous();
  const Tensor e = gs.view({-1}).index_select(0, ic) * gate.contiguous();  // e at the active entries
  const Tensor dw = sparse_weight_grad_cpu(ic, e, input_idx.contiguous(), input_val.contiguous(),
                                           beta, T, B, N, Nin);
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
      "-> (Tensor spikes, Tensor active_idx, Tensor active_gate, Tensor input_idx, Tensor input_val)");
  m.def(
      "lif_backward(Tensor grad_spikes, Tensor x, Tensor input_idx, Tensor input_val, Tensor weight, "
      "Tensor active_idx, Tensor active_gate, Tensor? prev_idx, float beta, int method, bool input_grad) "
      "-> (Tensor grad_x, Tensor grad_weight)");
}

TORCH_LIBRARY_IMPL(lzo, CPU, m) {
  m.impl("lif_forward", &lif_forward_cpu);
  m.impl("lif_backward", &lif_backward_cpu);
}

}  // namespace lzo
