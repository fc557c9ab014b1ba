// The bodies every CPU layer op shares, written once over a layer's connectivity map (DenseMap here, ConvMap in
// cpu_conv.cpp): the event current, the forward scan (forward_rows), the sparse backward (sparse_backward_rows)
// and the dense rule's ghat and event dW; plus the events-or-GEMM choice (use_gemm).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu_lists.h"
#include "cpu_simd.h"
#include "cpu_sparse_gate.h"
#include "lif_common.h"

namespace lzo {
namespace cpu {

// Input density (nnz / (rows * N_in)) above which one GEMM over all rows beats adding W rows per
// event: measured 0.25-0.4 (forward and dense dW, N_in 200 and 1156, 1 and 2 threads) with
// benchmarks/forward_crossover.py (BENCHMARKS.md).
inline constexpr double kGemmDensity = 0.25;
// The same for a conv layer (the event scatter against one at::conv2d, oneDNN): the forward's current from
// 0.1, the dense rule's dW (events against oneDNN's convolution backward) from 0.03; measured on the N-MNIST
// conv layer 1 (2x34x34 -> 12, 5x5, T = 100, B = 32, 1 thread) with benchmarks/forward_crossover.py --arch conv.
inline constexpr double kConvGemmDensity = 0.1, kConvDwGemmDensity = 0.03;

enum CurrentMode : int64_t { CURRENT_AUTO = 0, CURRENT_EVENTS = 1, CURRENT_GEMM = 2 };

inline bool use_gemm(int64_t mode, int64_t nnz, int64_t rows, int64_t width, double density = kGemmDensity) {
  if (mode == CURRENT_GEMM) return true;
  if (mode == CURRENT_EVENTS) return false;
  return static_cast<double>(nnz) > density * static_cast<double>(rows) * static_cast<double>(width);
}

// dst += a * src over a row.
inline void add_row(float* __restrict dst, const float* __restrict src, float a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] += a * src[j];
}

// cur = sum over the events q of row r of val[q] * W[col[q], :]  (cost: the row's events * N).
// Summed in registers over the events, one block of 64 neurons at a time: one load of W per event
// and block, cur written once (a loop adding W rows into cur loads and stores cur once per event).
// Per neuron the same float operations in the same order as that loop (0 + x0*W0 + x1*W1 ...; a
// spike event adds its W row as it is: x * 1 is exact).
template <bool kValues>
inline void event_current_rows(const float* __restrict val, const int32_t* __restrict col, Ptr q0, Ptr q1,
                               const float* __restrict w, int64_t n, float* __restrict cur) {
  int64_t j = 0;
#if defined(__AVX2__)
  for (; j + 64 <= n; j += 64) {
    __m256 acc[8];
    for (int k = 0; k < 8; ++k) acc[k] = _mm256_setzero_ps();
    for (Ptr q = q0; q < q1; ++q) {
      const float* src = w + static_cast<int64_t>(col[q]) * n + j;
      if (kValues) {
        const __m256 a = _mm256_set1_ps(val[q]);
        for (int k = 0; k < 8; ++k) acc[k] = _mm256_add_ps(acc[k], _mm256_mul_ps(a, _mm256_loadu_ps(src + 8 * k)));
      } else {
        for (int k = 0; k < 8; ++k) acc[k] = _mm256_add_ps(acc[k], _mm256_loadu_ps(src + 8 * k));
      }
    }
    for (int k = 0; k < 8; ++k) _mm256_storeu_ps(cur + j + 8 * k, acc[k]);
  }
  for (; j + 8 <= n; j += 8) {
    __m256 a0 = _mm256_setzero_ps();
    for (Ptr q = q0; q < q1; ++q) {
      __m256 x0 = _mm256_loadu_ps(w + static_cast<int64_t>(col[q]) * n + j);
      if (kValues) x0 = _mm256_mul_ps(_mm256_set1_ps(val[q]), x0);
      a0 = _mm256_add_ps(a0, x0);
    }
    _mm256_storeu_ps(cur + j, a0);
  }
#endif
  if (j == n) return;
  std::fill(cur + j, cur + n, 0.0f);
  for (Ptr q = q0; q < q1; ++q) add_row(cur + j, w + static_cast<int64_t>(col[q]) * n + j, kValues ? val[q] : 1.0f, n - j);
}

inline void event_current(const EventView& ev, int64_t r, const float* w, int64_t n, float* cur) {
  if (ev.val)
    event_current_rows<true>(ev.val, ev.col, ev.ptr[r], ev.ptr[r + 1], w, n, cur);
  else
    event_current_rows<false>(nullptr, ev.col, ev.ptr[r], ev.ptr[r + 1], w, n, cur);
}

inline constexpr int64_t kRebaseSteps = 32;

// beta^d and beta^-d for d = 0..span, where span <= kRebaseSteps keeps beta^-span <= 2^64: the running
// sums are held relative to a reference step tr (h = beta^-(t-tr) * trace), so for a small beta the
// reference must move often or beta^-d leaves float range (beta < 0.063 passes 2^128 within 32
// steps). beta = 0 gives span 0: the reference moves at every step and the trace is the step's input.
struct Powers {
  int64_t span;
  float down[kRebaseSteps + 1], up[kRebaseSteps + 1];
  explicit Powers(double beta) : span(rebase_span(beta)) {
    for (int64_t d = 0; d <= span; ++d) {
      down[d] = static_cast<float>(std::pow(beta, static_cast<double>(d)));
      up[d] = static_cast<float>(std::pow(beta, -static_cast<double>(d)));
    }
  }
  static int64_t rebase_span(double beta) {
    if (!(beta > 0.0)) return 0;
    if (beta >= 1.0) return kRebaseSteps;
    return std::min<int64_t>(kRebaseSteps, static_cast<int64_t>(std::floor(64.0 * std::log(2.0) / -std::log(beta))));
  }
};

// A fully connected layer's connectivity: W [N_in, N] (x @ W), and W^T [N, N_in] for the input gradient.
struct DenseMap {
  int64_t nin, n;
  const float* w;
  const float* wt = nullptr;
  // cur = sum over the events of row r of x * W[i, :]
  void current(const EventView& ev, int64_t r, float* cur) const { event_current(ev, r, w, n, cur); }
  int64_t acc_size() const { return n * nin; }
  // acc [N, N_in] (dW^T): acc[j, :] += f * h
  void add_dw(float* __restrict acc, int32_t j, float f, const float* __restrict h) const {
    float* dst = acc + static_cast<int64_t>(j) * nin;
    for (int64_t i = 0; i < nin; ++i) dst[i] += f * h[i];
  }
  int64_t input_acc_size() const { return nin * n; }
  // acc [N_in, N] (dW): acc[i, :] += a * ghat_row
  void add_input_dw(float* __restrict acc, int32_t i, float a, const float* __restrict ghat_row) const {
    float* dst = acc + static_cast<int64_t>(i) * n;
    for (int64_t j = 0; j < n; ++j) dst[j] += a * ghat_row[j];
  }
  // h += f * W[:, j]
  void add_dx(float* __restrict h, int32_t j, float f) const {
    const float* wr = wt + static_cast<int64_t>(j) * nin;
    for (int64_t i = 0; i < nin; ++i) h[i] += f * wr[i];
  }
};

// -> (spike_ptr, spike_col, counts [B, N], active_ptr, active_col, active_gate, dense_gate [B*T, N]) of a
// layer whose current is map.current (row by row from the events) or cur_all [B*T, N] (one GEMM or conv).
template <typename Map>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> forward_rows(
    const Map& map, const EventView& ev, const Tensor& cur_all, int64_t rows, int64_t T, const GateParams& g,
    double beta, double theta, int64_t method, const at::TensorOptions& fopts) {
  const int64_t B = rows / T, N = map.n;
  const float* cur_p = cur_all.defined() ? cur_all.data_ptr<float>() : nullptr;
  const bool sparse = method >= SPARSEGRAD;
  Tensor spk_ptr = at::zeros({rows + 1}, fopts.dtype(kPtr));
  Tensor act_ptr = at::zeros({sparse ? rows + 1 : 1}, fopts.dtype(kPtr));
  Tensor counts = at::zeros({B, N}, fopts);
  Tensor dense_gate = method == SURROGATE ? at::empty({rows, N}, fopts) : at::empty({0}, fopts);
  Ptr* sp = spk_ptr.data_ptr<Ptr>();
  Ptr* ap = act_ptr.data_ptr<Ptr>();
  float* cnt_p = counts.data_ptr<float>();
  float* dg = method == SURROGATE ? dense_gate.data_ptr<float>() : nullptr;
  std::vector<std::vector<int32_t>> spk(B), acol(sparse ? B : 0);
  std::vector<std::vector<float>> aval(sparse ? B : 0);
  const float fb = static_cast<float>(beta), ft = static_cast<float>(theta);
  const SparseGateRows gate_rows(g);
  const float row_band = sparse ? g.band : 0.0f;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> cur(N), u(N), s(N), v(dg ? N : 0);
    std::vector<int32_t> sj(N);
    SparseGateRows rows_here = gate_rows;
    rows_here.reserve(N);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(u.begin(), u.end(), 0.0f);
      std::fill(s.begin(), s.end(), 0.0f);
      float* cnt = cnt_p + b * N;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t r = b * T + t;
        const float* c = cur_p ? cur_p + r * N : cur.data();
        if (!cur_p) map.current(ev, r, cur.data());
        const RowLists n = lif_row(u.data(), s.data(), c, N, fb, ft, row_band, sj.data(), rows_here.cand_j(),
                                   rows_here.cand_av(), dg ? v.data() : nullptr);
        spk[b].insert(spk[b].end(), sj.begin(), sj.begin() + n.spikes);
        for (int64_t q = 0; q < n.spikes; ++q) cnt[sj[q]] += 1.0f;
        sp[r + 1] = static_cast<Ptr>(n.spikes);
        if (dg) surrogate_row(g, v.data(), dg + r * N, N);
        else if (sparse)
          ap[r + 1] = static_cast<Ptr>(rows_here.row(n.candidates, static_cast<int>(t), static_cast<int>(b), acol[b], aval[b]));
      }
    }
  });
  prefix_sum(sp, rows);
  Tensor spk_col = concat(spk, sp, T, at::kInt);
  Tensor act_col = at::empty({0}, fopts.dtype(at::kInt)), act_gate = at::empty({0}, fopts);
  if (sparse) {
    prefix_sum(ap, rows);
    act_col = concat(acol, ap, T, at::kInt);
    act_gate = concat(aval, ap, T, at::kFloat);
  }
  return {spk_ptr, spk_col, counts, act_ptr, act_col, act_gate, dense_gate};
}

// The sparse backward of a layer with connectivity map (DenseMap, ConvMap): -> (acc [map.acc_size()], the
// weight gradient in the map's layout; dL/ds of the previous layer at its active entries [nnz_prev]).
template <typename Map>
std::tuple<Tensor, Tensor> sparse_backward_rows(
    const Map& map, const Tensor& grad_act, const Tensor& act_ptr, const Tensor& act_col, const Tensor& act_gate,
    const Tensor& count_grad, const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val, double beta, int64_t steps,
    const Tensor& prev_ptr, const Tensor& prev_col, const at::TensorOptions& fopts, const char* op) {
  const int64_t Nin = map.nin, N = map.n;
  const int64_t rows = act_ptr.numel() - 1, T = steps, B = rows / T;
  const Tensor empty = at::empty({0}, fopts);
  check_events(act_ptr, act_col, empty, rows, op, "active");
  check_events(x_ptr, x_col, x_val, rows, op, "x");
  const bool with_cg = count_grad.numel() > 0;
  const bool with_prev = prev_ptr.numel() > 0;
  if (with_prev) check_events(prev_ptr, prev_col, empty, rows, op, "prev");
  const Tensor cg = count_grad.contiguous();
  const Tensor grad_c = grad_act.contiguous();
  const float* gp = grad_c.data_ptr<float>();
  const Tensor gate_c = act_gate.contiguous();
  const float* gt = gate_c.data_ptr<float>();
  const float* cgp = with_cg ? cg.data_ptr<float>() : nullptr;
  const EventView av = view(act_ptr, act_col, empty), xv = view(x_ptr, x_col, x_val);
  // e = (dL/ds + dL/dcount) * gamma on the active list
  std::vector<float> e(static_cast<size_t>(act_col.numel()));
  at::parallel_for(0, B, 8, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t q = av.ptr[b * T]; q < av.ptr[(b + 1) * T]; ++q) {
        const float gsum = with_cg ? gp[q] + cgp[b * N + av.col[q]] : gp[q];
        e[static_cast<size_t>(q)] = gsum * gt[q];
      }
  });
  const Powers pw(beta);
  const int64_t n_acc = map.acc_size();
  // dW per thread: map.add_dw(e * xbar[t, b, :]) per active entry, xbar = beta^(t-tr) h
  std::vector<std::vector<float>> partial(static_cast<size_t>(at::get_num_threads()));
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    auto& acc = partial[static_cast<size_t>(at::get_thread_num())];
    if (acc.empty()) acc.assign(static_cast<size_t>(n_acc), 0.0f);
    std::vector<float> h(static_cast<size_t>(Nin));
    for (int64_t b = b0; b < b1; ++b) {
      if (av.ptr[b * T] == av.ptr[(b + 1) * T]) continue;  // no active entry in this batch row
      std::fill(h.begin(), h.end(), 0.0f);
      bool any = false;
      int64_t tr = 0;
      const int64_t last = av.ptr[(b + 1) * T];
      for (int64_t t = 0; t < T; ++t) {
        const int64_t r = b * T + t;
        if (av.ptr[r] == last) break;  // no active entry left in this batch row
        const bool events = xv.ptr[r + 1] > xv.ptr[r];
        if (!any && !events) continue;
        if (!any || t - tr > pw.span) {
          if (any) {
            rebase_trace(h.data(), Nin, beta, t - tr);
          }
          tr = t;
        }
        any = true;
        for (int64_t q = xv.ptr[r]; q < xv.ptr[r + 1]; ++q) h[xv.col[q]] += xv.value(q) * pw.up[t - tr];
        const float* hp = h.data();
        for (int64_t q = av.ptr[r]; q < av.ptr[r + 1]; ++q)
          map.add_dw(acc.data(), av.col[q], e[static_cast<size_t>(q)] * pw.down[t - tr], hp);
      }
    }
  });
  Tensor acc_all = at::zeros({n_acc}, fopts);
  float* accp = acc_all.data_ptr<float>();
  for (const auto& p : partial)
    if (!p.empty())
      for (int64_t q = 0; q < n_acc; ++q) accp[q] += p[static_cast<size_t>(q)];
  if (!with_prev) return {acc_all, empty};
  // dL/ds_prev[t, b, i] = sum over entries (t', b, j), t' >= t of beta^(t'-t) e W[i, j], only at prev's entries
  const EventView pv = view(prev_ptr, prev_col, empty);
  Tensor g_prev = at::zeros({prev_col.numel()}, fopts);
  float* gpp = g_prev.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> h(static_cast<size_t>(Nin));
    for (int64_t b = b0; b < b1; ++b) {
      if (pv.ptr[b * T] == pv.ptr[(b + 1) * T]) continue;
      std::fill(h.begin(), h.end(), 0.0f);
      bool any = false;
      int64_t tr = T - 1;
      const int64_t first = pv.ptr[b * T];
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t r = b * T + t;
        if (pv.ptr[r + 1] == first) break;  // no prev entry at or before t
        const bool entries = av.ptr[r + 1] > av.ptr[r];
        if (!any && !entries) continue;
        if (!any || tr - t > pw.span) {
          if (any) {
            rebase_trace(h.data(), Nin, beta, tr - t);
          }
          tr = t;
        }
        any = true;
        float* hp = h.data();
        for (int64_t q = av.ptr[r]; q < av.ptr[r + 1]; ++q)
          map.add_dx(hp, av.col[q], e[static_cast<size_t>(q)] * pw.up[tr - t]);
        const float f = pw.down[tr - t];
        for (int64_t q = pv.ptr[r]; q < pv.ptr[r + 1]; ++q) gpp[q] = hp[pv.col[q]] * f;
      }
    }
  });
  return {acc_all, g_prev};
}

// ghat[t] = (dL/ds[t] + dL/dcount) * gamma[t] + beta * ghat[t+1] over grad, gate [B*T, N] (rows b*T + t):
// dL/du of the dense rule, the input of its dW and dx.
inline Tensor dense_ghat(const Tensor& grad, const Tensor& gate, const Tensor& count_grad, double beta, int64_t steps) {
  const int64_t rows = grad.size(0), N = grad.size(1), T = steps, B = rows / T;
  const bool with_cg = count_grad.numel() > 0;
  const Tensor cg = count_grad.contiguous();
  const Tensor gc = grad.contiguous(), gtc = gate.contiguous();
  Tensor ghat = at::empty({rows, N}, grad.options());
  const float* gp = gc.data_ptr<float>();
  const float* gt = gtc.data_ptr<float>();
  const float* cgp = with_cg ? cg.data_ptr<float>() : nullptr;
  float* hp = ghat.data_ptr<float>();
  const float fb = static_cast<float>(beta);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    const std::vector<float> zeros(static_cast<size_t>(N), 0.0f);
    for (int64_t b = b0; b < b1; ++b) {
      const float* c = cgp ? cgp + b * N : zeros.data();
      for (int64_t t = T - 1; t >= 0; --t) {  // ghat[t] = (g + dL/dcount) * gamma + beta * ghat[t+1]
        const int64_t r = b * T + t;
        const float* g = gp + r * N;
        const float* y = gt + r * N;
        float* o = hp + r * N;
        const float* next = t + 1 < T ? o + N : zeros.data();
        for (int64_t j = 0; j < N; ++j) o[j] = (g[j] + c[j]) * y[j] + fb * next[j];
      }
    }
  });
  return ghat;
}

// The dense rule's weight gradient from the input events, cost nnz(x) * fan-out: map.add_input_dw(acc, i, x,
// ghat[r]) per input event (r, i) -> acc [map.input_acc_size()] in the map's layout.
template <typename Map>
Tensor event_dw(const Map& map, const EventView& xv, const Tensor& ghat, int64_t T, const at::TensorOptions& fopts) {
  const int64_t rows = ghat.size(0), B = rows / T, N = map.n, n_acc = map.input_acc_size();
  const float* hp = ghat.data_ptr<float>();
  std::vector<std::vector<float>> partial(static_cast<size_t>(at::get_num_threads()));
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    auto& acc = partial[static_cast<size_t>(at::get_thread_num())];
    if (acc.empty()) acc.assign(static_cast<size_t>(n_acc), 0.0f);
    for (int64_t r = b0 * T; r < b1 * T; ++r)
      for (int64_t q = xv.ptr[r]; q < xv.ptr[r + 1]; ++q) map.add_input_dw(acc.data(), xv.col[q], xv.value(q), hp + r * N);
  });
  Tensor dw = at::zeros({n_acc}, fopts);
  float* dwp = dw.data_ptr<float>();
  for (const auto& p : partial)
    if (!p.empty())
      for (int64_t q = 0; q < n_acc; ++q) dwp[q] += p[static_cast<size_t>(q)];
  return dw;
}

}  // namespace cpu
}  // namespace lzo
