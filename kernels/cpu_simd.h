// The CPU ops' vectorised row maths: a bit cast, e^x for x <= 0 (exp_neg_ftz), the dense gate of a row
// (surrogate_row) and one fused step of the LIF scan over a row with its spike and candidate lists (lif_row).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "lzo_math.h"

namespace lzo {
namespace cpu {

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
inline void surrogate_row(const GateParams& g, const float* v, float* out, int64_t n) {
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
inline const LeftPack kLeftPack;
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

}  // namespace cpu
}  // namespace lzo
