// The CPU ops' event lists (CSR over rows r = b*T + t, see snn_cpu.cpp): their view, the checks of a list
// that comes from outside, and the helpers that build one (dense rows, row pointers, joined parts).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

namespace lzo {
namespace cpu {

using at::Tensor;

using Ptr = int32_t;  // row pointers: half the bytes of int64 for the lists the backward keeps
inline constexpr auto kPtr = at::kInt;

struct EventView {
  const Ptr* ptr;
  const int32_t* col;
  const float* val;  // nullptr: every value is 1
  float value(int64_t q) const { return val ? val[q] : 1.0f; }
};

inline EventView view(const Tensor& ptr, const Tensor& col, const Tensor& val) {
  return {ptr.data_ptr<Ptr>(), col.data_ptr<int32_t>(), val.numel() ? val.data_ptr<float>() : nullptr};
}

inline void check_events(const Tensor& ptr, const Tensor& col, const Tensor& val, int64_t rows, const char* op,
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
inline void check_columns(const Tensor& col, int64_t width, const char* op, const char* name) {
  if (col.numel() == 0) return;
  const auto mm = at::aminmax(col);
  const int64_t lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < width, op, ": ", name, "_col must lie in [0, ", width, "), got [", lo, ", ",
              hi, "]");
}

// Dense rows [rows, width] (row r = b*T + t) from an event list; a column listed twice in a row adds,
// as the event current and the event dW do.
inline Tensor rows_from_events(const EventView& ev, int64_t rows, int64_t width, const at::TensorOptions& opts) {
  Tensor out = at::zeros({rows, width}, opts);
  float* o = out.data_ptr<float>();
  at::parallel_for(0, rows, 1024, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t q = ev.ptr[r]; q < ev.ptr[r + 1]; ++q) o[r * width + ev.col[q]] += ev.value(q);
  });
  return out;
}

// Row counts in ptr[1..rows] -> row pointers; a list of 2^31 events or more is refused.
inline void prefix_sum(Ptr* ptr, int64_t rows) {
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

}  // namespace cpu
}  // namespace lzo
