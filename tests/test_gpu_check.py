"""benchmarks/gpu_check.sh (the prepared GPU check) runs end to end on the CPU at a tiny
setting: every method finetuned and recorded, a table of img/s and mAP, a leaderboard."""
import os
import subprocess
import sys

from tests.conftest import ROOT

METHODS = ("cmbh", "a2netpp", "csq", "dsh", "thesis-sld")


def test_gpu_check_script_at_a_tiny_cpu_setting(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_DEVICE="cpu",
               GPU_CHECK_DATASET="synthetic-fg", GPU_CHECK_CLASSES="2", GPU_CHECK_EPOCHS="1",
               GPU_CHECK_SIZE="64", GPU_CHECK_WORKERS="0", GPU_CHECK_OUT=str(tmp_path / "out"),
               GPU_CHECK_BOARD=str(tmp_path / "board"))
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in METHODS}
    assert sorted(rows) == sorted(METHODS)
    for method, (_, status, epochs, device, speed, map_, _wall) in rows.items():
        assert (status, epochs, device) == ("ok", "1", "cpu"), rows[method]
        assert float(speed) > 0 and 0 < float(map_) <= 1
    index = (tmp_path / "board" / "README.md").read_text()
    assert "finetune" in index and (tmp_path / "board" / "synthetic-fg-first2.md").is_file()
