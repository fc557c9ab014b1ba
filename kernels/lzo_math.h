// Per-element math of the event ops, shared by the CPU loops (cpu_*.h, cpu_*.cpp) and the CUDA kernels
// (snn_cuda_kernels.cuh). Every function mirrors one in the pure-PyTorch reference:
//   philox4x32_10 / uniform_from_bits  <->  lzo_bench/core/rng.py
//   erfinv_f32 / abs_icdf              <->  lzo_bench/core/distributions.py
//   surrogate / gate                   <->  lzo_bench/core/gates.py, lzo_bench/core/surrogates.py
// Float operations are written in the reference's order; builds disable FMA contraction. What is
// identical to the bit: the Philox words and the uniforms. The inverse CDFs go through libm
// (log1pf, logf) here and through torch's own kernels in the reference, which differ by 1 ulp for a
// few per cent of the draws (Laplace): gate values agree to 1e-6 relative, and the active sets,
// which compare |v| against δ·|z| with margins far above 1 ulp, were identical in every test.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define LZO_HD __host__ __device__ __forceinline__
#else
#define LZO_HD inline
#endif

namespace lzo {

enum Method : int { SURROGATE = 0, SPARSEGRAD = 1, LOCALZO = 2 };
// How |z| is drawn: closed-form inverse CDFs or an inverse-CDF table (Theorem 3).
enum SampleKind : int { SAMPLE_NORMAL = 0, SAMPLE_UNIFORM = 1, SAMPLE_LAPLACE = 2, SAMPLE_TABLE = 3 };
// The surrogate g of `surrogate` / `sparsegrad`: expected LocalZO surrogates (eqs. 10-12) or
// the surrogate a table distribution reproduces.
enum SurrogateKind : int {
  SURR_NORMAL = 0, SURR_UNIFORM = 1, SURR_LAPLACE = 2, SURR_SIGMOID = 3, SURR_FAST_SIGMOID = 4
};

// Everything a gate needs; passed by value to kernels.
struct GateParams {
  int method;
  int sample_kind;
  int surrogate_kind;
  double delta;       // scalar constants are formed in double, then rounded, as in PyTorch
  float bth;
  float k;            // sigmoid / fast-sigmoid parameter
  float band;         // |v| >= band  =>  gate is exactly 0
  float term_scale;   // c / m, applied to the sum over samples
  int samples;
  int alpha;          // exponent of eq. 8: +1 or -1 (any non-zero integer)
  uint32_t key0;      // seed mod 2^32
  uint32_t key1;      // update mod 2^32
  int layer;
  const float* table; // inverse-CDF table of |z| (SAMPLE_TABLE), table_size entries
  int table_size;
};

constexpr float kSqrt2 = 1.41421356237309515f;
constexpr float kSqrt3 = 1.73205080756887719f;
constexpr double kSqrt2Pi = 2.50662827463100050;

// ---- Philox4x32-10 (Salmon et al. 2011); counter (j, t, b, layer<<16 | k), key (seed, update).
LZO_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

LZO_HD uint32_t philox4x32_10_x0(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                 uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c0, &hi0, &lo0);
    mulhilo32(0xCD9E8D57u, c2, &hi1, &lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
  }
  return c0;
}

// u = (floor(x / 2^9) + 0.5) * 2^-23, exact in float, inside (0, 1).
LZO_HD float uniform_from_bits(uint32_t x) {
  return (static_cast<float>(x >> 9) + 0.5f) * 1.1920928955078125e-07f;
}

// ---- inverse CDFs of |z|
// Giles (2010) single-precision erfinv.
LZO_HD float erfinv_f32(float x) {
  float w = -logf((1.0f - x) * (1.0f + x));
  if (w < 5.0f) {
    w = w - 2.5f;
    float p = 2.81022636e-08f;
    p = 3.43273939e-07f + p * w;
    p = -3.5233877e-06f + p * w;
    p = -4.39150654e-06f + p * w;
    p = 0.00021858087f + p * w;
    p = -0.00125372503f + p * w;
    p = -0.00417768164f + p * w;
    p = 0.246640727f + p * w;
    p = 1.50140941f + p * w;
    return p * x;
  }
  w = sqrtf(w) - 3.0f;
  float p = -0.000200214257f;
  p = 0.000100950558f + p * w;
  p = 0.00134934322f + p * w;
  p = -0.00367342844f + p * w;
  p = 0.00573950773f + p * w;
  p = -0.0076224613f + p * w;
  p = 0.00943887047f + p * w;
  p = 1.00167406f + p * w;
  p = 2.83297682f + p * w;
  return p * x;
}

// |z| = F^{-1}_{|z|}(u); table: linear interpolation between table_size quantiles of [0, 1].
LZO_HD float abs_icdf(const GateParams& g, float u) {
  switch (g.sample_kind) {
    case SAMPLE_NORMAL: return kSqrt2 * erfinv_f32(u);
    case SAMPLE_UNIFORM: return kSqrt3 * u;
    case SAMPLE_LAPLACE: return -log1pf(-u) / kSqrt2;
    default: {
      float pos = u * static_cast<float>(g.table_size - 1);
      float i = floorf(pos);
      if (i < 0.0f) i = 0.0f;
      if (i > static_cast<float>(g.table_size - 2)) i = static_cast<float>(g.table_size - 2);
      float frac = pos - i;
      int ii = static_cast<int>(i);
      float lo = g.table[ii];
      return lo + frac * (g.table[ii + 1] - lo);
    }
  }
}

LZO_HD float int_pow(float z, int alpha) {
  float r = 1.0f;
  int n = alpha < 0 ? -alpha : alpha;
  for (int i = 0; i < n; ++i) r *= z;
  return alpha < 0 ? 1.0f / r : r;
}

// e^x, flushed to 0 where it falls below FLT_MIN (x < -87.33), as cpu_simd.h's exp_neg_ftz: the
// exponential is flushed before any constant multiplies it, so the CPU and the GPU agree on which
// gate values are 0 (finding 8 of the kernel-layer issue: the GPU flushed c*exp(x) instead).
LZO_HD float exp_ftz(float x) { return x >= -87.33f ? expf(x) : 0.0f; }

// ---- surrogates g(v)
LZO_HD float surrogate(const GateParams& g, float v) {
  const double d = g.delta;
  switch (g.surrogate_kind) {
    case SURR_NORMAL: {  // exp(-v^2 / (2 d^2)) / (d sqrt(2 pi))        (eq. 10)
      float e = exp_ftz(-(v * v) / static_cast<float>(2.0 * d * d));
      return e / static_cast<float>(d * kSqrt2Pi);
    }
    case SURR_UNIFORM: {  // (3 - v^2/d^2) / (4 sqrt3 d) for v^2/d^2 < 3    (eq. 11)
      float r2 = (v * v) / static_cast<float>(d * d);
      return r2 < 3.0f ? (3.0f - r2) / static_cast<float>(4.0 * 1.7320508075688772 * d) : 0.0f;
    }
    case SURR_LAPLACE: {  // (|v|/d + 1/sqrt2) exp(-sqrt2 |v|/d) / (2d)     (eq. 12)
      float r = fabsf(v) / static_cast<float>(d);
      return (r + static_cast<float>(1.0 / 1.4142135623730951)) *
             exp_ftz(static_cast<float>(-1.4142135623730951) * r) / static_cast<float>(2.0 * d);
    }
    case SURR_SIGMOID: {  // k s (1 - s) with s = sigmoid(-k|v|), written k e / (1 + e)^2, e = exp(-k|v|)
      const float e = exp_ftz(-g.k * fabsf(v));
      const float q = 1.0f + e;
      return g.k * e / (q * q);
    }
    default: {  // fast sigmoid: (1 + k|v|)^-2
      float q = 1.0f + g.k * fabsf(v);
      return 1.0f / (q * q);
    }
  }
}

// ---- the gate gamma(v) at neuron j, step t, batch row b
LZO_HD float gate(const GateParams& g, float v, int t, int b, int j) {
  const float av = fabsf(v);
  if (g.method == SURROGATE) return surrogate(g, v);
  if (!(av < g.band)) return 0.0f;
  if (g.method == SPARSEGRAD) return surrogate(g, v);
  float acc = 0.0f;
  const float two_delta = static_cast<float>(2.0 * g.delta);
  const float delta = static_cast<float>(g.delta);
  for (int k = 0; k < g.samples; ++k) {
    uint32_t x = philox4x32_10_x0(static_cast<uint32_t>(j), static_cast<uint32_t>(t),
                                  static_cast<uint32_t>(b),
                                  (static_cast<uint32_t>(g.layer) << 16) | static_cast<uint32_t>(k),
                                  g.key0, g.key1);
    float z = abs_icdf(g, uniform_from_bits(x));
    float term = int_pow(z, g.alpha) / two_delta;
    if (av < delta * z) acc = acc + term;
  }
  return acc * g.term_scale;
}

// ---- A convolutional layer's geometry (issue 22), shared by the CPU loops and the CUDA kernels. Units are
// channels-last: input unit i = (y*W + x)*C_in + c (a bias is one more unit, C_in*H*W, firing at every row),
// output unit j = (oy*W_out + ox)*C_out + o; tap (c, ky, kx) = (c*K + ky)*K + kx of output (oy, ox) reads input
// (oy*stride + ky - pad, ox*stride + kx - pad). weight [C_out, C_in*K*K (+1)] is torch's [C_out, C_in, K, K]
// flattened, with the bias as a last column.
struct ConvGeom {
  int64_t cin, h, w, cout, k, stride, pad, ho, wo;
  bool bias;
  LZO_HD int64_t units_in() const { return cin * h * w; }
  LZO_HD int64_t taps() const { return cin * k * k; }
  LZO_HD int64_t units_out() const { return ho * wo * cout; }
  LZO_HD int64_t weight_cols() const { return taps() + (bias ? 1 : 0); }
};

// ---- LIF step with subtractive reset: u = beta u + I - theta s_prev; returns v = u - theta.
LZO_HD float lif_step(float* u, float current, float s_prev, float beta, float theta) {
  *u = beta * *u + current - theta * s_prev;
  return *u - theta;
}

}  // namespace lzo
