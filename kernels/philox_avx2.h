// Philox4x32-10 of lzo_math.h for 8 counters at once with AVX2 (the CPU forward's LocalZO draws, and
// benchmarks/floor.py's measured draw rate): the same 32-bit words, bit for bit.
#pragma once

#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>

namespace lzo {

// philox4x32_10_x0 (lzo_math.h) for 8 counters c0 at once, with c1, c2, c3 and the key shared; the same
// 32-bit words, bit for bit. mul_epu32 multiplies the even lanes, so the odd lanes go through a shift.
inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

inline __m256i philox8_x0(__m256i c0, uint32_t t1, uint32_t t2, uint32_t t3, uint32_t k0, uint32_t k1) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u)), m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  __m256i c1 = _mm256_set1_epi32(static_cast<int>(t1)), c2 = _mm256_set1_epi32(static_cast<int>(t2)),
          c3 = _mm256_set1_epi32(static_cast<int>(t3));
  for (int r = 0; r < 10; ++r) {
    if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
    __m256i hi0, lo0, hi1, lo1;
    mulhilo8(c0, m0, hi0, lo0);
    mulhilo8(c2, m1, hi1, lo1);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
    c1 = lo1;
    c3 = lo0;
  }
  return c0;
}

}  // namespace lzo
#endif
