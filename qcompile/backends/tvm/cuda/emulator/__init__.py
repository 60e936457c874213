"""The CPU emulator of the generated CUDA kernels, with stand-ins for the CUDA driver and runtime libraries."""
