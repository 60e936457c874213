"""target="arm" and its variants: the cross-compiling backend, the RPC device, the emulated device and instruction counts."""
