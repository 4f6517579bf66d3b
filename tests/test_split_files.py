"""Split files: export a materialised protocol, run exactly it (identical codes to the
direct run), refuse a file for other data, an edited file, or protocol flags beside one."""
import json
import sqlite3

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.grid.protocols import Protocol, materialise
from benchmark.grid.splitfile import content_hash, read

QUICK = ["--dataset", "synthetic-fg", "--input-size", "32", "--bits", "8", "--epochs", "2",
         "--no-progress"]
PROTOCOL = ["--noise", "pairflip:0.3", "--long-tail", "exp:4", "--val-frac", "0.2"]


def cli(*args) -> int:
    return main([str(a) for a in args])


def export(path, *flags) -> int:
    return cli("protocol", "export", "--dataset", "synthetic-fg", "--seed", "3", *flags, "--out", path)


def runs_of(out) -> dict:
    with sqlite3.connect(out / "results.sqlite") as db:
        return {r[0]: (r[1], json.loads(r[2])) for r in
                db.execute("SELECT method, run_id, protocol FROM runs WHERE status = 'ok'")}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("split") / "split.json"
    assert export(path, *PROTOCOL) == 0
    return path


def test_the_file_holds_exactly_the_materialised_protocol(exported):
    from benchmark.data import build_dataset
    payload = json.loads(exported.read_text())
    dataset = build_dataset("synthetic-fg")
    protocol = Protocol(noise="pairflip:0.3", long_tail="exp:4", val_frac=0.2)
    split = materialise(dataset.labels, dataset.is_train, dataset.num_classes, protocol, 3)
    assert payload["seed"] == 3 and payload["protocol"] == protocol.spec()
    assert payload["dataset"]["fingerprint"] == dataset.fingerprint()
    for role, array in (("train", split.train_index), ("train_labels", split.train_labels),
                        ("val", split.val_index), ("val_labels", split.val_labels),
                        ("query", split.query_index), ("database", split.db_index)):
        assert payload["split"][role] == array.tolist()
    assert payload["hash"] == split.facts["hash"] == content_hash(read(str(exported))["arrays"])
    assert payload["facts"]["long_tail"] == split.facts["long_tail"]
    assert len(exported.read_bytes()) < 64_000  # a small file


def test_run_from_the_file_gives_the_direct_run_codes(exported, tmp_path, cache_dir):
    direct, from_file = tmp_path / "direct", tmp_path / "file"
    assert cli("run", "--methods", "dsh,itq", *QUICK, *PROTOCOL, "--seeds", "3",
               "--cache-dir", cache_dir, "--out", direct) == 0
    assert cli("run", "--methods", "dsh,itq", *QUICK, "--protocol-file", exported,
               "--cache-dir", cache_dir, "--out", from_file) == 0
    first, second = runs_of(direct), runs_of(from_file)
    for method in ("dsh", "itq"):
        (id_a, proto_a), (id_b, proto_b) = first[method], second[method]
        assert id_a != id_b and proto_b["split_file"] == json.loads(exported.read_text())["hash"]
        assert proto_a["materialised"]["hash"] == proto_b["materialised"]["hash"]
        codes_a = np.load(direct / "runs" / id_a / "codes.npz")
        codes_b = np.load(from_file / "runs" / id_b / "codes.npz")
        for key in ("query_codes", "db_codes", "query_labels", "db_labels"):
            assert np.array_equal(codes_a[key], codes_b[key]), (method, key)


def test_a_file_for_other_data_is_refused_in_one_line(tmp_path, cache_dir, capsys):
    path = tmp_path / "four.json"
    assert export(path, "--max-classes", "4") == 0
    capsys.readouterr()
    assert cli("run", "--methods", "lsh", *QUICK, "--protocol-file", path,
               "--cache-dir", cache_dir, "--out", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fingerprint" in err
    assert "made for dataset 'synthetic-fg-first4'" in err
    assert not (tmp_path / "r" / "runs").exists()  # refused before any run


def test_edited_files_and_flags_beside_a_file_are_refused(exported, tmp_path, capsys):
    edited = json.loads(exported.read_text())
    edited["split"]["train_labels"][0] = (edited["split"]["train_labels"][0] + 1) % 24
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(edited))
    overlap = json.loads(exported.read_text())
    overlap["split"]["train"][0] = overlap["split"]["query"][0]
    overlap.pop("hash")
    leaky = tmp_path / "leaky.json"
    leaky.write_text(json.dumps(overlap))
    cases = [(bad, [], "content hash"), (leaky, [], "overlap the training split"),
             (exported, ["--noise", "symmetric:0.2"], "drop --noise"),
             (exported, ["--seeds", "1"], "drop --seeds"),
             (tmp_path / "missing.json", [], "cannot read it")]
    for path, flags, message in cases:
        code = cli("run", "--methods", "lsh", *QUICK, "--protocol-file", path, *flags,
                   "--out", tmp_path / "r")
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (path, flags, err)


def test_export_of_an_unseen_setting_needs_the_setting(tmp_path, capsys):
    assert export(tmp_path / "u.json", "--unseen-classes", "0.25") == 2
    assert "unseen-class setting None" in capsys.readouterr().err
    assert export(tmp_path / "u.json", "--unseen-classes", "0.25", "--unseen-eval", "unseen@all") == 0
    payload = json.loads((tmp_path / "u.json").read_text())
    assert payload["protocol"]["unseen_eval"] == "unseen@all"
    assert len(payload["facts"]["unseen"]["classes"]) == 6
