// Sparse end to end on the CPU (docs/ARCHITECTURE.md §5b): event-driven forward, fused scan + gate,
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
//
// The sources, one idea each; every .cpp registers the CPU kernels of the ops it defines, and this file
// defines the ops' schemas (lif_common.h), once for the lzo namespace:
//   cpu_lists.h        the event lists: EventView, their checks, prefix_sum, concat, rows_from_events
//   cpu_simd.h         vectorised row maths: exp_neg_ftz, surrogate_row, lif_row with its LeftPack compaction
//   cpu_sparse_gate.h  the sparse rules' gates at a row's candidates (SparseGateRows)
//   cpu_layer_map.h    the layer bodies over a connectivity map: event current, DenseMap, forward_rows,
//                      sparse_backward_rows (with Powers), dense_ghat, event_dw, use_gemm
//   cpu_events.cpp     to_events (with its EventBuffer pool), batch_events
//   cpu_lif.cpp        lif_events_forward, readout_forward/backward, lif_sparse/dense_backward
//   cpu_conv.cpp       ConvMap, conv_lif_forward, conv_sparse/dense_backward, pool_events
#include <torch/library.h>

#include "lif_common.h"

namespace lzo {

TORCH_LIBRARY_FRAGMENT(lzo, m) {
  LZO_EVENT_OP_SCHEMAS(m);
  LZO_CONV_OP_SCHEMAS(m);
}

}  // namespace lzo
