"""A plugin's names cannot reach a table, a terminal or a path unchecked (registry/names.py);
file names made from names stay inside their folder; a download is kept only whole and
verified (benchmark/data/tools.py)."""
import hashlib
import http.server
import io
import sqlite3
import tarfile
import threading

import pytest

from benchmark.cli import main
from benchmark.data import build_dataset
from benchmark.data import tools
from benchmark.features.cache import extract_features
from benchmark.features.transforms import Transform
from registry import BACKBONES, DATASETS, load_plugins
from registry.loading import BUILTIN_DISTRIBUTION
from registry.names import (NAME_MAX_LENGTH, UnsafeName, check_name, check_version,
                            is_safe_name, safe_file_name)
from tests.conftest import make_plugin_dist, run_cli

UNSAFE = ["x|y</td><script>alert(1)</script>", "../../../somewhere", ".hidden", "-flag",
          "", "a b", "tab\there", "esc\x1b[31mred", "ümlaut", "a/b", "a" * (NAME_MAX_LENGTH + 1)]


def test_the_rule_accepts_builtin_style_names_and_refuses_the_rest():
    for name in ("thesis-sld-nobal", "synthetic-fg", "efficientnet_lite0", "my.birds", "A1",
                 "a" * NAME_MAX_LENGTH):
        assert check_name("method", name) == name
    for name in UNSAFE + [None, 3]:
        with pytest.raises(UnsafeName) as caught:
            check_name("method", name)
        message = str(caught.value)
        assert len(message.splitlines()) == 1
        assert not any(c in message for c in "|<>/\t\x1bü"), message
    assert check_version("distribution", "1.0+cpu") == "1.0+cpu"
    with pytest.raises(UnsafeName):
        check_version("distribution", "1.0|<b>")


def test_every_builtin_name_follows_the_rule():
    plugins = load_plugins()
    names = (list(plugins.methods) + list(DATASETS.module_dict) + list(BACKBONES.module_dict)
             + [v for e in plugins.methods.values() for v in (e.plugin, e.distribution)])
    assert len(names) > 50 and not plugins.failures
    assert [n for n in names if not is_safe_name(n)] == []
    assert {e.distribution for e in plugins.methods.values()} == {BUILTIN_DISTRIBUTION}


def test_file_names_from_names_are_one_component_and_safe_names_unchanged():
    for name in ("cub100-0123abcd", "my.birds-ff", "synthetic-fg"):
        assert safe_file_name(name) == name
    for name in UNSAFE + ["..", ".", "a/../../b", "/etc/passwd"]:
        part = safe_file_name(name)
        assert part and "/" not in part and "\\" not in part and not part.startswith(".")
        assert is_safe_name(part[:NAME_MAX_LENGTH]) or part.startswith(("_", "-"))


def test_feature_cache_folder_stays_inside_the_cache(tmp_path):
    ds = build_dataset("synthetic-fg", num_classes=2, train_per_class=2, test_per_class=1,
                       image_size=32)
    ds.name = "../../escape"
    cache = tmp_path / "cache"
    features = extract_features(ds, transform=Transform(input_size=32), cache_dir=cache,
                                progress=False)
    assert features.path.parent == cache and features.path.name.startswith("_.._escape-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


PLUGINS = {
    "scripted": ("scripted-hash", "scripted_hash", """
        from registry import hookimpl
        from plugins.classic import LSH
        class Scripted(LSH):
            name = "x|y</td><script>alert(1)</script>"
        class Innocent(LSH):
            name = "innocent"
        @hookimpl
        def register_methods(register):
            register(Innocent)
            register(Scripted)
        """),
    "climber": ("climber-hash", "climber_hash", """
        from registry import hookimpl
        from plugins.classic import LSH
        class Climber(LSH):
            name = "../../../somewhere"
        @hookimpl
        def register_methods(register):
            register(Climber)
        """),
    "spaced": ("spaced-data", "spaced_data", """
        from registry import hookimpl
        @hookimpl
        def register_datasets(register):
            register("a b|c", lambda data_root=None, strict=True: None)
        """),
    "evil<ep>": ("evil-entry", "evil_entry", """
        import pathlib, os
        pathlib.Path(os.environ["MARKER"]).write_text("imported")
        """),
    "dotted": ("dotted-hash", "dotted_hash", """
        import torch
        from torch import nn
        from registry import hookimpl
        from benchmark.data import build_dataset
        from plugins.classic import LSH

        class DottedLSH(LSH):
            name = "safe.lsh"

        def birds(data_root=None, strict=True, rename=None):
            ds = build_dataset("synthetic-fg", num_classes=3, train_per_class=4,
                               test_per_class=2, image_size=32)
            ds.name = rename or "my.birds"
            return ds

        class TinyNet(nn.Module):
            mean, std, weights_id = (0.5,) * 3, (0.25,) * 3, "tiny.net-random-v1"
            def __init__(self, pretrained=True, weights=None):
                super().__init__()
                torch.manual_seed(0)
                self.conv = nn.Conv2d(3, 8, 3, stride=8, padding=1)
            def forward(self, x):
                s8 = torch.relu(self.conv(x))
                s16, s32 = s8[:, :, ::2, ::2], s8[:, :, ::4, ::4]
                return {"s8": s8, "s16": s16, "s32": s32, "pooled": s32.mean(dim=(2, 3))}

        @hookimpl
        def register_methods(register):
            register(DottedLSH)

        @hookimpl
        def register_datasets(register):
            register("my.birds", birds)
            register("sneaky", lambda data_root=None, strict=True: birds(rename="../../x|y"))

        @hookimpl
        def register_backbones(register):
            register("tiny.net", TinyNet)
        """),
}


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    for entry, (dist, module, source) in PLUGINS.items():
        make_plugin_dist(site, dist, entry, module, source)
    marker = site / "evil-imported"
    return {"PYTHONPATH": str(site), "MARKER": str(marker)}, marker


def test_plugins_with_unsafe_names_are_reported_and_skipped(plugin_env):
    env, marker = plugin_env
    listing = run_cli("list", env=env)
    assert listing.returncode == 0, listing.stderr
    failed = [line for line in listing.stdout.splitlines() if line.startswith("failed plugin")]
    assert len(failed) == 4, listing.stdout
    assert any(line.startswith("failed plugin scripted (scripted-hash 1.0): UnsafeName: method "
                               "name 'x?y??td??script?alert?1???script?'") for line in failed)
    assert any(line.startswith("failed plugin climber (climber-hash 1.0): UnsafeName: method "
                               "name '..?..?..?somewhere'") for line in failed)
    assert any("UnsafeName: dataset name 'a?b?c'" in line for line in failed)
    assert any(line.startswith("failed plugin 'evil?ep?' (evil-entry 1.0): UnsafeName: plugin "
                               "name") for line in failed)
    assert not marker.exists()  # refused before its module was imported
    for text in ("<script", "|y", "../", "a b|c", "evil<ep>", "innocent"):
        assert text not in listing.stdout  # the whole plugin is removed, its good name too
    assert "safe.lsh" in listing.stdout and "my.birds (plugin dotted)" in listing.stdout
    assert "tiny.net (plugin dotted)" in listing.stdout


def test_run_refuses_unsafe_names_and_runs_dotted_ones(plugin_env, tmp_path):
    env, _ = plugin_env
    out = tmp_path / "results"
    refused = run_cli("run", "--methods", "x|y</td><script>alert(1)</script>", "--dataset",
                      "synthetic-fg", "--out", out, "--no-progress", env=env)
    assert refused.returncode == 2 and refused.stderr.startswith("error: unknown method")
    sneaky = run_cli("run", "--methods", "lsh", "--dataset", "sneaky", "--out", out,
                     "--cache-dir", tmp_path / "cache", "--no-progress", env=env)
    assert sneaky.returncode == 2, sneaky.stdout + sneaky.stderr
    assert "UnsafeName" not in sneaky.stderr and "dataset sneaky: its builder's ImageSet name '..?..?x?y'" in sneaky.stderr
    assert not out.exists() and not (tmp_path / "cache").exists()
    dotted = run_cli("run", "--methods", "safe.lsh", "--dataset", "my.birds", "--backbone",
                     "tiny.net", "--input-size", "32", "--bits", "8", "--out", out,
                     "--cache-dir", tmp_path / "cache", "--no-progress", env=env)
    assert dotted.returncode == 0, dotted.stdout + dotted.stderr
    with sqlite3.connect(out / "results.sqlite") as db:
        rows = db.execute("SELECT method, dataset, backbone, status FROM runs").fetchall()
    assert rows == [("safe.lsh", "my.birds", "tiny.net", "ok")]
    assert [p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()] == ["my.birds"]


def _archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("food-101/meta/classes.txt")
        payload = b"apple_pie\n" * 500
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_official_archives_carry_sha256_and_md5():
    for name, archives in tools.OFFICIAL_ARCHIVES.items():
        for archive in archives:
            assert len(archive.sha256) == 64 and int(archive.sha256, 16) >= 0, name
            assert len(archive.md5) == 32 and int(archive.md5, 16) >= 0, name


def test_mirror_download_checks_sha256_and_keeps_nothing_on_mismatch(tmp_path, capsys):
    archive = tmp_path / "food-101.tar.gz"
    archive.write_bytes(_archive())
    root = tmp_path / "data"
    root.mkdir()
    args = ["data", "download", "food101", "--data-root", str(root), "--url", archive.as_uri()]
    assert main(args) == 2 and "--url needs --sha256" in capsys.readouterr().err
    assert main(args + ["--sha256", "abc"]) == 2 and "64 hex digits" in capsys.readouterr().err
    assert main(args + ["--sha256", "0" * 64]) == 2
    err = capsys.readouterr().err
    assert "SHA-256" not in err and "SHA256" in err and "does not match" in err
    assert list(root.iterdir()) == []
    good = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert main(args + ["--sha256", good]) == 0
    assert f"verified SHA256 {good}" in capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir()) == ["food-101", "food-101.tar.gz"]


class _Dropping(http.server.BaseHTTPRequestHandler):
    """Announces 100,000 bytes, sends 3,000, then closes the connection."""

    def do_GET(self):  # noqa: N802 - the http.server hook name
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + b"x" * 2998)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_dropped_connection_leaves_no_archive(tmp_path, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Dropping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = tmp_path / "data"
    root.mkdir()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/food-101.tar.gz"
        code = main(["data", "download", "food101", "--data-root", str(root), "--url", url,
                     "--sha256", "0" * 64])
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert code == 2 and "ended after 3000 of 100000 bytes" in err and len(err.splitlines()) == 1
    assert list(root.iterdir()) == []


def test_an_interrupted_download_leaves_no_archive(tmp_path, monkeypatch):
    class Interrupted(io.BytesIO):
        headers = {"Content-Length": "4194304"}

        def read(self, size=-1):
            if self.tell():
                raise KeyboardInterrupt
            return super().read(size)

    monkeypatch.setattr(tools.urllib.request, "urlopen",
                        lambda url, timeout: Interrupted(b"y" * 4194304))
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(KeyboardInterrupt):
        tools.download("food101", root, url="http://127.0.0.1:9/food-101.tar.gz",
                       sha256="0" * 64, out=lambda line: None)
    assert list(root.iterdir()) == []
