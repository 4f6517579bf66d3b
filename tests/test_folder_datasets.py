"""``--dataset folder:PATH`` and ``--dataset csv:FILE``: generated images in an ImageFolder
tree and in a CSV list run end to end to a leaderboard; bad layouts are one-line errors."""
import re
import shutil

import pytest

from benchmark.cli import main
from benchmark.data import build_dataset
from benchmark.data.synthetic import render_synthetic
from benchmark.data.tools import info
from benchmark.errors import DataError
from benchmark.grid.request import GridRequest
from benchmark.run.driver import run_grid

CLASSES = ("crow", "finch", "gull", "wren")
COUNTS = {"train": 4, "val": 1, "test": 2}


def make_folder(root, counts=COUNTS):
    """``root/<split>/<class>/img<k>.png`` from the synthetic renderer (class c = label 4c)."""
    n = 0
    for split, count in counts.items():
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                render_synthetic(0, n, 4 * c, 32).save(folder / f"img{k}.png")
                n += 1
    return root


def make_csv(root):
    """The same images listed in ``root/list.csv`` (paths relative to it)."""
    make_folder(root / "images")
    lines = ["path,label,split"] + [f"{p.relative_to(root).as_posix()},{p.parent.name},{p.parts[-3]}"
                                    for p in sorted((root / "images").rglob("*.png"))]
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return root / "list.csv"


def test_folder_and_csv_datasets_run_to_a_leaderboard(tmp_path, cache_dir, capsys):
    folder, table = make_folder(tmp_path / "my birds"), make_csv(tmp_path / "csvset")
    out = tmp_path / "results"
    names = []
    for spec in (f"folder:{folder}", f"csv:{table}"):
        ds = build_dataset(spec)
        assert ds.num_classes == 4 and int(ds.is_train.sum()) == 4 * 5  # val merged into train
        names.append(ds.name)
        records = run_grid(GridRequest(methods=["lsh", "dsh"], dataset=spec, bits=[8], epochs=1,
                                       input_size=32, cache_dir=cache_dir, out=out, progress=False),
                           log=lambda _: None)
        assert [r["status"] for r in records] == ["ok", "ok"]
        assert {r["dataset"] for r in records} == {ds.name}
    assert re.fullmatch(r"folder-my_birds-[0-9a-f]{8}", names[0])
    assert re.fullmatch(r"csv-list-[0-9a-f]{8}", names[1])
    assert main(["leaderboard", "--results", str(out), "--out", str(tmp_path / "board")]) == 0
    for name in names:
        page = (tmp_path / "board" / f"{name}.md").read_text()
        assert "| lsh |" in page and "| dsh |" in page


def test_the_name_follows_the_content(tmp_path):
    root = make_folder(tmp_path / "set")
    first = build_dataset(f"folder:{root}").name
    assert build_dataset(f"folder:{root}").name == first
    render_synthetic(9, 9, 0, 32).save(root / "train" / "crow" / "img0.png")
    assert build_dataset(f"folder:{root}").name != first


def error_of(spec) -> str:
    with pytest.raises(DataError) as caught:
        build_dataset(spec)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_layouts_are_one_line_errors(tmp_path, capsys):
    empty = make_folder(tmp_path / "empty", {"train": 2, "test": 0})
    assert error_of(f"folder:{empty}") == f"folder:{empty}: split 'test' has no images"
    ghost = make_folder(tmp_path / "ghost", {"train": 2, "test": 1})
    shutil.rmtree(ghost / "train" / "wren")
    assert error_of(f"folder:{ghost}") == (f"folder:{ghost}: 1 test class(es) absent from train, "
                                           f"first 'wren'")
    assert "no test/ folder" in error_of(f"folder:{make_folder(tmp_path / 'flat', {'train': 1})}")
    table = make_csv(tmp_path / "dup")
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines + [lines[1]]) + "\n")
    assert error_of(f"csv:{table}") == (f"{table} line {len(lines) + 1}: duplicate path "
                                        f"'{lines[1].split(',')[0]}' (first on line 2)")
    table.write_text("file,label,split\nimages/a.png,crow,train\n")
    assert "the header must name the columns path,label,split (missing path)" in error_of(f"csv:{table}")
    table.write_text("path,label,split\nimages/a.png,crow,training\n")
    assert error_of(f"csv:{table}") == f"{table} line 2: split must be train, test or val, got 'training'"
    table.write_text("path,label,split\nnope.png,crow,train\nnope2.png,crow,test\n")
    assert "image file(s) listed are missing, first" in error_of(f"csv:{table}")
    assert main(["run", "--methods", "lsh", "--dataset", f"folder:{empty}", "--no-progress",
                 "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == f"error: folder:{empty}: split 'test' has no images\n"


def test_data_info_lists_every_problem(tmp_path):
    root = make_folder(tmp_path / "set", {"train": 2, "test": 1})
    shutil.rmtree(root / "train" / "wren")
    (root / "train" / "crow" / "broken.jpg").write_bytes(b"not an image")
    lines = []
    assert info(f"folder:{root}", out=lines.append) == 2
    assert lines[0] == f"folder:{root}: 11 images, 4 classes"
    assert any("absent from train, first 'wren'" in line for line in lines)
    assert any(line.startswith("problem: unreadable image") and "broken.jpg" in line for line in lines)


def test_an_unreadable_image_fails_the_runs_or_is_left_out(tmp_path, cache_dir):
    root = make_folder(tmp_path / "set")
    (root / "train" / "crow" / "broken.jpg").write_bytes(b"not an image")
    for mode in ("fail", "skip"):
        record, = run_grid(GridRequest(methods=["lsh"], dataset=f"folder:{root}", bits=[8],
                                       input_size=32, cache_dir=cache_dir, on_bad_image=mode,
                                       out=tmp_path / mode, progress=False), log=lambda _: None)
        if mode == "fail":
            assert record["status"] == "failed" and "broken.jpg" in record["error"]
        else:
            assert record["status"] == "ok"
            assert record["protocol"]["materialised"]["counts"]["train"] == 4 * 5  # 21 listed, 1 unreadable
