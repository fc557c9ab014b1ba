// The gates of the sparse rules (sparsegrad, localzo) for one row of potentials, at the candidates the
// forward's scan collects (SparseGateRows).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu_simd.h"
#include "lzo_math.h"
#include "philox_avx2.h"

namespace lzo {
namespace cpu {

// The gates of the sparse rules for one row (t, b) of potentials, computed only at the candidates
// |v| < band, which lif_row collects as it scans (docs/ARCHITECTURE.md §5b, item 3).
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

}  // namespace cpu
}  // namespace lzo
