"""What would break CUDA-graph capture, recorded on any device: host reads of tensor data, outputs sized by data.

``with SyncRecorder() as rec: ...`` counts in ``rec.found`` (name -> calls) every aten op of HOST_READ_OPS (the
host waits for a value computed on the device) or DATA_SIZED_OPS (the host reads the data to size the output),
indexing with a boolean mask (a nonzero inside ``aten.index``), and the Tensor methods that read data without
dispatching an aten op when the tensor is on the CPU (TENSOR_METHODS). It is a
``tools.host_bench.AtenLaunchCounter``: the package's custom ops are opened (their Python implementations run
under it) and ``rec.counts`` counts the aten compute ops, so a test can tell that something ran.
"""
import torch

from tools.host_bench import AtenLaunchCounter

HOST_READ_OPS = ("_local_scalar_dense", "item", "is_nonzero", "equal", "allclose")
DATA_SIZED_OPS = ("nonzero", "nonzero_numpy", "argwhere", "masked_select", "_unique", "_unique2", "unique_dim",
                  "unique_consecutive", "unique_dim_consecutive", "repeat_interleave", "bincount")
INDEX_OPS = ("index", "index_put", "index_put_", "_index_put_impl_")  # a boolean mask index is a nonzero
TENSOR_METHODS = ("tolist", "numpy", "cpu")


def _is_mask(index) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


class SyncRecorder(AtenLaunchCounter):
    """Records in ``found`` what would break capture; see the module docstring."""

    def __init__(self):
        super().__init__()
        self.found: dict[str, int] = {}
        self._saved, self._depth = {}, 0

    def _record(self, name: str) -> None:
        self.found[name] = self.found.get(name, 0) + 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if func.namespace == "aten" and name in HOST_READ_OPS + DATA_SIZED_OPS:
            self._record(str(func))
        elif func.namespace == "aten" and name in INDEX_OPS and any(_is_mask(i) for i in args[1] or ()):
            self._record(f"{func} with a boolean mask")
        return super().__torch_dispatch__(func, types, args, kwargs)

    def __enter__(self):
        if self._depth == 0:  # the custom ops re-enter the mode
            for name in TENSOR_METHODS:
                method = self._saved[name] = getattr(torch.Tensor, name)
                setattr(torch.Tensor, name, self._wrap(name, method))
        self._depth += 1
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._depth -= 1
            if self._depth == 0:
                for name, method in self._saved.items():
                    setattr(torch.Tensor, name, method)

    def _wrap(self, name, method):
        def recorded(tensor, *args, **kwargs):
            self._record(f"Tensor.{name}")
            return method(tensor, *args, **kwargs)
        return recorded
