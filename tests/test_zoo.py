"""The zoo download path against a real HTTP server on 127.0.0.1.

Real PaddleClas/PaddleSeg-style exports are packed the way FastDeploy packs its archives (one
top-level folder, ``model.pdmodel``/``model.pdiparams`` + the deploy yaml) by
:func:`tritongen.testing.zoo_mirror.write_archive` and served by
:class:`~tritongen.testing.zoo_mirror.ZooMirror` under a zoo entry's archive name;
``TRITONGEN_ZOO_MIRROR`` points the zoo at the server and ``TRITONGEN_CACHE`` keeps the cache
inside the test's tmp_path.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import socket
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tritongen.demo import COLOURS, make_classifier
from tritongen.errors import IntakeError, ZooError
from tritongen.intake import ModelSpec, load_model, zoo
from tritongen.testing.demo_exports import make_segmenter
from tritongen.testing.zoo_mirror import Fault, ZooMirror, archive_stem, populate, write_archive, zoo_path

pytestmark = pytest.mark.timeout(30)  # hard cap; every test here takes well under 5 s

NAME = "resnet50_vd"
ARCHIVE = zoo.ZOO[NAME].archive_name  # ResNet50_vd_infer.tgz
TOP = "ResNet50_vd_infer"  # FastDeploy archives hold one folder named after the model
FETCH_TIMEOUT = 5.0
CLS_FILES = ["colour_labels.txt", "inference_cls.yaml", "model.pdiparams", "model.pdmodel"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tgz(members: dict[str, bytes]) -> bytes:
    """A hand-made (malformed) archive: write_archive refuses exports without a model."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def members(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return sorted(m.name + ("/" if m.isdir() else "") for m in tar.getmembers())


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> tuple[Path, Path]:
    """Two real PaddleClas exports (inference.* names) that differ only in their weights (seed)."""
    root = tmp_path_factory.mktemp("zoo-exports")
    return make_classifier(root / "a" / TOP, seed=1), make_classifier(root / "b" / TOP, seed=2)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> Path:
    """A real PaddleSeg export (model.* names, deploy.yaml naming them)."""
    return make_segmenter(tmp_path_factory.mktemp("zoo-seg") / "seg", with_argmax=False)


@pytest.fixture(scope="module")
def archive(exports, tmp_path_factory) -> bytes:
    return write_archive(exports[0], tmp_path_factory.mktemp("zoo-a") / ARCHIVE).read_bytes()


@pytest.fixture(scope="module")
def other_archive(exports, tmp_path_factory) -> bytes:
    return write_archive(exports[1], tmp_path_factory.mktemp("zoo-b") / ARCHIVE).read_bytes()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("TRITONGEN_CACHE", str(root))
    return root / "zoo" / NAME


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch, cache) -> ZooMirror:
    with ZooMirror(tmp_path / "mirror") as m:
        monkeypatch.setenv("TRITONGEN_ZOO_MIRROR", m.url)
        yield m


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


def test_first_fetch_downloads_extracts_and_records_the_sha256(mirror: ZooMirror, cache: Path, archive: bytes):
    mirror.put(ARCHIVE, archive)
    directory = fetch()
    assert mirror.requests == [f"/{ARCHIVE}"]
    assert directory == cache / "model" / TOP
    assert sorted(p.name for p in directory.iterdir()) == CLS_FILES
    assert (cache / "archive.sha256").read_text().strip() == sha256(archive)
    assert not list(cache.glob(".download-*"))


def test_second_fetch_uses_the_cache_even_when_the_mirror_is_gone(mirror: ZooMirror, cache: Path, archive: bytes):
    served = mirror.put(ARCHIVE, archive)
    first = fetch()
    mirror.stop()
    served.unlink()
    assert fetch() == first
    assert fetch(sha256=sha256(archive)) == first
    assert mirror.requests == [f"/{ARCHIVE}"]  # one download only
    assert load_model(NAME, progress=False).source_dir == first


def test_sha256_mismatch_names_expected_and_actual(mirror: ZooMirror, cache: Path, archive: bytes):
    mirror.put(ARCHIVE, archive)
    wrong = "0" * 64
    with pytest.raises(ZooError) as info:
        fetch(sha256=wrong)
    assert wrong in str(info.value) and sha256(archive) in str(info.value)
    assert_nothing_cached(cache)


def test_sha256_match_works_in_any_case(mirror: ZooMirror, cache: Path, archive: bytes):
    mirror.put(ARCHIVE, archive)
    directory = fetch(sha256=sha256(archive).upper())
    assert (directory / "model.pdmodel").is_file()
    assert (cache / "archive.sha256").read_text().strip() == sha256(archive)


def test_sha256_mismatch_with_the_cached_archive(mirror: ZooMirror, cache: Path, archive: bytes):
    mirror.put(ARCHIVE, archive)
    fetch()
    wrong = "f" * 64
    with pytest.raises(ZooError) as info:
        fetch(sha256=wrong)
    message = str(info.value)
    assert "cached archive" in message and wrong in message and sha256(archive) in message and str(cache) in message
    assert mirror.requests == [f"/{ARCHIVE}"]


def test_redownload_must_match_the_digest_recorded_on_first_use(
    mirror: ZooMirror, cache: Path, archive: bytes, other_archive: bytes
):
    assert sha256(archive) != sha256(other_archive)  # the exports differ in their weights
    mirror.put(ARCHIVE, archive)
    fetch()
    shutil.rmtree(cache / "model")  # the extracted copy is gone; the recorded digest stays
    mirror.put(ARCHIVE, other_archive)  # ...and the mirror now serves a different file
    with pytest.raises(ZooError) as info:
        fetch()
    message = str(info.value)
    assert sha256(archive) in message and sha256(other_archive) in message and "first download" in message
    assert not (cache / "model").exists()
    assert (cache / "archive.sha256").read_text().strip() == sha256(archive)

    mirror.put(ARCHIVE, archive)  # the original file again: accepted
    assert (fetch() / "model.pdmodel").is_file()


# ---------------------------------------------------------------- bad downloads


def test_a_file_that_is_not_a_tar_archive(mirror: ZooMirror, cache: Path):
    mirror.put(ARCHIVE, b"<html><body>Access denied by the proxy</body></html>\n")
    with pytest.raises(ZooError) as info:
        fetch()
    assert ARCHIVE in str(info.value) and "not a readable tar archive" in str(info.value)
    assert_nothing_cached(cache)


def test_a_truncated_archive(mirror: ZooMirror, cache: Path, archive: bytes):
    mirror.put(ARCHIVE, archive)
    mirror.fault = Fault(truncate_to=len(archive) // 2)  # a complete response holding half the file
    with pytest.raises(ZooError) as info:
        fetch()
    assert ARCHIVE in str(info.value) and "not a readable tar archive" in str(info.value)
    assert_nothing_cached(cache)


def test_a_connection_dropped_mid_download(mirror: ZooMirror, cache: Path, archive: bytes):
    mirror.put(ARCHIVE, archive)
    mirror.fault = Fault(cut_after=len(archive) // 3)
    with pytest.raises(ZooError) as info:
        fetch()
    message = str(info.value)
    assert f"{mirror.url}{ARCHIVE}" in message and f"of {len(archive)} bytes" in message
    assert_nothing_cached(cache)

    mirror.fault = Fault()  # the next attempt succeeds
    assert (fetch() / "model.pdmodel").is_file()


def test_an_archive_without_a_pdmodel(mirror: ZooMirror, cache: Path):
    mirror.put(ARCHIVE, tgz({f"{TOP}/inference_cls.yaml": b"Global: {}\n"}))
    with pytest.raises(ZooError, match=r"holds no \.pdmodel"):
        fetch()


def test_an_archive_escaping_its_folder_is_refused(mirror: ZooMirror, cache: Path):
    mirror.put(ARCHIVE, tgz({"../../escaped.txt": b"outside the extraction directory\n"}))
    with pytest.raises(ZooError, match="not a readable tar archive"):
        fetch()
    assert not list(cache.parent.parent.rglob("escaped.txt"))
    assert_nothing_cached(cache)


def test_an_http_error_from_the_mirror(mirror: ZooMirror, cache: Path, archive: bytes):
    mirror.put(ARCHIVE, archive)
    mirror.fault = Fault(status=503)
    with pytest.raises(ZooError) as info:
        fetch()
    assert f"{mirror.url}{ARCHIVE}" in str(info.value) and "Service Unavailable" in str(info.value)
    assert_nothing_cached(cache)


def test_archive_missing_on_the_mirror(mirror: ZooMirror, cache: Path):
    with pytest.raises(ZooError) as info:
        fetch()
    assert f"{mirror.url}{ARCHIVE}" in str(info.value) and "not found" in str(info.value).lower()
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


def test_load_model_by_zoo_name_through_the_mirror(mirror: ZooMirror, cache: Path, archive: bytes, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so no ./resnet50_vd directory can shadow the zoo name
    mirror.put(ARCHIVE, archive)
    spec = load_model(NAME, progress=False)
    assert isinstance(spec, ModelSpec)
    assert (spec.family, spec.task, spec.name) == ("paddleclas", "classification", TOP)
    assert spec.source_dir == cache / "model" / TOP
    assert spec.model_file == spec.source_dir / "model.pdmodel"
    assert [(t.name, t.shape) for t in spec.inputs] == [("x", (-1, 3, 224, 224))]
    assert spec.outputs[0].shape == (-1, len(COLOURS))
    assert spec.labels == list(COLOURS)
    assert load_model(NAME, name="resnet", progress=False).name == "resnet"
    assert mirror.requests == [f"/{ARCHIVE}"]


# ---------------------------------------------------------------- the mirror's archives


def extract(archive: Path, dest: Path) -> Path:
    """The archive's single top-level folder, extracted under ``dest``."""
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    (top,) = dest.iterdir()
    return top


@pytest.fixture(scope="module")
def inference_named_segmenter(segmenter: Path, tmp_path_factory) -> Path:
    """The segmenter renamed inference.*, its deploy.yaml naming those: write_archive must rename it back."""
    root = tmp_path_factory.mktemp("zoo-seg-inference")
    return extract(write_archive(segmenter, root / "seg.tar", model_stem="inference"), root / "out")


def test_write_archive_packs_an_export_like_fastdeploy(exports, tmp_path: Path):
    archive = write_archive(exports[0], tmp_path / ARCHIVE)
    assert members(archive) == [f"{TOP}/"] + [f"{TOP}/{name}" for name in CLS_FILES]
    with tarfile.open(archive) as tar:
        for packed, original in [("model.pdmodel", "inference.pdmodel"), ("model.pdiparams", "inference.pdiparams"),
                                 ("inference_cls.yaml", "inference_cls.yaml"), ("colour_labels.txt", "colour_labels.txt")]:
            assert tar.extractfile(f"{TOP}/{packed}").read() == (exports[0] / original).read_bytes(), packed
    assert list(tmp_path.iterdir()) == [archive], "the temporary file was not renamed into place"
    # Reproducible: the same export gives the same bytes (so the same sha256), wherever it is written.
    assert write_archive(exports[0], tmp_path / "again" / ARCHIVE).read_bytes() == archive.read_bytes()
    assert write_archive(exports[1], archive).read_bytes() != (tmp_path / "again" / ARCHIVE).read_bytes()


@pytest.mark.parametrize("file_name, gzipped", [("m.tar", False), ("m.tgz", True), ("m.tar.gz", True)])
def test_write_archive_compresses_by_suffix(exports, tmp_path: Path, file_name: str, gzipped: bool):
    archive = write_archive(exports[0], tmp_path / file_name)
    assert (archive.read_bytes()[:2] == b"\x1f\x8b") == gzipped
    assert members(archive)[0] == "m/"  # the default folder is the archive's stem
    assert members(write_archive(exports[0], tmp_path / "x" / file_name, folder="Other"))[0] == "Other/"


def test_write_archive_refuses_other_suffixes_and_exports_without_a_model(exports, tmp_path: Path):
    with pytest.raises(ValueError, match="not a .tar, .tgz or .tar.gz"):
        write_archive(exports[0], tmp_path / "m.zip")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IntakeError, match="no inference.pdmodel / model.pdmodel"):
        write_archive(empty, tmp_path / "m.tar")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_write_archive_renames_the_files_a_paddleseg_deploy_yaml_names(segmenter: Path, inference_named_segmenter: Path, tmp_path: Path):
    original = yaml.safe_load((segmenter / "deploy.yaml").read_text())["Deploy"]
    assert (original["model"], original["params"]) == ("model.pdmodel", "model.pdiparams")
    folder = inference_named_segmenter
    assert sorted(p.name for p in folder.iterdir()) == ["deploy.yaml", "inference.pdiparams", "inference.pdmodel"]
    renamed = yaml.safe_load((folder / "deploy.yaml").read_text())["Deploy"]
    assert renamed == {**original, "model": "inference.pdmodel", "params": "inference.pdiparams"}
    spec = load_model(folder)
    assert (spec.family, spec.model_file, spec.params_file) == ("paddleseg", folder / "inference.pdmodel", folder / "inference.pdiparams")
    # Nothing to rename: the deploy.yaml travels byte for byte.
    same = extract(write_archive(segmenter, tmp_path / "seg.tgz"), tmp_path / "out")
    assert (same / "deploy.yaml").read_bytes() == (segmenter / "deploy.yaml").read_bytes()


def test_zoo_path_and_populate(exports, tmp_path: Path):
    assert zoo_path("ppyoloe_qat") == "ppyoloe_crn_l_300e_coco_qat.tar"
    assert archive_stem("ppyoloe_crn_l_300e_coco_qat.tar") == "ppyoloe_crn_l_300e_coco_qat"
    with pytest.raises(ValueError, match="unknown zoo model 'resnet51'"):
        zoo_path("resnet51")
    written = populate(tmp_path, {NAME: exports[0], "mobilenetv1_ssld_ptq": exports[1]})
    assert written == {NAME: tmp_path / ARCHIVE, "mobilenetv1_ssld_ptq": tmp_path / "mobilenetv1_ssld_ptq.tar"}
    assert members(written["mobilenetv1_ssld_ptq"])[0] == "mobilenetv1_ssld_ptq/"


@pytest.mark.parametrize("name, family, export", [
    ("resnet50_vd", "paddleclas", "classifier"),  # .tgz
    ("resnet50_vd_ptq", "paddleclas", "classifier"),  # .tar
    ("pp_liteseg", "paddleseg", "inference_named_segmenter"),  # .tgz
    ("pp_liteseg_qat", "paddleseg", "inference_named_segmenter"),  # .tar
])
def test_load_model_fetches_an_archive_written_for_the_mirror(
    name: str, family: str, export: str, mirror: ZooMirror, exports, tmp_path: Path, monkeypatch, request
):
    monkeypatch.chdir(tmp_path)
    source = exports[0] if export == "classifier" else request.getfixturevalue(export)
    archive = populate(mirror.root, {name: source})[name]
    assert archive.name.endswith(".tgz" if zoo.ZOO[name].archive_name.endswith(".tgz") else ".tar")
    spec = load_model(name, progress=False)
    top = archive_stem(zoo.ZOO[name].archive_name)
    assert (spec.family, spec.name) == (family, top)
    assert spec.source_dir == zoo.cache_dir() / name / "model" / top
    assert (spec.model_file, spec.params_file) == (spec.source_dir / "model.pdmodel", spec.source_dir / "model.pdiparams")
    assert mirror.requests == [f"/{zoo_path(name)}"]
    assert (zoo.cache_dir() / name / "archive.sha256").read_text().strip() == sha256(archive.read_bytes())


def test_a_mirror_without_a_root_serves_a_temporary_directory():
    with ZooMirror() as mirror:
        root = mirror.root
        assert mirror.url.startswith("http://127.0.0.1:") and mirror.url.endswith("/")
        assert mirror.environ() == {"TRITONGEN_ZOO_MIRROR": mirror.url}
        mirror.put("a/b.txt", b"hello")
        with urllib.request.urlopen(mirror.url + "a/b.txt", timeout=FETCH_TIMEOUT) as response:
            assert response.read() == b"hello"
        assert mirror.requests == ["/a/b.txt"]
    assert not mirror.running and not root.exists()
    with pytest.raises(RuntimeError, match="not running"):
        mirror.url
