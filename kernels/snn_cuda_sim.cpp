// The CUDA event ops of snn_cuda.cu built by the host compiler and run by the CUDA execution
// simulator (cuda_sim.h): torch.ops.lzo_sim.* on CPU tensors execute the very kernels of
// snn_cuda_kernels.cuh, so CI checks them against the reference without a GPU (tests/test_cuda_sim.py).
// Built with LZO_THREADS = 64 (two warps a block: fewer OS threads, the same cross-warp ranking).
#define LZO_CUDA_SIM 1
#include "snn_cuda.cu"
