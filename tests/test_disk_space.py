"""A full disk is one line (the file, the bytes needed and free, the config key that moves the folder), never a
"Bus error" from a memory-mapped write; after freeing space the same command finishes with the same results."""

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from vlprompt import io

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (root only; the test is skipped elsewhere)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip() or 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_bank_too_big_for_the_disk_stops_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_FOLDER_KEYS", {})
    io.register_folder_keys({"results_root": tmp_path / "results", "data_root": tmp_path / "data"})
    monkeypatch.setattr(io, "free_bytes", lambda path: 1000)
    target = tmp_path / "results" / "features" / "bank.partial.npy"
    target.parent.mkdir(parents=True)
    with pytest.raises(io.NoSpaceError) as err:
        io.create_memmap(target, np.float16, (100, 64), name=target.with_name("bank.npy"))
    message = str(err.value)
    assert "\n" not in message and not target.exists()
    assert message.startswith(f"no space for {target.with_name('bank.npy')}: it needs 12.6 KiB (12928 bytes)")
    assert "its disk has 1000 bytes free" in message and "(config key `results_root`)" in message


def test_a_full_disk_at_allocation_is_the_same_line_not_a_bus_error(tmp_path, monkeypatch):
    """The space is allocated before the memory map is written: ENOSPC there, from posix_fallocate, is the line."""

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    io.register_folder_keys({"data_root": tmp_path})
    with pytest.raises(io.NoSpaceError, match=r"no space for .*bank\.npy: it needs .* \(config key `data_root`\)"):
        io.create_memmap(tmp_path / "bank.npy", np.float16, (10, 8))


def test_enospc_inside_an_atomic_write_is_the_line_and_leaves_nothing(tmp_path, monkeypatch):
    with pytest.raises(io.NoSpaceError, match="no space for .*model.pt: it needs more"):
        with io.atomic_path(tmp_path / "model.pt") as tmp:
            tmp.write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_on_a_small_tmpfs_every_writer_says_one_line(tmp_path):
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        io.register_folder_keys({"results_root": disk})
        with pytest.raises(io.NoSpaceError, match=r"bank\.npy: it needs 1\.0 MiB \(1048704 bytes\)"):
            io.create_memmap(disk / "bank.partial.npy", np.float16, (1024, 512), name=disk / "bank.npy")
        with pytest.raises(io.NoSpaceError, match=r"model\.pt: it needs 97\.7 KiB"):
            io.atomic_write_text(disk / "model.pt", "x" * 100_000)
        (disk / "ballast").write_bytes(b"\0" * (60 * 1024))
        with pytest.raises(io.NoSpaceError, match=r"small\.npy: it needs 8\.1 KiB \(8320 bytes\) and its disk has"):
            io.create_memmap(disk / "small.npy", np.float16, (8, 512))
        assert sorted(p.name for p in disk.iterdir()) == ["ballast"]  # nothing half-written


def test_the_cli_prints_the_line_and_exits_2(tmp_path, monkeypatch, capsys):
    """A job stopped by a full disk: one line on stderr, exit status 2 (``vlprompt prepare`` of a pocket dataset)."""
    from vlprompt.cli import main as cli

    cfg = yaml.safe_load((REPO / "tests" / "configs" / "pocket_tiny.yaml").read_text())
    cfg.update(data_root=str(tmp_path / "data"), results_root=str(tmp_path / "results"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(io, "free_bytes", lambda path: 4096)
    assert cli(["prepare", "--config", str(tmp_path / "c.yaml"), "--dataset", "pocket_dark", "--quiet"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"vlprompt prepare: error: no space for {tmp_path / 'data'}")
    assert "free; free space there, or move the folder to a disk with room (config key `data_root`)" in lines[0]


@pytest.mark.slow
def test_a_run_stopped_by_a_full_disk_recovers_to_the_same_summary(tmp_path, tiny_clone):
    """The tiny pocket config with its feature banks on a nearly full tmpfs: the run stops with the line (no Bus
    error), and after freeing space the README's recovery command gives the summary.csv of a clean run (the
    tiny config's run in a fresh clone, conftest's tiny_clone, shared with test_dvc and test_isolation)."""
    cfg = yaml.safe_load((REPO / "tests" / "configs" / "pocket_tiny.yaml").read_text())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(work: Path, *args) -> subprocess.CompletedProcess:  # up to the summary (the report adds nothing here)
        return subprocess.run(
            [*SNAKEMAKE, "-d", str(work), *args, "results/tiny/summary.csv"],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )

    clean = tiny_clone["run"]
    assert yaml.safe_load((clean / "config" / "config.yaml").read_text()) == cfg  # the same experiment
    full = tmp_path / "full"
    (full / "config").mkdir(parents=True)
    (full / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    with small_tmpfs(tmp_path / "disk", "256k") as disk:
        (full / "results").mkdir()
        (full / "results" / "features").symlink_to(disk)  # the banks' folder on the small disk
        (disk / "ballast").write_bytes(b"\0" * (236 * 1024))
        first = run(full, "--cores", "2", "--keep-going")
        print(first.stderr[-3000:])
        assert first.returncode != 0
        logs = "".join(p.read_text() for p in (full / "results" / "tiny" / "logs").rglob("*.log"))
        out = first.stdout + first.stderr + logs
        assert "Bus error" not in out and "SIGBUS" not in out and "Traceback" not in out
        lines = [line for line in out.splitlines() if "no space for" in line]
        assert lines and all("(config key `results_root`)" in line for line in lines), lines
        (disk / "ballast").unlink()  # space freed: the recovery command of the README (make run)
        subprocess.run([sys.executable, "-m", "vlprompt", "unlock-stale", "--directory", str(full)], check=True)
        again = run(full, "--cores", "2", "--rerun-incomplete")
        assert again.returncode == 0, again.stderr[-3000:]
        assert (full / "results" / "tiny" / "summary.csv").read_text() == (
            clean / "results" / "tiny" / "summary.csv"
        ).read_text()
    shutil.rmtree(full / "results", ignore_errors=True)
