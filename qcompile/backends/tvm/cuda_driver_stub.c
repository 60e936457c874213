/* The CUDA driver API as a machine without a GPU answers it: every call fails with "no device".
 *
 * TVM's CUDA runtime library (libtvm_runtime_cuda.so) links libcuda.so.1, the driver, which only a machine
 * with an NVIDIA driver has. Loading that runtime is what makes TVM produce real CUDA modules (a cubin
 * compiled at build time) instead of source to compile where the model runs, so a machine without the
 * driver loads this stand-in first (cuda_build.load_runtime). Only the symbols the runtime imports exist. */
#define CUDA_ERROR_NO_DEVICE 100

int cuGetErrorName(int error, const char **name) {
  (void)error;
  *name = "CUDA_ERROR_NO_DEVICE";
  return 0;
}

int cuGetErrorString(int error, const char **text) {
  (void)error;
  *text = "no CUDA driver on this machine";
  return 0;
}

int cuDeviceGetName(void) { return CUDA_ERROR_NO_DEVICE; }
int cuFuncSetAttribute(void) { return CUDA_ERROR_NO_DEVICE; }
int cuLaunchKernelEx(void) { return CUDA_ERROR_NO_DEVICE; }
int cuModuleGetFunction(void) { return CUDA_ERROR_NO_DEVICE; }
int cuModuleLoadData(void) { return CUDA_ERROR_NO_DEVICE; }
int cuModuleUnload(void) { return CUDA_ERROR_NO_DEVICE; }
int cuTensorMapEncodeTiled(void) { return CUDA_ERROR_NO_DEVICE; }
