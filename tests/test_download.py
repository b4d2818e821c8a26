"""Real-dataset download, verification, extraction and preparation, with no network.

A loopback HTTP server (``tests/mirror.py``: ``http.server`` on 127.0.0.1, a free port, Range support, and a
switch that drops the connection part-way) serves miniature archives that the tests build in each dataset's
real layout. The registry entries are pointed at it through the documented config overrides
(``download.files`` / ``download.mirror`` / ``download.split_files``), so the real code path runs:
fetch -> verify -> safe extraction into a staging folder -> split -> one rename.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from mirror import Server, eurosat_archive, img, serve_file, sha256, tar_bytes, zip_bytes
from vlprompt import cli
from vlprompt.data import download as dl
from vlprompt.data import real, registry

REAL = [
    "ImageNet",
    "Caltech101",
    "OxfordPets",
    "StanfordCars",
    "Flowers102",
    "Food101",
    "FGVCAircraft",
    "SUN397",
    "DTD",
    "EuroSAT",
    "UCF101",
    "ImageNetV2",
    "ImageNetSketch",
    "ImageNetA",
    "ImageNetR",
]
ANCHORS = Path(__file__).parent / "data"


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


# ---- miniature archives (builders in tests/mirror.py) -------------------------------------------------


def subset_of_published(coop_file: str, per_class: int = 1) -> dict:
    """``per_class`` rows per class and part of a real published split file."""
    full = json.loads((ANCHORS / coop_file).read_text())
    out = {}
    for part in ("train", "val", "test"):
        seen: dict[int, int] = {}
        out[part] = []
        for row in full[part]:
            if seen.get(row[1], 0) < per_class:
                seen[row[1]] = seen.get(row[1], 0) + 1
                out[part].append(row)
    return out


def cfg_for(tmp_path: Path, **download) -> dict:
    return {"data_root": str(tmp_path / "data"), "download": download}


def rows_of(split_file: Path) -> dict:
    return json.loads(split_file.read_text())


def assert_prepared(cfg: dict, name: str, split_file: Path) -> dict:
    root = Path(cfg["data_root"]) / name
    assert split_file == root / f"split_zhou_{name}.json"
    split = rows_of(split_file)
    for part in ("train", "val", "test"):
        for rel, _, _ in split[part]:
            assert (root / rel).is_file(), rel
    assert not list(Path(cfg["data_root"]).glob(f".{name}.partial*"))
    row = {r["name"]: r for r in registry.status_table(cfg)}[name]
    assert row["status"] == "prepared" and row["path"] == str(root)
    return split


# ---- status and catalogue ----------------------------------------------------------------------------


def test_status_table_lists_all_real_and_pocket_datasets(tmp_path):
    rows = registry.status_table({"data_root": str(tmp_path)})
    names = [r["name"] for r in rows]
    assert set(REAL) <= set(names) and len(set(REAL)) == 15
    assert set(registry.list_datasets(kind="pocket")) <= set(names)
    for r in rows:
        assert r["status"] == "missing"
        key = registry.dataset_key({}, r["name"])  # real: the name; pocket: name + hash of the world settings
        assert r["path"] == str(tmp_path / key)
        assert key == r["name"] if r["kind"] == "real" else re.fullmatch(rf"{r['name']}-[0-9a-f]{{8}}", key)
    manual = {r["name"] for r in rows if r["kind"] == "real" and not r["automatic"]}
    ood_sets = {"SSBHard", "NINCO", "iNaturalistOOD", "OpenImageO"}  # OpenOOD v1.5's, placed by hand (docs/ood.md)
    assert {"ImageNet", "UCF101", "StanfordCars", "ImageNetSketch"} | ood_sets == manual


def test_datasets_command_reads_the_config_roots(tmp_path, capsys):
    cfg = yaml.safe_load(open("config/base2novel.yaml"))
    cfg.update(data_root=str(tmp_path / "prepared"), download={"downloads_root": str(tmp_path / "archives")})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cli.main(["datasets", "--config", str(tmp_path / "c.yaml")])
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert len([n for n in lines if n in REAL]) == 15
    assert lines["EuroSAT"][1:3] == ["missing", str(tmp_path / "prepared" / "EuroSAT")]
    assert str(tmp_path / "archives") in " ".join(lines["EuroSAT"][3:])  # where its archives would go
    cli.main(["datasets", "--data-root", str(tmp_path / "other")])
    assert str(tmp_path / "other" / "EuroSAT") in capsys.readouterr().out


def test_catalogue_is_complete():
    classes = {
        "ImageNet": 1000,
        "Caltech101": 100,
        "OxfordPets": 37,
        "StanfordCars": 196,
        "Flowers102": 102,
        "Food101": 101,
        "FGVCAircraft": 100,
        "SUN397": 397,
        "DTD": 47,
        "EuroSAT": 10,
        "UCF101": 101,
        "ImageNetV2": 1000,
        "ImageNetSketch": 1000,
        "ImageNetA": 200,
        "ImageNetR": 200,
    }
    for name in REAL:
        spec = registry.get_dataset(name)
        info = spec.info
        assert spec.kind == "real" and spec.n_classes == classes[name]
        assert "{}" in spec.template
        assert info["files"] and info["layout"] and info["cleanup"] and info["homepage"].startswith("http")
        if info["base_new"]:
            assert sum(info["base_new"]) == info["n_classes"] and info["base_new"][0] >= info["base_new"][1]
        for f in info["files"]:
            assert f["url"].startswith("http")
            assert f["md5"] is None or len(f["md5"]) == 32
            assert f["sha256"] is None or len(f["sha256"]) == 64
            if f["md5"] or f["sha256"]:
                assert f["checksum_source"]
        if info["split"]["kind"] == "published":
            assert info["split"]["file"] == f"split_zhou_{info['coop_name']}.json"
            assert "drive.google.com" in info["split"]["page"]
    assert registry.get_dataset("DTD").template == "{} texture."
    assert registry.get_dataset("Flowers102").coop_name == "OxfordFlowers"


# ---- each preparer path, end to end through the loopback server --------------------------------------


def test_caltech101_zip_holding_tar_gz(server, tmp_path):
    """CaltechDATA's caltech-101.zip holds 101_ObjectCategories.tar.gz: nested extraction, published split."""
    split = subset_of_published("split_zhou_Caltech101.json")
    # the published split file renames folders (Faces -> face); images sit in the original folder names
    images = {f"101_ObjectCategories/{rel}": img(rel) for part in split.values() for rel, _, _ in part}
    images["101_ObjectCategories/BACKGROUND_Google/image_0001.jpg"] = b"ignored"
    inner = tar_bytes(images)
    outer = zip_bytes({"caltech-101/101_ObjectCategories.tar.gz": inner, "caltech-101/show_annotation.m": b"%"})
    cfg = cfg_for(
        tmp_path,
        files={"Caltech101": serve_file(server, "Caltech101", "caltech-101.zip", outer)},
        split_files={"Caltech101": server.add("/split_zhou_Caltech101.json", json.dumps(split).encode())},
    )
    out = assert_prepared(cfg, "Caltech101", registry.prepare(cfg, "Caltech101", progress=False))
    assert out["train"][0] == ["101_ObjectCategories/Faces/image_0274.jpg", 0, "face"]
    assert {r[2] for r in out["test"]} >= {"airplane", "leopard", "motorbike", "yin_yang"}
    root = tmp_path / "data" / "Caltech101"
    assert not (root / "caltech-101" / "101_ObjectCategories.tar.gz").exists()  # inner archive removed
    manifest = json.loads((root / "PREPARED.json").read_text())
    assert manifest["files"][0]["verified"] is True
    assert registry.prepare(cfg, "Caltech101", progress=False) == root / "split_zhou_Caltech101.json"  # idempotent


def test_dtd_tar_gz_with_split_file_from_a_local_path(server, tmp_path):
    split = subset_of_published("split_zhou_DescribableTextures.json")
    archive = tar_bytes(
        {f"dtd/images/{rel}": img(rel) for part in split.values() for rel, _, _ in part}
        | {"dtd/labels/labels_joint_anno.txt": b"", "dtd/imdb/imdb.mat": b""}
    )
    local_split = tmp_path / "my_split.json"
    local_split.write_text(json.dumps(split))
    cfg = cfg_for(
        tmp_path,
        files={"DTD": serve_file(server, "DTD", "dtd-r1.0.1.tar.gz", archive)},
        split_files={"DTD": str(local_split)},
    )
    # status moves missing -> verified (checksum confirmed) -> prepared
    assert real.status(cfg, "DTD")["status"] == "missing"
    real.fetch_files(cfg, "DTD", progress=False)
    assert real.status(cfg, "DTD")["status"] == "verified"
    out = assert_prepared(cfg, "DTD", registry.prepare(cfg, "DTD", progress=False))
    assert out["train"][0] == ["dtd/images/banded/banded_0133.jpg", 0, "banded"]
    assert len({r[1] for r in out["test"]}) == 47


def test_eurosat_zip_through_a_mirror(server, tmp_path):
    """``download.mirror`` serves <mirror>/<Name>/<file>; the checksum is overridden for the miniature."""
    archive, split = eurosat_archive()
    server.add("/EuroSAT/EuroSAT.zip", archive)
    cfg = cfg_for(
        tmp_path,
        mirror=server.url + "/",
        files={"EuroSAT": {"EuroSAT.zip": {"md5": hashlib.md5(archive).hexdigest()}}},
        split_files={"EuroSAT": server.add("/s.json", json.dumps(split).encode())},
    )
    out = assert_prepared(cfg, "EuroSAT", registry.prepare(cfg, "EuroSAT", progress=False))
    assert out["train"][0] == ["2750/AnnualCrop/AnnualCrop_1.jpg", 0, "Annual Crop Land"]
    assert ("/EuroSAT/EuroSAT.zip", None) in server.log


def test_oxford_pets_two_archives(server, tmp_path):
    breeds = [f"Breed{k:02d}" if k % 2 else f"breed_{k:02d}" for k in range(37)]
    split = {"train": [], "val": [], "test": []}
    images = {}
    for label, breed in enumerate(breeds):
        for i, part in enumerate(("train", "val", "test")):
            rel = f"{breed}_{i + 1}.jpg"
            images[f"images/{rel}"] = img(rel)
            split[part].append([rel, label, breed.lower()])
    images_tgz = tar_bytes(images)
    annotations_tgz = tar_bytes({"annotations/trainval.txt": b"", "annotations/test.txt": b""})
    files = serve_file(server, "OxfordPets", "images.tar.gz", images_tgz)
    files |= serve_file(server, "OxfordPets", "annotations.tar.gz", annotations_tgz)
    cfg = cfg_for(
        tmp_path,
        files={"OxfordPets": files},
        split_files={"OxfordPets": server.add("/p.json", json.dumps(split).encode())},
    )
    out = assert_prepared(cfg, "OxfordPets", registry.prepare(cfg, "OxfordPets", progress=False))
    assert out["val"][1] == ["images/breed_00_2.jpg", 0, "breed_00"] or out["val"][0][0].startswith("images/")
    assert (tmp_path / "data" / "OxfordPets" / "annotations" / "trainval.txt").is_file()


def test_fgvc_aircraft_official_lists_without_a_checksum(server, tmp_path):
    """No split_zhou file and no recorded checksum: status stays 'downloaded', the split comes from the lists."""
    variants = [f"7{k:02d}-{k}" if k % 3 else f"Cessna {k}/X" for k in range(100)]
    members = {"fgvc-aircraft-2013b/data/variants.txt": "\n".join(variants).encode() + b"\n"}
    for part_i, part in enumerate(("train", "val", "test")):
        lines = []
        for k, v in enumerate(variants):
            image = f"{1000000 + 3 * k + part_i}"
            members[f"fgvc-aircraft-2013b/data/images/{image}.jpg"] = img(image)
            lines.append(f"{image} {v}")
        members[f"fgvc-aircraft-2013b/data/images_variant_{part}.txt"] = "\n".join(lines).encode() + b"\n"
    archive = tar_bytes(members)
    url = server.add("/fgvc.tar.gz", archive)
    cfg = cfg_for(tmp_path, files={"FGVCAircraft": {"fgvc-aircraft-2013b.tar.gz": {"url": url}}})
    real.fetch_files(cfg, "FGVCAircraft", progress=False)
    assert real.status(cfg, "FGVCAircraft")["status"] == "downloaded"
    out = assert_prepared(cfg, "FGVCAircraft", registry.prepare(cfg, "FGVCAircraft", progress=False))
    assert out["train"][1] == ["fgvc-aircraft-2013b/data/images/1000003.jpg", 1, "701-1"]
    assert out["test"][0][2] == "Cessna 0/X"


def test_imagenet_a_wnid_folders(server, tmp_path):
    wnids = real.imagenet_classes()["imagenet_a_wnids"]
    archive = tar_bytes(
        {f"imagenet-a/{w}/0.000_{w}.jpg": img(w) for w in wnids} | {"imagenet-a/README.txt": b""}, mode="w"
    )
    cfg = cfg_for(tmp_path, files={"ImageNetA": serve_file(server, "ImageNetA", "imagenet-a.tar", archive)})
    out = assert_prepared(cfg, "ImageNetA", registry.prepare(cfg, "ImageNetA", progress=False))
    assert out["train"] == [] and out["val"] == [] and len(out["test"]) == 200
    assert out["test"][0] == [f"imagenet-a/{wnids[0]}/0.000_{wnids[0]}.jpg", 0, "stingray"]


# ---- failures leave nothing half-prepared --------------------------------------------------------------


def test_corrupt_archive_is_a_checksum_error_and_leaves_no_dataset(server, tmp_path):
    split = subset_of_published("split_zhou_DescribableTextures.json")
    good = tar_bytes({f"dtd/images/{rel}": img(rel) for part in split.values() for rel, _, _ in part})
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    url = server.add("/DTD/dtd-r1.0.1.tar.gz", bytes(bad))
    cfg = cfg_for(
        tmp_path,
        files={"DTD": {"dtd-r1.0.1.tar.gz": {"url": url, "sha256": sha256(good)}}},
        split_files={"DTD": server.add("/s.json", json.dumps(split).encode())},
    )
    with pytest.raises(dl.ChecksumError, match="sha256"):
        registry.prepare(cfg, "DTD", progress=False)
    data = tmp_path / "data"
    assert not (data / "DTD").exists() and not list(data.glob(".DTD*"))
    assert not (data / "downloads" / "DTD" / "dtd-r1.0.1.tar.gz").exists()  # removed so a re-run re-fetches
    assert real.status(cfg, "DTD")["status"] == "missing"
    server.files["/DTD/dtd-r1.0.1.tar.gz"] = good  # the mirror is repaired: the next run succeeds
    assert_prepared(cfg, "DTD", registry.prepare(cfg, "DTD", progress=False))


def test_split_listing_a_missing_image_leaves_no_dataset(server, tmp_path):
    archive, split = eurosat_archive()
    split["test"].append(["River/River_999.jpg", 8, "River"])
    cfg = cfg_for(
        tmp_path,
        files={"EuroSAT": serve_file(server, "EuroSAT", "EuroSAT.zip", archive)},
        split_files={"EuroSAT": server.add("/s.json", json.dumps(split).encode())},
    )
    with pytest.raises(registry.DatasetError, match="River_999"):
        registry.prepare(cfg, "EuroSAT", progress=False)
    assert not (tmp_path / "data" / "EuroSAT").exists()
    assert not list((tmp_path / "data").glob(".EuroSAT*"))


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    body = bytes(range(256)) * 400
    url = server.add("/big.bin", body)
    dest = tmp_path / "big.bin"
    server.drop_after["/big.bin"] = 30000
    with pytest.raises(dl.DownloadError, match="kept"):
        dl.download(url, dest, progress=False, retries=0)
    part = tmp_path / "big.bin.part"
    assert part.stat().st_size == 30000 and not dest.exists()
    assert dl.download(url, dest, progress=False, retries=0) == dest  # a later run picks up the .part
    assert dest.read_bytes() == body and not part.exists()
    assert server.log[-1] == ("/big.bin", "bytes=30000-")


def test_dropped_connection_is_retried_within_prepare(server, tmp_path):
    archive, split = eurosat_archive()
    files = serve_file(server, "EuroSAT", "EuroSAT.zip", archive)
    server.drop_after["/EuroSAT/EuroSAT.zip"] = len(archive) // 3
    cfg = cfg_for(
        tmp_path, files={"EuroSAT": files}, split_files={"EuroSAT": server.add("/s.json", json.dumps(split).encode())}
    )
    assert_prepared(cfg, "EuroSAT", registry.prepare(cfg, "EuroSAT", progress=False))
    ranges = [r for p, r in server.log if p == "/EuroSAT/EuroSAT.zip"]
    assert ranges == [None, f"bytes={len(archive) // 3}-"]


def test_server_ignoring_range_restarts_the_file(server, tmp_path):
    body = b"x" * 5000 + b"y" * 5000
    url = server.add("/f.bin", body)
    (tmp_path / "f.bin.part").write_bytes(b"garbage!")
    server.ignore_range = True
    assert dl.download(url, tmp_path / "f.bin", progress=False).read_bytes() == body


def test_http_error_names_the_url_and_the_manual_fallback(server, tmp_path):
    cfg = cfg_for(tmp_path, files={"Food101": {"food-101.tar.gz": {"url": server.url + "/nothing.tar.gz"}}})
    with pytest.raises(registry.DatasetError, match=r"HTTP 404.*by hand.*downloads/Food101/food-101.tar.gz"):
        registry.prepare(cfg, "Food101", progress=False)


# ---- unsafe archives ------------------------------------------------------------------------------------


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ok = tarfile.TarInfo("fine/ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        member.size = len(data) if member.isfile() else 0
        tf.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return buf.getvalue()


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("../escape.txt"),
        tarfile.TarInfo("/tmp/absolute.txt"),
        tarfile.TarInfo("a/../../escape.txt"),
        _link("a/link", "../../outside", tarfile.SYMTYPE),
        _link("a/link", "/etc/passwd", tarfile.SYMTYPE),
        _link("a/hard", "../outside", tarfile.LNKTYPE),
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "symlink-out", "symlink-absolute", "hardlink-out"],
)
def test_unsafe_tar_members_are_rejected(tmp_path, member):
    archive = tmp_path / "bad.tar"
    archive.write_bytes(_tar_with(member, b"evil"))
    dest = tmp_path / "out" / "dest"
    with pytest.raises(dl.UnsafeArchiveError):
        dl.safe_extract(archive, dest, progress=False)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "escape.txt").exists()


def test_symlink_inside_the_root_is_allowed(tmp_path):
    archive = tmp_path / "ok.tar"
    archive.write_bytes(_tar_with(_link("fine/alias.txt", "ok.txt", tarfile.SYMTYPE)))
    dl.safe_extract(archive, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "fine" / "alias.txt").read_text() == "ok"


@pytest.mark.parametrize("name", ["../escape.txt", "/abs.txt", "a\\..\\..\\escape.txt"])
def test_unsafe_zip_members_are_rejected(tmp_path, name):
    archive = tmp_path / "bad.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo(name), b"evil")
    archive.write_bytes(buf.getvalue())
    with pytest.raises(dl.UnsafeArchiveError):
        dl.safe_extract(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "escape.txt").exists()


def test_unsafe_member_during_prepare_leaves_no_dataset(server, tmp_path):
    split = subset_of_published("split_zhou_DescribableTextures.json")
    good = {f"dtd/images/{rel}": img(rel) for part in split.values() for rel, _, _ in part}
    archive = tar_bytes(good | {"dtd/../../../pwned.txt": b"evil"})
    cfg = cfg_for(
        tmp_path,
        files={"DTD": serve_file(server, "DTD", "dtd-r1.0.1.tar.gz", archive)},
        split_files={"DTD": server.add("/s.json", json.dumps(split).encode())},
    )
    with pytest.raises(dl.UnsafeArchiveError, match=r"'\.\.'"):
        registry.prepare(cfg, "DTD", progress=False)
    assert not (tmp_path / "data" / "DTD").exists() and not list((tmp_path / "data").glob(".DTD*"))
    assert not list(tmp_path.rglob("pwned.txt"))


# ---- what cannot be fetched, and missing split files ------------------------------------------------------


def test_manual_datasets_name_what_to_put_where(tmp_path):
    cfg = cfg_for(tmp_path)
    with pytest.raises(registry.DatasetError, match=r"ImageNet/images/train/<wnid>/\*\.JPEG"):
        registry.prepare(cfg, "ImageNet", progress=False)
    with pytest.raises(
        registry.DatasetError,
        match=r"UCF-101-midframes\.zip must be downloaded by hand from "
        r"https://drive\.google\.com.*downloads/UCF101/",
    ):
        registry.prepare(cfg, "UCF101", progress=False)
    with pytest.raises(registry.DatasetError, match="(?s)cars_train.tgz.*cars_test.tgz"):
        registry.prepare(cfg, "StanfordCars", progress=False)


def test_missing_split_file_is_an_error_unless_opted_in(server, tmp_path):
    archive, _ = eurosat_archive()
    files = {"EuroSAT": serve_file(server, "EuroSAT", "EuroSAT.zip", archive)}
    missing = {"EuroSAT": server.url + "/no-such-split.json"}
    cfg = cfg_for(tmp_path, files=files, split_files=missing)
    with pytest.raises(registry.DatasetError, match="allow_new_split"):
        registry.prepare(cfg, "EuroSAT", progress=False)
    assert not (tmp_path / "data" / "EuroSAT").exists()
    cfg = cfg_for(tmp_path, files=files, split_files=missing, allow_new_split=["EuroSAT"])
    out = assert_prepared(cfg, "EuroSAT", registry.prepare(cfg, "EuroSAT", progress=False))
    assert [len(out[p]) for p in ("train", "val", "test")] == [50, 20, 30]  # 50/20/30 of 10 per class
    assert {r[2] for r in out["train"]} == set(real.info("EuroSAT")["class_folders"]["rename"].values())
    manifest = json.loads((tmp_path / "data" / "EuroSAT" / "PREPARED.json").read_text())
    assert manifest["split_origin"] == "new random split (opt-in)"


def test_html_page_instead_of_a_split_file_is_explained(server, tmp_path):
    archive, _ = eurosat_archive()
    cfg = cfg_for(
        tmp_path,
        files={"EuroSAT": serve_file(server, "EuroSAT", "EuroSAT.zip", archive)},
        split_files={"EuroSAT": server.add("/quota.html", b"<html>quota exceeded</html>")},
    )
    with pytest.raises(registry.DatasetError, match="not a JSON split file"):
        registry.prepare(cfg, "EuroSAT", progress=False)


def test_unknown_override_file_is_an_error(tmp_path):
    cfg = cfg_for(tmp_path, files={"DTD": {"dtd.zip": {"url": "http://127.0.0.1:9/x"}}})
    with pytest.raises(registry.DatasetError, match="unknown files"):
        registry.prepare(cfg, "DTD", progress=False)


# ---- `python -m vlprompt prepare`: expected failures are one clear paragraph, no traceback ------------------


def write_config(tmp_path: Path, dataset: str, **download) -> Path:
    """An experiment config for ``vlprompt prepare``: data under tmp_path, the given ``download`` block."""
    cfg = {
        "experiment": "real",
        "protocol": "base2new",
        "data_root": str(tmp_path / "data"),
        "results_root": str(tmp_path / "results"),
        "backbone": {"model": "ViT-B-16", "pretrained": "openai"},
        "datasets": [dataset],
        "methods": ["zeroshot"],
        "shots": [16],
        "seeds": [1],
        "download": download,
    }
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def closed_port_url() -> str:
    """A loopback URL nothing listens on: the connection is refused at once, as a dead host would be."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def prepare_error(capsys, config: Path, dataset: str) -> str:
    """Run ``vlprompt prepare`` in process; return its error message (it must exit 2 and print no traceback)."""
    rc = cli.main(["prepare", "--config", str(config), "--dataset", dataset, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.startswith("vlprompt prepare: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    return err[err.index(lines[0]) :].strip()


def test_prepare_cli_offline_names_dataset_file_and_fix(tmp_path):
    """A mirror (or publisher) that cannot be reached: a subprocess, to see exactly what a user sees."""
    config = write_config(tmp_path, "Food101", mirror=closed_port_url(), retries=0)
    proc = subprocess.run(
        [sys.executable, "-m", "vlprompt", "prepare", "--config", str(config), "--dataset", "Food101", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    error = proc.stderr[proc.stderr.index("vlprompt prepare: error:") :].strip()
    assert "\n" not in error  # one paragraph
    assert error.startswith("vlprompt prepare: error: Food101: cannot download http://127.0.0.1:")
    assert "/Food101/food-101.tar.gz after 1 attempt(s)" in error
    where = tmp_path / "data" / "downloads" / "Food101" / "food-101.tar.gz"
    assert (
        f"download food-101.tar.gz by hand from http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz and put it "
        f"at {where}" in error
    )
    assert not (tmp_path / "data" / "Food101").exists()


def test_prepare_cli_checksum_error(server, tmp_path, capsys):
    split = subset_of_published("split_zhou_DescribableTextures.json")
    good = tar_bytes({f"dtd/images/{rel}": img(rel) for part in split.values() for rel, _, _ in part})
    url = server.add("/DTD/dtd-r1.0.1.tar.gz", good[:-100] + b"x" * 100)
    config = write_config(
        tmp_path,
        "DTD",
        files={"DTD": {"dtd-r1.0.1.tar.gz": {"url": url, "sha256": sha256(good)}}},
        split_files={"DTD": server.add("/s.json", json.dumps(split).encode())},
    )
    error = prepare_error(capsys, config, "DTD")
    assert error.startswith("vlprompt prepare: error: DTD: dtd-r1.0.1.tar.gz is not the published file")
    assert f"expected {sha256(good)}" in error and "run prepare again to download it afresh" in error
    assert not (tmp_path / "data" / "DTD").exists()


def test_prepare_cli_unsafe_archive(server, tmp_path, capsys):
    split = subset_of_published("split_zhou_DescribableTextures.json")
    archive = tar_bytes(
        {f"dtd/images/{rel}": img(rel) for part in split.values() for rel, _, _ in part}
        | {"dtd/../../evil.txt": b"evil"}
    )
    config = write_config(
        tmp_path,
        "DTD",
        files={"DTD": serve_file(server, "DTD", "dtd-r1.0.1.tar.gz", archive)},
        split_files={"DTD": server.add("/s.json", json.dumps(split).encode())},
    )
    error = prepare_error(capsys, config, "DTD")
    fetched = tmp_path / "data" / "downloads" / "DTD" / "dtd-r1.0.1.tar.gz"
    assert error.startswith("vlprompt prepare: error: DTD: ") and "contains '..'; refusing to extract" in error
    assert f"dtd-r1.0.1.tar.gz is not the archive DTD publishes: delete {fetched} and run prepare again" in error
    assert not list(tmp_path.rglob("evil.txt"))


def test_prepare_cli_manual_dataset(tmp_path, capsys):
    error = prepare_error(capsys, write_config(tmp_path, "StanfordCars"), "StanfordCars")
    assert error.startswith("vlprompt prepare: error: StanfordCars: 4 missing file(s), then run prepare again:")
    assert "cars_train.tgz must be downloaded by hand from" in error
    assert str(tmp_path / "data" / "downloads" / "StanfordCars" / "cars_train.tgz") in error
    error = prepare_error(capsys, write_config(tmp_path, "ImageNet"), "ImageNet")
    assert "ImageNet cannot be downloaded automatically" in error
    assert str(tmp_path / "data" / "ImageNet" / "images" / "train") in error


def test_prepare_cli_download_block_is_checked(tmp_path, capsys):
    error = prepare_error(capsys, write_config(tmp_path, "DTD", allow_new_split=["Eurosat"]), "DTD")
    assert "`download.allow_new_split`: unknown real dataset 'Eurosat'; did you mean 'EuroSAT'?" in error
    error = prepare_error(capsys, write_config(tmp_path, "DTD", mirorr="http://example.org"), "DTD")
    assert "unknown key `download.mirorr`; did you mean `download.mirror`?" in error


@pytest.mark.slow  # Snakemake runs the DAG's jobs: the full suite, not the fast tier
def test_snakemake_prepares_and_splits_a_real_dataset(server, tmp_path):
    """The DAG's own rules on a real dataset, offline: prepare (fetch, verify, extract, published split)
    then the base/new classes and a few-shot subset. Snakemake creates the output's folder before the job
    runs; preparing must accept that empty folder."""
    archive, split = eurosat_archive()
    config = write_config(
        tmp_path,
        "EuroSAT",
        files={"EuroSAT": serve_file(server, "EuroSAT", "EuroSAT.zip", archive)},
        split_files={"EuroSAT": server.add("/s.json", json.dumps(split).encode())},
    )
    cfg = yaml.safe_load(config.read_text()) | {"shots": [2], "seeds": [1, 2]}
    config.write_text(yaml.safe_dump(cfg))
    targets = [
        str(tmp_path / "data/EuroSAT/split_zhou_EuroSAT.json"),
        str(tmp_path / "results/splits/EuroSAT/shot2_seed2.json"),
        str(tmp_path / "results/splits/EuroSAT/classes.json"),
    ]
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(repo / "Snakefile"),
            "--cores",
            "1",
            "-d",
            str(tmp_path),
            "--configfile",
            str(config),
            "--",
            *targets,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_prepared(cfg, "EuroSAT", tmp_path / "data" / "EuroSAT" / "split_zhou_EuroSAT.json")
    classes = json.loads((tmp_path / "results" / "splits" / "EuroSAT" / "classes.json").read_text())
    assert classes["base"] == [0, 1, 2, 3, 4] and classes["classnames"][0] == "Annual Crop Land"
    subset = json.loads((tmp_path / targets[1]).read_text())
    assert len(subset["train"]) == 2 * 10 and len(subset["val"]) == 2 * 10
