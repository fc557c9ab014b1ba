// Sparse end to end on the CPU (DESIGN.md section 5b): event-driven forward, fused scan + gate,
// readout, and a backward that hands gradients between layers as values on the active lists.
//
// Event lists are CSR over rows r = b*T + t (batch-row major: one batch row's steps are
// contiguous, which is the order both the forward scan and the backward walk use):
//   ptr [B*T + 1] int32, col [nnz] int32, val [nnz] float32 (empty: every value is 1); a list holds
//   fewer than 2^31 events (checked where one is made).
// The same layout holds input spikes, a layer's spikes (its next layer's input) and a layer's
// active entries (col = neuron j, with their gate values beside).
//
// lif_events_forward   I[t,b,:] = sum over events (t,b,i) of val * W[i,:]   (cost nnz(x)*N; one
//                      GEMM over all rows when the input is dense, see kGemmDensity), then the
//                      LIF scan u = beta*u + I - theta*s_prev, s = H(u - theta), fused with the gate.
// readout_forward      o[t] = beta_r*o[t-1] + (1 - beta_r)*(s[t] @ W_out), from the spike events.
// readout_backward     ghat_o[t] = dL/do[t] + beta_r*ghat_o[t+1], d_a = (1 - beta_r)*ghat_o;
//                      dW_out[j,:] += d_a[t,b,:] per spike (t,b,j); dL/ds at the last layer's
//                      active entries = d_a[t,b,:] . W_out[j,:].
// lif_sparse_backward  e = (dL/ds + dL/dcount) * gamma on the active list; dW[:, j] += e * xbar[t, b, :] with
//                      the input trace xbar[t] = beta*xbar[t-1] + x[t] (kept relative to a reference
//                      step, see Powers); dL/ds of the previous layer only at its active entries:
//                      sum over entries t' >= t of beta^(t'-t) e W[i,j]. Nothing of size T*B*N.
// lif_dense_backward   the dense rule: ghat[t] = e[t] + beta*ghat[t+1]; dW = x^T ghat (events or
//                      GEMM, the forward's choice); dx = ghat W^T.
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "lif_common.h"
#include "philox_avx2.h"

namespace lzo {

using at::Tensor;

namespace {

// Input density (nnz / (rows * N_in)) above which one GEMM over all rows beats adding W rows per
// event: measured 0.25-0.4 (forward and dense dW, N_in 200 and 1156, 1 and 2 threads) with
// benchmarks/forward_crossover.py (BENCHMARKS.md).
constexpr double kGemmDensity = 0.25;
// The same for a conv layer (the event scatter against one at::conv2d, oneDNN): the forward's current from
// 0.1, the dense rule's dW (events against oneDNN's convolution backward) from 0.03; measured on the N-MNIST
// conv layer 1 (2x34x34 -> 12, 5x5, T = 100, B = 32, 1 thread) with benchmarks/forward_crossover.py --arch conv.
constexpr double kConvGemmDensity = 0.1, kConvDwGemmDensity = 0.03;
constexpr int64_t kRebaseSteps = 32;

enum CurrentMode : int64_t { CURRENT_AUTO = 0, CURRENT_EVENTS = 1, CURRENT_GEMM = 2 };

using Ptr = int32_t;  // row pointers: half the bytes of int64 for the lists the backward keeps
constexpr auto kPtr = at::kInt;

struct EventView {
  const Ptr* ptr;
  const int32_t* col;
  const float* val;  // nullptr: every value is 1
  float value(int64_t q) const { return val ? val[q] : 1.0f; }
};

EventView view(const Tensor& ptr, const Tensor& col, const Tensor& val) {
  return {ptr.data_ptr<Ptr>(), col.data_ptr<int32_t>(), val.numel() ? val.data_ptr<float>() : nullptr};
}

void check_events(const Tensor& ptr, const Tensor& col, const Tensor& val, int64_t rows, const char* op,
                  const char* name) {
  TORCH_CHECK(ptr.scalar_type() == kPtr && ptr.dim() == 1 && ptr.is_contiguous(), op, ": ", name,
              "_ptr must be a contiguous 1-D int32 tensor");
  TORCH_CHECK(rows >= 0 && ptr.numel() == rows + 1, op, ": ", name, "_ptr must hold B*T + 1 = ", rows + 1,
              " row pointers (at least 1), got ", ptr.numel());
  TORCH_CHECK(col.scalar_type() == at::kInt && col.dim() == 1 && col.is_contiguous(), op, ": ", name,
              "_col must be a contiguous 1-D int32 tensor");
  TORCH_CHECK(val.numel() == 0 || (val.scalar_type() == at::kFloat && val.is_contiguous() &&
                                   val.numel() == col.numel()),
              op, ": ", name, "_val must be empty or hold one float32 per event");
  TORCH_CHECK(ptr.device().is_cpu() && col.device().is_cpu(), op, ": ", name, " events must be on the CPU");
  const Ptr* p = ptr.data_ptr<Ptr>();
  TORCH_CHECK(p[0] == 0 && p[rows] == col.numel(), op, ": ", name, "_ptr must run from 0 to nnz = ",
              col.numel());
}

// Columns must index [0, width); checked once for lists that come from outside the forward.
void check_columns(const Tensor& col, int64_t width, const char* op, const char* name) {
  if (col.numel() == 0) return;
  const auto mm = at::aminmax(col);
  const int64_t lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < width, op, ": ", name, "_col must lie in [0, ", width, "), got [", lo, ", ",
              hi, "]");
}

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

// std::bit_cast without C++20: torch 2.11's extension builds are C++17 (seen on the GPU machine,
// where std::bit_cast failed to compile).
template <typename To, typename From>
inline To bits_as(From x) {
  static_assert(sizeof(To) == sizeof(From), "bits_as: sizes differ");
#if defined(__has_builtin)
#if __has_builtin(__builtin_bit_cast)
  return __builtin_bit_cast(To, x);
#endif
#endif
  To y;
  std::memcpy(&y, &x, sizeof(To));
  return y;
}

// e^x for x <= 0, flushed to 0 where e^x is below FLT_MIN (x < -87.33: a denormal gate value moves
// no gradient, and glibc's expf takes a slow path there). Cody-Waite reduction and Cephes' degree-6
// polynomial; relative error < 2e-7 against expf. Written without float selects (the clamp works on
// the bit pattern: for negative floats a larger magnitude is a larger int32) so loops over it vectorise.
inline float exp_neg_ftz(float x) {
  constexpr int32_t kBitsMinus100 = static_cast<int32_t>(0xC2C80000u);  // -100.0f
  const float xc = bits_as<float>(std::min(bits_as<int32_t>(x), kBitsMinus100));
  const int32_t ni = static_cast<int32_t>(xc * 1.44269504088896341f - 0.5f);  // round(x / ln 2)
  const float n = static_cast<float>(ni);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const float scale = bits_as<float>((ni + 127) << 23);
  const int32_t keep = -static_cast<int32_t>(x >= -87.33f);
  return bits_as<float>(bits_as<int32_t>(e * scale) & keep);
}

// The dense gate g(v) for a row of potentials, one loop per surrogate so each vectorises.
void surrogate_row(const GateParams& g, const float* v, float* out, int64_t n) {
  const double d = g.delta;
  switch (g.surrogate_kind) {
    case SURR_NORMAL: {  // eq. 10
      const float a = static_cast<float>(1.0 / (2.0 * d * d)), c = static_cast<float>(1.0 / (d * kSqrt2Pi));
      for (int64_t j = 0; j < n; ++j) out[j] = exp_neg_ftz(-(v[j] * v[j]) * a) * c;
      break;
    }
    case SURR_UNIFORM: {  // eq. 11
      const float a = static_cast<float>(1.0 / (d * d)), c = static_cast<float>(1.0 / (4.0 * 1.7320508075688772 * d));
      for (int64_t j = 0; j < n; ++j) {
        const float r2 = v[j] * v[j] * a;
        out[j] = r2 < 3.0f ? (3.0f - r2) * c : 0.0f;
      }
      break;
    }
    case SURR_LAPLACE: {  // eq. 12
      const float a = static_cast<float>(1.0 / d), c = static_cast<float>(1.0 / (2.0 * d));
      const float s2 = 1.41421356237309515f, h = static_cast<float>(1.0 / 1.4142135623730951);
      for (int64_t j = 0; j < n; ++j) {
        const float r = std::fabs(v[j]) * a;
        out[j] = (r + h) * exp_neg_ftz(-s2 * r) * c;
      }
      break;
    }
    case SURR_SIGMOID: {  // k e / (1 + e)^2 with e = exp(-k|v|)
      for (int64_t j = 0; j < n; ++j) {
        const float e = exp_neg_ftz(-g.k * std::fabs(v[j]));
        const float q = 1.0f + e;
        out[j] = g.k * e / (q * q);
      }
      break;
    }
    default: {  // fast sigmoid
      for (int64_t j = 0; j < n; ++j) {
        const float q = 1.0f + g.k * std::fabs(v[j]);
        out[j] = 1.0f / (q * q);
      }
    }
  }
}

// One step of the LIF scan over a row of neurons (lzo_math.h lif_step, vectorised), fused with the
// two compactions the forward needs, so the row is read once:
//   u = beta*u + I - theta*s_prev,  v = u - theta,  s = H(v);
//   sj[0..spikes)          the neurons with s = 1, in j order;
//   cj/cav[0..candidates)  (j, |v|) of the gate's candidates |v| < band, in j order (band <= 0: none);
//   v_out                  v of every neuron (the dense gate reads it), when not null.
// With AVX2 a block of 8 neurons yields a bit mask per list: the spikes' set bits are visited (~1 % of
// a row), the candidates (<= 15 %) are left-packed without a branch (8 lanes stored at the count, which
// is at most j, so within n); the same float operations in the same order as the scalar loop, so both
// give the same bits.
#if defined(__AVX2__)
// lanes[m] = the set bits of m in ascending order, then zeros: the permutation that left-packs a mask.
struct LeftPack {
  alignas(32) int32_t lanes[256][8];
  LeftPack() {
    for (int m = 0; m < 256; ++m) {
      int k = 0;
      for (int i = 0; i < 8; ++i)
        if (m & (1 << i)) lanes[m][k++] = i;
      while (k < 8) lanes[m][k++] = 0;
    }
  }
};
const LeftPack kLeftPack;
#endif

struct RowLists {
  int64_t spikes = 0, candidates = 0;
};

inline RowLists lif_row(float* __restrict u, float* __restrict s, const float* __restrict cur, int64_t n, float beta,
                        float theta, float band, int32_t* __restrict sj, uint32_t* __restrict cj,
                        float* __restrict cav, float* __restrict v_out) {
  RowLists out;
  int64_t j = 0;
#if defined(__AVX2__)
  const __m256 vb = _mm256_set1_ps(beta), vt = _mm256_set1_ps(theta), vband = _mm256_set1_ps(band);
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
  const __m256 abs_bits = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const bool candidates = band > 0.0f;
  for (; j + 8 <= n; j += 8) {
    const __m256 uu = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(vb, _mm256_loadu_ps(u + j)), _mm256_loadu_ps(cur + j)),
                                    _mm256_mul_ps(vt, _mm256_loadu_ps(s + j)));
    _mm256_storeu_ps(u + j, uu);
    const __m256 vv = _mm256_sub_ps(uu, vt);
    const __m256 fire = _mm256_cmp_ps(vv, zero, _CMP_GT_OQ);
    _mm256_storeu_ps(s + j, _mm256_and_ps(fire, one));
    if (v_out) _mm256_storeu_ps(v_out + j, vv);
    for (unsigned m = static_cast<unsigned>(_mm256_movemask_ps(fire)); m; m &= m - 1)
      sj[out.spikes++] = static_cast<int32_t>(j + __builtin_ctz(m));
    if (!candidates) continue;
    const __m256 av = _mm256_and_ps(vv, abs_bits);
    const unsigned mc = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(av, vband, _CMP_LT_OQ)));
    const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kLeftPack.lanes[mc]));
    const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(j)), lanes);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(cj + out.candidates), _mm256_permutevar8x32_epi32(idx, perm));
    _mm256_storeu_ps(cav + out.candidates, _mm256_permutevar8x32_ps(av, perm));
    out.candidates += __builtin_popcount(mc);
  }
#endif
  for (; j < n; ++j) {
    const float uu = beta * u[j] + cur[j] - theta * s[j];
    u[j] = uu;
    const float vv = uu - theta;
    const bool fire = vv > 0.0f;
    s[j] = fire ? 1.0f : 0.0f;
    if (v_out) v_out[j] = vv;
    if (fire) sj[out.spikes++] = static_cast<int32_t>(j);
    const float av = std::fabs(vv);
    if (av < band) {
      cj[out.candidates] = static_cast<uint32_t>(j);
      cav[out.candidates++] = av;
    }
  }
  return out;
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

// The gates of the sparse rules for one row (t, b) of potentials, computed only at the candidates
// |v| < band, which lif_row collects as it scans (DESIGN.md 5b, item 3).
//   sparsegrad: g(|v|) on the candidates, vectorised (surrogate_row).
//   localzo:    exactly gate() of lzo_math.h (the same Philox counters, the same sum over k), with
//               Philox as one vectorised loop over the candidates, and the inverse CDF skipped where
//               the uniform alone proves a draw inactive: skip_below[i] is a uniform under which
//               delta*|z| < i*h for sure (bisection on abs_icdf itself, 1e-4 margins in u and z),
//               and a candidate with |v| >= i*h is inactive for every u below it.
class SparseGateRows {
 public:
  static constexpr int kGrid = 256;

  explicit SparseGateRows(const GateParams& g)
      : g_(g), h_(g.band / kGrid), inv_h_(kGrid / g.band), skip_below_(kGrid + 1, 0.0f) {
    if (g.method != LOCALZO) return;
    const float delta = static_cast<float>(g.delta);
    for (int i = 1; i <= kGrid; ++i) {
      const float z_target = (static_cast<float>(i) * h_ / delta) * (1.0f - 1e-4f);
      uint32_t lo = 0, hi = 1u << 23;  // u = (m + 0.5) 2^-23: the first m with |z| >= z_target
      while (lo < hi) {
        const uint32_t mid = (lo + hi) / 2;
        if (abs_icdf(g, uniform_from_bits(mid << 9)) < z_target) lo = mid + 1; else hi = mid;
      }
      skip_below_[i] = std::max(0.0f, uniform_from_bits(lo << 9) - 1e-4f);
    }
  }

  // The candidate buffers of a row of n neurons, which lif_row fills: (j, |v|) with |v| < band.
  void reserve(int64_t n) {
    cj_.resize(n);
    cav_.resize(n);
    acc_.resize(n);
    ukeep_.resize(n);
    surv_.resize(n);
  }
  uint32_t* cand_j() { return cj_.data(); }
  float* cand_av() { return cav_.data(); }

  // Appends the non-zero gates of row (t, b) from its nc candidates, in j order; returns how many.
  int64_t row(int64_t nc, int t, int b, std::vector<int32_t>& col, std::vector<float>& val) {
    if (nc == 0) return 0;
    if (g_.method == LOCALZO && g_.samples == 1) return single_draw(nc, t, b, col, val);
    if (g_.method == SPARSEGRAD) {
      surrogate_row(g_, cav_.data(), acc_.data(), nc);
    } else {
      draws(nc, t, b);
      for (int64_t c = 0; c < nc; ++c) acc_[c] = acc_[c] * g_.term_scale;
    }
    int64_t added = 0;
    for (int64_t c = 0; c < nc; ++c)
      if (acc_[c] != 0.0f) {
        col.push_back(static_cast<int32_t>(cj_[c]));
        val.push_back(acc_[c]);
        ++added;
      }
    return added;
  }

 private:
  // uk[c] = the uniform of sample k at candidate c (Philox, the uniform and the table lookup in one
  // vectorised loop); returns how many draws the skip table could not rule out, their candidates
  // left-packed into surv_ in c order (8 lanes stored at the count, at most c, so within nc).
  int64_t uniforms(int64_t nc, int t, int b, int k) {
    const uint32_t tt = static_cast<uint32_t>(t), bb = static_cast<uint32_t>(b);
    const uint32_t c3 = (static_cast<uint32_t>(g_.layer) << 16) | static_cast<uint32_t>(k);
    const uint32_t* cj = cj_.data();
    const float* cav = cav_.data();
    const float* skip = skip_below_.data();
    float* uk = ukeep_.data();
    int32_t* sv = surv_.data();
    int64_t c = 0, ns = 0;
#if defined(__AVX2__)
    const __m256 inv_h = _mm256_set1_ps(inv_h_), half = _mm256_set1_ps(0.5f), ulp = _mm256_set1_ps(1.1920928955078125e-07f);
    const __m256i grid = _mm256_set1_epi32(kGrid), lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 grid_f = _mm256_set1_ps(static_cast<float>(kGrid));
    for (; c + 8 <= nc; c += 8) {
      const __m256i x = philox8_x0(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(cj + c)), tt, bb, c3,
                                   g_.key0, g_.key1);
      const __m256 u = _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 9)), half), ulp);
      // clamped in float first: a band so small that inv_h is inf gives inf or NaN here (min_ps returns kGrid
      // for NaN), which cvttps would turn into INT_MIN
      const __m256i cell = _mm256_min_epi32(
          grid, _mm256_cvttps_epi32(_mm256_min_ps(_mm256_mul_ps(_mm256_loadu_ps(cav + c), inv_h), grid_f)));
      const __m256 keep = _mm256_cmp_ps(u, _mm256_i32gather_ps(skip, cell, 4), _CMP_GE_OQ);
      _mm256_storeu_ps(uk + c, u);
      const unsigned m = static_cast<unsigned>(_mm256_movemask_ps(keep));
      const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kLeftPack.lanes[m]));
      const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(c)), lanes);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(sv + ns), _mm256_permutevar8x32_epi32(idx, perm));
      ns += __builtin_popcount(m);
    }
#endif
    for (; c < nc; ++c) {
      const float u = uniform_from_bits(philox4x32_10_x0(cj[c], tt, bb, c3, g_.key0, g_.key1));
      const float f = cav[c] * inv_h_;
      const int cell = f < static_cast<float>(kGrid) ? static_cast<int>(f) : kGrid;  // NaN and inf: the last cell
      uk[c] = u;
      sv[ns] = static_cast<int32_t>(c);
      ns += !(u < skip[cell]);
    }
    return ns;
  }

  // m = 1: the gate is |z|^alpha / (2 delta) * c where the one draw is active, else 0; only the
  // draws the table could not rule out are looked at again.
  int64_t single_draw(int64_t nc, int t, int b, std::vector<int32_t>& col, std::vector<float>& val) {
    const int64_t ns = uniforms(nc, t, b, 0);
    const float two_delta = static_cast<float>(2.0 * g_.delta), delta = static_cast<float>(g_.delta);
    int64_t added = 0;
    for (int64_t i = 0; i < ns; ++i) {
      const int64_t c = surv_[i];
      const float z = abs_icdf(g_, ukeep_[c]);
      if (!(cav_[c] < delta * z)) continue;
      const float gv = (0.0f + int_pow(z, g_.alpha) / two_delta) * g_.term_scale;  // gate()'s sum of one term
      if (gv == 0.0f) continue;
      col.push_back(static_cast<int32_t>(cj_[c]));
      val.push_back(gv);
      ++added;
    }
    return added;
  }

  // acc[c] = sum_k 1(|v| < delta z_k) z_k^alpha / (2 delta) for the nc candidates
  void draws(int64_t nc, int t, int b) {
    std::fill(acc_.begin(), acc_.begin() + nc, 0.0f);
    const float two_delta = static_cast<float>(2.0 * g_.delta), delta = static_cast<float>(g_.delta);
    for (int k = 0; k < g_.samples; ++k) {
      const int64_t ns = uniforms(nc, t, b, k);
      for (int64_t i = 0; i < ns; ++i) {
        const int64_t c = surv_[i];
        const float z = abs_icdf(g_, ukeep_[c]);
        const float term = int_pow(z, g_.alpha) / two_delta;
        if (cav_[c] < delta * z) acc_[c] = acc_[c] + term;
      }
    }
  }

  GateParams g_;
  float h_, inv_h_;
  std::vector<float> skip_below_;
  std::vector<uint32_t> cj_;
  std::vector<float> cav_, acc_, ukeep_;
  std::vector<int32_t> surv_;
};

// Dense rows [rows, width] (row r = b*T + t) from an event list; a column listed twice in a row adds,
// as the event current and the event dW do.
Tensor rows_from_events(const EventView& ev, int64_t rows, int64_t width, const at::TensorOptions& opts) {
  Tensor out = at::zeros({rows, width}, opts);
  float* o = out.data_ptr<float>();
  at::parallel_for(0, rows, 1024, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t q = ev.ptr[r]; q < ev.ptr[r + 1]; ++q) o[r * width + ev.col[q]] += ev.value(q);
  });
  return out;
}

bool use_gemm(int64_t mode, int64_t nnz, int64_t rows, int64_t width, double density = kGemmDensity) {
  if (mode == CURRENT_GEMM) return true;
  if (mode == CURRENT_EVENTS) return false;
  return static_cast<double>(nnz) > density * static_cast<double>(rows) * static_cast<double>(width);
}

// Row counts in ptr[1..rows] -> row pointers; a list of 2^31 events or more is refused.
void prefix_sum(Ptr* ptr, int64_t rows) {
  int64_t total = 0;
  ptr[0] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    total += ptr[r + 1];
    TORCH_CHECK(total <= INT32_MAX, "lzo: an event list would hold ", total, "+ entries, more than the 2^31 - 1 ",
                "its int32 row pointers address; use a smaller batch");
    ptr[r + 1] = static_cast<Ptr>(total);
  }
}

// Per batch row lists joined into one flat list laid out by the row pointers ptr (rows b*T + t).
template <typename T>
Tensor concat(std::vector<std::vector<T>>& parts, const Ptr* ptr, int64_t steps, at::ScalarType type) {
  const int64_t batch = static_cast<int64_t>(parts.size());
  Tensor out = at::empty({ptr[batch * steps]}, at::TensorOptions().dtype(type));
  T* o = static_cast<T*>(out.data_ptr());
  at::parallel_for(0, batch, 8, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      std::copy(parts[b].begin(), parts[b].end(), o + ptr[b * steps]);
      std::vector<T>().swap(parts[b]);
    }
  });
  return out;
}

}  // namespace

namespace {

// The non-zeros of one input row src[0..n) appended to col (and their values to val): blocks of 32
// elements are tested at once (AVX2; inputs are ~1 % dense, so most blocks hold none), a block that
// holds some is walked by its mask bits. x != 0 as C++ compares it (a NaN is an event, -0 is not).
inline uint32_t nonzero_mask8(const float* p) {
#if defined(__AVX2__)
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p), _mm256_setzero_ps(), _CMP_NEQ_UQ)));
#else
  uint32_t m = 0;
  for (int k = 0; k < 8; ++k) m |= static_cast<uint32_t>(p[k] != 0.0f) << k;
  return m;
#endif
}

template <typename S>
inline uint32_t nonzero_mask32(const S* p) {
  if constexpr (std::is_same_v<S, float>) {
    return nonzero_mask8(p) | nonzero_mask8(p + 8) << 8 | nonzero_mask8(p + 16) << 16 | nonzero_mask8(p + 24) << 24;
  } else {
#if defined(__AVX2__)
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return ~static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(bytes, _mm256_setzero_si256())));
#else
    uint32_t m = 0;
    for (int k = 0; k < 32; ++k) m |= static_cast<uint32_t>(p[k] != S(0)) << k;
    return m;
#endif
  }
}

// One part's event lists. Parts are the call's own (any thread may run any part, and two calls may run
// at once); their capacity is kept across calls in a pool, so after the first batch there is no
// allocation and no page fault of fresh memory (issue 21: those cost as much as the pass itself).
struct EventBuffer {
  std::vector<int32_t> col;
  std::vector<float> val;
  int64_t n = 0;
  void room(int64_t extra) {
    if (n + extra <= static_cast<int64_t>(col.size())) return;
    const size_t size = std::max<size_t>(2 * col.size(), static_cast<size_t>(n + extra));
    col.resize(size);
    val.resize(size);
  }
};

class EventBufferPool {
 public:
  std::vector<std::unique_ptr<EventBuffer>> take(size_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::unique_ptr<EventBuffer>> out;
    while (out.size() < n) {
      if (free_.empty()) {
        out.push_back(std::make_unique<EventBuffer>());
      } else {
        out.push_back(std::move(free_.back()));
        free_.pop_back();
      }
      out.back()->n = 0;
    }
    return out;
  }
  void give_back(std::vector<std::unique_ptr<EventBuffer>>& bufs) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& b : bufs) free_.push_back(std::move(b));
    bufs.clear();
  }

 private:
  std::mutex mutex_;
  std::vector<std::unique_ptr<EventBuffer>> free_;
};

EventBufferPool& event_buffer_pool() {
  static EventBufferPool pool;
  return pool;
}

template <typename S>
inline void row_nonzeros(const S* src, int64_t n, EventBuffer& out) {
  out.room(n);
  int32_t* col = out.col.data();
  float* val = out.val.data();
  int64_t e = out.n, i = 0;
  for (; i + 32 <= n; i += 32)
    for (uint32_t m = nonzero_mask32(src + i); m; m &= m - 1) {
      const int64_t k = i + __builtin_ctz(m);
      col[e] = static_cast<int32_t>(k);
      val[e++] = static_cast<float>(src[k]);
    }
  for (; i < n; ++i) {
    col[e] = static_cast<int32_t>(i);
    val[e] = static_cast<float>(src[i]);
    e += src[i] != S(0);
  }
  out.n = e;
}

// to_events over a dense [T, B, N] input of element type S (float, uint8 or bool) in one pass over x,
// in memory order (step-major): the steps are cut into one part per thread, each part appends its events
// to its own lists, then the events move to their rows r = b*T + t (4 bytes each, a few MB against x's read).
template <typename S>
void to_events_rows(const S* xp, int64_t T, int64_t B, int64_t N, Tensor& ptr, Tensor& col, Tensor& val,
                    const at::TensorOptions& opts) {
  const int64_t rows = T * B;
  Ptr* p = ptr.data_ptr<Ptr>();
  std::vector<int64_t> start(static_cast<size_t>(rows));  // (t, b)'s first event in its part's lists
  std::vector<EventBuffer*> owner(static_cast<size_t>(T));
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(T, at::get_num_threads()));
  auto bufs = event_buffer_pool().take(static_cast<size_t>(parts));
  at::parallel_for(0, parts, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      EventBuffer& buf = *bufs[static_cast<size_t>(k)];
      for (int64_t t = k * T / parts; t < (k + 1) * T / parts; ++t) {
        owner[t] = &buf;
        for (int64_t b = 0; b < B; ++b) {
          const int64_t before = buf.n;
          start[t * B + b] = before;
          row_nonzeros(xp + (t * B + b) * N, N, buf);
          p[b * T + t + 1] = static_cast<Ptr>(buf.n - before);
        }
      }
    }
  });
  prefix_sum(p, rows);
  col = at::empty({p[rows]}, opts.dtype(at::kInt));
  val = at::empty({p[rows]}, opts.dtype(at::kFloat));
  int32_t* cp = col.data_ptr<int32_t>();
  float* vp = val.data_ptr<float>();
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t t = 0; t < T; ++t) {
        const int64_t r = b * T + t, from = start[t * B + b], n = p[r + 1] - p[r];
        const int32_t* c = owner[t]->col.data() + from;
        const float* v = owner[t]->val.data() + from;
        for (int64_t q = 0; q < n; ++q) {
          cp[p[r] + q] = c[q];
          vp[p[r] + q] = v[q];
        }
      }
  });
  event_buffer_pool().give_back(bufs);
}

}  // namespace

// x [T, B, N] (float32, uint8 or bool: a spike tensor needs no float copy) -> events of its non-zero
// entries, rows b*T + t, values as float32.
std::tuple<Tensor, Tensor, Tensor> to_events_cpu(const Tensor& x) {
  TORCH_CHECK(x.dim() == 3, "lzo::to_events: x must have shape [T, B, N], got rank ", x.dim());
  TORCH_CHECK(x.device().is_cpu(), "lzo::to_events: x must be on the CPU here, got ", x.device());
  const auto type = x.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kByte || type == at::kBool,
              "lzo::to_events: x must be float32, uint8 or bool, got ", type);
  TORCH_CHECK(x.size(2) < (int64_t(1) << 31), "lzo::to_events: N must be < 2^31");
  const Tensor xc = x.contiguous();
  const int64_t T = x.size(0), B = x.size(1), N = x.size(2);
  Tensor ptr = at::zeros({T * B + 1}, x.options().dtype(kPtr));
  Tensor col, val;
  const auto opts = x.options();
  if (type == at::kFloat)
    to_events_rows(xc.data_ptr<float>(), T, B, N, ptr, col, val, opts);
  else if (type == at::kByte)
    to_events_rows(xc.data_ptr<uint8_t>(), T, B, N, ptr, col, val, opts);
  else
    to_events_rows(xc.data_ptr<bool>(), T, B, N, ptr, col, val, opts);
  return {ptr, col, val};
}

// Samples idx of an event dataset (events[offsets[i]:offsets[i+1]] = flat t*units + u of sample i,
// strictly ascending) as one batch's events, rows b*T + t with b the position in idx.
std::tuple<Tensor, Tensor> batch_events_cpu(const Tensor& events, const Tensor& offsets, const Tensor& idx,
                                            int64_t steps, int64_t units) {
  const char* op = "lzo::batch_events";
  TORCH_CHECK(events.dim() == 1 && events.is_contiguous() &&
                  (events.scalar_type() == at::kInt || events.scalar_type() == at::kLong),
              op, ": events must be a contiguous 1-D int32 or int64 tensor");
  TORCH_CHECK(offsets.scalar_type() == at::kLong && offsets.dim() == 1 && offsets.is_contiguous(), op,
              ": offsets must be a contiguous 1-D int64 tensor");
  TORCH_CHECK(idx.scalar_type() == at::kLong && idx.dim() == 1, op, ": idx must be a 1-D int64 tensor");
  TORCH_CHECK(steps >= 1 && units >= 1 && units < (int64_t(1) << 31), op, ": steps and units must be positive");
  const Tensor ic = idx.contiguous();
  const int64_t B = ic.numel(), n = offsets.numel() - 1, rows = B * steps, limit = steps * units;
  const int64_t* ip = ic.data_ptr<int64_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(ip[b] >= 0 && ip[b] < n, op, ": sample index ", ip[b], " out of range [0, ", n, ")");
  Tensor ptr = at::zeros({rows + 1}, offsets.options().dtype(kPtr));
  Ptr* pp = ptr.data_ptr<Ptr>();
  Tensor col;
  AT_DISPATCH_INDEX_TYPES(events.scalar_type(), "batch_events", [&] {
    const index_t* ev = events.data_ptr<index_t>();
    at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        int64_t prev = -1;
        for (int64_t q = off[ip[b]]; q < off[ip[b] + 1]; ++q) {
          const int64_t pos = static_cast<int64_t>(ev[q]);
          TORCH_CHECK(pos > prev && pos < limit, op, ": the events of sample ", ip[b],
                      " must be strictly ascending flat positions t*units + u below ", limit);
          prev = pos;
          ++pp[b * steps + pos / units + 1];
        }
      }
    });
    prefix_sum(pp, rows);
    col = at::empty({pp[rows]}, offsets.options().dtype(at::kInt));
    int32_t* cp = col.data_ptr<int32_t>();
    at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        int32_t* dst = cp + pp[b * steps];
        for (int64_t q = off[ip[b]]; q < off[ip[b] + 1]; ++q) *dst++ = static_cast<int32_t>(ev[q] % units);
      }
    });
  });
  return {ptr, col};
}

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

// ghat[t] = (dL/ds[t] + dL/dcount) * gamma[t] + beta * ghat[t+1] over grad, gate [B*T, N] (rows b*T + t):
// dL/du of the dense rule, the input of its dW and dx.
Tensor dense_ghat(const Tensor& grad, const Tensor& gate, const Tensor& count_grad, double beta, int64_t steps) {
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

TORCH_LIBRARY_FRAGMENT(lzo, m) {
  LZO_EVENT_OP_SCHEMAS(m);
  LZO_CONV_OP_SCHEMAS(m);
}

TORCH_LIBRARY_IMPL(lzo, CPU, m) {
  m.impl("to_events", &to_events_cpu);
  m.impl("batch_events", &batch_events_cpu);
  m.impl("lif_events_forward", &lif_events_forward_cpu);
  m.impl("readout_forward", &readout_forward_cpu);
  m.impl("readout_backward", &readout_backward_cpu);
  m.impl("lif_sparse_backward", &lif_sparse_backward_cpu);
  m.impl("lif_dense_backward", &lif_dense_backward_cpu);
  m.impl("conv_lif_forward", &conv_lif_forward_cpu);
  m.impl("conv_sparse_backward", &conv_sparse_backward_cpu);
  m.impl("conv_dense_backward", &conv_dense_backward_cpu);
  m.impl("pool_events", &pool_events_cpu);
}

}  // namespace lzo
