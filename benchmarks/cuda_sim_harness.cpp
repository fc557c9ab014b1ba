// The CUDA kernels of kernels/snn_cuda_kernels.cuh run by the CUDA execution simulator
// (kernels/cuda_sim.h) with no torch and no Python, so ThreadSanitizer and AddressSanitizer + UBSan
// see nothing but our kernels (benchmarks/cuda_sim_sanitize.sh builds and runs it). Every array is
// a std::vector of exactly its size: a kernel that reads or writes past one is an ASan report.
//
// Cases: a two-layer forward and backward chain (event forward with the fused gate and ranking,
// compaction, readout forward/backward, active errors, sparse dW with atomics and in the
// deterministic mode, sparse dx, dense reverse scan, scatter to rows, dense-to-events) for every rule
// at T = 80, layers 40 and 300 wide, graded input with duplicate columns, empty lists; a conv layer's forward,
// pooling and sparse backward (conv_case); grids of 65535 blocks and of 1 block. Exit 0 when every case ran; a sanitizer report exits non-zero.
#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "cuda_sim.h"
#include "snn_cuda_kernels.cuh"

using namespace lzo;

namespace {

int64_t g_grid = 65535;

unsigned grid(int64_t items, int64_t per_block = kThreads) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((items + per_block - 1) / per_block, g_grid)));
}

struct List {
  std::vector<Ptr> ptr;
  std::vector<int32_t> col;
  std::vector<float> val;
};

std::vector<Ptr> pointers(const std::vector<Ptr>& counts) {
  std::vector<Ptr> ptr(counts.size() + 1, 0);
  for (size_t r = 0; r < counts.size(); ++r) ptr[r + 1] = ptr[r] + counts[r];
  return ptr;
}

// Random input events: density per entry, graded values, one duplicated column per row where asked.
List random_input(int64_t rows, int64_t width, double density, bool graded, bool duplicates, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  List x;
  x.ptr.push_back(0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < width; ++i)
      if (u(rng) < density) {
        x.col.push_back(static_cast<int32_t>(i));
        if (graded) x.val.push_back(u(rng) < 0.5f ? 0.5f : 2.0f);
      }
    if (duplicates && x.col.size() > static_cast<size_t>(x.ptr.back())) {
      x.col.push_back(x.col.back());
      if (graded) x.val.push_back(1.0f);
    }
    x.ptr.push_back(static_cast<Ptr>(x.col.size()));
  }
  if (!graded) x.val.clear();
  return x;
}

template <typename T>
std::vector<T> compact(const std::vector<T>& slot, const std::vector<Ptr>& ptr, int64_t rows, int64_t width) {
  std::vector<T> out(std::max<size_t>(1, ptr[rows]));
  if (rows > 0) lzo_sim::launch(&compact_kernel<T>, dim3(grid(rows * kWarp)), dim3(kThreads))(
      slot.data(), ptr.data(), out.data(), rows, width);
  out.resize(ptr[rows]);
  return out;
}

struct Layer {
  List spikes, active;  // active.val: the gates
  std::vector<float> counts, dense_gate;
};

template <typename Current>
Layer forward(const List& x, const Current& current, int64_t T, int64_t B, int64_t N, const GateParams& g) {
  const int64_t rows = T * B;
  const bool sparse = g.method >= SPARSEGRAD;
  std::vector<float> u(B * N, 0.0f), s(B * N, 0.0f), counts(B * N, 0.0f);
  std::vector<int32_t> spk_slot(rows * N), act_slot(sparse ? rows * N : 1);
  std::vector<float> act_val(sparse ? rows * N : 1), dense_gate(g.method == SURROGATE ? rows * N : 1);
  std::vector<Ptr> spk_cnt(rows), act_cnt(rows, 0);
  lzo_sim::launch(&events_forward_kernel<Current>, dim3(grid(B, 1)), dim3(kThreads))(
      x.ptr.data(), x.col.data(), x.val.empty() ? nullptr : x.val.data(), current, nullptr, g, T, B, N, 0.9f, 1.0f, u.data(), s.data(), counts.data(), spk_slot.data(), spk_cnt.data(), sparse ? act_slot.data() : nullptr,
      sparse ? act_val.data() : nullptr, sparse ? act_cnt.data() : nullptr,
      g.method == SURROGATE ? dense_gate.data() : nullptr);
  Layer out;
  out.spikes.ptr = pointers(spk_cnt);
  out.spikes.col = compact(spk_slot, out.spikes.ptr, rows, N);
  out.active.ptr = pointers(act_cnt);
  if (sparse) {
    out.active.col = compact(act_slot, out.active.ptr, rows, N);
    out.active.val = compact(act_val, out.active.ptr, rows, N);
  }
  out.counts = counts;
  out.dense_gate = dense_gate;
  return out;
}

void validate(const List& l, int64_t rows, int64_t width) {
  lzo_sim::launch(&validate_list_kernel, dim3(grid(std::max<int64_t>(rows, l.col.size()))), dim3(kThreads))(
      l.ptr.data(), l.col.data(), rows, static_cast<int64_t>(l.col.size()), width);
}

// dW^T [N, Nin] and (where prev) dL/ds at prev's entries, as lif_sparse_backward_cuda does.
void sparse_backward(const List& act, const std::vector<float>& grad_act, const List& x, const std::vector<float>& W,
                     int64_t T, int64_t B, int64_t Nin, int64_t N, bool deterministic, const List* prev) {
  const int64_t rows = T * B;
  validate(act, rows, N);
  validate(x, rows, Nin);
  std::vector<float> e(std::max<size_t>(1, act.col.size())), cg(B * N, 0.01f);
  if (!act.col.empty())
    lzo_sim::launch(&active_error_kernel, dim3(grid(rows * kWarp)), dim3(kThreads))(
        act.ptr.data(), act.col.data(), grad_act.data(), act.val.data(), cg.data(), e.data(), rows, T, N);
  const unsigned tiles = static_cast<unsigned>((Nin + kThreads - 1) / kThreads);
  const int64_t group_rows = deterministic ? 2 : 1, groups = (B + group_rows - 1) / group_rows;
  std::vector<float> dwt((deterministic ? groups : 1) * N * Nin, 0.0f);
  if (!act.col.empty())
    lzo_sim::launch(&sparse_dw_kernel, dim3(tiles, static_cast<unsigned>(std::min<int64_t>(groups, g_grid)),
                                            deterministic ? 3u : 1u),  // slices of neurons, as snn_cuda.cu splits them
                    dim3(kThreads))(act.ptr.data(), act.col.data(), e.data(), x.ptr.data(), x.col.data(),
                                    x.val.empty() ? nullptr : x.val.data(), dwt.data(), T, B, Nin, N, 0.9f,
                                    group_rows, groups, !deterministic, deterministic);
  if (!prev || prev->col.empty()) return;
  validate(*prev, rows, Nin);
  std::vector<float> wt(N * Nin), g_prev(prev->col.size());
  for (int64_t i = 0; i < Nin; ++i)
    for (int64_t j = 0; j < N; ++j) wt[j * Nin + i] = W[i * N + j];
  lzo_sim::launch(&sparse_dx_kernel, dim3(tiles, static_cast<unsigned>(std::min<int64_t>(B, g_grid))),
                  dim3(kThreads))(act.ptr.data(), act.col.data(), e.data(), wt.data(), prev->ptr.data(),
                                  prev->col.data(), g_prev.data(), T, B, Nin, 0.9f);
}

GateParams params(int method, int samples) {
  GateParams g{};
  g.method = method;
  g.sample_kind = SAMPLE_NORMAL;
  g.surrogate_kind = SURR_NORMAL;
  g.delta = 0.4;
  g.bth = 0.45f;
  g.band = method == SPARSEGRAD ? 0.45f : 3.0e38f;
  g.term_scale = 1.0f / static_cast<float>(samples);
  g.samples = samples;
  g.alpha = 1;
  g.key0 = 5;
  g.key1 = 9;
  return g;
}

// One training step's kernels through a network Nin -> N1 -> N2 -> C.
int64_t network_case(int method, int64_t T, int64_t B, int64_t Nin, int64_t N1, int64_t N2, double density, bool graded,
                     float gain, bool deterministic, std::mt19937& rng) {
  const int64_t C = 4, rows = T * B;
  std::uniform_real_distribution<float> w(-gain, gain);
  auto weights = [&](int64_t a, int64_t b) {
    std::vector<float> v(a * b);
    for (auto& x : v) x = w(rng);
    return v;
  };
  const auto W1 = weights(Nin, N1), W2 = weights(N1, N2), Wo = weights(N2, C);
  const List x = random_input(rows, Nin, density, graded, graded, rng);
  validate(x, rows, Nin);
  GateParams g = params(method, method == LOCALZO ? 2 : 1);
  g.layer = 0;
  const Layer l1 = forward(x, DenseCurrent{W1.data(), Nin, N1}, T, B, N1, g);
  g.layer = 1;
  const Layer l2 = forward(l1.spikes, DenseCurrent{W2.data(), N1, N2}, T, B, N2, g);
  std::vector<float> o(T * B * C), go(T * B * C, 0.1f), d_a(rows * C), dw_out(B * N2 * C, 0.0f);
  lzo_sim::launch(&readout_forward_kernel, dim3(grid(B * C)), dim3(kThreads))(
      l2.spikes.ptr.data(), l2.spikes.col.data(), Wo.data(), o.data(), T, B, N2, C, 0.85f, 0.15f);
  lzo_sim::launch(&readout_backward_kernel, dim3(grid(B * C)), dim3(kThreads))(
      go.data(), l2.spikes.ptr.data(), l2.spikes.col.data(), d_a.data(), dw_out.data(), true, T, B, C, N2, 0.85f, 0.15f);
  if (method == SURROGATE) {  // the dense rule: reverse scan, rows for the GEMM
    std::vector<float> grad(rows * N2, 0.05f), ghat(rows * N2), xrows(rows * N1, 0.0f);
    lzo_sim::launch(&dense_reverse_kernel, dim3(grid(B * N2)), dim3(kThreads))(
        grad.data(), l2.dense_gate.data(), l2.counts.data(), ghat.data(), T, B, N2, 0.9f);
    if (!l1.spikes.col.empty()) {
      if (deterministic)
        lzo_sim::launch(&scatter_rows_ordered_kernel, dim3(grid(rows * kWarp)), dim3(kThreads))(
            l1.spikes.ptr.data(), l1.spikes.col.data(), nullptr, xrows.data(), rows, N1);
      else
        lzo_sim::launch(&scatter_rows_kernel, dim3(grid(rows * kWarp)), dim3(kThreads))(
            l1.spikes.ptr.data(), l1.spikes.col.data(), nullptr, xrows.data(), rows, N1);
    }
    return static_cast<int64_t>(l1.spikes.col.size() + l2.spikes.col.size());
  }
  std::vector<float> g_act(std::max<size_t>(1, l2.active.col.size()));
  if (!l2.active.col.empty())
    lzo_sim::launch(&readout_active_grad_kernel, dim3(grid(rows * kWarp)), dim3(kThreads))(
        l2.active.ptr.data(), l2.active.col.data(), d_a.data(), Wo.data(), g_act.data(), rows, C);
  sparse_backward(l2.active, g_act, l1.spikes, W2, T, B, N1, N2, deterministic, &l1.active);
  std::vector<float> g1(std::max<size_t>(1, l1.active.col.size()), 0.02f);
  sparse_backward(l1.active, g1, x, W1, T, B, Nin, N1, deterministic, nullptr);
  return static_cast<int64_t>(l1.active.col.size() + l2.active.col.size());
}

// Dense rows -> a list, as to_events and pool_events do (count, pointers, fill); rows r of width `width`.
List events_from_rows(const std::vector<float>& dense, int64_t rows, int64_t width) {
  std::vector<Ptr> cnt(rows, 0);
  lzo_sim::launch(&count_nonzero_rows_kernel, dim3(grid(rows * kWarp)), dim3(kThreads))(dense.data(), cnt.data(), 1,
                                                                                          rows, width);
  List out;
  out.ptr = pointers(cnt);
  out.col.resize(out.ptr[rows]);
  out.val.resize(out.ptr[rows]);
  if (out.ptr[rows] > 0)
    lzo_sim::launch(&fill_events_kernel, dim3(grid(rows * kWarp)), dim3(kThreads))(
        dense.data(), out.ptr.data(), out.col.data(), out.val.data(), 1, rows, width);
  return out;
}

// One conv layer's step as snn_cuda.cu runs it: the forward with the gathered conv current (a bias unit in the
// input), sum pooling of its spikes, and for the sparse rules the backward: active errors, the input traces'
// scan, dW into parts of `rows_per` rows each, the input gradient's scatter (warp barriers between entries), its
// reverse scan and the gather at a previous layer's entries.
int64_t conv_case(int method, int64_t T, int64_t B, ConvGeom cg, int64_t rows_per, double density, bool graded,
                  std::mt19937& rng) {
  cg.ho = (cg.h + 2 * cg.pad - cg.k) / cg.stride + 1;
  cg.wo = (cg.w + 2 * cg.pad - cg.k) / cg.stride + 1;
  const int64_t rows = T * B, units = cg.units_in(), nin = units + (cg.bias ? 1 : 0), N = cg.units_out();
  std::uniform_real_distribution<float> w(-0.6f, 0.6f);
  std::vector<float> wf(cg.taps() * cg.cout), W(cg.cout * cg.weight_cols()), bias(cg.cout);
  for (auto& v : W) v = w(rng);
  for (int64_t o = 0; o < cg.cout; ++o) {
    for (int64_t tap = 0; tap < cg.taps(); ++tap) wf[tap * cg.cout + o] = W[o * cg.weight_cols() + tap];
    if (cg.bias) bias[o] = W[o * cg.weight_cols() + cg.taps()];
  }
  List x = random_input(rows, units, density, graded, false, rng);
  if (cg.bias) {  // the bias unit fires at every row
    List xb;
    xb.ptr.push_back(0);
    for (int64_t r = 0; r < rows; ++r) {
      for (Ptr q = x.ptr[r]; q < x.ptr[r + 1]; ++q) {
        xb.col.push_back(x.col[q]);
        if (graded) xb.val.push_back(x.val[q]);
      }
      xb.col.push_back(static_cast<int32_t>(units));
      if (graded) xb.val.push_back(1.0f);
      xb.ptr.push_back(static_cast<Ptr>(xb.col.size()));
    }
    x = xb;
  }
  validate(x, rows, nin);
  const GateParams g = params(method, method == LOCALZO ? 2 : 1);
  const Layer l = forward(x, ConvCurrent{cg, wf.data(), cg.bias ? bias.data() : nullptr}, T, B, N, g);
  std::vector<float> pooled(rows * (cg.ho / 2) * (cg.wo / 2) * cg.cout, 0.0f);
  if (cg.ho >= 2 && cg.wo >= 2)
    lzo_sim::launch(&pool_rows_kernel, dim3(grid(rows)), dim3(kThreads))(
        l.spikes.ptr.data(), l.spikes.col.data(), nullptr, pooled.data(), rows, cg.cout, cg.ho, cg.wo, int64_t(2));
  events_from_rows(pooled, rows, (cg.ho / 2) * (cg.wo / 2) * cg.cout);
  if (method == SURROGATE || l.active.col.empty()) return static_cast<int64_t>(l.spikes.col.size());
  std::vector<float> grad(l.active.col.size(), 0.05f), e(l.active.col.size()), cgrad(B * N, 0.01f);
  lzo_sim::launch(&active_error_kernel, dim3(grid(rows * kWarp)), dim3(kThreads))(
      l.active.ptr.data(), l.active.col.data(), grad.data(), l.active.val.data(), cgrad.data(), e.data(), rows, T, N);
  std::vector<float> xbar(rows * nin, 0.0f);
  lzo_sim::launch(&scatter_rows_kernel, dim3(grid(rows * kWarp)), dim3(kThreads))(
      x.ptr.data(), x.col.data(), x.val.empty() ? nullptr : x.val.data(), xbar.data(), rows, nin);
  lzo_sim::launch(&scan_rows_kernel, dim3(grid(B * nin)), dim3(kThreads))(xbar.data(), T, B, nin, 0.9f, false);
  const int64_t parts = (rows + rows_per - 1) / rows_per;
  std::vector<float> dw(parts * cg.cout * cg.weight_cols(), 0.0f);
  lzo_sim::launch(&conv_dw_kernel, dim3(grid(parts * kWarp)), dim3(kThreads))(
      l.active.ptr.data(), l.active.col.data(), e.data(), xbar.data(), dw.data(), cg, rows, rows_per, parts);
  std::vector<float> dy(rows * units, 0.0f);
  lzo_sim::launch(&conv_dx_scatter_kernel, dim3(grid(rows * kWarp)), dim3(kThreads))(
      l.active.ptr.data(), l.active.col.data(), e.data(), W.data(), dy.data(), cg, rows);
  lzo_sim::launch(&scan_rows_kernel, dim3(grid(B * units)), dim3(kThreads))(dy.data(), T, B, units, 0.9f, true);
  const List prev = random_input(rows, units, 0.1, false, false, rng);  // a previous layer's active entries
  std::vector<float> g_prev(std::max<size_t>(1, prev.col.size()));
  if (!prev.col.empty())
    lzo_sim::launch(&gather_rows_kernel, dim3(grid(rows * kWarp)), dim3(kThreads))(
        prev.ptr.data(), prev.col.data(), dy.data(), g_prev.data(), rows, units);
  return static_cast<int64_t>(l.active.col.size());
}

void to_events_case(int64_t T, int64_t B, int64_t N, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> x(T * B * N);
  for (auto& v : x) v = u(rng) < 0.3f ? u(rng) : 0.0f;
  const int64_t rows = T * B;
  std::vector<Ptr> cnt(rows, 0);
  lzo_sim::launch(&count_nonzero_rows_kernel, dim3(grid(rows * kWarp)), dim3(kThreads))(x.data(), cnt.data(), T, B, N);
  const auto ptr = pointers(cnt);
  std::vector<int32_t> col(ptr[rows]);
  std::vector<float> val(ptr[rows]);
  if (ptr[rows] > 0)
    lzo_sim::launch(&fill_events_kernel, dim3(grid(rows * kWarp)), dim3(kThreads))(
        x.data(), ptr.data(), col.data(), val.data(), T, B, N);
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  int cases = 0;
  for (int64_t blocks : {65535, 1}) {
    g_grid = blocks;
    for (int method : {SURROGATE, SPARSEGRAD, LOCALZO}) {
      const int64_t a = network_case(method, 80, 3, 40, 40, 24, 0.2, false, 0.5f, false, rng);   // T = 80, 40 wide
      const int64_t b = network_case(method, 12, 2, 300, 300, 70, 0.05, true, 0.3f, false, rng);  // 300 wide, graded
      network_case(method, 20, 5, 30, 20, 10, 0.2, false, 0.5f, true, rng);                      // deterministic dW
      network_case(method, 10, 2, 16, 12, 8, 0.0, false, 0.5f, false, rng);                       // empty lists
      std::printf("grid %5lld  %-10s T80/40-wide: %lld entries, 300-wide graded: %lld entries\n",
                  static_cast<long long>(blocks), method == SURROGATE ? "surrogate" : method == SPARSEGRAD ? "sparsegrad" : "localzo",
                  static_cast<long long>(a), static_cast<long long>(b));
      cases += 4;
      // conv: 2x9x9 -> 5 channels 3x3 pad 1 with a bias (405 outputs: 7 chunks of 64), 3 rows per dW part; then
      // 3x7x8 -> 4 channels 5x5 stride 2 (kernel 5, 12 outputs), graded input, 1 row per part
      const int64_t c1 = conv_case(method, 72, 2, ConvGeom{2, 9, 9, 5, 3, 1, 1, 0, 0, true}, 3, 0.2, false, rng);
      const int64_t c2 = conv_case(method, 20, 3, ConvGeom{3, 7, 8, 4, 5, 2, 0, 0, 0, false}, 1, 0.3, true, rng);
      std::printf("grid %5lld  %-10s conv 9x9 pad 1 bias: %lld entries, conv 5x5 stride 2 graded: %lld entries\n",
                  static_cast<long long>(blocks), method == SURROGATE ? "surrogate" : method == SPARSEGRAD ? "sparsegrad" : "localzo",
                  static_cast<long long>(c1), static_cast<long long>(c2));
      cases += 2;
    }
    to_events_case(13, 5, 70, rng);
    ++cases;
  }
  std::printf("cuda_sim harness: %d cases ran\n", cases);
  return 0;
}
