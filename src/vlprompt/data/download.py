"""Fetch, verify and safely extract dataset archives.

- :func:`download` fetches over HTTP(S) with resume: bytes go to ``<file>.part``; a retry, or the next
  run, asks the server for the rest with a ``Range`` header and appends (a server that ignores the
  range starts the file over). The final name appears only once the whole body has arrived.
- :func:`verify` checks a file against the SHA-256 / MD5 its publisher gives, else its recorded size,
  and leaves a stamp (``.<file>.verified``) so a status listing need not re-hash 100 GB.
- :func:`safe_extract` unpacks zip and tar(.gz/.bz2/.xz) archives, refusing any member with an absolute
  path, a ``..`` component, a link that points outside the destination, or a device file.

Only the standard library does HTTP (``urllib``), so no dependency is added; tqdm draws progress bars.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

USER_AGENT = "vlprompt-downloader/1"


class DownloadError(RuntimeError):
    """A file could not be fetched; the message names the URL and what to do by hand."""


class ChecksumError(DownloadError):
    """A file's checksum or size differs from the recorded one."""


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the extraction folder."""


def is_url(source: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", str(source))) and not str(source).startswith("file://")


def _local_path(source: str) -> Path:
    return Path(str(source)[len("file://") :] if str(source).startswith("file://") else source)


def _content_range_start_total(header: str | None) -> tuple[int | None, int | None]:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", header or "")
    if not m:
        return None, None
    return int(m.group(1)), None if m.group(2) == "*" else int(m.group(2))


def download(
    source: str,
    dest: str | Path,
    *,
    progress: bool = True,
    retries: int = 5,
    timeout: float = 60,
    chunk_size: int = 1 << 20,
    backoff: float = 1.0,
) -> Path:
    """Fetch ``source`` (URL or local path) to ``dest``, resuming an earlier ``dest.part``; return ``dest``.

    Transient failures (dropped connections, timeouts, 5xx) are retried up to ``retries`` times, each
    resuming where the last stopped; a 4xx is final. On failure the ``.part`` file is kept, so the next
    call resumes rather than starts over.
    """
    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not is_url(source):
        src = _local_path(source)
        if not src.is_file():
            raise DownloadError(f"local source {src} does not exist")
        part = dest.with_name(dest.name + ".part")
        shutil.copyfile(src, part)
        os.replace(part, dest)
        return dest

    part = dest.with_name(dest.name + ".part")
    last_error: BaseException | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * attempt)
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT}
        if have:
            headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(source, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                if have and resp.status == 206:
                    start, total = _content_range_start_total(resp.headers.get("Content-Range"))
                    if start != have:  # a server that answers another range than asked: start over
                        have, mode = 0, "wb"
                    else:
                        mode = "ab"
                        log.info("resuming %s at byte %d", dest.name, have)
                else:  # 200: the server ignored (or was not sent) a range
                    have, mode = 0, "wb"
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                with (
                    open(part, mode) as out,
                    tqdm(
                        total=total,
                        initial=have,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=dest.name,
                        disable=not progress,
                        leave=False,
                    ) as bar,
                ):
                    while block := resp.read(chunk_size):
                        out.write(block)
                        bar.update(len(block))
            size = part.stat().st_size
            if total is not None and size != total:
                raise http.client.IncompleteRead(b"", total - size)
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing left to send: the .part file is already whole
                os.replace(part, dest)
                return dest
            if 400 <= err.code < 500:
                raise DownloadError(f"cannot download {source}: HTTP {err.code} {err.reason}") from None
            last_error = err
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as err:
            last_error = err
        got = part.stat().st_size if part.exists() else 0
        log.warning(
            "download of %s %s (%s); attempt %d of %d",
            source,
            f"interrupted at {got} bytes" if got else "failed",
            last_error,
            attempt + 1,
            retries + 1,
        )
    got = part.stat().st_size if part.exists() else 0
    kept = f"; the partial file {part} ({got} bytes) is kept and the next run resumes it" if got else ""
    raise DownloadError(f"cannot download {source} after {retries + 1} attempt(s) ({last_error}){kept}")


def file_digest(path: str | Path, algorithm: str, chunk: int = 1 << 20) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def verify(
    path: str | Path, *, sha256: str | None = None, md5: str | None = None, size_bytes: int | None = None
) -> bool:
    """Check ``path``; return True if a checksum or size confirmed it, False if nothing was recorded.

    Raises :class:`ChecksumError` on a mismatch. A confirmed file gets a stamp next to it.
    """
    path = Path(path)
    size = path.stat().st_size
    checks: dict[str, str | int] = {}
    if size_bytes is not None:
        if size != size_bytes:
            raise ChecksumError(f"{path}: size {size} bytes, expected {size_bytes}")
        checks["size_bytes"] = size
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            got = file_digest(path, algorithm)
            if got.lower() != expected.lower():
                raise ChecksumError(
                    f"{path}: {algorithm} {got}, expected {expected} (corrupt or different "
                    f"file; delete it and download again)"
                )
            checks[algorithm] = got
    if not checks:
        return False
    _stamp_path(path).write_text(json.dumps({"size": size, "mtime": path.stat().st_mtime, **checks}))
    return True


def is_verified(path: str | Path) -> bool:
    """Whether ``path`` carries a stamp from :func:`verify` that still matches its size and mtime."""
    path = Path(path)
    stamp = _stamp_path(path)
    if not (path.is_file() and stamp.is_file()):
        return False
    try:
        info = json.loads(stamp.read_text())
    except ValueError:
        return False
    st = path.stat()
    return info.get("size") == st.st_size and info.get("mtime") == st.st_mtime


# ---- safe extraction ------------------------------------------------------------------------------


def _checked_relpath(name: str, archive: Path) -> PurePosixPath:
    """The member's path, or an error when it is absolute or climbs out with ``..``."""
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or p.is_absolute():
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if ".." in p.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'; refusing to extract")
    return p


def _inside(root: Path, target: str) -> bool:
    root_s = os.path.normpath(str(root))
    target_s = os.path.normpath(target)
    return target_s == root_s or target_s.startswith(root_s + os.sep)


def _check_link(root: Path, member: PurePosixPath, linkname: str, archive: Path, hard: bool) -> None:
    if linkname.startswith("/") or re.match(r"^[A-Za-z]:", linkname):
        raise UnsafeArchiveError(f"{archive}: link {str(member)!r} -> {linkname!r} is absolute; refusing to extract")
    base = root if hard else root / member.parent  # hard links name a member; symlinks are relative to their dir
    if not _inside(root, os.path.join(str(base), linkname)):
        raise UnsafeArchiveError(
            f"{archive}: link {str(member)!r} -> {linkname!r} points outside the extraction folder; refusing to extract"
        )


def archive_format(path: str | Path) -> str | None:
    """'zip', 'tar' or None (not an archive we extract)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return "zip"
    with contextlib.suppress(OSError, tarfile.TarError):
        if tarfile.is_tarfile(path):
            return "tar"
    return None


def safe_extract(archive: str | Path, dest: str | Path, progress: bool = True) -> None:
    """Extract ``archive`` under ``dest``, refusing unsafe members (see module docstring).

    Members are checked one by one as they stream by, so a bad member may leave earlier ones on disk:
    callers extract into a staging folder that is removed on any error.
    """
    from tqdm import tqdm

    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    fmt = archive_format(archive)
    bar = tqdm(desc=f"extract {archive.name}", unit="file", disable=not progress, leave=False)
    try:
        if fmt == "zip":
            with zipfile.ZipFile(archive) as zf:
                bar.total = len(zf.infolist())
                for info in zf.infolist():
                    rel = _checked_relpath(info.filename, archive)
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        target = zf.read(info).decode()
                        _check_link(dest, rel, target, archive, hard=False)
                        link = dest / rel
                        link.parent.mkdir(parents=True, exist_ok=True)
                        os.symlink(target, link)
                    else:
                        zf.extract(info, dest)
                    bar.update()
        elif fmt == "tar":
            with tarfile.open(archive, "r:*") as tf:
                for member in tf:
                    rel = _checked_relpath(member.name, archive)
                    if member.issym() or member.islnk():
                        _check_link(dest, rel, member.linkname, archive, hard=member.islnk())
                    elif not (member.isfile() or member.isdir()):
                        raise UnsafeArchiveError(
                            f"{archive}: member {member.name!r} is a device or fifo; refusing to extract"
                        )
                    # the "data" filter re-checks paths and links and drops setuid bits and owners
                    tf.extract(member, dest, filter="data")
                    bar.update()
        else:
            raise DownloadError(
                f"{archive} is neither a zip nor a tar archive (truncated or an HTML error "
                f"page?); delete it and download again"
            )
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        if isinstance(err, tarfile.FilterError):
            raise UnsafeArchiveError(f"{archive}: {err}; refusing to extract") from None
        raise DownloadError(f"{archive} is damaged ({err}); delete it and download again") from None
    finally:
        bar.close()
