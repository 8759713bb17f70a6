"""The zoo download path against a real HTTP server on 127.0.0.1.

A real PaddleClas-style export is packed the way FastDeploy packs its archives (one top-level
folder in a .tgz) and served under a zoo entry's archive name; ``TRITONGEN_ZOO_MIRROR`` points
the zoo at the server and ``TRITONGEN_CACHE`` keeps the cache inside the test's tmp_path.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import socket
import tarfile
import threading
import time
from pathlib import Path

import pytest

from tritongen.demo import COLOURS, make_classifier
from tritongen.errors import IntakeError, ZooError
from tritongen.intake import ModelSpec, load_model, zoo

pytestmark = pytest.mark.timeout(30)  # hard cap; every test here takes well under 5 s

NAME = "resnet50_vd"
ARCHIVE = zoo.ZOO[NAME].archive_name  # ResNet50_vd_infer.tgz
TOP = "ResNet50_vd_infer"  # FastDeploy archives hold one folder named after the model
FETCH_TIMEOUT = 5.0


def pack(export: Path, top: str = TOP) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(export, arcname=top)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> tuple[Path, Path]:
    """Two real exports that differ only in their weights (seed)."""
    root = tmp_path_factory.mktemp("zoo-exports")
    return make_classifier(root / "a" / TOP, seed=1), make_classifier(root / "b" / TOP, seed=2)


@pytest.fixture(scope="module")
def archive(exports) -> bytes:
    return pack(exports[0])


@pytest.fixture(scope="module")
def other_archive(exports) -> bytes:
    return pack(exports[1])


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        server: "_Server" = self.server  # type: ignore[assignment]
        server.requests.append(self.path)
        if server.cut_after is None:
            return super().do_GET()
        # Announce the whole file, send only its start, then drop the connection.
        data = (server.root / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: server.cut_after])
        self.wfile.flush()
        self.close_connection = True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        self.cut_after: int | None = None
        super().__init__(("127.0.0.1", 0), lambda *a: _Handler(*a, directory=str(root)))


class Mirror:
    """A real HTTP mirror serving files from ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.server = _Server(root)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    @property
    def requests(self) -> list[str]:
        return self.server.requests

    def put(self, data: bytes, name: str = ARCHIVE) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path

    def stop(self) -> None:
        if self.running:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)
            self.running = False


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("TRITONGEN_CACHE", str(root))
    return root / "zoo" / NAME


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch, cache) -> Mirror:
    served = tmp_path / "mirror"
    served.mkdir()
    m = Mirror(served)
    monkeypatch.setenv("TRITONGEN_ZOO_MIRROR", m.url + "/")
    yield m
    m.stop()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(**kwargs) -> Path:
    return zoo.fetch(NAME, progress=False, timeout=FETCH_TIMEOUT, **kwargs)


def assert_nothing_cached(cache: Path) -> None:
    assert not (cache / "model").exists()
    assert not (cache / "archive.sha256").exists()
    assert not list(cache.glob(".download-*")), "a failed download left its temporary directory behind"


# ---------------------------------------------------------------- download and cache


def test_first_fetch_downloads_extracts_and_records_the_sha256(mirror: Mirror, cache: Path, archive: bytes):
    mirror.put(archive)
    directory = fetch()
    assert mirror.requests == [f"/{ARCHIVE}"]
    assert directory == cache / "model" / TOP
    assert sorted(p.name for p in directory.iterdir()) == [
        "colour_labels.txt", "inference.pdiparams", "inference.pdmodel", "inference_cls.yaml"
    ]
    assert (cache / "archive.sha256").read_text().strip() == sha256(archive)
    assert not list(cache.glob(".download-*"))


def test_second_fetch_uses_the_cache_even_when_the_mirror_is_gone(mirror: Mirror, cache: Path, archive: bytes):
    served = mirror.put(archive)
    first = fetch()
    mirror.stop()
    served.unlink()
    assert fetch() == first
    assert fetch(sha256=sha256(archive)) == first
    assert mirror.requests == [f"/{ARCHIVE}"]  # one download only
    assert load_model(NAME, progress=False).source_dir == first


def test_sha256_mismatch_names_expected_and_actual(mirror: Mirror, cache: Path, archive: bytes):
    mirror.put(archive)
    wrong = "0" * 64
    with pytest.raises(ZooError) as info:
        fetch(sha256=wrong)
    assert wrong in str(info.value) and sha256(archive) in str(info.value)
    assert_nothing_cached(cache)


def test_sha256_match_works_in_any_case(mirror: Mirror, cache: Path, archive: bytes):
    mirror.put(archive)
    directory = fetch(sha256=sha256(archive).upper())
    assert (directory / "inference.pdmodel").is_file()
    assert (cache / "archive.sha256").read_text().strip() == sha256(archive)


def test_sha256_mismatch_with_the_cached_archive(mirror: Mirror, cache: Path, archive: bytes):
    mirror.put(archive)
    fetch()
    wrong = "f" * 64
    with pytest.raises(ZooError) as info:
        fetch(sha256=wrong)
    message = str(info.value)
    assert "cached archive" in message and wrong in message and sha256(archive) in message and str(cache) in message
    assert mirror.requests == [f"/{ARCHIVE}"]


def test_redownload_must_match_the_digest_recorded_on_first_use(
    mirror: Mirror, cache: Path, archive: bytes, other_archive: bytes
):
    import shutil

    mirror.put(archive)
    fetch()
    shutil.rmtree(cache / "model")  # the extracted copy is gone; the recorded digest stays
    mirror.put(other_archive)  # ...and the mirror now serves a different file
    with pytest.raises(ZooError) as info:
        fetch()
    message = str(info.value)
    assert sha256(archive) in message and sha256(other_archive) in message and "first download" in message
    assert not (cache / "model").exists()
    assert (cache / "archive.sha256").read_text().strip() == sha256(archive)

    mirror.put(archive)  # the original file again: accepted
    assert (fetch() / "inference.pdmodel").is_file()


# ---------------------------------------------------------------- bad downloads


def test_a_file_that_is_not_a_tar_archive(mirror: Mirror, cache: Path):
    mirror.put(b"<html><body>Access denied by the proxy</body></html>\n")
    with pytest.raises(ZooError) as info:
        fetch()
    assert ARCHIVE in str(info.value) and "not a readable tar archive" in str(info.value)
    assert_nothing_cached(cache)


def test_a_truncated_archive(mirror: Mirror, cache: Path, archive: bytes):
    mirror.put(archive[: len(archive) // 2])
    with pytest.raises(ZooError) as info:
        fetch()
    assert ARCHIVE in str(info.value) and "not a readable tar archive" in str(info.value)
    assert_nothing_cached(cache)


def test_a_connection_dropped_mid_download(mirror: Mirror, cache: Path, archive: bytes):
    mirror.put(archive)
    mirror.server.cut_after = len(archive) // 3
    with pytest.raises(ZooError) as info:
        fetch()
    message = str(info.value)
    assert f"{mirror.url}/{ARCHIVE}" in message and f"of {len(archive)} bytes" in message
    assert_nothing_cached(cache)

    mirror.server.cut_after = None  # the next attempt succeeds
    assert (fetch() / "inference.pdmodel").is_file()


def test_an_archive_without_a_pdmodel(mirror: Mirror, cache: Path, tmp_path: Path):
    folder = tmp_path / "no_model"
    folder.mkdir()
    (folder / "inference_cls.yaml").write_text("Global: {}\n")
    mirror.put(pack(folder))
    with pytest.raises(ZooError, match=r"holds no \.pdmodel"):
        fetch()


def test_an_archive_escaping_its_folder_is_refused(mirror: Mirror, cache: Path, archive: bytes):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        payload = b"outside the extraction directory\n"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    mirror.put(buf.getvalue())
    with pytest.raises(ZooError, match="not a readable tar archive"):
        fetch()
    assert not list(cache.parent.parent.rglob("escaped.txt"))
    assert_nothing_cached(cache)


def test_archive_missing_on_the_mirror(mirror: Mirror, cache: Path):
    with pytest.raises(ZooError) as info:
        fetch()
    assert f"{mirror.url}/{ARCHIVE}" in str(info.value) and "not found" in str(info.value).lower()
    assert_nothing_cached(cache)


def test_unreachable_server_tells_the_user_to_pass_a_directory(cache: Path, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("TRITONGEN_ZOO_MIRROR", url)
    start = time.monotonic()
    with pytest.raises(ZooError) as info:
        fetch()
    assert time.monotonic() - start < FETCH_TIMEOUT
    message = str(info.value)
    assert f"{url}/{ARCHIVE}" in message
    assert "pass the directory instead" in message and "tritongen build /path/to/model_dir" in message
    assert_nothing_cached(cache)
    # load_model surfaces the same error (a ZooError is an IntakeError)
    with pytest.raises(IntakeError, match="pass the directory instead"):
        load_model(NAME, progress=False)


# ---------------------------------------------------------------- names and load_model


def test_unknown_zoo_name_lists_the_zoo(cache: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ZooError) as info:
        zoo.fetch("resnet51", progress=False)
    for known in ("resnet50_vd", "mobilenetv1_ssld", "ppyoloe"):
        assert known in str(info.value)
    with pytest.raises(IntakeError) as info:
        load_model("resnet51")
    assert "'resnet51' is neither a directory nor a zoo model" in str(info.value)
    assert all(name in str(info.value) for name in zoo.ZOO)


def test_mirror_replaces_only_the_fastdeploy_host(monkeypatch):
    monkeypatch.setenv("TRITONGEN_ZOO_MIRROR", "http://mirror.example/paddle/")
    assert zoo.resolve_url(zoo.ZOO[NAME]) == f"http://mirror.example/paddle/{ARCHIVE}"
    monkeypatch.delenv("TRITONGEN_ZOO_MIRROR")
    assert zoo.resolve_url(zoo.ZOO[NAME]) == zoo.FASTDEPLOY + ARCHIVE


def test_load_model_by_zoo_name_through_the_mirror(mirror: Mirror, cache: Path, archive: bytes, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so no ./resnet50_vd directory can shadow the zoo name
    mirror.put(archive)
    spec = load_model(NAME, progress=False)
    assert isinstance(spec, ModelSpec)
    assert (spec.family, spec.task, spec.name) == ("paddleclas", "classification", TOP)
    assert spec.source_dir == cache / "model" / TOP
    assert spec.model_file == spec.source_dir / "inference.pdmodel"
    assert [(t.name, t.shape) for t in spec.inputs] == [("x", (-1, 3, 224, 224))]
    assert spec.outputs[0].shape == (-1, len(COLOURS))
    assert spec.labels == list(COLOURS)
    assert load_model(NAME, name="resnet", progress=False).name == "resnet"
    assert mirror.requests == [f"/{ARCHIVE}"]
