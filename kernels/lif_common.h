// Host-side helpers of the event ops, shared by the CPU ops (snn_cpu.cpp, cpu_*) and snn_cuda.cu (and so
// by the simulator's build of the CUDA ops): argument checks, the ops' schemas, GateParams, the trace re-basing.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <cmath>

#include "lzo_math.h"

namespace lzo {

inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be a float32 tensor, got ",
              t.scalar_type());
}

// The gate's codes (lzo_math.h) and the table, as every forward op takes them.
inline void check_gate_args(const at::Tensor& table, int64_t method, int64_t sample_kind, int64_t surrogate_kind,
                            int64_t samples, int64_t alpha, const char* op) {
  TORCH_CHECK(method >= -1 && method <= LOCALZO, op, ": method must be -1 (none), 0 (surrogate), ",
              "1 (sparsegrad) or 2 (localzo), got ", method);
  TORCH_CHECK(sample_kind >= 0 && sample_kind <= SAMPLE_TABLE, op, ": sample_kind out of range: ",
              sample_kind);
  TORCH_CHECK(surrogate_kind >= 0 && surrogate_kind <= SURR_FAST_SIGMOID, op,
              ": surrogate_kind out of range: ", surrogate_kind);
  TORCH_CHECK(samples >= 1 && samples < 65536, op, ": samples must lie in [1, 65535], got ", samples);
  TORCH_CHECK(alpha != 0, op, ": alpha must be a non-zero integer");
  TORCH_CHECK(sample_kind != SAMPLE_TABLE || method != LOCALZO || table.numel() >= 2, op,
              ": table must hold at least 2 quantiles for sample_kind = table, got ", table.numel());
}

// The event forward's current_mode: 0 auto, 1 events, 2 GEMM.
inline void check_current_mode(int64_t current_mode, const char* op) {
  TORCH_CHECK(current_mode >= 0 && current_mode <= 2, op, ": current_mode must be 0 (auto), 1 (events) or 2 (gemm)");
}

// Device-independent argument checks of the event ops (cpu_*.cpp, snn_cuda.cu); each backend then
// checks its lists on its own device. Event lists have rows r = b*T + t, so B*T + 1 row pointers.
inline void check_events_forward_args(const at::Tensor& x_ptr, const at::Tensor& weight, const at::Tensor& table,
                                      int64_t steps, const char* op) {
  TORCH_CHECK(steps >= 1 && x_ptr.numel() >= 1 && (x_ptr.numel() - 1) % steps == 0, op,
              ": x_ptr must hold B*T + 1 row pointers for T = ", steps);
  check_float(weight, op, "weight");
  check_float(table, op, "table");
  TORCH_CHECK(weight.dim() == 2, op, ": weight must have shape [N_in, N], got rank ", weight.dim());
}

inline void check_readout_forward_args(const at::Tensor& s_ptr, const at::Tensor& w_out, int64_t steps,
                                       const char* op) {
  check_float(w_out, op, "w_out");
  TORCH_CHECK(w_out.dim() == 2, op, ": w_out must be [N, C]");
  TORCH_CHECK(steps >= 1 && (s_ptr.numel() - 1) % steps == 0, op, ": s_ptr must hold B*T + 1 entries");
}

inline void check_readout_backward_args(const at::Tensor& grad_o, const at::Tensor& w_out, const char* op) {
  check_float(grad_o, op, "grad_o");
  check_float(w_out, op, "w_out");
  TORCH_CHECK(grad_o.dim() == 3 && w_out.dim() == 2 && grad_o.size(2) == w_out.size(1), op,
              ": grad_o must be [T, B, C] and w_out [N, C]");
}

// lif_sparse_backward, conv_sparse_backward: the values on the active list and dL/dcount [B, N] (or empty)
// of a layer of n neurons (a dense layer's weight.size(1)).
inline void check_sparse_backward_args(const at::Tensor& grad_act, const at::Tensor& act_ptr,
                                       const at::Tensor& act_col, const at::Tensor& act_gate,
                                       const at::Tensor& count_grad, const at::Tensor& weight, int64_t n,
                                       int64_t steps, const char* op) {
  check_float(weight, op, "weight");
  check_float(grad_act, op, "grad_act");
  check_float(act_gate, op, "active_gate");
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be [N_in, N]");
  TORCH_CHECK(steps >= 1 && (act_ptr.numel() - 1) % steps == 0, op, ": active_ptr must hold B*T + 1 entries");
  TORCH_CHECK(grad_act.numel() == act_col.numel() && act_gate.numel() == act_col.numel(), op,
              ": grad_act and active_gate must hold one value per active entry");
  if (count_grad.numel() > 0) {
    const int64_t B = (act_ptr.numel() - 1) / steps, N = n;
    check_float(count_grad, op, "count_grad");
    TORCH_CHECK(count_grad.numel() == B * N, op, ": count_grad must be [B, N] = [", B, ", ", N, "]");
  }
}

// lif_dense_backward, conv_dense_backward: grad and gate [B*T, N], dL/dcount [B, N] (or empty), for a layer
// of n neurons (a dense layer's weight.size(1)).
inline void check_dense_backward_args(const at::Tensor& grad, const at::Tensor& gate, const at::Tensor& count_grad,
                                      const at::Tensor& weight, int64_t n, int64_t steps, const char* op) {
  check_float(grad, op, "grad");
  check_float(gate, op, "gate");
  check_float(weight, op, "weight");
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be [N_in, N]");
  TORCH_CHECK(grad.dim() == 2 && grad.size(1) == n && gate.sizes() == grad.sizes(), op,
              ": grad and gate must both be [B*T, N] with N = ", n);
  TORCH_CHECK(steps >= 1 && grad.size(0) % steps == 0, op, ": grad must have B*T rows");
  TORCH_CHECK(count_grad.numel() == 0 || count_grad.numel() == grad.size(0) / steps * n, op,
              ": count_grad must be [B, N]");
}

// The event ops' schemas, written once: torch.ops.lzo (defined in snn_cpu.cpp, CPU kernels in cpu_*.cpp, CUDA
// kernels in snn_cuda.cu) and torch.ops.lzo_sim (the CUDA kernels run by the simulator, snn_cuda_sim.cpp).
#define LZO_EVENT_OP_SCHEMAS(m) \
  m.def("to_events(Tensor x) -> (Tensor ptr, Tensor col, Tensor val)"); \
  m.def("batch_events(Tensor events, Tensor offsets, Tensor idx, int steps, int units) -> (Tensor ptr, Tensor col)"); \
  m.def( \
      "lif_events_forward(Tensor x_ptr, Tensor x_col, Tensor x_val, Tensor weight, Tensor table, int steps, " \
      "float beta, float theta, int method, int sample_kind, int surrogate_kind, float delta, float bth, float k, " \
      "float band, float term_scale, int samples, int alpha, int seed, int update, int layer, int current_mode) " \
      "-> (Tensor spike_ptr, Tensor spike_col, Tensor counts, Tensor active_ptr, Tensor active_col, " \
      "Tensor active_gate, Tensor dense_gate)"); \
  m.def("readout_forward(Tensor s_ptr, Tensor s_col, Tensor w_out, int steps, float beta_out) -> Tensor"); \
  m.def( \
      "readout_backward(Tensor grad_o, Tensor s_ptr, Tensor s_col, Tensor w_out, float beta_out, " \
      "Tensor active_ptr, Tensor active_col) -> (Tensor grad_w_out, Tensor d_a, Tensor grad_active)"); \
  m.def( \
      "lif_sparse_backward(Tensor grad_active, Tensor active_ptr, Tensor active_col, Tensor active_gate, " \
      "Tensor count_grad, Tensor x_ptr, Tensor x_col, Tensor x_val, Tensor weight, float beta, int steps, " \
      "Tensor prev_ptr, Tensor prev_col) -> (Tensor grad_weight, Tensor grad_prev)"); \
  m.def( \
      "lif_dense_backward(Tensor grad, Tensor gate, Tensor count_grad, Tensor x_ptr, Tensor x_col, Tensor x_val, " \
      "Tensor weight, float beta, int steps, bool input_grad, int current_mode) -> (Tensor grad_weight, Tensor grad_x)"); \
  do {} while (0)

// The convolutional layers' ops (issue 22), CPU kernels in cpu_conv.cpp, CUDA kernels in snn_cuda.cu: shape = [C_in, H, W, C_out, K, stride,
// padding], weight [C_out, C_in*K*K (+1: a bias)], units channels-last (see cpu_conv.cpp).
#define LZO_CONV_OP_SCHEMAS(m) \
  m.def( \
      "conv_lif_forward(Tensor x_ptr, Tensor x_col, Tensor x_val, Tensor weight, int[] shape, Tensor table, " \
      "int steps, float beta, float theta, int method, int sample_kind, int surrogate_kind, float delta, float bth, " \
      "float k, float band, float term_scale, int samples, int alpha, int seed, int update, int layer, " \
      "int current_mode) -> (Tensor spike_ptr, Tensor spike_col, Tensor counts, Tensor active_ptr, " \
      "Tensor active_col, Tensor active_gate, Tensor dense_gate)"); \
  m.def( \
      "conv_sparse_backward(Tensor grad_active, Tensor active_ptr, Tensor active_col, Tensor active_gate, " \
      "Tensor count_grad, Tensor x_ptr, Tensor x_col, Tensor x_val, Tensor weight, int[] shape, float beta, " \
      "int steps, Tensor prev_ptr, Tensor prev_col) -> (Tensor grad_weight, Tensor grad_prev)"); \
  m.def( \
      "conv_dense_backward(Tensor grad, Tensor gate, Tensor count_grad, Tensor x_ptr, Tensor x_col, Tensor x_val, " \
      "Tensor weight, int[] shape, float beta, int steps, bool input_grad, int current_mode) " \
      "-> (Tensor grad_weight, Tensor grad_x)"); \
  m.def("pool_events(Tensor ptr, Tensor col, Tensor val, int[] frame, int pool) -> (Tensor ptr, Tensor col, Tensor val)"); \
  do {} while (0)

// ---- Convolutional layers (ConvGeom, lzo_math.h): the checks and the dense (oneDNN / cuDNN) paths both backends
// share.
inline ConvGeom conv_geom(c10::IntArrayRef shape, const at::Tensor& weight, const char* op) {
  TORCH_CHECK(shape.size() == 7, op, ": shape must be [C_in, H, W, C_out, K, stride, padding], got ", shape.size(),
              " values");
  ConvGeom g{shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6], 0, 0, false};
  TORCH_CHECK(g.cin >= 1 && g.h >= 1 && g.w >= 1 && g.cout >= 1 && g.k >= 1 && g.stride >= 1 && g.pad >= 0, op,
              ": shape [C_in, H, W, C_out, K, stride, padding] must be >= 1 (padding >= 0), got ", shape);
  TORCH_CHECK(g.h + 2 * g.pad >= g.k && g.w + 2 * g.pad >= g.k, op, ": kernel ", g.k, " is larger than the padded input ",
              g.h + 2 * g.pad, "x", g.w + 2 * g.pad);
  g.ho = (g.h + 2 * g.pad - g.k) / g.stride + 1;
  g.wo = (g.w + 2 * g.pad - g.k) / g.stride + 1;
  check_float(weight, op, "weight");
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == g.cout &&
                  (weight.size(1) == g.taps() || weight.size(1) == g.taps() + 1),
              op, ": weight must be [C_out, C_in*K*K] = [", g.cout, ", ", g.taps(), "] (one more column: a bias), got ",
              weight.sizes());
  g.bias = weight.size(1) == g.taps() + 1;
  TORCH_CHECK(g.units_in() < INT32_MAX && g.units_out() < INT32_MAX, op, ": layer too large");
  return g;
}

// pool_events: frame = [C, H, W] of the events' units, pool x pool windows with stride pool.
inline void check_pool_args(c10::IntArrayRef frame, int64_t pool, const char* op) {
  TORCH_CHECK(frame.size() == 3 && frame[0] >= 1 && frame[1] >= 1 && frame[2] >= 1, op,
              ": frame must be [C, H, W] >= 1, got ", frame);
  TORCH_CHECK(pool >= 1 && pool <= frame[1] && pool <= frame[2], op, ": pool must lie in [1, min(H, W)], got ", pool);
}

// Dense rows [B*T, units] (channels-last) as an NCHW view (channels-last memory), without the bias unit.
inline at::Tensor conv_nchw_input(const at::Tensor& dense, const ConvGeom& g) {
  return dense.narrow(1, 0, g.units_in()).view({dense.size(0), g.h, g.w, g.cin}).permute({0, 3, 1, 2});
}

inline at::Tensor conv_weight4(const at::Tensor& weight, const ConvGeom& g) {
  return weight.narrow(1, 0, g.taps()).reshape({g.cout, g.cin, g.k, g.k}).contiguous();
}

// The weight as the event forward reads it, [C_in, K, K, C_out]: an input tap's weights for all outputs contiguous.
inline at::Tensor conv_taps_last(const at::Tensor& weight, const ConvGeom& g) {
  return conv_weight4(weight, g).permute({1, 2, 3, 0}).contiguous();
}

// The bias [C_out], the weight's last column (g.bias only).
inline at::Tensor conv_bias(const at::Tensor& weight, const ConvGeom& g) {
  return weight.select(1, g.taps()).contiguous();
}

// The current of every row by one convolution: input rows [B*T, units_in (+1)] -> [B*T, units_out].
inline at::Tensor conv_current_rows(const at::Tensor& xrows, const at::Tensor& weight, const ConvGeom& g) {
  const std::optional<at::Tensor> bias = g.bias ? std::optional<at::Tensor>(conv_bias(weight, g)) : std::nullopt;
  const at::Tensor out = at::conv2d(conv_nchw_input(xrows, g), conv_weight4(weight, g), bias, {g.stride, g.stride},
                                    {g.pad, g.pad});
  return out.permute({0, 2, 3, 1}).contiguous().view({xrows.size(0), g.units_out()});
}

// ghat [B*T, units_out] (dL/du) as NCHW (channels-last memory).
inline at::Tensor conv_nchw_output(const at::Tensor& ghat, const ConvGeom& g) {
  return ghat.view({ghat.size(0), g.ho, g.wo, g.cout}).permute({0, 3, 1, 2});
}

// The dense rule's dW by the convolution's weight backward: ghat [B*T, units_out], input rows -> weight's layout.
inline at::Tensor conv_gemm_dw(const at::Tensor& ghat, const at::Tensor& xrows, const at::Tensor& weight,
                               const ConvGeom& g) {
  const auto grads = at::convolution_backward(conv_nchw_output(ghat, g), conv_nchw_input(xrows, g),
                                              conv_weight4(weight, g), std::nullopt, {g.stride, g.stride},
                                              {g.pad, g.pad}, {1, 1}, false, {0, 0}, 1, {false, true, false});
  const at::Tensor dw = std::get<1>(grads).reshape({g.cout, g.taps()});
  return g.bias ? at::cat({dw, ghat.view({-1, g.cout}).sum(0).view({g.cout, 1})}, 1) : dw;
}

// The dense rule's dx by a transposed convolution: ghat [B*T, units_out] -> [B*T, units_in] (no bias unit).
inline at::Tensor conv_input_grad(const at::Tensor& ghat, const at::Tensor& weight, const ConvGeom& g) {
  const int64_t oph = (g.h + 2 * g.pad - g.k) % g.stride, opw = (g.w + 2 * g.pad - g.k) % g.stride;
  return at::conv_transpose2d(conv_nchw_output(ghat, g), conv_weight4(weight, g), std::nullopt, {g.stride, g.stride},
                              {g.pad, g.pad}, {oph, opw})
      .permute({0, 2, 3, 1}).contiguous().view({ghat.size(0), g.units_in()});
}

inline GateParams make_params(int64_t method, int64_t sample_kind, int64_t surrogate_kind,
                              double delta, double bth, double k, double band, double term_scale,
                              int64_t samples, int64_t alpha, int64_t seed, int64_t update,
                              int64_t layer, const at::Tensor& table) {
  GateParams g;
  g.method = static_cast<int>(method);
  g.sample_kind = static_cast<int>(sample_kind);
  g.surrogate_kind = static_cast<int>(surrogate_kind);
  g.delta = delta;
  g.bth = static_cast<float>(bth);
  g.k = static_cast<float>(k);
  g.band = static_cast<float>(band);
  g.term_scale = static_cast<float>(term_scale);
  g.samples = static_cast<int>(samples);
  g.alpha = static_cast<int>(alpha);
  g.key0 = static_cast<uint32_t>(static_cast<uint64_t>(seed) & 0xFFFFFFFFu);
  g.key1 = static_cast<uint32_t>(static_cast<uint64_t>(update) & 0xFFFFFFFFu);
  g.layer = static_cast<int>(layer);
  g.table = table.numel() ? table.data_ptr<float>() : nullptr;
  g.table_size = static_cast<int>(table.numel());
  return g;
}

// The CPU backward keeps its running sums (input trace, input gradient) relative to a reference
// step and moves the reference every few steps, so a step without entries costs nothing:
// h *= beta^gap over the row.
inline void rebase_trace(float* h, int64_t n, double beta, int64_t gap) {
  const float f = static_cast<float>(std::pow(beta, static_cast<double>(gap)));
  for (int64_t i = 0; i < n; ++i) h[i] *= f;
}

}  // namespace lzo
