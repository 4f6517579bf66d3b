"""Method configuration as data (--hparams, --config, variants), code-aware run identity
and the training-health block."""
import json
import sqlite3

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.errors import BenchmarkError
from benchmark.grid.config import MethodSettings, parse_hparams, resolve, scalar
from benchmark.grid.digest import digest_of
from benchmark.method import hparam_defaults
from benchmark.run.health import health
from benchmark.tune.space import checked_space
from registry import load_plugins
from tests.conftest import make_plugin_dist, run_cli

METHODS = load_plugins().methods
QUICK = ["--dataset", "synthetic-fg", "--input-size", "32", "--bits", "8", "--no-progress"]


def test_defaults_cover_constructor_and_training_config():
    dsh = hparam_defaults(METHODS["dsh"].cls)
    assert dsh == {"hidden": 1024, "alpha": 0.01, "epochs": 40, "batch_size": 64,
                   "optimizer": "SGD", "lr": 1e-2, "momentum": 0.9, "weight_decay": 0.004}
    assert hparam_defaults(METHODS["lsh"].cls) == {}
    resolved = resolve(METHODS["dsh"].cls, "dsh", MethodSettings(hparams={"dsh": {"lr": 0.02}}))
    assert resolved.hparams == {"hidden": 1024, "alpha": 0.01}
    assert resolved.train == {"epochs": 40, "batch_size": 64, "optimizer": {
        "type": "SGD", "lr": 0.02, "momentum": 0.9, "weight_decay": 0.004}}


def test_variants_are_one_mechanism_and_construct_directly():
    none = hparam_defaults(METHODS["thesis-sld-none"].cls)
    assert (none["label_correction"], none["sub_labels"], none["balance"]) == (False, False, False)
    cmbh_b = METHODS["cmbh-b"].cls
    assert {k: hparam_defaults(cmbh_b)[k] for k in ("layers", "transfer", "regions")} == \
        {"layers": False, "transfer": False, "regions": False}
    shapes = {"s8": (40, 8, 8), "s16": (112, 4, 4), "s32": (320, 2, 2), "pooled": (1280,)}
    built = cmbh_b(bits=8, num_classes=3, input_shapes=shapes)
    assert (built.layers, built.transfer, built.regions) == (False, False, False)
    assert hparam_defaults(METHODS["thesis-mad-nodiff"].cls)["diffusion"] is False


def test_parse_hparams_and_scalars():
    assert parse_hparams("dsh.alpha=0.1, dsh.lr=1e-3,csq.lam=2") == {
        "dsh": {"alpha": 0.1, "lr": 0.001}, "csq": {"lam": 2}}
    assert [scalar(v) for v in ("true", "None", "3", "x0")] == [True, None, 3, "x0"]
    with pytest.raises(BenchmarkError, match="METHOD.NAME=VALUE"):
        parse_hparams("alpha=0.1")


@pytest.mark.parametrize("flags, message", [
    (["--hparams", "dsj.alpha=1"], "unknown method 'dsj'"),
    (["--hparams", "dsh.alhpa=1"], "unknown hyperparameter 'alhpa'"),
    (["--hparams", "dsh.alpha=abc"], "expected float"),
    (["--hparams", "dsh.hidden=2.5"], "expected int"),
    (["--hparams", "dsh.epochs=0"], "out of range"),
    (["--hparams", "dsh.lr=-1"], "out of range"),
    (["--hparams", "dsh.optimizer=Nope"], "not a torch.optim optimiser"),
    (["--hparams", "dsh.optimizer=Adam,dsh.momentum=0.5"], "Adam takes no argument 'momentum'"),
    (["--hparams", "csq.lr=0.1"], "not among --methods"),
])
def test_bad_settings_are_one_line_errors(flags, message, tmp_path, capsys):
    assert main(["run", "--methods", "dsh", *QUICK, "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "results.sqlite").exists()


@pytest.mark.parametrize("text, message", [
    ("bogus: 1\n", "unknown key(s) bogus"),
    ("variants:\n  - {name: v1, base: nope}\n", "unknown base method 'nope'"),
    ("variants:\n  - {name: dsh, base: csq}\n", "already a method"),
    ("variants:\n  - {name: v1, base: dsh, hparams: {alpha: x}}\n", "expected float"),
])
def test_bad_config_files_are_one_line_errors(text, message, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert main(["run", "--methods", "dsh", *QUICK, "--out", str(tmp_path), "--config", str(config)]) == 2
    assert message in capsys.readouterr().err


def test_every_builtin_search_space_is_valid():
    tunable = [name for name, entry in METHODS.items() if entry.cls.trainable and entry.cls.search_space]
    assert {"dsh", "csq", "greedyhash", "orthohash", "fish", "thesis-sld", "cmbh"} <= set(tunable)
    for name in tunable:
        checked_space(METHODS[name].cls, name)  # declared names, valid bounds, default inside


def _specs(out):
    rows = sqlite3.connect(out / "results.sqlite").execute(
        "SELECT method, spec, provenance, health FROM runs").fetchall()
    return {m: (json.loads(s), json.loads(p), json.loads(h)) for m, s, p, h in rows}


def test_config_variants_hparams_and_epochs_reach_the_record(tmp_path, cache_dir):
    config = tmp_path / "tuned.py"
    config.write_text("hparams = dict(dsh=dict(alpha=0.05, lr='1e-2'))\n"
                      "variants = [dict(name='dsh-wide', base='dsh', hparams=dict(hidden=64))]\n"
                      "selection = dict(dsh=dict(objective='map_tie_aware', trials=3))\n")
    out = tmp_path / "out"
    assert main(["run", "--methods", "dsh,dsh-wide", *QUICK, "--epochs", "1", "--out", str(out),
                 "--cache-dir", str(cache_dir), "--config", str(config),
                 "--hparams", "dsh.weight_decay=0.001"]) == 0
    specs = _specs(out)
    dsh, provenance, block = specs["dsh"]
    assert dsh["hparams"] == {"alpha": 0.05, "hidden": 1024}
    assert dsh["train"]["epochs"] == 1 == provenance["epochs"]  # --epochs is the effective config
    assert dsh["train"]["optimizer"] == {"type": "SGD", "lr": 0.01, "momentum": 0.9,
                                         "weight_decay": 0.001}
    assert dsh["selection"] == {"objective": "map_tie_aware", "trials": 3}
    assert len(dsh["code"]) == 16 and dsh["eval_protocol"] >= 1
    assert specs["dsh-wide"][0]["hparams"] == {"alpha": 0.01, "hidden": 64}
    assert "selection" not in specs["dsh-wide"][0]
    assert set(block) >= {"loss_first", "loss_last", "constant_bits", "bit_balance",
                          "distinct_codes", "degenerate"}


PLUGIN = '''
import torch
from benchmark.method import HashMethod
from registry import hookimpl


class Editable(HashMethod):
    """{doc}"""
    name = "editable"
    train_config = {{"epochs": 1, "batch_size": 32, "optimizer": {{"type": "SGD", "lr": 0.01}}}}

    def __init__(self, bits, num_classes, input_shapes, scale: float = {scale}):
        super().__init__(bits, num_classes, input_shapes)
        self.scale = scale
        self.head = torch.nn.Linear(input_shapes["pooled"][0], bits)

    def encode(self, inputs):
        return self.head(inputs["pooled"])

    def loss(self, batch):
        return {{"l2": self.scale * {loss}}}


@hookimpl
def register_methods(register):
    register(Editable)
'''


def _run_editable(site, out, cache_dir, **source):
    make_plugin_dist(site, "editable-dist", "editable", "editable_mod", PLUGIN.format(**source))
    done = run_cli("run", "--methods", "editable", *QUICK, "--out", out, "--cache-dir", cache_dir,
                   env={"PYTHONPATH": str(site), "BENCHMARK_PLUGINS": "editable"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_editing_a_default_or_the_loss_reruns_a_docstring_does_not(tmp_path, cache_dir):
    site, out = tmp_path / "site", tmp_path / "out"
    first = dict(doc="v1", scale="1.0", loss="self.encode(batch['inputs']).pow(2).mean()")
    assert "1 to run" in _run_editable(site, out, cache_dir, **first)
    assert "0 to run" in _run_editable(site, out, cache_dir, **first)
    assert "0 to run" in _run_editable(site, out, cache_dir, **dict(first, doc="reworded"))
    assert "1 to run" in _run_editable(site, out, cache_dir, **dict(first, scale="2.0"))
    edited = dict(first, scale="2.0", loss="self.encode(batch['inputs']).abs().mean()")
    assert "1 to run" in _run_editable(site, out, cache_dir, **edited)
    rows = sqlite3.connect(out / "results.sqlite").execute("SELECT spec FROM runs").fetchall()
    specs = [json.loads(s) for s, in rows]
    assert sorted(s["hparams"]["scale"] for s in specs) == [1.0, 2.0, 2.0]
    assert len({s["code"] for s in specs}) == 3  # the default and the loss are code too


def test_digest_ignores_docstrings_comments_and_search_space_only():
    base = b'"""doc"""\nclass A:\n    """x"""\n    search_space = {"lr": 1}\n    lr = 1  # c\n'
    same = b'"""other"""\nclass A:\n    search_space = {"lr": 2}\n    lr = 1\n'
    assert digest_of({"p/a.py": base}) == digest_of({"p/a.py": same})
    assert digest_of({"p/a.py": base}) != digest_of({"p/a.py": base.replace(b"lr = 1 ", b"lr = 2 ")})
    assert digest_of({"p/a.bin": b"1"}) != digest_of({"p/a.bin": b"2"})


def test_health_flags_collapse_and_flat_loss():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 20)
    good = rng.integers(0, 2, (200, 16), dtype=np.uint8)
    healthy = health([1.0, 0.5, 0.3], good, labels, 16)
    assert not healthy["degenerate"] and healthy["distinct_codes"] > 100
    collapsed = health([1.0, 0.5], np.zeros((200, 16), np.uint8), labels, 16)
    assert collapsed["degenerate"] and collapsed["reasons"] == ["codes_collapsed"]
    assert collapsed["constant_bits"] == 1.0 and collapsed["bit_balance"] == 0.0
    flat = health([0.78, 0.79, 0.781], good, labels, 16)
    assert flat["reasons"] == ["loss_never_fell"] and flat["loss_first"] == 0.78
    assert health([], None, None, 16)["degenerate"] is False  # closed-form, codes not at hand
