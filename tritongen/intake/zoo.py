"""Zoo names -> official Paddle export archives, downloaded once into a cache.

URLs are the FastDeploy download links of its published documents. Their publishers give no
checksums, so an entry without a pinned sha256 is verified trust-on-first-use: the digest
seen on the first download is stored beside the cache and every later use must match it.
``--sha256`` pins one explicitly. ``TRITONGEN_ZOO_MIRROR`` replaces the URL host part for
users behind a firewall who mirror the archives.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import ZooError

FASTDEPLOY = "https://bj.bcebos.com/paddlehub/fastdeploy/"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    url: str
    family: str
    sha256: str | None = None  # None = trust on first use (see module doc)
    int8: str | None = None  # the zoo name of the INT8 model published for this FP32 one

    @property
    def fp32(self) -> str | None:
        """The zoo name of the FP32 model this INT8 one was quantized from (the entry naming it as ``int8``)."""
        return next((e.name for e in ZOO.values() if e.int8 == self.name), None)

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("resnet50_vd", FASTDEPLOY + "ResNet50_vd_infer.tgz", "paddleclas", int8="resnet50_vd_ptq"),
        ZooEntry("mobilenetv1_ssld", FASTDEPLOY + "MobileNetV1_ssld_infer.tgz", "paddleclas", int8="mobilenetv1_ssld_ptq"),
        ZooEntry("resnet50_vd_ptq", FASTDEPLOY + "resnet50_vd_ptq.tar", "paddleclas"),
        ZooEntry("mobilenetv1_ssld_ptq", FASTDEPLOY + "mobilenetv1_ssld_ptq.tar", "paddleclas"),
        ZooEntry("ppyoloe", FASTDEPLOY + "ppyoloe_crn_l_300e_coco.tgz", "paddledetection", int8="ppyoloe_qat"),
        ZooEntry("ppyoloe_qat", FASTDEPLOY + "ppyoloe_crn_l_300e_coco_qat.tar", "paddledetection"),
        ZooEntry("yolov5s", FASTDEPLOY + "yolov5s_infer.tar", "paddledetection"),
        ZooEntry("yolov6s", FASTDEPLOY + "yolov6s_infer.tar", "paddledetection"),
        ZooEntry("yolov7", FASTDEPLOY + "yolov7_infer.tar", "paddledetection"),
        ZooEntry("pp_liteseg", FASTDEPLOY + "PP_LiteSeg_T_STDC1_cityscapes_without_argmax_infer.tgz", "paddleseg",
                 int8="pp_liteseg_qat"),
        ZooEntry("pp_liteseg_qat", FASTDEPLOY + "PP_LiteSeg_T_STDC1_cityscapes_without_argmax_infer_QAT_new.tar",
                 "paddleseg"),
        ZooEntry("bisenetv2", FASTDEPLOY + "Bisenet_cityscapes_without_argmax_infer.tgz", "paddleseg"),
    ]
}


def zoo_entry(name: str) -> ZooEntry:
    """The entry ``name``; ZooError listing the zoo otherwise."""
    entry = ZOO.get(name)
    if entry is None:
        raise ZooError(f"unknown model {name!r}: pass an export directory, or one of: {', '.join(sorted(ZOO))}")
    return entry


def published_int8(name: str) -> ZooEntry:
    """The INT8 model the zoo publishes for FP32 model ``name`` (``name`` itself when it is INT8)."""
    entry = zoo_entry(name)
    if entry.fp32 is not None:
        return entry
    if entry.int8 is None:
        with_int8 = ", ".join(sorted(e.name for e in ZOO.values() if e.int8))
        raise ZooError(
            f"{name} has no published INT8 model in the zoo (those that do: {with_int8}). Quantize it yourself with "
            f"--int8 --calib-dir DIR (a folder of images like the ones it will serve), or build it in FP32 without --int8")
    return ZOO[entry.int8]


def cache_dir() -> Path:
    root = os.environ.get("TRITONGEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tritongen"
    )
    return Path(root) / "zoo"


def resolve_url(entry: ZooEntry) -> str:
    mirror = os.environ.get("TRITONGEN_ZOO_MIRROR")
    if mirror and entry.url.startswith(FASTDEPLOY):
        return mirror.rstrip("/") + "/" + entry.url[len(FASTDEPLOY):]
    return entry.url


def fetch(name: str, sha256: str | None = None, progress: bool = True, timeout: float = 30.0) -> Path:
    """The extracted export directory of zoo model ``name``, downloading it if needed."""
    entry = zoo_entry(name)
    expected = (sha256 or entry.sha256 or "").lower() or None
    root = cache_dir() / entry.name
    done = root / "model"
    digest_file = root / "archive.sha256"
    if done.is_dir() and digest_file.is_file():
        seen = digest_file.read_text().strip()
        if expected and seen != expected:
            raise ZooError(f"{name}: cached archive has sha256 {seen}, expected {expected}; delete {root} to download again")
        return _export_dir(done)
    recorded = digest_file.read_text().strip() if digest_file.is_file() else ""
    trusted_on_first_use = not expected and bool(recorded)
    if trusted_on_first_use:  # a re-download (cache extracted copy gone) must match the first download
        expected = recorded

    url = resolve_url(entry)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        archive = Path(tmp) / entry.archive_name
        digest = _download(url, archive, progress, timeout)
        if expected and digest != expected:
            raise ZooError(
                f"{name}: {url} has sha256 {digest}, expected {expected}; the download is corrupt or the file changed"
                + (f" (digest recorded on first download; delete {root} to accept the new file)" if trusted_on_first_use else "")
            )
        extracted = Path(tmp) / "model"
        _extract(archive, extracted)
        if done.exists():
            shutil.rmtree(done)
        extracted.rename(done)
        digest_file.write_text(digest + "\n")
    return _export_dir(done)


def _download(url: str, dest: Path, progress: bool, timeout: float) -> str:
    from rich.progress import BarColumn, DownloadColumn, TransferSpeedColumn

    from ..progress import progress_bar

    sha = hashlib.sha256()
    received, total = 0, None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress_bar(
                "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                enabled=progress,
            ) as bar:
                task = bar.add_task(f"downloading {dest.name}", total=total)
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    sha.update(chunk)
                    received += len(chunk)
                    bar.advance(task, len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ZooError(
            f"cannot download {url} ({reason}). If this machine is offline, download the archive elsewhere, "
            "extract it, and pass the directory instead: tritongen build /path/to/model_dir"
        ) from None
    if total is not None and received < total:  # urllib does not raise when the connection drops early
        raise ZooError(f"cannot download {url}: the connection closed after {received} of {total} bytes; try again")
    return sha.hexdigest()


def _extract(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")  # refuses absolute paths, .., device files
    except (tarfile.TarError, OSError, EOFError) as exc:  # EOFError: truncated gzip/bz2/xz stream
        raise ZooError(f"{archive.name}: not a readable tar archive ({exc})") from None


def _export_dir(extracted: Path) -> Path:
    """Archives hold one top-level folder; return the folder holding the .pdmodel."""
    hits = sorted({p.parent for p in extracted.rglob("*.pdmodel")}, key=lambda p: len(p.parts))
    if not hits:
        raise ZooError(f"{extracted}: the archive holds no .pdmodel")
    return hits[0]
