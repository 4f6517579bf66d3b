"""Real-dataset loaders on tiny fixtures in each official layout; data info / download."""
import hashlib
import http.server
import io
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from benchmark.cli import main
from benchmark.data import build_dataset
from benchmark.errors import DataError
from benchmark.run.execute import evaluate
from benchmark.grid.protocols import Protocol, materialise


def jpg(path: Path, colour=(90, 60, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 20), colour).save(path)


def write(path: Path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def make_aircraft(root):
    data = root / "fgvc-aircraft-2013b" / "data"
    write(data / "variants.txt", ["707-320", "A320"])
    write(data / "images_variant_trainval.txt", ["0001 707-320", "0002 A320", "0003 A320"])
    write(data / "images_variant_test.txt", ["0004 707-320", "0005 A320"])
    for i in range(1, 6):
        jpg(data / "images" / f"{i:04d}.jpg")


def make_food(root):
    folder = root / "food-101"
    write(folder / "meta" / "classes.txt", ["apple_pie", "ramen"])
    write(folder / "meta" / "train.txt", ["apple_pie/1", "ramen/2"])
    write(folder / "meta" / "test.txt", ["apple_pie/3", "ramen/4"])
    for rel in ("apple_pie/1", "ramen/2", "apple_pie/3", "ramen/4"):
        jpg(folder / "images" / f"{rel}.jpg")


def make_nabirds(root):
    folder = root / "nabirds"
    ids = ["aa-1", "bb-2", "cc-3", "dd-4"]
    write(folder / "images.txt", [f"{u} 0295/{u}.jpg" for u in ids])
    write(folder / "image_class_labels.txt", [f"{u} {c}" for u, c in zip(ids, [295, 296, 295, 296])])
    write(folder / "train_test_split.txt", [f"{u} {s}" for u, s in zip(ids, [1, 1, 0, 0])])
    write(folder / "classes.txt", ["0 Birds", "295 Forster's Tern", "296 Common Tern"])
    for u in ids:
        jpg(folder / "images" / "0295" / f"{u}.jpg")


def make_vegfru(root):
    folder = root / "vegfru"
    lists = {"train": ["veg200_images/carrot/a.jpg 0", "fru92_images/apple/b.jpg 200"],
             "val": ["veg200_images/carrot/c.jpg 0"],
             "test": ["veg200_images/carrot/d.jpg 0", "fru92_images/apple/e.jpg 200"]}
    for split, lines in lists.items():
        write(folder / "vegfru_list" / f"vegfru_{split}.txt", lines)
        for line in lines:
            jpg(folder / line.split()[0])


def make_sop(root):
    folder = root / "Stanford_Online_Products"
    header = "image_id class_id super_class_id path"
    write(folder / "Ebay_train.txt", [header, "1 1 1 bicycle_final/1_0.JPG", "2 2 2 chair_final/2_0.JPG"])
    write(folder / "Ebay_test.txt", [header, "3 9 1 bicycle_final/9_0.JPG", "4 10 2 chair_final/10_0.JPG"])
    for rel in ("bicycle_final/1_0.JPG", "chair_final/2_0.JPG", "bicycle_final/9_0.JPG", "chair_final/10_0.JPG"):
        jpg(folder / rel)


def make_market(root):
    folder = root / "Market-1501-v15.09.15"
    names = {"bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg",
                                    "0007_c1s1_000001_01.jpg"],
             "query": ["0010_c1s1_000101_00.jpg"],
             "bounding_box_test": ["0010_c2s1_000201_01.jpg", "0010_c1s1_000301_01.jpg",
                                   "0000_c3s1_000001_01.jpg", "-1_c1s1_000002_01.jpg"]}
    for subdir, files in names.items():
        for f in files:
            jpg(folder / subdir / f)


def make_flowers(root):
    folder = root / "flowers102"
    for i in range(1, 5):
        jpg(folder / "jpg" / f"image_{i:05d}.jpg")
    savemat(folder / "imagelabels.mat", {"labels": np.array([[1, 2, 1, 2]])})
    savemat(folder / "setid.mat", {"trnid": np.array([[1]]), "valid": np.array([[2]]),
                                   "tstid": np.array([[3, 4]])})


def make_dogs(root):
    folder = root / "stanford_dogs"
    folder.mkdir(parents=True)
    files = {"train": ["n02085620-Chihuahua/a.jpg", "n02085782-Japanese_spaniel/b.jpg"],
             "test": ["n02085620-Chihuahua/c.jpg", "n02085782-Japanese_spaniel/d.jpg"]}
    for split, rels in files.items():
        savemat(folder / f"{split}_list.mat", {"file_list": np.array(rels, dtype=object)[:, None]})
        for rel in rels:
            jpg(folder / "Images" / rel)


def make_cars(root):
    folder = root / "stanford_cars"
    (folder / "devkit").mkdir(parents=True)
    savemat(folder / "devkit" / "cars_meta.mat",
            {"class_names": np.array(["AM General Hummer", "Acura RL"], dtype=object)[None]})
    dtype = [("fname", object), ("class", np.uint8)]
    savemat(folder / "devkit" / "cars_train_annos.mat",
            {"annotations": np.array([("00001.jpg", 1), ("00002.jpg", 2)], dtype=dtype)[None]})
    savemat(folder / "cars_test_annos_withlabels.mat",
            {"annotations": np.array([("00001.jpg", 2), ("00002.jpg", 1)], dtype=dtype)[None]})
    for sub in ("cars_train", "cars_test"):
        for f in ("00001.jpg", "00002.jpg"):
            jpg(folder / sub / f)


CASES = {  # name -> (fixture, images, classes, train images)
    "aircraft": (make_aircraft, 5, 2, 3), "food101": (make_food, 4, 2, 2),
    "nabirds": (make_nabirds, 4, 2, 2), "vegfru": (make_vegfru, 5, 2, 3),
    "sop": (make_sop, 4, 2, 2), "market1501": (make_market, 8, 5, 3),
    "flowers102": (make_flowers, 4, 2, 2), "dogs": (make_dogs, 4, 2, 2),
    "cars": (make_cars, 4, 2, 2),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_loader_reads_the_official_layout(tmp_path, name):
    make, images, classes, train = CASES[name]
    make(tmp_path)
    ds = build_dataset(name, data_root=tmp_path)
    assert (len(ds), ds.num_classes, int(ds.is_train.sum())) == (images, classes, train)
    assert ds.load(0).size == (24, 20)
    # a missing image is named precisely (Market-1501 has no list: it reads the folders)
    first = next(p for p in tmp_path.rglob("*") if p.suffix.lower() == ".jpg")
    first.unlink()
    if name == "market1501":
        assert len(build_dataset(name, data_root=tmp_path)) == images - 1
        return
    with pytest.raises(DataError, match=f"missing, first {first}"):
        build_dataset(name, data_root=tmp_path)


def test_aircraft_and_cars_labels_follow_the_class_files(tmp_path):
    make_aircraft(tmp_path)
    make_cars(tmp_path)
    air = build_dataset("aircraft", data_root=tmp_path)
    assert [air.classes[c] for c in air.labels] == ["707-320", "A320", "A320", "707-320", "A320"]
    cars = build_dataset("cars", data_root=tmp_path)
    assert [cars.classes[c] for c in cars.labels] == [
        "AM General Hummer", "Acura RL", "Acura RL", "AM General Hummer"]


def test_market1501_has_query_gallery_and_cameras(tmp_path):
    make_market(tmp_path)
    ds = build_dataset("market1501", data_root=tmp_path)
    assert ds.classes == ["-1", "0000", "0002", "0007", "0010"]
    assert ds.query_mask.sum() == 1 and ds.db_mask.sum() == 4 and ds.is_train.sum() == 3
    assert ds.cameras.tolist() == [1, 2, 1, 1, 1, 3, 1, 2]  # files in name order
    split = materialise(ds.labels, ds.is_train, ds.num_classes, Protocol(), 0,
                        query_mask=ds.query_mask, db_mask=ds.db_mask)
    assert len(split.db_index) == 4 and len(split.query_index) == 1
    codes = np.array([[0, 0], [1, 1], [0, 1], [1, 0], [0, 0]], dtype=np.uint8)
    result, pr = evaluate(ds, split, {"query_codes": codes[:1], "db_codes": codes[1:],
                                      "query_labels": ds.labels[split.query_index],
                                      "db_labels": ds.labels[split.db_index]})
    assert "rank-1" in result and "map" in result and pr is None


def test_data_info_reports_counts_and_every_problem(tmp_path, capsys):
    make_food(tmp_path)
    write(tmp_path / "food-101" / "meta" / "train.txt", ["apple_pie/1"])
    (tmp_path / "food-101" / "images" / "ramen" / "4.jpg").unlink()
    broken = tmp_path / "food-101" / "images" / "apple_pie" / "3.jpg"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated JPEG
    code = main(["data", "info", "food101", "--data-root", str(tmp_path)])
    text = capsys.readouterr().out
    assert code == 1
    assert "train" in text and "missing, first" in text and "ramen/4.jpg" in text
    assert "1 class(es) have no training image, first 'ramen'" in text
    assert f"unreadable image {broken}" in text


def _archive(folder_name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = io.BytesIO()
        Image.new("RGB", (8, 8)).save(data, "JPEG")
        info = tarfile.TarInfo(f"{folder_name}/images/x.jpg")
        info.size = len(data.getvalue())
        tar.addfile(info, io.BytesIO(data.getvalue()))
    return buf.getvalue()


def test_download_verifies_md5_over_http_and_unpacks(tmp_path, capsys):
    served = tmp_path / "served"
    served.mkdir()
    payload = _archive("food-101")
    (served / "food-101.tar.gz").write_bytes(payload)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/food-101.tar.gz"
    root = tmp_path / "data"
    root.mkdir()
    try:
        good = hashlib.md5(payload).hexdigest()
        assert main(["data", "download", "food101", "--data-root", str(root), "--url", url,
                     "--md5", "0" * 32]) == 2
        assert "does not match" in capsys.readouterr().err
        assert not (root / "food-101").exists() and not list(root.glob("*.part"))
        assert main(["data", "download", "food101", "--data-root", str(root), "--url", url,
                     "--md5", good]) == 0
        assert (root / "food-101" / "images" / "x.jpg").is_file()
    finally:
        server.shutdown()


def test_download_from_file_url_and_datasets_without_archive(tmp_path, capsys):
    archive = tmp_path / "a.tgz"
    archive.write_bytes(_archive("fgvc-aircraft-2013b"))
    root = tmp_path / "data"
    root.mkdir()
    assert main(["data", "download", "aircraft", "--data-root", str(root), "--url",
                 archive.as_uri(), "--md5", hashlib.md5(archive.read_bytes()).hexdigest()]) == 0
    assert (root / "fgvc-aircraft-2013b" / "images" / "x.jpg").is_file()
    assert main(["data", "download", "nabirds", "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: nabirds: no official archive") and len(err.splitlines()) == 1


def _tar_with(member: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        ok = tarfile.TarInfo("food-101/images/ok.jpg")
        ok.size = 1
        tar.addfile(ok, io.BytesIO(b"x"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return buf.getvalue()


def _zip_with(name: str) -> bytes:
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("food-101/images/ok.jpg", b"x")
        zf.writestr(name, b"x")
    return buf.getvalue()


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("suffix, payload, shown", [
    ("tar.gz", _tar_with(tarfile.TarInfo("../escaped.txt")), "../escaped.txt"),
    ("tar.gz", _tar_with(tarfile.TarInfo("/tmp/absolute-escape.txt")), "/tmp/absolute-escape.txt"),
    ("tar.gz", _tar_with(_link("food-101/link", "/etc/passwd")), "food-101/link"),
    ("tar.gz", _tar_with(_link("food-101/hard", "/etc/passwd", tarfile.LNKTYPE)), "food-101/hard"),
    ("zip", _zip_with("../escaped.txt"), "../escaped.txt"),
])
def test_unsafe_archive_members_are_refused_and_nothing_is_unpacked(tmp_path, capsys, suffix,
                                                                     payload, shown):
    archive = tmp_path / f"mirror.{suffix}"
    archive.write_bytes(payload)
    root = tmp_path / "data"
    root.mkdir()
    code = main(["data", "download", "food101", "--data-root", str(root), "--url", archive.as_uri(),
                 "--md5", hashlib.md5(payload).hexdigest()])
    err = capsys.readouterr().err
    assert code == 2 and f"unsafe member {shown!r}" in err and len(err.strip().splitlines()) == 1, err
    assert not (root / "food-101").exists() and not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/absolute-escape.txt").exists()
