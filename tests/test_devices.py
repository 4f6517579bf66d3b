"""Every built-in method keeps its tensors on the device its module was moved to.

A method is built on the CPU and then moved with ``.to(device)`` (the finetune regime does
this whenever a GPU is present), so a tensor it makes with ``torch.zeros(n)`` or
``torch.arange(n)`` (no ``device=``), or keeps as a plain attribute (not a parameter or a
buffer), stays on the CPU and the first op that mixes it with the module's tensors fails on
a GPU. This test finds such tensors on a machine without one.

How: a real CPU tensor can be wrapped in :class:`Elsewhere`, a tensor subclass that reports
``device="meta"`` (a device every build has: no GPU, no CUDA runtime) while holding its real
CPU data. The method is moved with ``Module._apply`` (what ``.to`` uses: parameters and
buffers, nothing else), so its parameters and buffers become ``Elsewhere``, and so do the
inputs, labels and indices it is given. Inside :func:`on_one_device` every aten op

* runs on the real CPU data, so ``.item()``, data-dependent loops, ``torch.equal``,
  ``.median()``, linear algebra and the RNG behave exactly as on the CPU;
* raises :class:`DeviceMismatch` when its tensor arguments are on both sides (an
  ``Elsewhere`` and a plain CPU tensor, 0-dim ones included: CUDA tolerates a 0-dim CPU
  tensor in elementwise ops, this check does not, so no fix relies on that). Allowed, as on
  a real device: ``copy_`` and ``to`` across devices, and CPU index tensors in indexing
  (``x[:, [0, 2]]`` makes one);
* turns a factory call with ``device=<that device>`` (``torch.zeros(n, device=x.device)``,
  ``torch.tensor(data, device=x.device)``) into an ``Elsewhere``; without ``device=`` it
  makes a plain CPU tensor, as it would next to a GPU module.

The hooks run as the harness calls them: ``on_epoch_start`` (eval, no grad), ``loss`` and
its backward for a few epochs, then ``on_train_end``, or ``fit``; then ``encode`` and
``real_valued``. Afterwards, training state the hooks left in plain attributes
(``self.memory = ...``) must be on the device too. Plain attributes set by the constructor
are exempt: CSQ's centres, say, are kept out of the module's state (a buffer would enter
the recorded parameter counts) and moved to the batch's device where they are used, and
those uses are what the op check sees.

Why not the alternatives: ``FakeTensorMode`` (fake "cuda" tensors) and the ``meta`` device
carry no data, and these methods branch on data (CMBH's connected components loop until
``torch.equal``, entropy selection takes ``int(argmax)``, spherical k-means tests
``.any()``, ITQ and FISH run SVDs), so they stop at the first data-dependent op. Here the
data is real, so every hook runs to the end.

The run is repeated on plain CPU tensors from the same seed and must give bit-identical
codes: the wrapped run is the same computation (RNG draws included), only devices are
checked. Not covered: anything only a GPU shows (its own RNG stream for tensors drawn on it,
kernels or dtypes a device lacks, speed, host-device syncs).
"""
from __future__ import annotations

import importlib
import pkgutil
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import plugins
from benchmark.method import INPUT_NAMES, HashMethod

DEVICE = torch.device("meta")
CHANNELS = {"s8": 40, "s16": 112, "s32": 320}  # EfficientNet-Lite0 stage maps
POOLED = 1280
SIZE = 64  # input size (px): stage maps 8x8, 4x4, 2x2 (what the conformance probe uses)
BITS, CLASSES, PER_CLASS, BATCH = 12, 3, 16, 16
EPOCHS = 3  # label correction (thesis-sld/-ddl) starts at epoch 2
#: hparams that reach code paths a 3-epoch run would not (A2-Net's late losses), or keep
#: the run short (thesis-mad's greedy selection takes one step per kept candidate)
HPARAMS = {"a2net": {"late_epoch": 1}, "a2netpp": {"late_epoch": 1}, "thesis-mad": {"subset": 48}}
#: methods whose device fix is still to come (issue 13); strict: remove an entry once it passes
XFAIL: dict[str, str] = {}
CROSSING = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}
#: ops that take CPU index tensors for a tensor on any device (``x[:, [0, 2]]`` makes one)
INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default,
            torch.ops.aten.index_put_.default, torch.ops.aten._index_put_impl_.default}


class DeviceMismatch(AssertionError):
    """An op received tensors on the CPU and on the method's device."""


class Elsewhere(torch.Tensor):
    """A real CPU tensor that reports ``DEVICE`` (see the module docstring)."""

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        wrapper = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, layout=elem.layout, device=DEVICE, requires_grad=elem.requires_grad)
        wrapper.elem = elem
        return wrapper

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self):
        return f"Elsewhere({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on an Elsewhere tensor outside OnOneDevice")


def _describe(tensors):
    return ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in tensors)


class OnOneDevice(TorchDispatchMode):
    """Runs every op on the real data; fails on ops that mix the CPU and ``DEVICE``."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = pytree.arg_tree_leaves(*args, **kwargs)
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        there = [t for t in tensors if isinstance(t, Elsewhere)]
        here = [t for t in tensors if not isinstance(t, Elsewhere)]
        if any(t.device == DEVICE for t in here):
            raise RuntimeError(f"{func}: a {DEVICE.type} tensor without data (made by a call "
                               "this test does not redirect)")
        if func in INDEXING:  # CPU indices are fine (PyTorch moves them); the rest is not
            cpu_indices = {id(i) for i in args[1] if i is not None and not isinstance(i, Elsewhere)}
            here = [t for t in here if id(t) not in cpu_indices]
        if there and here and func not in CROSSING:
            raise DeviceMismatch(f"{func}: CPU tensor(s) [{_describe(here)}] mixed with "
                                 f"tensor(s) on the method's device [{_describe(there)}]")
        target = kwargs.get("device")
        target = None if target is None else torch.device(target).type
        unwrap = lambda t: t.elem if isinstance(t, Elsewhere) else t  # noqa: E731
        args, kwargs_ = pytree.tree_map(unwrap, (args, kwargs))
        if target == DEVICE.type:
            kwargs_["device"] = torch.device("cpu")
        out = func(*args, **kwargs_)
        if func is torch.ops.aten.copy_.default:
            elsewhere = isinstance(tensors[0], Elsewhere)
        else:
            elsewhere = target == DEVICE.type or (bool(there) and target != "cpu")
        same = {id(unwrap(t)): t for t in tensors}  # in-place ops return their argument

        def wrap(value):
            if not isinstance(value, torch.Tensor):
                return value
            if id(value) in same:
                return same[id(value)]
            return Elsewhere(value) if elsewhere else value
        return pytree.tree_map(wrap, out)


class _Literals(TorchFunctionMode):
    """``torch.tensor(data, device=...)`` and its kin build their tensor without an aten op
    (so :class:`OnOneDevice` never sees them): build it on the CPU and wrap it."""

    FUNCTIONS = {torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor}
    INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.INDEXING and isinstance(args[0], Elsewhere):
            # ``x[:, [0, 2]]``: the list becomes an index tensor (CPU, as for any device)
            index = args[1]
            listed = lambda i: torch.tensor(i) if isinstance(i, list) else i  # noqa: E731
            index = tuple(map(listed, index)) if isinstance(index, tuple) else listed(index)
            return func(args[0], index, *args[2:], **kwargs)
        if func not in self.FUNCTIONS:
            return func(*args, **kwargs)
        device = kwargs.get("device")
        if func is torch.Tensor.new_tensor:
            self_, args = args[0], args[1:]
            kwargs.setdefault("dtype", self_.dtype)
            device = device if device is not None else self_.device
            func = torch.tensor
        if device is None or torch.device(device) != DEVICE:
            return func(*args, **kwargs)
        return Elsewhere(func(*args, **dict(kwargs, device="cpu")))


@contextmanager
def on_one_device():
    """Inside: ops check devices (:class:`OnOneDevice`), literals honour ``DEVICE``."""
    with _Literals(), OnOneDevice():
        yield


def to_device(module: nn.Module) -> nn.Module:
    """What ``module.to(DEVICE)`` does (parameters and buffers), with ``Elsewhere`` tensors."""
    return module._apply(lambda t: t if isinstance(t, Elsewhere) else Elsewhere(t.detach()))


@dataclass
class Data:
    """The part of the harness's ``TrainData`` a method may use."""
    inputs: dict
    labels: torch.Tensor
    batch_size: int

    def __len__(self):
        return len(self.labels)

    def batches(self, generator=None):
        positions = torch.arange(len(self), device=self.labels.device)
        for start in range(0, len(self), self.batch_size):
            index = positions[start:start + self.batch_size]
            yield {"inputs": {k: v[index] for k, v in self.inputs.items()},
                   "labels": self.labels[index], "indices": index}


def builtin_methods() -> list[type]:
    """Every method class of every built-in plugin (``plugins/*``), by its hook."""
    found = []
    for info in sorted(pkgutil.iter_modules(plugins.__path__), key=lambda i: i.name):
        if info.ispkg:
            module = importlib.import_module(f"plugins.{info.name}")
            hook = getattr(module, "benchmark_methods", lambda: [])
            found += [cls for cls in hook() if issubclass(cls, HashMethod)]
    return found


def make_inputs(names, n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """n samples of ``CLASSES`` classes: a random prototype per class and input, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {s: (c, SIZE // int(s[1:]), SIZE // int(s[1:])) for s, c in CHANNELS.items()}
    shapes["pooled"], shapes["images"] = (POOLED,), (3, SIZE, SIZE)
    prototypes = {k: torch.randn((CLASSES,) + shapes[k], generator=generator) for k in names}
    labels = torch.arange(CLASSES).repeat_interleave(n // CLASSES)
    noise = {k: torch.randn((n,) + shapes[k], generator=generator) for k in names}
    return {k: nn.functional.silu(prototypes[k][labels] + 0.5 * noise[k]) for k in names}, labels


def exercise(cls, on_device: bool) -> torch.Tensor:
    """Build ``cls`` from seed 0, move it and its inputs to ``DEVICE`` (``on_device``) or leave
    them on the CPU, run every hook the harness calls; return the codes of the query inputs."""
    move = Elsewhere if on_device else (lambda t: t)
    names = INPUT_NAMES[cls.inputs]
    inputs, labels = make_inputs(names, CLASSES * PER_CLASS, seed=1)
    queries, _ = make_inputs(names, 2 * CLASSES, seed=2)
    torch.manual_seed(0)
    shapes = {k: tuple(v.shape[1:]) for k, v in inputs.items()}
    method = cls(bits=BITS, num_classes=CLASSES, input_shapes=shapes, **hparams(cls))
    before = _tensor_attributes(method)
    method = to_device(method) if on_device else method
    inputs, labels, queries = (pytree.tree_map(move, x) for x in (inputs, labels, queries))
    data = Data(inputs, labels, BATCH)
    if cls.trainable:
        for epoch in range(EPOCHS):
            method.eval()
            with torch.no_grad():
                method.on_epoch_start(epoch, data)
            method.train()
            batch = next(data.batches())
            if tuple(getattr(cls, "train_resolutions", (1,))) != (1,):
                ratios = torch.tensor([1.0, 0.5, 0.25]).repeat(BATCH)[:len(batch["labels"])]
                batch["resolution"] = move(ratios)
            losses = method.loss(batch)
            for name, value in losses.items():
                assert value.device == DEVICE or not on_device, f"loss {name!r} on {value.device}"
            sum(losses.values()).backward()
        method.eval()
        with torch.no_grad():
            method.on_train_end(data)
    else:
        method.eval()
        with torch.no_grad():
            method.fit(inputs, labels if cls.supervised else None)
    method.eval()
    with torch.no_grad():
        codes = method.encode(queries)
        real = method.real_valued(queries)
    if on_device:
        assert codes.device == DEVICE and (real is None or real.device == DEVICE)
        stranded = {k for k, t in _tensor_attributes(method).items()
                    if t.device != DEVICE and before.get(k) is not t}
        assert not stranded, f"training state left on the CPU: {sorted(stranded)}"
    return codes


def hparams(cls) -> dict:
    """``HPARAMS`` of the method or, for an ablation variant, of the method it varies."""
    return next((v for k, v in HPARAMS.items()
                 if cls.name == k or cls.name.startswith(k + "-")), {})


def _tensor_attributes(method) -> dict[str, torch.Tensor]:
    """Plain tensor attributes (not parameters or buffers) of the method, its submodules and
    the plain objects they hold (e.g. a training-state object), one level deep."""
    found = {}

    def visit(prefix, value, depth):
        if isinstance(value, torch.Tensor):
            found[prefix] = value
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(f"{prefix}[{i}]", v, depth)
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(f"{prefix}[{k!r}]", v, depth)
        elif depth and hasattr(value, "__dict__") and not isinstance(value, (nn.Module, type)):
            for k, v in vars(value).items():
                visit(f"{prefix}.{k}", v, depth - 1)

    for name, module in method.named_modules():
        for key, value in vars(module).items():
            if not key.startswith("_"):
                visit(f"{name or 'method'}.{key}", value, 1)
    return found


METHODS = builtin_methods()


def _param(cls):
    marks = [pytest.mark.xfail(strict=True, raises=DeviceMismatch, reason=XFAIL[cls.name])] \
        if cls.name in XFAIL else []
    return pytest.param(cls, id=cls.name, marks=marks)


def test_every_builtin_method_is_exercised():
    from registry import load_plugins

    names = {cls.name for cls in METHODS}
    assert {"csq", "orthohash", "a2net", "cmbh", "dpsh", "thesis-ddl", "lsh"} <= names
    registered = {e.name for e in load_plugins().methods.values()
                  if e.cls.__module__.split(".")[0] == "plugins"}
    assert registered <= names
    assert not set(XFAIL) - names


@pytest.mark.parametrize("cls", [_param(c) for c in METHODS])
def test_tensors_stay_on_the_module_device(cls):
    with on_one_device():
        codes = exercise(cls, on_device=True)
    reference = exercise(cls, on_device=False)
    assert codes.shape == (2 * CLASSES, BITS)
    torch.testing.assert_close(codes.elem, reference, rtol=0, atol=0)


class _CpuMemory(HashMethod):
    """DPSH's pattern before issue 13: a memory made with ``torch.zeros(n, bits)``."""
    name = "cpu-memory"
    use_memory = True

    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.head = nn.Linear(input_shapes["pooled"][0], bits)

    def on_epoch_start(self, epoch, data):
        self.memory = torch.zeros(len(data), self.bits)

    def encode(self, inputs):
        return self.head(inputs["pooled"])

    def loss(self, batch):
        u = self.encode(batch["inputs"])
        if self.use_memory:
            self.memory[batch["indices"]] = u.detach()
        return {"pull": u.pow(2).mean()}


class _CpuState(_CpuMemory):
    """The same memory, never used with the module's tensors: left on the CPU."""
    name = "cpu-state"
    use_memory = False


def test_the_check_catches_state_made_on_the_cpu():
    with on_one_device(), pytest.raises(DeviceMismatch, match="index_put"):
        exercise(_CpuMemory, on_device=True)
    left = r"left on the CPU: \['method.memory'\]"
    with on_one_device(), pytest.raises(AssertionError, match=left):
        exercise(_CpuState, on_device=True)


def test_the_check_catches_a_cpu_tensor_and_allows_copies():
    x = Elsewhere(torch.ones(3))
    with on_one_device():
        assert isinstance(torch.zeros(2, device=x.device), Elsewhere)
        assert not isinstance(x.cpu(), Elsewhere)
        assert isinstance(x + 1, Elsewhere) and (x * 2).sum().item() == 6
        y = torch.zeros(3, device=x.device)
        assert y.copy_(torch.arange(3.0)) is y
        with pytest.raises(DeviceMismatch):
            x + torch.zeros(3)
        with pytest.raises(DeviceMismatch):
            x * torch.tensor(2.0)  # a 0-dim CPU tensor: tolerated by CUDA, not by this check
        assert isinstance(torch.tensor([1.0, 2.0], device=x.device) * x[:2], Elsewhere)
        assert x[[0, 2]].shape == (2,) and x[torch.tensor([True, False, True])].sum().item() == 2


def test_torchvision_schemas_are_defined_only_when_its_compiled_operators_do_not_load(monkeypatch):
    """On a torch whose torchvision ``_C`` library loads (a CUDA machine's matching builds) the
    library defines ``nms``/``qnms`` itself: defining them first would make its loading fail."""
    from benchmark.features import torchvision_compat
    torchvision_compat.import_torchvision()  # the real import, before the library is mocked
    loaded = []
    monkeypatch.setattr(torch.ops, "load_library", lambda path: loaded.append(path))
    monkeypatch.setattr(torch.library, "define", lambda *a: pytest.fail(f"defined {a}"))
    assert torchvision_compat.compiled_operators_load() and loaded[0].endswith((".so", ".pyd"))
    assert torchvision_compat.import_torchvision().__name__ == "torchvision"

    def fails(path):
        raise OSError(f"Could not load this library: {path}")
    monkeypatch.setattr(torch.ops, "load_library", fails)
    assert not torchvision_compat.compiled_operators_load()  # this machine's CPU torch
