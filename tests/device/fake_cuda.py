"""A fake CUDA device for CPU-only machines: real values on the CPU, CUDA's device rules enforced.

:class:`FakeCuda` is a ``TorchFunctionMode``: every torch call (functions, tensor methods, indexing,
the ``.device`` attribute) passes through it. Tensors created for ``cuda`` (``device="cuda"``,
``.to("cuda")``, ``.cuda()``, ``module.to("cuda")``) are ordinary CPU tensors that the mode
remembers as being on ``cuda:0``; ``t.device`` reports ``cuda:0`` for them, so code that follows
an input's device creates its new tensors there too. Each call is checked the way a CUDA build
checks it, and raises the same kind of error:

* all tensor arguments of an op on one device (a CPU 0-dim tensor counts as a scalar, as in CUDA);
* indices of ``t[i]`` on the CPU or on ``t``'s device;
* a ``generator=`` on the device of the tensor it fills (``torch.Generator("cuda")`` cannot be
  built without CUDA: :meth:`FakeCuda.generator` returns a CPU generator that the mode treats as
  a CUDA one);
* no ``.numpy()`` of a CUDA tensor.

Cross-device copies (``.to``, ``.cpu()``, ``.cuda()``, ``copy_``, slice assignment) are allowed,
as on CUDA. ``torch.func.jvp`` is wrapped while the mode is on: functorch returns its outputs
unwrapped outside the mode, so they are put on the device of the primals. Values are computed for
real (float64 and data-dependent ops included), so whole sampling runs and backward passes go
through. Not followed: tensors made inside C++ without a torch call (a ``Parameter`` built by
``copy.deepcopy`` of a module: move modules with ``.to`` after copying, as the training stages do).
Why not ``FakeTensorMode``: in a CPU-only build a fake
``cuda`` tensor cannot be indexed (``t[:, None]`` and boolean masks raise "PyTorch is not linked with
support for cuda devices", from the device guard of Python indexing) and it has no values, so the
DiT's layers and MDLM's sampler cannot run under it; the ``meta`` device has no values either and
lets ``searchsorted`` mix devices.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")
_CUDA_NAME = re.compile(r"cuda(:\d+)?")
_Tensor = torch._C.TensorBase
_INTROSPECTION = frozenset({
    "_has_compatible_shallow_copy_type", "is_same_size", "__hash__", "__len__", "dim", "size", "numel", "stride",
    "is_floating_point", "is_complex", "element_size", "data_ptr", "is_contiguous", "__repr__", "__format__",
    "_parse_to",
})
"""Calls that read metadata only: passed through unchecked (as CUDA does)."""


def _is_cuda_spec(value: object) -> bool:
    if isinstance(value, torch.device):
        return value.type == "cuda"
    return isinstance(value, str) and _CUDA_NAME.fullmatch(value) is not None


def _as_device(value: object) -> torch.device:
    return CUDA if _is_cuda_spec(value) else torch.device(value)  # type: ignore[arg-type]


class DeviceMismatch(RuntimeError):
    """What CUDA raises when an op mixes devices."""


class FakeCuda(TorchFunctionMode):
    """The mode (module docstring). ``with FakeCuda() as cuda: ...``; ``cuda.on_cuda(t)`` reads a tag."""

    def __init__(self) -> None:
        super().__init__()
        self._tags: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._generators: dict[int, tuple[torch.Generator, torch.device]] = {}

    def __enter__(self) -> FakeCuda:
        self._jvp = torch.func.jvp
        torch.func.jvp = self._tagged_jvp
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        torch.func.jvp = self._jvp
        return super().__exit__(*exc)

    def _tagged_jvp(self, func: Any, primals: tuple, tangents: tuple, **kwargs: Any) -> Any:
        """``torch.func.jvp``, its outputs on the primals' device: functorch unwraps them outside this mode."""
        tensors = [t for t in tree_flatten(primals)[0] if isinstance(t, torch.Tensor)]
        device = self._common("torch.func.jvp", tensors) or CPU
        return self._tag(self._jvp(func, primals, tangents, **kwargs), device, [])

    # ------------------------------------------------------------------ public helpers
    def generator(self, device: torch.device | str = "cuda") -> torch.Generator:
        """A generator for ``device``; for ``cuda`` a CPU generator that the mode treats as a CUDA one."""
        if torch.device(device).type != "cuda":
            return torch.Generator(device)
        gen = torch.Generator()
        self._generators[id(gen)] = (gen, CUDA)
        return gen

    def on_cuda(self, t: torch.Tensor) -> bool:
        """Whether the mode holds ``t`` on the fake CUDA device."""
        return t in self._tags

    # ------------------------------------------------------------------ devices
    def _device(self, t: torch.Tensor) -> torch.device:
        return CUDA if t in self._tags else _Tensor.device.__get__(t)

    def _gen_device(self, gen: torch.Generator) -> torch.device:
        entry = self._generators.get(id(gen))
        return entry[1] if entry is not None and entry[0] is gen else gen.device

    def _tag(self, out: Any, device: torch.device, inputs: list[torch.Tensor]) -> Any:
        def tag(t: object) -> object:
            if not isinstance(t, torch.Tensor):
                return t
            if any(t is i for i in inputs) and self._device(t) != device:
                t = t.clone()  # an op that returned its input unchanged (e.g. ``.to`` on the CPU)
            if device.type == "cuda":
                self._tags[t] = True
            else:
                self._tags.pop(t, None)
            return t

        return tree_map(tag, out)

    def _common(self, name: str, tensors: list[torch.Tensor]) -> torch.device | None:
        """The one device of ``tensors`` (CPU 0-dim tensors defer to any other), else raise."""
        common, scalar = None, False
        for t in tensors:
            dev, zero_dim = self._device(t), self._device(t).type == "cpu" and t.dim() == 0
            if common is None:
                common, scalar = dev, zero_dim
            elif dev != common:
                if zero_dim:
                    continue
                if scalar:
                    common, scalar = dev, zero_dim
                    continue
                raise DeviceMismatch(f"{name}: Expected all tensors to be on the same device, but found at "
                                     f"least two devices, {common} and {dev}!")
            elif scalar and not zero_dim:
                scalar = False
        return common

    # ------------------------------------------------------------------ the hook
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", str(func))
        owner = getattr(func, "__self__", None)
        attr = getattr(owner, "__name__", "")

        # attribute access: ``t.device``, ``t.is_cuda``, ``p.data = x``, other tensor-valued getters
        if name == "__get__" and isinstance(owner, type(_Tensor.device)):
            t = args[0]
            if attr == "device":
                return self._device(t)
            if attr == "is_cuda":
                return self._device(t).type == "cuda"
            if attr == "is_cpu":
                return self._device(t).type == "cpu"
            out = func(*args, **kwargs)
            return self._tag(out, self._device(t), []) if isinstance(out, torch.Tensor) else out
        if name == "__set__" and isinstance(owner, type(_Tensor.device)):
            func(*args, **kwargs)
            if attr == "data":
                self._tag(args[0], self._device(args[1]), [])
            return None

        if name in _INTROSPECTION:
            return func(*args, **kwargs)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        label = getattr(func, "__qualname__", name)

        # explicit transfers
        if name == "to" and args and isinstance(args[0], torch.Tensor):
            return self._to(args[0], args[1:], kwargs)
        if name == "cuda":
            return self._tag(args[0].clone(), CUDA, [])
        if name == "cpu":
            return self._tag(func(*args, **kwargs), CPU, [args[0]])
        if name in ("numpy", "__array__") and self._device(args[0]).type == "cuda":
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                            "tensor to host memory first.")
        if name == "get_device" and args and isinstance(args[0], torch.Tensor):
            return 0 if self._device(args[0]).type == "cuda" else -1
        if name == "copy_":
            return func(*args, **kwargs)
        if name == "__deepcopy__":  # the memo dict holds other tensors: only the copied one counts
            return self._tag(func(*args, **kwargs), self._device(args[0]), [args[0]])
        if name in ("__getitem__", "__setitem__"):
            return self._index(func, name, args, kwargs)

        # factories: ``device=`` decides; everything else follows its inputs
        target = None
        if kwargs.get("device") is not None:
            target = _as_device(kwargs["device"])
            if target.type == "cuda":
                kwargs["device"] = CPU
        if name in ("tensor", "as_tensor", "from_numpy", "asarray"):
            out = func(*args, **kwargs)
            return self._tag(out, target or (self._device(args[0]) if tensors else CPU), tensors)
        common = self._common(label, tensors)
        device = target or common or CPU
        gens = [g for g in tree_flatten((args, kwargs))[0] if isinstance(g, torch.Generator)]
        for gen in gens:
            if self._gen_device(gen).type != device.type:
                raise DeviceMismatch(f"{label}: Expected a '{device.type}' device type for generator but found "
                                     f"'{self._gen_device(gen).type}'")
        out = func(*args, **kwargs)
        if name.endswith("_") and not name.startswith("__") and tensors:
            return out  # in place: the result is the first argument, already where it was
        return self._tag(out, device, tensors)

    def _to(self, t: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        """``t.to(...)``: a copy when the device changes, the real ``to`` for dtype and layout."""
        if args and isinstance(args[0], torch.Tensor):
            other = args[0]
            device, dtype, rest = self._device(other), other.dtype, {}
            rest.update({k: v for k, v in kwargs.items() if k in ("non_blocking", "copy")})
        else:
            spec = [CPU if _is_cuda_spec(a) else a for a in args]
            kw = {k: (CPU if k == "device" and _is_cuda_spec(v) else v) for k, v in kwargs.items()}
            wants_cuda = any(_is_cuda_spec(a) for a in args) or _is_cuda_spec(kwargs.get("device"))
            parsed_device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*spec, **kw)
            device = CUDA if wants_cuda else (parsed_device or self._device(t))
            rest = {"non_blocking": non_blocking, "copy": kwargs.get("copy", False)}
            if memory_format is not None:
                rest["memory_format"] = memory_format
        out = _Tensor.to(t, dtype=dtype, **rest) if dtype is not None else _Tensor.to(t, **rest)
        return self._tag(out, device, [t])

    def _index(self, func, name: str, args: tuple, kwargs: dict) -> Any:
        """``t[i]`` / ``t[i] = v``: tensor indices on the CPU or on ``t``'s device; values like ``copy_``."""
        t, index = args[0], args[1]
        device = self._device(t)
        for i in tree_flatten(index)[0]:
            if isinstance(i, torch.Tensor) and self._device(i) not in (CPU, device):
                raise DeviceMismatch(f"Tensor.{name}: indices should be either on cpu or on the same device as "
                                     f"the indexed tensor ({device})")
        if name == "__setitem__":
            value = args[2]
            advanced = any(isinstance(i, torch.Tensor) for i in tree_flatten(index)[0])
            if advanced and isinstance(value, torch.Tensor):
                self._common("Tensor.__setitem__ (index_put_)", [t, value])
            return func(*args, **kwargs)
        return self._tag(func(*args, **kwargs), device, [t])
