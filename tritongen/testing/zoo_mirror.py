"""A local HTTP mirror of the model zoo, serving small generated archives (tests, benchmarks, acceptance).

The real zoo archives are hundreds of megabytes on a Baidu CDN; a download path that is only
exercised against them is exercised nowhere. Setting ``TRITONGEN_ZOO_MIRROR`` to
:attr:`ZooMirror.url` (and ``TRITONGEN_CACHE`` to a scratch directory) makes
:func:`tritongen.intake.zoo.fetch` download from here instead, over real HTTP, so the
download, digest, extraction and intake code all run unchanged::

    with ZooMirror(tmp / "mirror") as mirror:
        populate(mirror.root, {"resnet50_vd": make_classifier(tmp / "cls")})
        os.environ.update(mirror.environ(), TRITONGEN_CACHE=str(tmp / "cache"))
        spec = load_model("resnet50_vd")

Archives are laid out like FastDeploy's: one top-level folder named after the archive, holding
``model.pdmodel``, ``model.pdiparams`` and the export's deploy yaml (``infer_cfg.yml``,
``inference_cls.yaml`` or ``deploy.yaml``) plus any label files. They are byte-for-byte
reproducible (sorted members, fixed owners and times, no gzip timestamp), so the same export
always gives the same sha256, as a re-download of an unchanged published archive does.

:class:`Fault` makes the mirror misbehave the way real mirrors and proxies do (a connection
dropped mid-body, a truncated body, an HTTP error), for the zoo's error-path tests.

No pytest here: benchmarks and the acceptance run use this module outside a test session.
"""
from __future__ import annotations

import functools
import gzip
import http.server
import io
import os
import shutil
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType

import yaml

from ..intake.families import find_model_files
from ..intake.zoo import FASTDEPLOY, ZOO

MIRROR_ENV = "TRITONGEN_ZOO_MIRROR"
# Fixed member time: archives of the same export are identical, whenever they are written.
ARCHIVE_MTIME = 1_700_000_000
_SUFFIXES = {".tar.gz": "gz", ".tgz": "gz", ".tar": ""}  # longest first: ".tar.gz" before ".tar"
SEG_DEPLOY_NAMES = ("deploy.yaml", "deploy.yml")  # PaddleSeg names its model files inside these


# ------------------------------------------------------------------------------ archives


@dataclass(frozen=True)
class _Member:
    """One file of an archive: its path under the top-level folder and where its bytes come from."""

    arcname: str
    source: Path
    data: bytes | None = None  # rewritten content (a deploy.yaml naming renamed files); None = copy source


def archive_stem(archive_name: str) -> str:
    """``ppyoloe_crn_l_300e_coco_qat.tar`` -> ``ppyoloe_crn_l_300e_coco_qat``: FastDeploy's top-level folder name."""
    for suffix in _SUFFIXES:
        if archive_name.endswith(suffix) and len(archive_name) > len(suffix):
            return archive_name[: -len(suffix)]
    raise ValueError(f"{archive_name}: not a .tar, .tgz or .tar.gz name")


def _compression(archive: Path) -> str:
    """``"gz"`` or ``""`` from the name, as the zoo's archives are named (``tarfile.open`` sniffs either on read)."""
    archive_stem(archive.name)  # validates the suffix
    return next(c for s, c in _SUFFIXES.items() if archive.name.endswith(s))


def _renames(export: Path, model_stem: str) -> dict[str, str]:
    """Old -> new file names of the program, params and params info (``inference.*`` -> ``model.*``)."""
    model, params = find_model_files(export)
    renames = {model.name: f"{model_stem}.pdmodel", params.name: f"{model_stem}.pdiparams"}
    info = params.name + ".info"
    if (export / info).is_file():
        renames[info] = f"{model_stem}.pdiparams.info"
    return renames


def _rewrite_seg_deploy(path: Path, renames: dict[str, str]) -> bytes | None:
    """A PaddleSeg ``deploy.yaml`` whose ``Deploy.model``/``Deploy.params`` follow ``renames``;
    None when it names none of the renamed files (then the file is copied untouched)."""
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    deploy = cfg.get("Deploy") if isinstance(cfg, dict) else None
    if not isinstance(deploy, dict):
        return None
    changed = False
    for key in ("model", "params"):
        value = deploy.get(key)
        if isinstance(value, str) and PurePosixPath(value).name in renames:
            new = str(PurePosixPath(value).with_name(renames[PurePosixPath(value).name]))
            changed = changed or new != value
            deploy[key] = new
    if not changed:
        return None
    return yaml.safe_dump(cfg, sort_keys=False).encode("utf-8")


def _members(export: Path, model_stem: str) -> list[_Member]:
    """Every file of ``export`` (recursively, sorted), model files renamed, a PaddleSeg deploy yaml updated."""
    renames = _renames(export, model_stem)
    members: list[_Member] = []
    for path in sorted(p for p in export.rglob("*") if p.is_file()):
        relative = path.relative_to(export).as_posix()
        if relative in renames:
            members.append(_Member(renames[relative], path))
        elif relative in SEG_DEPLOY_NAMES:
            members.append(_Member(relative, path, _rewrite_seg_deploy(path, renames)))
        else:
            members.append(_Member(relative, path))
    return members


def _tarinfo(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    """A member header with fixed owner, mode and time, so archives are reproducible."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = size
    info.mtime = ARCHIVE_MTIME
    return info


def _write_tar(out: io.BufferedIOBase, top: str, members: list[_Member]) -> None:
    """The tar stream: the top-level folder, its sub-folders, then the files."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folders = sorted({str(p) for m in members for p in PurePosixPath(m.arcname).parents} - {"."})
        for folder in ["", *folders]:
            tar.addfile(_tarinfo(f"{top}/{folder}".rstrip("/"), directory=True))
        for member in members:
            data = member.data if member.data is not None else member.source.read_bytes()
            tar.addfile(_tarinfo(f"{top}/{member.arcname}", len(data)), io.BytesIO(data))


def write_archive(
    export_dir: str | Path, archive_path: str | Path, folder: str | None = None, model_stem: str = "model"
) -> Path:
    """Pack ``export_dir`` the way FastDeploy packs a zoo archive; return ``archive_path``.

    ``.tar`` gives a plain tar, ``.tgz``/``.tar.gz`` a gzipped one. Everything sits in one
    top-level ``folder`` (default: the archive's stem, as in FastDeploy's archives); the
    program and params are renamed ``{model_stem}.pdmodel``/``.pdiparams`` (and
    ``.pdiparams.info``), a PaddleSeg ``deploy.yaml`` names the renamed files, every other file
    is copied as is. The archive appears atomically (written beside it, then renamed), so a
    mirror serving the directory never sends a half-written file.
    """
    export, archive = Path(export_dir), Path(archive_path)
    compression = _compression(archive)
    top = folder or archive_stem(archive.name)
    members = _members(export, model_stem)
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=archive.parent, prefix=f".{archive.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw:
            if compression == "gz":  # no file name or time in the gzip header: reproducible bytes
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                    _write_tar(gz, top, members)
            else:
                _write_tar(raw, top, members)
        os.replace(tmp, archive)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return archive


def zoo_path(name: str) -> str:
    """Where a mirror serves zoo entry ``name``: its URL after the FastDeploy host
    (what :func:`tritongen.intake.zoo.resolve_url` appends to ``TRITONGEN_ZOO_MIRROR``)."""
    entry = ZOO.get(name)
    if entry is None:
        raise ValueError(f"unknown zoo model {name!r}; zoo models: {', '.join(sorted(ZOO))}")
    if not entry.url.startswith(FASTDEPLOY):
        raise ValueError(f"{name}: {entry.url} is not under {FASTDEPLOY}; TRITONGEN_ZOO_MIRROR does not redirect it")
    return entry.url[len(FASTDEPLOY):]


def populate(root: str | Path, exports: dict[str, Path], model_stem: str = "model") -> dict[str, Path]:
    """Write each zoo name's export as the archive a mirror at ``root`` must serve; name -> archive path."""
    base = Path(root)
    return {name: write_archive(export, base / zoo_path(name), model_stem=model_stem) for name, export in exports.items()}


# ------------------------------------------------------------------------------ server


@dataclass(frozen=True)
class Fault:
    """How the mirror misbehaves on every GET (all None: serve files normally).

    ``status``: answer with this HTTP error instead of the file (a proxy's 403, a CDN's 503).
    ``truncate_to``: serve only the first N bytes, as a complete response (a proxy that cut the
    file; the client sees a well-formed but corrupt download). ``cut_after``: announce the
    (possibly truncated) length, send N bytes, drop the connection (the client must notice
    ``Content-Length`` was not met; urllib does not raise by itself).
    """

    status: int | None = None
    truncate_to: int | None = None
    cut_after: int | None = None


@dataclass
class _State:
    """What the mirror and its request handlers share: the fault to inject and the request log."""

    fault: Fault = field(default_factory=Fault)
    requests: list[str] = field(default_factory=list)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a client that hangs must not keep stop() waiting

    def __init__(self, root: Path, state: _State) -> None:
        self.state = state
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))

    def handle_error(self, request, client_address) -> None:
        """Stay quiet when a client hangs up (a timed-out download, a dropped-connection test); report the rest."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (the base class's name)
        """No access log: it would interleave with test and benchmark output."""

    def do_GET(self) -> None:
        self.server.state.requests.append(self.path)
        fault = self.server.state.fault
        if fault.status is not None:
            self.send_error(fault.status)
        elif fault.truncate_to is None and fault.cut_after is None:
            super().do_GET()
        else:
            self._send_faulty(fault)

    def _send_faulty(self, fault: Fault) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "File not found")
            return
        body = path.read_bytes()
        if fault.truncate_to is not None:
            body = body[: fault.truncate_to]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if fault.cut_after is None else body[: fault.cut_after])
        self.wfile.flush()
        self.close_connection = True


class ZooMirror:
    """Serve ``root`` over HTTP on 127.0.0.1 (a free port) from a background thread.

    A context manager (``start``/``stop`` also work, e.g. to take the mirror away mid-test).
    Without ``root`` it serves a temporary directory it deletes on stop. ``fault`` may be
    changed at any time; it applies from the next request.
    """

    def __init__(self, root: str | Path | None = None, fault: Fault | None = None) -> None:
        self._owned_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="tritongen-zoo-mirror-")) if root is None else Path(root)
        self._state = _State(fault or Fault())
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ZooMirror:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def fault(self) -> Fault:
        return self._state.fault

    @fault.setter
    def fault(self, value: Fault) -> None:
        self._state.fault = value

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/``: the value for ``TRITONGEN_ZOO_MIRROR``."""
        if self._server is None:
            raise RuntimeError("the mirror is not running (use it as a context manager, or call start())")
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    @property
    def requests(self) -> list[str]:
        """Request paths received so far (``/ResNet50_vd_infer.tgz``), oldest first; kept after stop()."""
        return list(self._state.requests)

    def environ(self) -> dict[str, str]:
        """The environment that points the zoo at this mirror (for os.environ or a subprocess's env)."""
        return {MIRROR_ENV: self.url}

    def put(self, relative_path: str, data: bytes) -> Path:
        """Serve ``data`` at ``relative_path`` (replacing any file there atomically); return its path."""
        path = self.root / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def start(self) -> ZooMirror:
        """Bind a free port and serve from a daemon thread (idempotent)."""
        if self._server is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._server = _Server(self.root, self._state)
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="zoo-mirror", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (idempotent): later downloads get "connection refused"."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread = None, None
        if self._owned_root:
            shutil.rmtree(self.root, ignore_errors=True)
