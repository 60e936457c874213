"""The CPU emulator of CUDA kernels (cuda_emulator.py) on small hand-written kernels: it computes what the
GPU would, and a kernel with a race, a deadlock or an instruction it does not model fails visibly."""
import numpy as np
import pytest

from qcompile.backends.tvm.cuda.emulator.kernels import (
    COPY_MODES,
    ORDERS,
    SCHEDULES,
    EmulatedKernels,
    EmulationError,
    emulated_gpu,
    register_kernels,
)
from qcompile.backends.tvm.cuda.runtime import emulating

KERNEL = 'extern "C" __global__ void __launch_bounds__(64) main_kernel(float* __restrict__ x_ptr, float* __restrict__ y_ptr) {\n'

# Each thread copies 4 floats into shared memory with cp.async, then reads another thread's 4 (a warp apart).
STAGED = KERNEL + """
  extern __shared__ __align__(16) unsigned char buf_dyn_shmem_ptr[];
  unsigned dst = __cvta_generic_to_shared(buf_dyn_shmem_ptr + threadIdx.x * 16);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(dst), "l"(x_ptr + threadIdx.x * 4) : "memory");
  asm volatile("cp.async.commit_group;" ::);
  WAIT
  for (int i = 0; i < 4; ++i) y_ptr[threadIdx.x * 4 + i] = ((float*)buf_dyn_shmem_ptr)[(threadIdx.x + 32) % 64 * 4 + i];
}
"""
WAITED = 'asm volatile("cp.async.wait_group 0;" ::: "memory");\n  __syncthreads();'


def _run(source: str, copies: str = "eager", order: str = "lockstep", block=(64,)) -> np.ndarray:
    x = np.arange(256, dtype=np.float32)
    y = np.zeros(256, np.float32)
    EmulatedKernels(source).launch("main_kernel", (1,), block, {"x": x, "y": y}, copies=copies, order=order)
    return y


def _expected_staged() -> np.ndarray:
    return np.arange(256, dtype=np.float32).reshape(64, 4)[(np.arange(64) + 32) % 64].ravel()


@pytest.mark.parametrize("copies, order", SCHEDULES)
def test_a_correct_pipeline_gives_the_same_result_under_every_schedule(copies, order):
    np.testing.assert_array_equal(_run(STAGED.replace("WAIT", WAITED), copies, order), _expected_staged())


def test_reading_a_stage_before_its_wait_reads_poison_when_copies_are_lazy():
    no_wait = STAGED.replace("WAIT", "__syncthreads();")
    np.testing.assert_array_equal(_run(no_wait, "eager"), _expected_staged())  # the copy landed at once
    assert np.isnan(_run(no_wait, "lazy")).all()  # 0xff bytes: the block's shared memory before any copy


@pytest.mark.parametrize("order", ORDERS)
def test_a_missing_barrier_shows_in_every_order(order):
    """Without __syncthreads, a thread runs on to read the stage of one the schedule has not run yet."""
    no_barrier = STAGED.replace("WAIT", 'asm volatile("cp.async.wait_group 0;" ::: "memory");')
    assert np.isnan(_run(no_barrier, "eager", order)).any()


def test_warp_shuffles_and_reductions():
    source = KERNEL + """
  float v = x_ptr[threadIdx.x];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset, 32);
  y_ptr[threadIdx.x] = __shfl_sync(0xffffffffu, v, 0, 32);   // lane 0's sum, everywhere
  y_ptr[64 + threadIdx.x] = __shfl_xor_sync(0xffffffffu, x_ptr[threadIdx.x], 1, 32);
}
"""
    x = np.arange(256, dtype=np.float32)
    y = _run(source)
    np.testing.assert_array_equal(y[:64], np.repeat([x[:32].sum(), x[32:64].sum()], 32))
    np.testing.assert_array_equal(y[64:128], x[np.arange(64) ^ 1])


@pytest.mark.parametrize("copies", COPY_MODES)
def test_a_deadlock_is_an_error_naming_where_threads_wait(copies):
    source = KERNEL + "  if (threadIdx.x < 16) __syncthreads(); else __syncwarp();\n}\n"
    with pytest.raises(EmulationError, match=r"deadlock.*waits at __syncthreads"):
        _run(source, copies)


def test_an_instruction_it_does_not_model_is_named():
    with pytest.raises(EmulationError, match="no model of the PTX instruction trap"):
        EmulatedKernels(KERNEL + '  asm volatile("trap;");\n}\n')


def test_arguments_are_checked_by_name_and_type():
    kernels = EmulatedKernels(STAGED.replace("WAIT", WAITED))
    x = np.zeros(256, np.float32)
    with pytest.raises(EmulationError, match="needs the argument 'y'"):
        kernels.launch("main_kernel", (1,), (64,), {"x": x})
    with pytest.raises(EmulationError, match=r"'y' is float \(4 bytes\) in the kernel, float16 in the call"):
        kernels.launch("main_kernel", (1,), (64,), {"x": x, "y": np.zeros(256, np.float16)})
    with pytest.raises(EmulationError, match="no kernel 'other'"):
        kernels.launch("other", (1,), (64,), {"x": x, "y": x})
    with pytest.raises(EmulationError, match="copies must be one of"):
        kernels.launch("main_kernel", (1,), (64,), {"x": x, "y": x}, copies="late")


def test_the_emulated_gpu_checks_its_schedule_before_switching_on():
    with pytest.raises(EmulationError, match=r"order must be one of \['ascending', 'descending', 'lockstep'\]"):
        with emulated_gpu(order="backwards"):
            pass
    assert not emulating()


def test_registering_kernels_needs_their_source_and_a_cubin(tmp_path):
    with pytest.raises(EmulationError, match="has no kernels.cubin and kernels.cu"):
        register_kernels(tmp_path)
    (tmp_path / "kernels.cu").write_text(STAGED.replace("WAIT", WAITED))
    (tmp_path / "kernels.cubin").write_bytes(b"not an ELF image")
    with pytest.raises(EmulationError, match="not a cubin the emulated driver can register"):
        register_kernels(tmp_path)
