// The CPU ops that make event lists from outside data: to_events (a dense [T, B, N] tensor, with its pool of
// per-part buffers) and batch_events (samples of an event dataset as one batch).
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu_lists.h"

namespace lzo {

using at::Tensor;
using namespace cpu;

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

TORCH_LIBRARY_IMPL(lzo, CPU, m) {
  m.impl("to_events", &to_events_cpu);
  m.impl("batch_events", &batch_events_cpu);
}

}  // namespace lzo
