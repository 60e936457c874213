/* CUDA device code on the host: what cuda_emulator.py compiles TVM's generated kernels against, so that a
 * machine without a GPU runs them and checks their results.
 *
 * Every CUDA thread of a block is a fiber (ucontext) on one OS thread; a fiber runs until it reaches a
 * synchronisation point (__syncthreads, a warp-collective instruction, a shuffle), and the scheduler then
 * resumes the next. Blocks run one after another. Shared memory lives in this library's .bss, so a 32-bit
 * shared address (cvta) is an offset from dyn_shared_memory, for the dynamic buffer and static arrays alike.
 *
 * The inline PTX a kernel carries is rewritten by cuda_emulator.py into calls of emu::ptx::<opcode with '.'
 * as '_'>(operands in the order the instruction's template names them): outputs as pointers, inputs as
 * values, immediates as written. The functions below are the instructions modelled; any other is an error
 * at translation time.
 *
 * cp.async copies land when issued (CopyMode::eager) or only when a wait_group lets them (CopyMode::lazy):
 * a kernel that reads a stage before waiting for it gets the block's poison (0xff bytes) in lazy mode, one
 * that overwrites a stage still being read gets the new data in eager mode; a correct one gives the same
 * result in both. */
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)
#define __shared__ static  // one block runs at a time: a static is the block's
#define __constant__ static

/* ------------------------------------------------------------------ half precision */
struct __half {
  unsigned short bits;
  __half() = default;
  __half(float f) { _Float16 v = (_Float16)f; std::memcpy(&bits, &v, 2); }
  __half(double d) { _Float16 v = (_Float16)d; std::memcpy(&bits, &v, 2); }  // one rounding
  __half(int i) : __half((float)i) {}
  __half(unsigned i) : __half((float)i) {}
  __half(long long i) : __half((double)i) {}
  operator float() const { _Float16 v; std::memcpy(&v, &bits, 2); return (float)v; }
};
using half = __half;

// One operation in float rounded to half is the correctly rounded half result (24 >= 2 * 11 + 2 bits).
inline __half operator+(__half a, __half b) { return __half((float)a + (float)b); }
inline __half operator-(__half a, __half b) { return __half((float)a - (float)b); }
inline __half operator*(__half a, __half b) { return __half((float)a * (float)b); }
inline __half operator/(__half a, __half b) { return __half((float)a / (float)b); }
inline __half operator-(__half a) { __half r = a; r.bits ^= 0x8000; return r; }
inline __half& operator+=(__half& a, __half b) { return a = a + b; }
inline __half& operator-=(__half& a, __half b) { return a = a - b; }
inline __half& operator*=(__half& a, __half b) { return a = a * b; }
inline bool operator==(__half a, __half b) { return (float)a == (float)b; }
inline bool operator!=(__half a, __half b) { return (float)a != (float)b; }
inline bool operator<(__half a, __half b) { return (float)a < (float)b; }
inline bool operator>(__half a, __half b) { return (float)a > (float)b; }
inline bool operator<=(__half a, __half b) { return (float)a <= (float)b; }
inline bool operator>=(__half a, __half b) { return (float)a >= (float)b; }

struct alignas(4) __half2 {
  __half x, y;
};
using half2 = __half2;

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return (float)h; }
inline __half __int2half_rn(int i) { return __half(i); }
// The product of two halves is exact in double; the sum then rounds once to half.
inline __half __hfma(__half a, __half b, __half c) { return __half((double)(float)a * (float)b + (float)c); }
inline __half __hadd(__half a, __half b) { return a + b; }
inline __half __hsub(__half a, __half b) { return a - b; }
inline __half __hmul(__half a, __half b) { return a * b; }
inline __half __hdiv(__half a, __half b) { return a / b; }
inline __half __hneg(__half a) { return -a; }
inline __half __habs(__half a) { a.bits &= 0x7fff; return a; }
inline bool __hgt(__half a, __half b) { return a > b; }
inline bool __hlt(__half a, __half b) { return a < b; }
inline bool __hge(__half a, __half b) { return a >= b; }
inline bool __hle(__half a, __half b) { return a <= b; }
inline bool __heq(__half a, __half b) { return a == b; }
inline __half __hmax(__half a, __half b) { return a > b ? a : b; }
inline __half __hmin(__half a, __half b) { return a < b ? a : b; }
inline __half hexp(__half a) { return __half(std::exp((float)a)); }
inline __half hsqrt(__half a) { return __half(std::sqrt((float)a)); }
inline __half hrsqrt(__half a) { return __half(1.0f / std::sqrt((float)a)); }
inline __half2 make_half2(__half x, __half y) { return {x, y}; }
inline __half2 __halves2half2(__half x, __half y) { return {x, y}; }
inline __half2 __float2half2_rn(float f) { return {__half(f), __half(f)}; }
inline __half2 __hadd2(__half2 a, __half2 b) { return {a.x + b.x, a.y + b.y}; }
inline __half2 __hsub2(__half2 a, __half2 b) { return {a.x - b.x, a.y - b.y}; }
inline __half2 __hmul2(__half2 a, __half2 b) { return {a.x * b.x, a.y * b.y}; }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) { return {__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)}; }

/* ------------------------------------------------------------------ vector types */
#define EMU_VECTOR_TYPES(T, name, a2, a4)                                                    \
  struct alignas(a2) name##2 { T x, y; };                                                   \
  struct name##3 { T x, y, z; };                                                            \
  struct alignas(a4) name##4 { T x, y, z, w; };                                             \
  inline name##2 make_##name##2(T x, T y) { return {x, y}; }                                \
  inline name##3 make_##name##3(T x, T y, T z) { return {x, y, z}; }                        \
  inline name##4 make_##name##4(T x, T y, T z, T w) { return {x, y, z, w}; }
EMU_VECTOR_TYPES(signed char, char, 2, 4)
EMU_VECTOR_TYPES(unsigned char, uchar, 2, 4)
EMU_VECTOR_TYPES(short, short, 4, 8)
EMU_VECTOR_TYPES(unsigned short, ushort, 4, 8)
EMU_VECTOR_TYPES(int, int, 8, 16)
EMU_VECTOR_TYPES(unsigned int, uint, 8, 16)
EMU_VECTOR_TYPES(float, float, 8, 16)
EMU_VECTOR_TYPES(long long, longlong, 16, 16)
EMU_VECTOR_TYPES(unsigned long long, ulonglong, 16, 16)
EMU_VECTOR_TYPES(double, double, 16, 16)
#undef EMU_VECTOR_TYPES

template <class T, class = std::enable_if_t<std::is_integral_v<T>>>
inline T min(T a, T b) { return a < b ? a : b; }
template <class T, class = std::enable_if_t<std::is_integral_v<T>>>
inline T max(T a, T b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
using std::fmaf;

// CUDA's math library beyond C's. The intrinsics (__expf, ...) are the accurate functions here: the GPU's
// approximations are not modelled.
#define CUDART_INF_F __builtin_huge_valf()  // math_constants.h
#define CUDART_NAN_F __builtin_nanf("")
#define CUDART_INF __builtin_huge_val()
#define CUDART_NAN __builtin_nan("")
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline float exp10f(float x) { return std::pow(10.0f, x); }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline float __uint_as_float(unsigned i) { float x; std::memcpy(&x, &i, 4); return x; }

/* ------------------------------------------------------------------ threads, blocks and fibers */
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

namespace emu {

inline dim3 thread_idx, block_idx, block_dim, grid_dim;
constexpr int kWarp = 32;
constexpr size_t kStack = 256 << 10;
constexpr size_t kSharedBytes = 227 << 10;  // sm_90's most dynamic shared memory per block
alignas(128) inline unsigned char dyn_shared_memory[kSharedBytes];

enum class CopyMode { eager = 0, lazy = 1 };
// Which thread runs next: each in turn (warps in step), or always the lowest (highest) one that can, so that a
// warp runs ahead of the others as far as its barriers let it.
enum class Order { lockstep = 0, ascending = 1, descending = 2 };

struct Copy {
  unsigned char* dst;
  const unsigned char* src;
  int size, src_size;
  void land() const {
    std::memcpy(dst, src, src_size);
    std::memset(dst + src_size, 0, size - src_size);
  }
};

struct Barrier {
  int arrived = 0, live = 0;
  unsigned long generation = 0;
};

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  dim3 index;
  bool done = false;
  const char* waiting = nullptr;  // what it waits at, while it does
  const Barrier* barrier = nullptr;
  unsigned long generation = 0;  // it runs again once `barrier` has passed this one
  std::vector<Copy> open;
  std::vector<std::vector<Copy>> committed;  // oldest first

  bool runnable() const { return !done && (barrier == nullptr || barrier->generation != generation); }
};

struct Warp {
  Barrier barrier;
  uint32_t slot[kWarp][16];  // what each lane hands the others in a collective
  std::vector<unsigned char> tile;  // a wmma result, computed by lane 0 for all
};

struct Launch {
  void (*body)(void**);
  void** args;
  CopyMode mode;
  Order order;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier block;
  ucontext_t scheduler;
  int current = 0;
  std::string error;
};
inline Launch* launch_state;

inline Fiber& fiber() { return launch_state->fibers[launch_state->current]; }
inline int lane() { return launch_state->current % kWarp; }
inline Warp& warp() { return launch_state->warps[launch_state->current / kWarp]; }

[[noreturn]] inline void fail(const std::string& message) {
  launch_state->error = message;
  setcontext(&launch_state->scheduler);
  std::abort();  // setcontext does not return
}

inline void arrive_and_wait(Barrier& barrier, const char* what) {
  Launch& l = *launch_state;
  unsigned long generation = barrier.generation;
  if (++barrier.arrived >= barrier.live) {
    barrier.arrived = 0;
    ++barrier.generation;
    return;
  }
  Fiber& f = fiber();
  f.waiting = what;
  f.barrier = &barrier;
  f.generation = generation;
  swapcontext(&f.context, &l.scheduler);  // resumed once the barrier has passed
  f.waiting = nullptr;
  f.barrier = nullptr;
}

// A thread that has exited no longer holds its block or warp back (sm_70 and later).
inline void leave(Barrier& barrier) {
  --barrier.live;
  if (barrier.arrived > 0 && barrier.arrived >= barrier.live) {
    barrier.arrived = 0;
    ++barrier.generation;
  }
}

inline void warp_barrier() { arrive_and_wait(warp().barrier, "a warp-collective instruction"); }

/* Each lane puts `value` in its slot; then `read(lane, slots)` gives the lane's result once all have. */
template <class Out, class In, class Read>
Out exchange(const In& value, Read read) {
  static_assert(sizeof(In) <= sizeof(Warp::slot[0]), "too wide for a lane's slot");
  Warp& w = warp();
  std::memcpy(w.slot[lane()], &value, sizeof(In));
  warp_barrier();
  Out out = read(lane(), w.slot);
  warp_barrier();  // nobody refills the slots before every lane has read them
  return out;
}

inline void fiber_main() {
  Launch& l = *launch_state;
  l.body(l.args);
  Fiber& f = fiber();
  f.done = true;  // copies still in flight land nowhere: the block's shared memory ends with it
  leave(l.block);
  leave(warp().barrier);
  setcontext(&l.scheduler);
}

inline void poison_shared_memory() { std::memset(dyn_shared_memory, 0xff, kSharedBytes); }

inline std::string deadlock(const Launch& l) {
  std::string message = "deadlock in block (" + std::to_string(block_idx.x) + ", " + std::to_string(block_idx.y) +
                        ", " + std::to_string(block_idx.z) + "):";
  for (size_t i = 0; i < l.fibers.size(); ++i)
    if (!l.fibers[i].done) {
      message += " thread " + std::to_string(i) + " waits at " + (l.fibers[i].waiting ? l.fibers[i].waiting : "?") + ";";
      if (message.size() > 400) break;
    }
  return message;
}

/* The fiber to resume: in lockstep the first runnable from `from` on (wrapping), else the lowest (highest)
 * runnable one; -1 if none is. */
inline int next_fiber(const Launch& l, int threads, int from) {
  for (int j = 0; j < threads; ++j) {
    int i = l.order == Order::lockstep ? (from + j) % threads : l.order == Order::ascending ? j : threads - 1 - j;
    if (l.fibers[i].runnable()) return i;
  }
  return -1;
}

inline bool run_block(Launch& l, int threads) {
  poison_shared_memory();
  l.block = Barrier{0, threads, 0};
  for (auto& w : l.warps) w.barrier = Barrier{0, 0, 0};
  for (int i = 0; i < threads; ++i) {
    Fiber& f = l.fibers[i];
    f.done = false;
    f.waiting = nullptr;
    f.barrier = nullptr;
    f.open.clear();
    f.committed.clear();
    f.index = {unsigned(i % block_dim.x), unsigned(i / block_dim.x % block_dim.y), unsigned(i / (block_dim.x * block_dim.y))};
    ++l.warps[i / kWarp].barrier.live;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStack;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_main, 0);
  }
  for (int next = 0;; ++next) {
    int i = next_fiber(l, threads, next % threads);
    if (i < 0) {
      bool finished = std::all_of(l.fibers.begin(), l.fibers.begin() + threads, [](const Fiber& f) { return f.done; });
      if (!finished) l.error = deadlock(l);
      return finished;
    }
    next = i;
    l.current = i;
    thread_idx = l.fibers[i].index;
    swapcontext(&l.scheduler, &l.fibers[i].context);
    if (!l.error.empty()) return false;
  }
}

/* Runs body(args) for every thread of the grid; 0, or 1 with the reason in `error`. */
inline int launch(dim3 grid, dim3 block, int mode, int order, void (*body)(void**), void** args, char* error, int error_size) {
  int threads = int(block.x * block.y * block.z);
  Launch l;
  l.body = body;
  l.args = args;
  l.mode = CopyMode(mode);
  l.order = Order(order);
  l.fibers.resize(threads);
  for (auto& f : l.fibers) f.stack.reset(new char[kStack]);
  l.warps.resize((threads + kWarp - 1) / kWarp);
  launch_state = &l;
  grid_dim = grid;
  block_dim = block;
  bool ok = true;
  for (unsigned z = 0; ok && z < grid.z; ++z)
    for (unsigned y = 0; ok && y < grid.y; ++y)
      for (unsigned x = 0; ok && x < grid.x; ++x) {
        block_idx = {x, y, z};
        ok = run_block(l, threads);
      }
  launch_state = nullptr;
  if (!ok) std::snprintf(error, error_size, "%s", l.error.c_str());
  return ok ? 0 : 1;
}

/* ------------------------------------------------------------------ shared memory addresses */
inline uint32_t shared_address(const void* p) {
  return uint32_t(reinterpret_cast<const unsigned char*>(p) - dyn_shared_memory);
}

inline unsigned char* shared_pointer(uint32_t address) {
  return dyn_shared_memory + int32_t(address);
}

/* ------------------------------------------------------------------ the PTX instructions modelled */
namespace ptx {

inline void store(void* out, uint32_t value) { std::memcpy(out, &value, 4); }

inline void lop3_b32(void* d, uint32_t a, uint32_t b, uint32_t c, int lut) {
  uint32_t r = 0;
  for (int i = 0; i < 8; ++i)
    if (lut >> i & 1) r |= (i & 4 ? a : ~a) & (i & 2 ? b : ~b) & (i & 1 ? c : ~c);
  store(d, r);
}

// Default mode: result byte i is byte (sel >> 4i) & 7 of {b, a} (a the low four), its sign replicated if bit 3.
inline void prmt_b32(void* d, uint32_t a, uint32_t b, uint32_t selector) {
  uint64_t bytes = uint64_t(b) << 32 | a;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) {
    int s = selector >> (4 * i) & 15;
    uint32_t byte = bytes >> (8 * (s & 7)) & 0xff;
    if (s & 8) byte = byte & 0x80 ? 0xff : 0;
    r |= byte << (8 * i);
  }
  store(d, r);
}

inline void bar_warp_sync(uint32_t) { warp_barrier(); }

inline void cp_async(uint32_t dst, const void* src, int size, int src_size) {
  if (size != 4 && size != 8 && size != 16) fail("cp.async of " + std::to_string(size) + " bytes");
  Copy copy{shared_pointer(dst), static_cast<const unsigned char*>(src), size, std::min(src_size, size)};
  if (launch_state->mode == CopyMode::eager)
    copy.land();
  else
    fiber().open.push_back(copy);
}
inline void cp_async_cg_shared_global(uint32_t dst, const void* src, int size) { cp_async(dst, src, size, size); }
inline void cp_async_ca_shared_global(uint32_t dst, const void* src, int size) { cp_async(dst, src, size, size); }
inline void cp_async_cg_shared_global(uint32_t dst, const void* src, int size, int src_size) { cp_async(dst, src, size, src_size); }
inline void cp_async_ca_shared_global(uint32_t dst, const void* src, int size, int src_size) { cp_async(dst, src, size, src_size); }

inline void cp_async_commit_group() {
  Fiber& f = fiber();
  f.committed.push_back(std::move(f.open));
  f.open.clear();
}

inline void cp_async_wait_group(int pending) {
  Fiber& f = fiber();
  while (int(f.committed.size()) > pending) {
    for (const Copy& c : f.committed.front()) c.land();
    f.committed.erase(f.committed.begin());
  }
}

inline void cp_async_wait_all() {
  cp_async_commit_group();
  cp_async_wait_group(0);
}

/* ldmatrix .m8n8 .b16: lanes 8q..8q+7 give matrix q's row addresses; lane l gets row l / 4, bytes 4 (l % 4)..+3
 * of each matrix (transposed: the two halves of column l / 4 in rows 2 (l % 4) and 2 (l % 4) + 1). */
inline void ldmatrix(int matrices, bool transposed, void* const* out, uint32_t address) {
  uint32_t got[4];
  exchange<int>(address, [&](int l, const uint32_t (*slots)[16]) {
    for (int q = 0; q < matrices; ++q) {
      if (!transposed) {
        std::memcpy(&got[q], shared_pointer(slots[8 * q + l / 4][0]) + 4 * (l % 4), 4);
        continue;
      }
      for (int e = 0; e < 2; ++e)
        std::memcpy(reinterpret_cast<unsigned char*>(&got[q]) + 2 * e,
                    shared_pointer(slots[8 * q + 2 * (l % 4) + e][0]) + 2 * (l / 4), 2);
    }
    return 0;
  });
  for (int q = 0; q < matrices; ++q) store(out[q], got[q]);
}
inline void ldmatrix_sync_aligned_m8n8_x1_shared_b16(void* d0, uint32_t a) { void* d[] = {d0}; ldmatrix(1, false, d, a); }
inline void ldmatrix_sync_aligned_m8n8_x2_shared_b16(void* d0, void* d1, uint32_t a) { void* d[] = {d0, d1}; ldmatrix(2, false, d, a); }
inline void ldmatrix_sync_aligned_m8n8_x4_shared_b16(void* d0, void* d1, void* d2, void* d3, uint32_t a) {
  void* d[] = {d0, d1, d2, d3};
  ldmatrix(4, false, d, a);
}
inline void ldmatrix_sync_aligned_m8n8_x1_trans_shared_b16(void* d0, uint32_t a) { void* d[] = {d0}; ldmatrix(1, true, d, a); }
inline void ldmatrix_sync_aligned_m8n8_x2_trans_shared_b16(void* d0, void* d1, uint32_t a) { void* d[] = {d0, d1}; ldmatrix(2, true, d, a); }
inline void ldmatrix_sync_aligned_m8n8_x4_trans_shared_b16(void* d0, void* d1, void* d2, void* d3, uint32_t a) {
  void* d[] = {d0, d1, d2, d3};
  ldmatrix(4, true, d, a);
}

/* mma.m16n8k<K>, A row-major 16 x K, B column-major K x 8, in the PTX ISA's fragments: groupID g = lane / 4,
 * t = lane % 4; A register r holds row g (+8 for odd r), B register r column g; C/D c0, c1 in row g, c2, c3 in
 * row g + 8, columns 2t and 2t + 1. `per_register` elements of K/16-wide (f16: 2, 8-bit: 4) sit in each. */
struct Fragments {
  uint32_t a[4], b[2];
};

template <int PerRegister>
inline uint32_t element_bits(const uint32_t (*slots)[16], int lane, int reg, int index) {
  uint32_t word = slots[lane][reg];
  int width = 32 / PerRegister;
  return word >> (width * index) & ((1u << width) - 1);
}

// (lane, register, index) of A(row, k) and B(k, n) for K = 8 * PerRegister * 2.
template <int PerRegister>
inline uint32_t a_element(const uint32_t (*slots)[16], int row, int k) {
  constexpr int half_k = 4 * PerRegister;  // the k of registers 0, 1
  return element_bits<PerRegister>(slots, (row % 8) * 4 + (k % half_k) / PerRegister, (row / 8) + 2 * (k / half_k), k % PerRegister);
}
template <int PerRegister>
inline uint32_t b_element(const uint32_t (*slots)[16], int k, int n) {
  constexpr int half_k = 4 * PerRegister;
  return element_bits<PerRegister>(slots, n * 4 + (k % half_k) / PerRegister, 4 + k / half_k, k % PerRegister);
}

inline float half_value(uint32_t bits) {
  __half h;
  h.bits = (unsigned short)bits;
  return (float)h;
}

/* D = A B + C, the lane's four accumulators: the K products of `value(bits, operand)` (operand 0: A, 1: B) summed
 * in Sum, C added last, rounded once to Acc. */
template <int PerRegister, class Sum, class Acc, class Value>
inline void mma(void* const* out, const Fragments& f, const Acc (&c)[4], Value value) {
  constexpr int K = 8 * PerRegister;
  Acc d[4];
  exchange<int>(f, [&](int l, const uint32_t (*slots)[16]) {
    for (int i = 0; i < 4; ++i) {
      int row = l / 4 + 8 * (i / 2), col = 2 * (l % 4) + i % 2;
      Sum sum = 0;
      for (int k = 0; k < K; ++k)
        sum += Sum(value(a_element<PerRegister>(slots, row, k), 0)) * Sum(value(b_element<PerRegister>(slots, k, col), 1));
      d[i] = Acc(sum + Sum(c[i]));
    }
    return 0;
  });
  for (int i = 0; i < 4; ++i) std::memcpy(out[i], &d[i], 4);
}

// f32 += f16 x f16: the 16 products are exact in double; their sum and C round once to float.
inline void mma_sync_aligned_m16n8k16_row_col_f32_f16_f16_f32(void* d0, void* d1, void* d2, void* d3, uint32_t a0, uint32_t a1,
                                                                uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1, float c0,
                                                                float c1, float c2, float c3) {
  void* out[] = {d0, d1, d2, d3};
  const float c[4] = {c0, c1, c2, c3};
  mma<2, double>(out, Fragments{{a0, a1, a2, a3}, {b0, b1}}, c, [](uint32_t bits, int) { return half_value(bits); });
}

// s32 += 8-bit x 8-bit, exactly (int64 sums, wrapped to int32 as the hardware does).
template <bool ASigned, bool BSigned>
inline void mma_m16n8k32_s32(void* d0, void* d1, void* d2, void* d3, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                             uint32_t b0, uint32_t b1, int32_t c0, int32_t c1, int32_t c2, int32_t c3) {
  void* out[] = {d0, d1, d2, d3};
  const int32_t c[4] = {c0, c1, c2, c3};
  mma<4, int64_t>(out, Fragments{{a0, a1, a2, a3}, {b0, b1}}, c, [](uint32_t byte, int operand) {
    return (operand == 0 ? ASigned : BSigned) ? int32_t(int8_t(byte)) : int32_t(byte);
  });
}
#define EMU_MMA_S32(a, b, A_SIGNED, B_SIGNED)                                                                      \
  inline void mma_sync_aligned_m16n8k32_row_col_s32_##a##_##b##_s32(void* d0, void* d1, void* d2, void* d3, uint32_t a0, \
                                                                    uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, \
                                                                    uint32_t b1, int32_t c0, int32_t c1, int32_t c2,    \
                                                                    int32_t c3) {                                       \
    mma_m16n8k32_s32<A_SIGNED, B_SIGNED>(d0, d1, d2, d3, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3);                      \
  }
EMU_MMA_S32(s8, s8, true, true)
EMU_MMA_S32(u8, s8, false, true)
EMU_MMA_S32(s8, u8, true, false)
EMU_MMA_S32(u8, u8, false, false)
#undef EMU_MMA_S32

}  // namespace ptx
}  // namespace emu

/* ------------------------------------------------------------------ nvcuda::wmma (mma.h)
 * A fragment's layout across the lanes is opaque to the code that uses it, so every lane here holds the whole
 * tile (row-major, rows x cols) and computes it all; the lanes store the same values. The _sync operations
 * first wait for the warp, as the lanes converge there on the GPU. */
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  T x[num_elements];
};

template <class Use, int M, int N, int K, class T, class Layout, class V>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, V value) {
  for (auto& e : f.x) e = T(value);
}

template <class F, class T>
inline void load_tile(F& f, const T* p, unsigned ldm, bool column_major) {
  emu::warp_barrier();
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = column_major ? p[c * ldm + r] : p[r * ldm + c];
}

template <class Use, int M, int N, int K, class T, class Layout, class P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned ldm) {
  load_tile(f, p, ldm, std::is_same_v<Layout, col_major>);
}

template <int M, int N, int K, class T, class P>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const P* p, unsigned ldm, layout_t layout) {
  load_tile(f, p, ldm, layout == mem_col_major);
}

template <int M, int N, int K, class T, class P>
inline void store_matrix_sync(P* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  emu::warp_barrier();
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.x[r * N + c];
}

// The products of the K pairs are exact in double; their sum and C round once to the accumulator's type.
// Every lane holds the same tiles: lane 0 computes the result, and each lane copies it.
template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
  emu::warp_barrier();
  std::vector<unsigned char>& shared = emu::warp().tile;
  if (emu::lane() == 0) {
    TC out[M * N];
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        double sum = 0;
        for (int k = 0; k < K; ++k) sum += double(float(a.x[i * K + k])) * double(float(b.x[k * N + j]));
        out[i * N + j] = TC(sum + double(float(c.x[i * N + j])));
      }
    shared.assign(reinterpret_cast<unsigned char*>(out), reinterpret_cast<unsigned char*>(out) + sizeof out);
  }
  emu::warp_barrier();
  std::memcpy(d.x, shared.data(), sizeof d.x);
  emu::warp_barrier();  // nobody overwrites the result before every lane has it
}
}  // namespace wmma
}  // namespace nvcuda

/* ------------------------------------------------------------------ CUDA's built-in names */
#define threadIdx (::emu::thread_idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define warpSize 32

inline void __syncthreads() { emu::arrive_and_wait(emu::launch_state->block, "__syncthreads"); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_barrier(); }
inline void __threadfence() {}
inline void __threadfence_block() {}
inline unsigned __activemask() {
  return emu::warp().barrier.live == emu::kWarp ? 0xffffffffu : (1u << emu::warp().barrier.live) - 1;
}
inline unsigned __cvta_generic_to_shared(const void* p) { return emu::shared_address(p); }
template <class T>
inline T __ldg(const T* p) { return *p; }

template <class T>
inline T emu_shuffle(T var, int (*source)(int lane, int arg, int width), int arg, int width) {
  return emu::exchange<T>(var, [&](int l, const uint32_t (*slots)[16]) {
    T out;
    std::memcpy(&out, slots[source(l, arg, width)], sizeof(T));
    return out;
  });
}
inline int emu_shuffle_index(int l, int src, int width) { return (l & ~(width - 1)) + (src & (width - 1)); }
inline int emu_shuffle_down(int l, int delta, int width) { return (l & (width - 1)) + delta < width ? l + delta : l; }
inline int emu_shuffle_up(int l, int delta, int width) { return (l & (width - 1)) >= delta ? l - delta : l; }
inline int emu_shuffle_xor(int l, int mask, int width) { return ((l ^ mask) & ~(width - 1)) == (l & ~(width - 1)) ? l ^ mask : l; }
template <class T>
inline T __shfl_sync(unsigned, T var, int src, int width = 32) { return emu_shuffle(var, emu_shuffle_index, src, width); }
template <class T>
inline T __shfl_down_sync(unsigned, T var, unsigned delta, int width = 32) { return emu_shuffle(var, emu_shuffle_down, int(delta), width); }
template <class T>
inline T __shfl_up_sync(unsigned, T var, unsigned delta, int width = 32) { return emu_shuffle(var, emu_shuffle_up, int(delta), width); }
template <class T>
inline T __shfl_xor_sync(unsigned, T var, int mask, int width = 32) { return emu_shuffle(var, emu_shuffle_xor, mask, width); }

// One block at a time on one OS thread: an atomic is a plain read-modify-write.
template <class T>
inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
