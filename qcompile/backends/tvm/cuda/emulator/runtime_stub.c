/* The CUDA runtime API (libcudart.so.13) where there is no NVIDIA driver, loaded in its place after the driver's
 * stand-in (driver_stub.c), whose switch it follows. Off, every call fails with "no device", as the real
 * library does without a driver. On, the emulated GPU's memory is this process's: allocations are aligned
 * host memory, copies are memcpy, streams and events are bookkeeping (an event holds the host clock), since
 * every emulated kernel has finished when its launch returns. Only the symbols TVM's CUDA runtime imports
 * exist; the layouts are CUDA 13's, the version this library's name promises. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define cudaSuccess 0
#define cudaErrorInvalidValue 1
#define cudaErrorMemoryAllocation 2
#define cudaErrorNoDevice 100
#define cudaErrorInvalidDevice 101
#define cudaErrorNotSupported 801

#define DEVICE_PROP_BYTES 1008 /* sizeof(struct cudaDeviceProp) */
#define PROP_SHARED_MEM_PER_BLOCK 296
#define PROP_MAJOR 360
#define PROP_L2_CACHE 596

/* An H100's figures, so that what TVM asks of the device is what a build for sm_90 assumes. */
#define SHARED_PER_BLOCK 49152
#define SHARED_PER_BLOCK_OPTIN 232448
#define MULTIPROCESSORS 132
#define L2_BYTES (50 << 20)
#define DEVICE_BYTES (80ull << 30)

extern int qcompile_emulating(void); /* the driver stand-in's switch */

#define ONLY_EMULATING \
  if (!qcompile_emulating()) return cudaErrorNoDevice

int cudaGetDeviceCount(int *count) {
  *count = qcompile_emulating() ? 1 : 0;
  return *count ? cudaSuccess : cudaErrorNoDevice;
}

/* Selecting device 0 and freeing what the emulator handed out succeed after emulation ended too: TVM's
   runtime releases its workspaces (the GPU scan's among them) from destructors at process exit, and an
   error thrown there aborts the process. Everything that computes or allocates still needs the switch on. */
int cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : cudaErrorInvalidDevice;
}

int cudaGetDevice(int *device) {
  *device = 0;
  return cudaSuccess;
}

static int attribute(int which) {
  switch (which) {
    case 1: case 2: case 3: return 1024;      /* max threads per block, block dims x and y */
    case 4: return 64;                        /* block dim z */
    case 5: return 2147483647;                /* grid dim x */
    case 6: case 7: return 65535;             /* grid dims y, z */
    case 8: return SHARED_PER_BLOCK;          /* shared memory per block */
    case 9: return 65536;                     /* constant memory */
    case 10: return 32;                       /* warp size */
    case 12: return 65536;                    /* registers per block */
    case 13: return 1980000;                  /* clock, kHz */
    case 16: return MULTIPROCESSORS;
    case 38: return L2_BYTES;
    case 39: return 2048;                     /* threads per multiprocessor */
    case 75: return 9;                        /* compute capability */
    case 76: return 0;
    case 97: return SHARED_PER_BLOCK_OPTIN;
    default: return 0;
  }
}

int cudaDeviceGetAttribute(int *value, int which, int device) {
  ONLY_EMULATING;
  if (device != 0) return cudaErrorInvalidDevice;
  *value = attribute(which);
  return cudaSuccess;
}

int cudaGetDeviceProperties(void *prop, int device) {
  ONLY_EMULATING;
  if (device != 0) return cudaErrorInvalidDevice;
  char *p = prop;
  int major = 9, minor = 0, l2 = L2_BYTES;
  size_t shared = SHARED_PER_BLOCK;
  memset(p, 0, DEVICE_PROP_BYTES);
  strcpy(p, "qcompile CUDA emulator");
  memcpy(p + PROP_SHARED_MEM_PER_BLOCK, &shared, sizeof shared);
  memcpy(p + PROP_MAJOR, &major, sizeof major);
  memcpy(p + PROP_MAJOR + 4, &minor, sizeof minor);
  memcpy(p + PROP_L2_CACHE, &l2, sizeof l2);
  return cudaSuccess;
}

int cudaMemGetInfo(size_t *free_bytes, size_t *total) {
  ONLY_EMULATING;
  *free_bytes = *total = DEVICE_BYTES;
  return cudaSuccess;
}

static int allocate(void **p, size_t size) {
  ONLY_EMULATING;
  *p = aligned_alloc(256, (size + 255) / 256 * 256 + 256); /* cudaMalloc's alignment; 0 bytes is a valid call */
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

int cudaMalloc(void **p, size_t size) { return allocate(p, size); }
int cudaMallocHost(void **p, size_t size) { return allocate(p, size); }

int cudaFree(void *p) {
  free(p);
  return cudaSuccess;
}

int cudaFreeHost(void *p) { return cudaFree(p); }

int cudaMemcpyAsync(void *dst, const void *src, size_t size, int kind, void *stream) {
  (void)kind, (void)stream;
  ONLY_EMULATING;
  memmove(dst, src, size);
  return cudaSuccess;
}

int cudaMemcpyPeerAsync(void *dst, int dst_device, const void *src, int src_device, size_t size, void *stream) {
  (void)dst_device, (void)src_device;
  return cudaMemcpyAsync(dst, src, size, 0, stream);
}

static int handle(void **out) {
  ONLY_EMULATING;
  *out = calloc(1, sizeof(struct timespec));
  return *out ? cudaSuccess : cudaErrorMemoryAllocation;
}

static int release(void *p) {
  free(p);
  return cudaSuccess;
}

int cudaStreamCreate(void **stream) { return handle(stream); }
int cudaStreamCreateWithFlags(void **stream, unsigned flags) { (void)flags; return handle(stream); }
int cudaStreamDestroy(void *stream) { return release(stream); }
int cudaStreamSynchronize(void *stream) { (void)stream; ONLY_EMULATING; return cudaSuccess; }
int cudaStreamWaitEvent(void *stream, void *event, unsigned flags) { (void)stream, (void)event, (void)flags; ONLY_EMULATING; return cudaSuccess; }

int cudaEventCreate(void **event) { return handle(event); }
int cudaEventDestroy(void *event) { return release(event); }
int cudaEventSynchronize(void *event) { (void)event; ONLY_EMULATING; return cudaSuccess; }

int cudaEventRecord(void *event, void *stream) {
  (void)stream;
  ONLY_EMULATING;
  clock_gettime(CLOCK_MONOTONIC, (struct timespec *)event);
  return cudaSuccess;
}

int cudaEventElapsedTime(float *ms, void *start, void *end) {
  ONLY_EMULATING;
  const struct timespec *a = start, *b = end;
  *ms = (float)((b->tv_sec - a->tv_sec) * 1e3 + (b->tv_nsec - a->tv_nsec) / 1e6);
  return cudaSuccess;
}

/* CUDA graphs are not emulated (TVM uses them only when asked to capture). */
int cudaStreamBeginCapture(void *stream, int mode) { (void)stream, (void)mode; return qcompile_emulating() ? cudaErrorNotSupported : cudaErrorNoDevice; }
int cudaStreamEndCapture(void *stream, void **graph) { (void)stream, (void)graph; return qcompile_emulating() ? cudaErrorNotSupported : cudaErrorNoDevice; }
int cudaGraphInstantiate(void **exec, void *graph, unsigned long long flags) { (void)exec, (void)graph, (void)flags; return qcompile_emulating() ? cudaErrorNotSupported : cudaErrorNoDevice; }
int cudaGraphLaunch(void *exec, void *stream) { (void)exec, (void)stream; return qcompile_emulating() ? cudaErrorNotSupported : cudaErrorNoDevice; }
int cudaGraphDestroy(void *graph) { (void)graph; return cudaSuccess; }
int cudaGraphExecDestroy(void *exec) { (void)exec; return cudaSuccess; }

int cudaGetLastError(void) { return cudaSuccess; }
int cudaPeekAtLastError(void) { return cudaSuccess; }

const char *cudaGetErrorName(int error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaError (emulated runtime)";
  }
}

const char *cudaGetErrorString(int error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorNotSupported: return "operation not supported by the CUDA emulator";
    default: return "error in the emulated CUDA runtime";
  }
}
