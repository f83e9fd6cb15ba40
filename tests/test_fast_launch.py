"""The fast launcher's plans (mgiad_kernels.runtime.fast_launch.make_plan): the bytes its C function reads, and the
launches it leaves to Triton. Its launches themselves are checked against Triton's own launcher on the
stand-in driver (tests/test_standin_driver.py)."""
import struct
import types

import pytest
import torch

from mgiad_kernels.runtime import launch_sites
from mgiad_kernels.runtime.fast_launch import _HEADER, make_plan

# a kernel's signature as Triton's CompiledKernel.src holds it: pointers, scalars and constexprs in order
SIGNATURE = {"a_ptr": "*fp32", "b_ptr": "*fp16", "unused_ptr": "*fp32", "n": "i32", "offset": "i64", "big": "u64",
             "alpha": "fp32", "beta": "fp64", "flag": "i1", "BLOCK": "constexpr"}
VALUES = (None, None, 0x7F00_0000_0040, -7, -(2 ** 40), 2 ** 63 + 5, 0.1, -2.5, True, 128)
TENSORS = (0, 1)  # a_ptr and b_ptr are given at each launch; unused_ptr is the placeholder's address


def kernel(signature=SIGNATURE, **metadata):
    fields = dict(num_warps=4, num_ctas=1, shared=1024, launch_cooperative_grid=False, launch_pdl=False)
    fields.update(metadata)
    return types.SimpleNamespace(function=0xABC0, src=types.SimpleNamespace(signature=dict(signature)),
                                 metadata=types.SimpleNamespace(**fields))


def read(plan: bytes):
    """(header fields, parameter offsets, tensor offsets, parameters as 8-byte slots)."""
    header = _HEADER.unpack_from(plan)
    n_params, n_tensors, start, size = header[6:10]
    offsets = struct.unpack_from(f"<{n_params}I", plan, _HEADER.size)
    tensors = struct.unpack_from(f"<{n_tensors}I", plan, _HEADER.size + 4 * n_params)
    assert len(plan) == start + size and start % 8 == 0
    return header, offsets, tensors, [plan[start + o:start + o + 8] for o in offsets]


def test_a_plan_packs_every_runtime_parameter_as_the_driver_reads_it():
    plan = make_plan(kernel(), (3, 2, 1), VALUES, TENSORS)
    header, offsets, tensors, slots = read(plan)
    function, gx, gy, gz, block, shared, n_params, n_tensors = header[:8]
    assert (function, gx, gy, gz, block, shared) == (0xABC0, 3, 2, 1, 128, 1024)
    assert n_params == 9 + 2 and n_tensors == 2  # nine runtime parameters, Triton's two scratch pointers
    assert offsets == tuple(range(0, 8 * n_params, 8)) and tensors == (0, 8)
    assert slots[0] == slots[1] == bytes(8)  # written by each launch
    assert struct.unpack("<Q", slots[2])[0] == 0x7F00_0000_0040
    assert struct.unpack("<i", slots[3][:4])[0] == -7 and slots[3][4:] == b"\xff" * 4  # read as 4 bytes
    assert struct.unpack("<q", slots[4])[0] == -(2 ** 40)
    assert struct.unpack("<Q", slots[5])[0] == 2 ** 63 + 5
    assert slots[6] == struct.pack("<f", 0.1) + bytes(4)  # fp32 rounded as Triton's (float) cast rounds
    assert struct.unpack("<d", slots[7])[0] == -2.5
    assert slots[8][:1] == b"\x01" and slots[8][1:4] == bytes(3)  # a bool reads the same as 1 or 4 bytes
    assert slots[9] == slots[10] == bytes(8)  # no scratch


@pytest.mark.parametrize("case, change", [
    ("cluster", dict(metadata=dict(num_ctas=2))),
    ("cooperative", dict(metadata=dict(launch_cooperative_grid=True))),
    ("PDL", dict(metadata=dict(launch_pdl=True))),
    ("oversized shared memory", dict(metadata=dict(shared=229 * 1024))),
    ("a 16-bit scalar", dict(signature={**SIGNATURE, "alpha": "fp16"})),
    ("a tensor descriptor", dict(signature={**SIGNATURE, "a_ptr": "nvTmaDesc"})),
    ("a value out of its type's range", dict(values=VALUES[:5] + (2 ** 64,) + VALUES[6:])),
    ("fewer values than parameters", dict(values=VALUES[:-1])),
    ("a given tensor that is no pointer", dict(tensors=(0, 3))),
])
def test_launches_a_plan_cannot_carry_are_left_to_triton(case, change):
    k = kernel(change.get("signature", SIGNATURE), **change.get("metadata", {}))
    assert make_plan(k, (1, 1, 1), change.get("values", VALUES), change.get("tensors", TENSORS)) is None, case


def test_a_launch_asks_torch_for_the_current_device_directly():
    """Triton's CUDA driver (with torch) hands torch.cuda.current_device, a Python frame around a lazy-init
    check and torch's C getter; a warm launch calls the getter. Any other driver's function is kept."""
    assert launch_sites._device_getter(torch.cuda.current_device) is torch._C._cuda_getDevice
    own = lambda: 3  # noqa: E731
    assert launch_sites._device_getter(own) is own
