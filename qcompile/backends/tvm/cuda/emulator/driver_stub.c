/* The CUDA driver API where there is no NVIDIA driver: loaded as libcuda.so.1 in its place.
 *
 * TVM's CUDA runtime library (libtvm_runtime_cuda.so) links libcuda.so.1, the driver, which only a machine
 * with an NVIDIA driver has. Loading that runtime is what makes TVM produce real CUDA modules (a cubin
 * compiled at build time) instead of source to compile where the model runs, so a machine without the
 * driver loads this stand-in first (runtime.load_runtime). Only the symbols the runtime imports exist.
 *
 * Off (the default), every call fails with "no device". On (qcompile_emulation(1, ...), from
 * runtime.emulated_gpu), a module is the emulated library of its kernels (kernels.py: the CUDA
 * source compiled for this CPU), registered beforehand by the content of its cubin, and a launch runs the
 * kernel there; a failed launch's reason (a deadlock, say) is what cuGetErrorString answers. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_NO_DEVICE 100
#define CUDA_ERROR_INVALID_IMAGE 200
#define CUDA_ERROR_NOT_FOUND 500
#define CUDA_ERROR_LAUNCH_FAILED 719
#define CUDA_ERROR_NOT_SUPPORTED 801
#define CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES 8
#define EMULATED_SHARED_BYTES (227 << 10) /* cuda_emulator.h: kSharedBytes */
#define MAX_MODULES 1024

typedef struct {
  unsigned gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes;
  void *hStream, *attrs;
  unsigned numAttrs;
} CUlaunchConfig; /* cuda.h's CUlaunchConfig_st */

typedef int (*Entry)(unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, int, int, void **, char *, int);

typedef struct {
  uint64_t hash;
  char library[4096];
} Registered;

static int emulating, copy_mode, thread_order;
static char failure[1024];
static Registered registered[MAX_MODULES];
static int registered_count;

int qcompile_emulation(int on, int copies, int order) {
  emulating = on;
  copy_mode = copies;
  thread_order = order;
  return 0;
}

int qcompile_emulating(void) { return emulating; }

static int fail(int error, const char *message) {
  snprintf(failure, sizeof failure, "%s", message);
  return error;
}

/* Bytes of a 64-bit ELF image (a cubin): its section and program header tables end it. */
static size_t elf_size(const unsigned char *image) {
  if (memcmp(image, "\177ELF", 4) != 0 || image[4] != 2) return 0;
  uint64_t shoff, phoff;
  uint16_t phentsize, phnum, shentsize, shnum;
  memcpy(&phoff, image + 0x20, 8);
  memcpy(&shoff, image + 0x28, 8);
  memcpy(&phentsize, image + 0x36, 2);
  memcpy(&phnum, image + 0x38, 2);
  memcpy(&shentsize, image + 0x3A, 2);
  memcpy(&shnum, image + 0x3C, 2);
  size_t sections = shoff + (size_t)shentsize * shnum, programs = phoff + (size_t)phentsize * phnum;
  return sections > programs ? sections : programs;
}

static uint64_t fnv1a(const unsigned char *bytes, size_t size) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < size; ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  return h;
}

/* The emulated library of the kernels whose cubin is `cubin`: what cuModuleLoadData opens for that image. */
int qcompile_register_module(const void *cubin, const char *library) {
  size_t size = elf_size(cubin);
  if (!size) return fail(CUDA_ERROR_INVALID_IMAGE, "the registered image is not a 64-bit ELF cubin");
  uint64_t hash = fnv1a(cubin, size);
  int i = 0;
  while (i < registered_count && registered[i].hash != hash) ++i;
  if (i == MAX_MODULES) return fail(CUDA_ERROR_NOT_SUPPORTED, "too many emulated modules");
  registered[i].hash = hash;
  snprintf(registered[i].library, sizeof registered[i].library, "%s", library);
  if (i == registered_count) ++registered_count;
  return CUDA_SUCCESS;
}

int cuModuleLoadData(void **module, const void *image) {
  if (!emulating) return CUDA_ERROR_NO_DEVICE;
  size_t size = elf_size(image);
  if (!size) return fail(CUDA_ERROR_INVALID_IMAGE, "the CUDA emulator loads cubins (64-bit ELF) only");
  uint64_t hash = fnv1a(image, size);
  for (int i = 0; i < registered_count; ++i)
    if (registered[i].hash == hash) {
      *module = dlopen(registered[i].library, RTLD_NOW | RTLD_LOCAL);
      if (!*module) return fail(CUDA_ERROR_INVALID_IMAGE, dlerror());
      return CUDA_SUCCESS;
    }
  return fail(CUDA_ERROR_NOT_FOUND, "no emulated kernels are registered for this cubin (kernels.register_kernels)");
}

int cuModuleUnload(void *module) {
  (void)module; /* kept open: the same model may load it again */
  return emulating ? CUDA_SUCCESS : CUDA_ERROR_NO_DEVICE;
}

int cuModuleGetFunction(void **function, void *module, const char *name) {
  if (!emulating) return CUDA_ERROR_NO_DEVICE;
  char symbol[512];
  snprintf(symbol, sizeof symbol, "emu_launch_%s", name);
  *function = dlsym(module, symbol);
  if (!*function) return fail(CUDA_ERROR_NOT_FOUND, "the emulated module has no such kernel");
  return CUDA_SUCCESS;
}

int cuFuncSetAttribute(void *function, int attribute, int value) {
  (void)function;
  if (!emulating) return CUDA_ERROR_NO_DEVICE;
  if (attribute == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES && value > EMULATED_SHARED_BYTES)
    return fail(CUDA_ERROR_INVALID_VALUE, "more dynamic shared memory than sm_90 has");
  return CUDA_SUCCESS;
}

int cuLaunchKernelEx(const CUlaunchConfig *config, void *function, void **params, void **extra) {
  if (!emulating) return CUDA_ERROR_NO_DEVICE;
  if (!params || extra) return fail(CUDA_ERROR_NOT_SUPPORTED, "the CUDA emulator takes kernelParams only");
  if (config->sharedMemBytes > EMULATED_SHARED_BYTES)
    return fail(CUDA_ERROR_INVALID_VALUE, "more dynamic shared memory than sm_90 has");
  Entry entry = (Entry)function;
  if (entry(config->gridDimX, config->gridDimY, config->gridDimZ, config->blockDimX, config->blockDimY,
            config->blockDimZ, copy_mode, thread_order, params, failure, (int)sizeof failure))
    return CUDA_ERROR_LAUNCH_FAILED;
  return CUDA_SUCCESS;
}

int cuGetErrorName(int error, const char **name) {
  switch (error) {
    case CUDA_SUCCESS: *name = "CUDA_SUCCESS"; break;
    case CUDA_ERROR_NO_DEVICE: *name = "CUDA_ERROR_NO_DEVICE"; break;
    case CUDA_ERROR_LAUNCH_FAILED: *name = "CUDA_ERROR_LAUNCH_FAILED (emulated)"; break;
    default: *name = "CUDA_ERROR (emulated)";
  }
  return CUDA_SUCCESS;
}

int cuGetErrorString(int error, const char **text) {
  *text = error == CUDA_ERROR_NO_DEVICE ? "no CUDA driver on this machine" : failure;
  return CUDA_SUCCESS;
}

int cuDeviceGetName(char *name, int length, int device) {
  (void)device;
  if (!emulating) return CUDA_ERROR_NO_DEVICE;
  snprintf(name, length, "qcompile CUDA emulator");
  return CUDA_SUCCESS;
}

int cuTensorMapEncodeTiled(void) { return emulating ? fail(CUDA_ERROR_NOT_SUPPORTED, "no TMA in the CUDA emulator") : CUDA_ERROR_NO_DEVICE; }
