"""Explicit random init: a backbone without pretrained weights of its own runs only with
``--backbone-weights none`` (else one line naming what it wants, before any run), and its
records say ``random init``."""
import json
import sqlite3

from benchmark.cli import main
from benchmark.features.backbones import RANDOM_INIT, build_backbone, check_pretrained

TINY = ["--methods", "dsh", "--dataset", "synthetic-fg", "--max-classes", "2", "--input-size", "32",
        "--bits", "8", "--epochs", "1", "--no-progress"]


def test_a_resnet_without_weights_is_refused_in_one_line(tmp_path, capsys):
    for regime in ("finetune", "frozen"):
        code = main(["run", *TINY, "--regime", regime, "--backbone", "resnet18",
                     "--out", str(tmp_path / regime)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert "--backbone resnet18 has no pretrained weights" in err and "ImageNet checkpoint" in err
        assert "--backbone-weights none" in err
        assert not (tmp_path / regime).exists()  # refused before anything was written


def test_backbones_with_their_own_weights_need_nothing():
    check_pretrained("efficientnet_lite0", None)
    assert build_backbone("resnet18", weights="none").weights_id == "random-init"


def test_random_init_said_explicitly_runs_and_is_recorded(tmp_path):
    out = tmp_path / "random"
    assert main(["run", *TINY, "--regime", "finetune", "--backbone", "resnet18",
                 "--backbone-weights", "none", "--out", str(out)]) == 0
    with sqlite3.connect(out / "results.sqlite") as db:
        (spec,), = db.execute("SELECT spec FROM runs WHERE status = 'ok'")
    assert json.loads(spec)["backbone_weights"] == RANDOM_INIT == "random init"
