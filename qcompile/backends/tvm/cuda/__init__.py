"""target="cuda": backend, pipeline, nvcc build, runtime, schedule rules, hand-written kernels; emulator/ runs the kernels on a CPU."""
