// The convolutional layers' CPU ops (issue 22): ConvMap, the conv connectivity for the bodies of
// cpu_layer_map.h, the ops conv_lif_forward / conv_sparse_backward / conv_dense_backward, and pool_events.
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

// ---- Convolutional layers (issue 22): the same forward and backward bodies with conv connectivity ----
//
// See ConvGeom (lzo_math.h) for the units and the weight's layout:
//   I[t, b, (oy, ox, o)] = sum over taps of x[t, b, (y, x, c)] W[o, c, ky, kx]     (+ b[o])
//   dW[o, c, ky, kx] = sum over active (t, b, (oy, ox, o)) of e * xbar[t, b, (y, x, c)]
//   dL/ds_prev[t, b, (y, x, c)] = sum over entries t' >= t, taps of beta^(t'-t) e W[o, c, ky, kx]
// at a cost of C_in*K*K per active entry (C_out*K*K per input event in the forward).
struct ConvMap {
  ConvGeom g;
  int64_t nin, n;
  Tensor wf_, wb_, bias_;  // [C_in, K, K, C_out] (forward), [C_out, K, K, C_in] (input gradient), [C_out]
  const float *wf, *wb, *bias;

  ConvMap(const ConvGeom& geom, const Tensor& weight)
      : g(geom), nin(geom.units_in() + (geom.bias ? 1 : 0)), n(geom.units_out()) {
    wf_ = conv_taps_last(weight, g);
    wb_ = conv_weight4(weight, g).permute({0, 2, 3, 1}).contiguous();
    bias_ = g.bias ? conv_bias(weight, g) : at::zeros({g.cout}, weight.options());
    wf = wf_.data_ptr<float>();
    wb = wb_.data_ptr<float>();
    bias = bias_.data_ptr<float>();
  }

  // f(tap, position) for each tap (c, ky, kx) of input unit i = (y, x, c) (not the bias unit) and the output
  // position oy*W_out + ox it reaches: oy*stride + ky - pad = y, ox*stride + kx - pad = x.
  template <typename F>
  void reached_by(int64_t i, F&& f) const {
    const int64_t c = i % g.cin, pos = i / g.cin, y = pos / g.w, x = pos % g.w;
    for (int64_t ky = 0; ky < g.k; ++ky) {
      const int64_t ny = y + g.pad - ky;
      if (ny < 0) break;
      if (ny % g.stride || ny / g.stride >= g.ho) continue;
      for (int64_t kx = 0; kx < g.k; ++kx) {
        const int64_t nx = x + g.pad - kx;
        if (nx < 0) break;
        if (nx % g.stride || nx / g.stride >= g.wo) continue;
        f((c * g.k + ky) * g.k + kx, (ny / g.stride) * g.wo + nx / g.stride);
      }
    }
  }

  // cur = the current of row r: every input event adds W[:, c, ky, kx] at each output it reaches
  void current(const EventView& ev, int64_t r, float* __restrict cur) const {
    std::fill(cur, cur + n, 0.0f);
    for (Ptr q = ev.ptr[r]; q < ev.ptr[r + 1]; ++q) {
      const int64_t i = ev.col[q];
      const float a = ev.value(q);
      if (i == g.units_in()) {
        for (int64_t p = 0; p < g.ho * g.wo; ++p) add_row(cur + p * g.cout, bias, a, g.cout);
        continue;
      }
      reached_by(i, [&](int64_t tap, int64_t p) { add_row(cur + p * g.cout, wf + tap * g.cout, a, g.cout); });
    }
  }

  // Sparse backward: acc [C_out, K, K, C_in] then [C_out] (bias); to_weight() gives weight's layout.
  int64_t acc_size() const { return g.cout * g.taps() + g.cout; }
  // The taps of output (oy, ox) along x that stay inside the input: kx in [kx0, kx1). For a row ky the taps'
  // inputs (iy, ox*stride + kx - pad, c) and the weights [o][ky][kx][c] are then one contiguous span of
  // (kx1 - kx0) * C_in floats each, one vectorisable loop per row instead of one short loop per tap. Written out
  // in add_dw and add_dx: the same loops through a shared lambda helper measured 20-80 % slower on N-MNIST's
  // layer 1 (C_in = 2), alternating processes.
  struct TapRange {
    int64_t kx0, kx1, ix0;
  };
  TapRange taps_x(int64_t ox) const {
    const int64_t base = ox * g.stride - g.pad;
    return {std::max<int64_t>(0, -base), std::min<int64_t>(g.k, g.w - base), base};
  }
  void add_dw(float* __restrict acc, int32_t j, float f, const float* __restrict h) const {
    const int64_t o = j % g.cout, pos = j / g.cout, oy = pos / g.wo, ox = pos % g.wo;
    const TapRange tx = taps_x(ox);
    const int64_t span = (tx.kx1 - tx.kx0) * g.cin;
    for (int64_t ky = 0; ky < g.k; ++ky) {
      const int64_t iy = oy * g.stride + ky - g.pad;
      if (iy < 0 || iy >= g.h) continue;
      float* dst = acc + ((o * g.k + ky) * g.k + tx.kx0) * g.cin;
      const float* src = h + (iy * g.w + tx.ix0 + tx.kx0) * g.cin;
      for (int64_t i = 0; i < span; ++i) dst[i] += f * src[i];
    }
    if (g.bias) acc[g.cout * g.taps() + o] += f * h[g.units_in()];
  }
  // h[(y, x, :)] += f * W[o, :, ky, kx] over the inputs output j reads (the bias unit has no layer below)
  void add_dx(float* __restrict h, int32_t j, float f) const {
    const int64_t o = j % g.cout, pos = j / g.cout, oy = pos / g.wo, ox = pos % g.wo;
    const TapRange tx = taps_x(ox);
    const int64_t span = (tx.kx1 - tx.kx0) * g.cin;
    for (int64_t ky = 0; ky < g.k; ++ky) {
      const int64_t iy = oy * g.stride + ky - g.pad;
      if (iy < 0 || iy >= g.h) continue;
      float* dst = h + (iy * g.w + tx.ix0 + tx.kx0) * g.cin;
      const float* src = wb + ((o * g.k + ky) * g.k + tx.kx0) * g.cin;
      for (int64_t i = 0; i < span; ++i) dst[i] += f * src[i];
    }
  }
  Tensor to_weight(const Tensor& acc) const {
    Tensor dw = acc.narrow(0, 0, g.cout * g.taps()).view({g.cout, g.k, g.k, g.cin}).permute({0, 3, 1, 2})
                    .reshape({g.cout, g.taps()});
    return g.bias ? at::cat({dw, acc.narrow(0, g.cout * g.taps(), g.cout).view({g.cout, 1})}, 1) : dw.contiguous();
  }

  // Dense rule, dW from the input events: acc [C_in, K, K, C_out] then [C_out] (bias), input_to_weight().
  int64_t input_acc_size() const { return g.taps() * g.cout + g.cout; }
  void add_input_dw(float* __restrict acc, int32_t i, float a, const float* __restrict ghat_row) const {
    if (i == g.units_in()) {
      float* dst = acc + g.taps() * g.cout;
      for (int64_t p = 0; p < g.ho * g.wo; ++p) add_row(dst, ghat_row + p * g.cout, a, g.cout);
      return;
    }
    reached_by(i, [&](int64_t tap, int64_t p) { add_row(acc + tap * g.cout, ghat_row + p * g.cout, a, g.cout); });
  }
  Tensor input_to_weight(const Tensor& acc) const {
    Tensor dw = acc.narrow(0, 0, g.taps() * g.cout).view({g.taps(), g.cout}).t();
    return g.bias ? at::cat({dw, acc.narrow(0, g.taps() * g.cout, g.cout).view({g.cout, 1})}, 1) : dw.contiguous();
  }
};

// -> as lif_events_forward; the current by events (cost nnz(x)*C_out*K^2/stride^2) or one at::conv2d
// (oneDNN) over all rows when the input is dense.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> conv_lif_forward_cpu(
    const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val, const Tensor& weight, c10::IntArrayRef shape,
    const Tensor& table, int64_t steps, double beta, double theta, int64_t method, int64_t sample_kind,
    int64_t surrogate_kind, double delta, double bth, double k, double band, double term_scale, int64_t samples,
    int64_t alpha, int64_t seed, int64_t update, int64_t layer, int64_t current_mode) {
  const char* op = "lzo::conv_lif_forward";
  check_events_forward_args(x_ptr, weight, table, steps, op);
  TORCH_CHECK(weight.device().is_cpu(), op, ": CPU kernel called with weight on ", weight.device());
  check_gate_args(table, method, sample_kind, surrogate_kind, samples, alpha, op);
  check_current_mode(current_mode, op);
  const Tensor W = weight.contiguous();
  const ConvMap map(conv_geom(shape, W, op), W);
  const int64_t rows = x_ptr.numel() - 1, T = steps;
  check_events(x_ptr, x_col, x_val, rows, op, "x");
  check_columns(x_col, map.nin, op, "x");
  const Tensor tc = table.contiguous();
  const GateParams g = make_params(method, sample_kind, surrogate_kind, delta, bth, k, band, term_scale, samples,
                                   alpha, seed, update, layer, tc);
  const EventView ev = view(x_ptr, x_col, x_val);
  Tensor cur_all;
  if (use_gemm(current_mode, x_col.numel(), rows, map.nin, kConvGemmDensity))
    cur_all = conv_current_rows(rows_from_events(ev, rows, map.nin, W.options()), W, map.g);
  return forward_rows(map, ev, cur_all, rows, T, g, beta, theta, method, W.options());
}

// -> (dW [C_out, C_in*K*K (+1)], dL/ds of the previous layer at its active entries [nnz_prev])
std::tuple<Tensor, Tensor> conv_sparse_backward_cpu(
    const Tensor& grad_act, const Tensor& act_ptr, const Tensor& act_col, const Tensor& act_gate,
    const Tensor& count_grad, const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val, const Tensor& weight,
    c10::IntArrayRef shape, double beta, int64_t steps, const Tensor& prev_ptr, const Tensor& prev_col) {
  const char* op = "lzo::conv_sparse_backward";
  const Tensor W = weight.contiguous();
  const ConvMap map(conv_geom(shape, W, op), W);
  check_sparse_backward_args(grad_act, act_ptr, act_col, act_gate, count_grad, W, map.n, steps, op);
  if (prev_ptr.numel() > 0) check_columns(prev_col, map.g.units_in(), op, "prev");
  auto [acc, g_prev] = sparse_backward_rows(map, grad_act, act_ptr, act_col, act_gate, count_grad, x_ptr, x_col, x_val,
                                            beta, steps, prev_ptr, prev_col, W.options(), op);
  return {map.to_weight(acc), g_prev};
}

// The dense rule: grad, gate [B*T, N] -> (dW [C_out, C_in*K*K (+1)], dx [B*T, C_in*H*W] or empty); dW from the
// input events or, above kConvDwGemmDensity, oneDNN's convolution backward; dx by a transposed convolution.
std::tuple<Tensor, Tensor> conv_dense_backward_cpu(const Tensor& grad, const Tensor& gate, const Tensor& count_grad,
                                                   const Tensor& x_ptr, const Tensor& x_col, const Tensor& x_val,
                                                   const Tensor& weight, c10::IntArrayRef shape, double beta,
                                                   int64_t steps, bool input_grad, int64_t current_mode) {
  const char* op = "lzo::conv_dense_backward";
  const Tensor W = weight.contiguous();
  const ConvMap map(conv_geom(shape, W, op), W);
  const ConvGeom& g = map.g;
  check_dense_backward_args(grad, gate, count_grad, W, map.n, steps, op);
  const int64_t rows = grad.size(0);
  check_events(x_ptr, x_col, x_val, rows, op, "x");
  const Tensor ghat = dense_ghat(grad, gate, count_grad, beta, steps);
  const EventView xv = view(x_ptr, x_col, x_val);
  const Tensor dw = use_gemm(current_mode, x_col.numel(), rows, map.nin, kConvDwGemmDensity)
      ? conv_gemm_dw(ghat, rows_from_events(xv, rows, map.nin, W.options()), W, g)
      : map.input_to_weight(event_dw(map, xv, ghat, steps, W.options()));
  return {dw, input_grad ? conv_input_grad(ghat, W, g) : at::empty({0}, W.options())};
}

// Sum pooling of channels-last events over pool x pool windows with stride pool: frame = [C, H, W] of the
// events' units (y*W + x)*C + c; -> events over ((y/pool)*(W/pool) + x/pool)*C + c, in unit order per row, the
// counts (or sums of the values) as values; rows and columns past the last whole window are dropped.
std::tuple<Tensor, Tensor, Tensor> pool_events_cpu(const Tensor& ptr, const Tensor& col, const Tensor& val,
                                                   c10::IntArrayRef frame, int64_t pool) {
  const char* op = "lzo::pool_events";
  check_pool_args(frame, pool, op);
  const int64_t C = frame[0], H = frame[1], W = frame[2];
  const int64_t rows = ptr.numel() - 1, hp = H / pool, wp = W / pool, width = hp * wp * C;
  check_events(ptr, col, val, rows, op, "x");
  check_columns(col, C * H * W, op, "x");
  const EventView ev = view(ptr, col, val);
  std::vector<int32_t> pooled(static_cast<size_t>(C * H * W));  // unit -> pooled unit, -1: outside every window
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x)
      for (int64_t c = 0; c < C; ++c)
        pooled[(y * W + x) * C + c] =
            y / pool < hp && x / pool < wp ? static_cast<int32_t>(((y / pool) * wp + x / pool) * C + c) : -1;
  Tensor out_ptr = at::zeros({rows + 1}, ptr.options());
  Ptr* op_ = out_ptr.data_ptr<Ptr>();
  const int64_t n_parts = std::min<int64_t>(std::max<int64_t>(at::get_num_threads(), 1) * 8, std::max<int64_t>(rows, 1));
  std::vector<std::vector<int32_t>> pcol(n_parts);
  std::vector<std::vector<float>> pval(n_parts);
  const int64_t per = (rows + n_parts - 1) / n_parts;
  at::parallel_for(0, n_parts, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> acc(static_cast<size_t>(width), 0.0f);
    std::vector<uint64_t> touched(static_cast<size_t>((width + 63) / 64), 0);  // a bit per pooled unit: read in order
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t r = p * per; r < std::min(rows, (p + 1) * per); ++r) {
        for (Ptr q = ev.ptr[r]; q < ev.ptr[r + 1]; ++q) {
          const int32_t u = pooled[ev.col[q]];
          if (u < 0) continue;
          acc[u] += ev.value(q);
          touched[u >> 6] |= uint64_t(1) << (u & 63);
        }
        Ptr kept = 0;
        for (size_t w = 0; w < touched.size(); ++w) {
          for (uint64_t m = touched[w]; m; m &= m - 1) {
            const int32_t u = static_cast<int32_t>(w * 64 + __builtin_ctzll(m));
            if (acc[u] != 0.0f) {  // values that cancel to 0 are no event
              pcol[p].push_back(u);
              pval[p].push_back(acc[u]);
              ++kept;
            }
            acc[u] = 0.0f;
          }
          touched[w] = 0;
        }
        op_[r + 1] = kept;
      }
  });
  prefix_sum(op_, rows);
  Tensor out_col = at::empty({op_[rows]}, col.options()), out_val = at::empty({op_[rows]}, col.options().dtype(at::kFloat));
  int32_t* oc = out_col.data_ptr<int32_t>();
  float* ov = out_val.data_ptr<float>();
  at::parallel_for(0, n_parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t start = op_[std::min(rows, p * per)];
      std::copy(pcol[p].begin(), pcol[p].end(), oc + start);
      std::copy(pval[p].begin(), pval[p].end(), ov + start);
    }
  });
  return {out_ptr, out_col, out_val};
}

TORCH_LIBRARY_IMPL(lzo, CPU, m) {
  m.impl("conv_lif_forward", &conv_lif_forward_cpu);
  m.impl("conv_sparse_backward", &conv_sparse_backward_cpu);
  m.impl("conv_dense_backward", &conv_dense_backward_cpu);
  m.impl("pool_events", &pool_events_cpu);
}

}  // namespace lzo
