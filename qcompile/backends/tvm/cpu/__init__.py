"""What the CPU targets (x86, arm) share: the ISA table, the GEMM, depthwise and activation-matmul kernels with their lowerings, the fused-kernel schedule rule and its tuner."""
