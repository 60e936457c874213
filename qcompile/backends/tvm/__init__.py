"""Apache TVM backends: the integer graph lowered to Relax + scheduled TIR kernels."""
