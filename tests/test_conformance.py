"""The conformance kit: every built-in method passes it, and each check catches the
contract breach it names."""
import pytest
import torch

from benchmark import conformance
from benchmark.conformance import ConformanceError, parametrize_with_checks
from benchmark.method import HashMethod
from registry import load_plugins
from registry.loading import BUILTIN_DISTRIBUTION
from tests.conftest import make_plugin_dist, run_cli

BUILTIN_METHODS = [name for name, entry in load_plugins().methods.items()
                   if entry.distribution == BUILTIN_DISTRIBUTION]


def test_every_builtin_plugin_loads():
    failures = [f for f in load_plugins().failures if f.distribution == BUILTIN_DISTRIBUTION]
    assert not failures, failures
    assert {"lsh", "itq", "dsh"} <= set(BUILTIN_METHODS)


#: (method, check) pairs the kit fails, each a measured finding asserted to keep failing
#: until it is fixed: thesis-ddl's entropy-selected bits (not trained against the labels)
#: stay at tie-aware mAP 0.54-0.64 on the 4-class probe, below LSH's 0.91; its
#: ``-direct`` variant (trained bits) reaches 1.0.
KNOWN_FAILURES = {(name, "check_beats_lsh")
                  for name in ("thesis-ddl", "thesis-ddl-nomsd", "thesis-ddl-nosld")}


@parametrize_with_checks(BUILTIN_METHODS)
def test_builtin_methods_conform(method, check):
    if (method, check.__name__) in KNOWN_FAILURES:
        with pytest.raises(ConformanceError):
            check(method)
        return
    check(method)


class Linear(HashMethod):
    """A well-behaved trainable method; the broken ones below each change one thing."""
    name = "probe-linear"
    train_config = {"epochs": 2, "batch_size": 32, "optimizer": {"type": "SGD", "lr": 0.05}}

    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.head = torch.nn.Linear(input_shapes["pooled"][0], bits)

    def encode(self, inputs):
        return self.head(inputs["pooled"])

    def loss(self, batch):
        h = torch.tanh(self.encode(batch["inputs"]))
        same = (batch["labels"][:, None] == batch["labels"][None]).float() * 2 - 1
        return {"pairwise": ((h @ h.T) / self.bits - same).pow(2).mean()}


class WrongShape(Linear):
    name = "probe-wrong-shape"

    def encode(self, inputs):
        return super().encode(inputs)[:, :-1]


class Constant(Linear):
    name = "probe-constant"

    def encode(self, inputs):
        return super().encode(inputs) * 0 + 1


class BatchDependent(Linear):
    name = "probe-batch-dependent"

    def encode(self, inputs):
        h = super().encode(inputs)
        return h - h.mean(0)


class Unseeded(Linear):
    """Draws its initial weights from a counter instead of the harness's seeded RNG."""
    name = "probe-unseeded"
    instances = 0

    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        Unseeded.instances += 1
        generator = torch.Generator().manual_seed(1000 + Unseeded.instances)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=generator))


class NotLearning(Linear):
    name = "probe-not-learning"

    def loss(self, batch):
        return {"flat": self.encode(batch["inputs"]).sum() * 0 + 1}


class Exploding(Linear):
    name = "probe-nan"

    def loss(self, batch):
        return {"nan": self.encode(batch["inputs"]).sum() * float("nan")}


class Inverted(Linear):
    """Learns, but pulls same-class pairs apart (a sign error in the similarity target)."""
    name = "probe-inverted"

    def loss(self, batch):
        h = torch.tanh(self.encode(batch["inputs"]))
        same = (batch["labels"][:, None] == batch["labels"][None]).float() * 2 - 1
        return {"pairwise": ((h @ h.T) / self.bits + same).pow(2).mean()}


class NoFit(HashMethod):
    name = "probe-no-fit"
    trainable = False

    def encode(self, inputs):
        return inputs["pooled"][:, : self.bits]


class NotAMethod(torch.nn.Module):
    name = "probe-not-a-method"


@pytest.mark.parametrize("method_cls, failing, reason", [
    (WrongShape, "codes_shape_and_binarised", "encode returned shape (32, 11), expected (32, 12)"),
    (Constant, "codes_shape_and_binarised", "every sample gets the same 12-bit code"),
    (BatchDependent, "encode_without_labels", "changes with the rest of its batch"),
    (Unseeded, "same_seed_same_codes", "differ in"),
    (NotLearning, "losses_finite_and_decreasing", "did not decrease over 5 steps"),
    (Exploding, "losses_finite_and_decreasing", "non-finite loss at epoch 0"),
    (Inverted, "beats_lsh", "does not beat LSH's"),
    (NoFit, "contract", "`fit` is not implemented"),
    (NotAMethod, "contract", "not a subclass of benchmark.method.HashMethod"),
])
def test_each_check_catches_its_breach(method_cls, failing, reason):
    results = {r.check: r for r in conformance.run_checks(method_cls)}
    assert not results[failing].passed and reason in results[failing].detail, results[failing]
    if failing != "contract":
        assert results["contract"].passed


def test_well_behaved_method_passes_every_check():
    results = conformance.run_checks(Linear)
    assert [r.check for r in results] == [conformance.check_name(c) for c in conformance.CHECKS]
    assert all(r.passed for r in results), [r for r in results if not r.passed]
    with pytest.raises(ConformanceError, match="give a registered name"):
        conformance.check_entry_point(Linear)


def test_parametrize_with_checks_ids():
    mark = parametrize_with_checks([Linear, "lsh"])
    names, values = mark.args
    assert names == "method, check"
    ids = mark.kwargs["ids"]
    assert ids[0] == "probe-linear-contract" and "lsh-entry_point" in ids
    assert len(values) == len(conformance.CHECKS) * 2 + 1


GOOD_PLUGIN = """
import torch
from benchmark.method import HashMethod
from registry import hookimpl

class Good(HashMethod):
    name = "good"
    train_config = {"epochs": 2, "batch_size": 32, "optimizer": {"type": "SGD", "lr": 0.05}}
    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.head = torch.nn.Linear(input_shapes["pooled"][0], bits)
    def encode(self, inputs):
        return self.head(inputs["pooled"])
    def loss(self, batch):
        h = torch.tanh(self.encode(batch["inputs"]))
        same = (batch["labels"][:, None] == batch["labels"][None]).float() * 2 - 1
        return {"pairwise": ((h @ h.T) / self.bits - same).pow(2).mean()}

class Frozen(Good):
    name = "frozen-loss"
    def loss(self, batch):
        return {"flat": self.encode(batch["inputs"]).sum() * 0 + 1}

@hookimpl
def benchmark_methods():
    return [Good, Frozen]
"""


def test_check_plugin_cli(tmp_path):
    site = make_plugin_dist(tmp_path / "site", "good-plugin", "goodies", "good_plugin",
                            GOOD_PLUGIN, "0.2")
    make_plugin_dist(site, "broken-plugin", "broken", "broken_plugin", "import not_there\n")
    env = {"PYTHONPATH": str(site)}
    good = run_cli("check-plugin", "good", env=env)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "check-plugin good (plugin goodies, good-plugin 0.2)" in good.stdout
    checks = len(conformance.CHECKS) + 1  # and the entry-point check
    assert good.stdout.count("  PASS ") == checks and f"{checks} passed, 0 failed" in good.stdout
    both = run_cli("check-plugin", "goodies", env=env)  # an entry point: all its methods
    assert both.returncode == 1
    assert "check-plugin frozen-loss" in both.stdout and "check-plugin good " in both.stdout
    assert "FAIL losses_finite_and_decreasing: loss did not decrease over 5 steps" in both.stdout
    broken = run_cli("check-plugin", "broken", env=env)
    assert broken.returncode == 1
    assert ("FAIL entry_point: plugin 'broken' failed to load: ModuleNotFoundError: "
            "No module named 'not_there'") in broken.stdout
    unknown = run_cli("check-plugin", "nope", env=env)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: no method or plugin")
    assert len(unknown.stderr.strip().splitlines()) == 1
