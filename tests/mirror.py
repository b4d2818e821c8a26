"""A loopback mirror and miniature archives of real datasets, for tests that must not reach the network.

``Server`` is ``http.server`` on 127.0.0.1 (a free port) with Range support and a switch that drops the
connection part-way; the archive builders lay files out as the publishers' archives do. Used by
``tests/test_download.py`` (preparation of every real dataset) and ``tests/test_real_size.py`` (the whole
base-to-new DAG on a real-layout dataset with a ViT-B/16).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Callable

from vlprompt.data import real


class Server:
    """Serves ``files[path] = bytes``; ``drop_after[path] = n`` cuts the next response after n bytes."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.ignore_range = False
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.log.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                cut = server.drop_after.pop(self.path, None)
                if cut is not None:  # promise the whole body, send part, hang up
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return self.url + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def img(rel: str, label: int = 0) -> bytes:
    """Bytes standing in for an image where nothing decodes it (preparation only)."""
    return b"\xff\xd8 miniature image " + rel.encode()


def jpeg(rel: str, label: int, size: int = 64) -> bytes:
    """A real JPEG (``size`` px, RGB, as EuroSAT's): a colour per label plus noise seeded by the path."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "little"))
    colour = np.array([(label * 83) % 256, (label * 151 + 60) % 256, (label * 37 + 120) % 256])
    pixels = np.clip(colour + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def serve_file(server: Server, name: str, filename: str, body: bytes) -> dict:
    """Serve one archive; return its ``download.files`` override (URL and SHA-256)."""
    return {filename: {"url": server.add(f"/{name}/{filename}", body), "sha256": sha256(body)}}


def eurosat_archive(
    parts: dict[str, int] | None = None, image: Callable[[str, int], bytes] = img
) -> tuple[bytes, dict]:
    """EuroSAT.zip in its published layout (``2750/<Class>/<Class>_<n>.jpg``, all 10 classes) and a split file
    in CoOp's format over it; ``parts`` images per class and part (default 5 train, 2 val, 3 test)."""
    parts = parts or {"train": 5, "val": 2, "test": 3}
    rename = real.info("EuroSAT")["class_folders"]["rename"]
    files, split = {}, {"train": [], "val": [], "test": []}
    for label, folder in enumerate(sorted(rename)):
        i = 0
        for part, count in parts.items():
            for _ in range(count):
                i += 1
                rel = f"{folder}/{folder}_{i}.jpg"
                files[f"2750/{rel}"] = image(rel, label)
                split[part].append([rel, label, rename[folder]])
    return zip_bytes(files), split
