"""``tritongen bench tables``: FastDeploy's published tables parsed, our models matched to theirs, and tiny
models measured into the CSVs and the chart (latency is not asserted: 2 shared cores)."""
from __future__ import annotations

import zlib  # noqa: F401  (before paddle)

import csv
from pathlib import Path

import cv2
import pytest

from tritongen.bench import reference, tables
from tritongen.bench.reference import (COLUMNS, Backend, Family, Hardware, Latency, ModelMatch, fastdeploy_rows,
                                       match_model, normalise, register_model, source_name)
from tritongen.bench.runtime import BenchReport, BenchRow
from tritongen.demo import make_classifier
from tritongen.errors import TritongenError
from tritongen.measure.cpu import CpuInfo

try:
    from tritongen.testing.demo_exports import make_detector, make_segmenter
except ImportError:  # before the move to tritongen.testing
    from tritongen.demo_exports import make_detector, make_segmenter

from .conftest import REPO_ROOT

SHARED_CSV = REPO_ROOT.parent / "shared" / "reference" / "benchmarks.csv"
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "horse.png",
          "camera.png", "hubble_deep_field.jpg", "ihc.png", "coins.png"]
SMALL_CLS_OPS = [
    {"ResizeImage": {"resize_short": 72}},
    {"CropImage": {"size": 64}},
    {"NormalizeImage": {"scale": 0.00392157, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "order": ""}},
    {"ToCHWImage": None},
]


# ------------------------------------------------------------------------------ FastDeploy's rows


def test_fastdeploy_rows_are_parsed_typed():
    rows = fastdeploy_rows()
    assert len(rows) == 48
    row = next(r for r in rows if r.model == "ResNet50_vd" and r.backend is Backend.PADDLE_INFERENCE
               and r.latency is Latency.RUNTIME)
    assert (row.family, row.hardware, row.fp32_ms, row.int8_ms, row.max_speedup) == (Family.CLS, Hardware.CPU, 76.21, 24.01, 3.17)
    assert (row.fp32_acc, row.int8_acc, row.metric) == (79.12, 78.55, "Top1")
    assert row.int8_fp16_ms is None and row.int8_fp16_pm_ms is None  # "None" in the file
    trt = next(r for r in rows if r.model == "ResNet50_vd" and r.backend is Backend.PADDLE_TENSORRT)
    assert trt.int8_ms is None and trt.int8_fp16_ms == 0.87 and trt.hardware is Hardware.GPU
    assert {r.family for r in rows} == set(Family) and {r.latency for r in rows} == set(Latency)


def test_package_data_is_fastdeploys_file():
    text = reference.data_text()  # importlib.resources: what an installed wheel reads
    assert text.splitlines()[0].split(",") == list(COLUMNS)
    if SHARED_CSV.is_file():
        assert text == SHARED_CSV.read_text(encoding="utf-8")
    with pytest.raises(TritongenError, match="expected columns"):
        reference.parse_rows("model,fp32_ms\nx,1\n")


# ------------------------------------------------------------------------------ our models -> theirs


@pytest.mark.parametrize("name, fastdeploy", [
    ("resnet50_vd", "ResNet50_vd"), ("ResNet50_vd_infer", "ResNet50_vd"),
    ("mobilenetv1", "MobileNetV1_ssld"), ("MobileNetV1", "MobileNetV1_ssld"), ("mobilenetv1_ssld", "MobileNetV1_ssld"),
    ("ppyoloe_s", "ppyoloe_crn_l_300e_coco"), ("ppyoloe_s_nonms", "ppyoloe_crn_l_300e_coco"),
    ("ppyoloe", "ppyoloe_crn_l_300e_coco"),
    ("pp_liteseg_t_raw", "PP-LiteSeg-T(STDC1)-cityscapes"), ("PP-LiteSeg-T", "PP-LiteSeg-T(STDC1)-cityscapes"),
    ("bisenetv2", None),
])
def test_models_match_fastdeploys_rows(name, fastdeploy):
    match = match_model(name)
    assert match is not None and match.fastdeploy == fastdeploy
    assert all(row.model == fastdeploy for row in match.rows()) and bool(match.rows()) == (fastdeploy is not None)


def test_match_notes_and_names(tmp_path):
    assert "PP-YOLOE-l" in match_model("ppyoloe_s").note and "PP-YOLOE-s" in match_model("ppyoloe_s").note
    assert match_model("ppyoloe").note == ""  # the zoo's ppyoloe is FastDeploy's own -l export
    assert match_model("tiny_clas") is None
    assert normalise("MobileNet_V1-ssld") == normalise("mobilenetv1_ssld")
    (tmp_path / "ResNet50_vd_infer").mkdir()
    assert source_name(tmp_path / "ResNet50_vd_infer") == "ResNet50_vd_infer"
    assert source_name("mobilenetv1_ssld") == "mobilenetv1_ssld"  # a zoo name


def test_registry_rejects_duplicates_and_unknown_rows(monkeypatch):
    monkeypatch.setattr(reference, "MODELS", dict(reference.MODELS))
    with pytest.raises(ValueError, match="registered twice"):
        @register_model
        class Again(ModelMatch):  # normalises to mobilenetv1
            names = ("MobileNet_V1",)
            fastdeploy = "MobileNetV1_ssld"
    with pytest.raises(ValueError, match="registered twice"):
        @register_model
        class Twice(ModelMatch):
            names = ("new_net", "New-Net")
            fastdeploy = None
    with pytest.raises(ValueError, match="no model 'NoSuchNet'"):
        @register_model
        class Unknown(ModelMatch):
            names = ("other_net",)
            fastdeploy = "NoSuchNet"
    assert match_model("new_net") is None and match_model("other_net") is None


# ------------------------------------------------------------------------------ matching without measuring


def _fake_bench(name: str, family: str = "paddleclas") -> BenchReport:
    report = BenchReport(CpuInfo("test CPU", frozenset({"avx2"})))
    for backend in ("ONNX Runtime", "Paddle Inference"):
        for latency in ("runtime", "end2end"):
            report.rows.append(BenchRow(name, family, backend, latency, 10.0, 8.0, 0.99, "top-1 agreement", "ptq (hist)"))
    report.notes.append("CPU: test CPU (avx2) — what it means")
    return report


def test_as_name_and_skips(monkeypatch, tmp_path):
    def measure(source, calib_dir, runs, warmup, step):
        if Path(source).name == "crashes":
            from onnxruntime.capi.onnxruntime_pybind11_state import Fail

            raise Fail("[ONNXRuntimeError] : 1 : FAIL : Load model failed\nmore detail")
        if Path(source).name == "bug":
            return {}["missing"]
        return _fake_bench(Path(source).name)

    monkeypatch.setattr(tables, "_measure", measure)
    for name in ("tiny", "crashes", "bug"):
        (tmp_path / name).mkdir()
    report = tables.run_tables([tmp_path / "tiny"], tmp_path, as_name="resnet50_vd")
    (model,) = report.models
    assert model.name == "resnet50_vd" and model.match.fastdeploy == "ResNet50_vd" and model.rows[0].model == "tiny"
    assert not any("CPU:" in note for note in model.notes)  # the CPU is said once, by the report
    assert {line.theirs.model for line in report.side_by_side()} == {"ResNet50_vd"}

    report = tables.run_tables([tmp_path / "crashes", tmp_path / "bug", tmp_path / "tiny"], tmp_path)
    assert [m.name for m in report.models] == ["tiny"] and report.models[0].match is None
    crashed, bug = report.skipped
    assert crashed.reason == "Fail: [ONNXRuntimeError] : 1 : FAIL : Load model failed"
    assert bug.reason.startswith("internal error") and "KeyError" in bug.reason and "test_bench_tables.py" in bug.reason
    assert (report.warning is None) == report.cpu.vnni

    with pytest.raises(TritongenError, match="--as names one source"):
        tables.run_tables([tmp_path / "tiny", tmp_path / "bug"], tmp_path, as_name="resnet50_vd")
    with pytest.raises(TritongenError, match="unknown model.*resnet50_vd"):
        tables.run_tables([tmp_path / "tiny"], tmp_path, as_name="no_such_net")
    with pytest.raises(TritongenError, match="--calib-dir"):
        tables.run_tables([tmp_path / "tiny"], tmp_path / "nowhere")


# ------------------------------------------------------------------------------ tiny models, measured


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """tables_command on a tiny classifier, segmenter and detector named like the real models, plus a broken source."""
    import skimage.data

    root = tmp_path_factory.mktemp("tables")
    calib = root / "calib"
    calib.mkdir()
    for i, name in enumerate(PHOTOS):
        img = cv2.imread(str(Path(skimage.data.__file__).parent / name))
        assert img is not None, name
        assert cv2.imwrite(str(calib / f"photo{i}.png"), cv2.resize(img, (160, 120), interpolation=cv2.INTER_AREA))
    clas = make_classifier(root / "mobilenetv1", transform_ops=SMALL_CLS_OPS, input_hw=(64, 64))
    seg = make_segmenter(root / "pp_liteseg_t", with_argmax=False, input_hw=(64, 96),
                         deploy_overrides={"transforms": [{"type": "Resize", "target_size": [96, 64]}, {"type": "Normalize"}]})
    det = make_detector(root / "ppyoloe_s", with_nms=True, input_hw=(128, 128))
    broken = root / "broken"
    broken.mkdir()
    steps: list[str] = []
    report = tables.tables_command([clas, seg, det, broken], calib, root / "out", runs=3, warmup=1, step=steps.append)
    return report, root / "out", steps


def test_failing_source_is_skipped_the_others_measured(measured):
    report, _, steps = measured
    assert [m.name for m in report.models] == ["mobilenetv1", "pp_liteseg_t", "ppyoloe_s"], report.skipped
    (skipped,) = report.skipped
    assert skipped.name == "broken" and "no deploy config" in skipped.reason and "\n" not in skipped.reason
    assert any(s.startswith("broken: skipped: ") for s in steps)
    assert any(line.startswith("skipped: broken") for line in report.messages())
    assert all(r.hardware is Hardware.CPU and r.fp32_ms > 0 and r.int8_ms > 0 for r in report.rows)


def test_csv_has_fastdeploys_columns(measured):
    report, out, _ = measured
    assert [p.name for p in report.files] == ["bench_tables.csv", "bench_tables_vs_fastdeploy.csv", "bench_tables.png"]
    with open(out / "bench_tables.csv", newline="", encoding="utf-8") as f:
        header = f.readline().strip().split(",")
        f.seek(0)
        rows = list(csv.DictReader(f))
    assert header == reference.data_text().splitlines()[0].split(",") == list(COLUMNS)
    if SHARED_CSV.is_file():
        assert header == SHARED_CSV.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert {(r["family"], r["model"]) for r in rows} == {("cls", "mobilenetv1"), ("seg", "pp_liteseg_t"), ("det", "ppyoloe_s")}
    mobilenet = [r for r in rows if r["model"] == "mobilenetv1"]
    assert {(r["backend"], r["latency"]) for r in mobilenet} == {(b, l) for b in ("ONNX Runtime", "Paddle Inference")
                                                                 for l in ("runtime", "end2end")}
    for r in mobilenet:
        assert r["hardware"] == "CPU" and r["metric"] == "top-1 agreement" and 0.0 <= float(r["int8_acc"]) <= 1.0
        ours = next(t for t in report.rows if (t.model, t.backend, t.latency) == (r["model"], r["backend"], r["latency"]))
        assert r["max_speedup"] == f"{ours.fp32_ms / ours.int8_ms:.2f}" and r["int8_acc"] == f"{ours.fidelity:.4f}"
        assert r["int8_fp16_ms"] == "None" and r["fp32_acc"] == "None"


def test_vs_fastdeploy_file_pairs_rows(measured):
    _, out, _ = measured
    with open(out / "bench_tables_vs_fastdeploy.csv", newline="", encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    assert list(lines[0]) == list(tables.VS_COLUMNS)
    keyed = {(l["model"], l["backend"], l["latency"]): l for l in lines}
    assert len(keyed) == len(lines)
    ort = keyed[("mobilenetv1", "ONNX Runtime", "runtime")]
    assert ort["fastdeploy_model"] == "MobileNetV1_ssld" and float(ort["fp32_ms"]) > 0
    assert (ort["fastdeploy_fp32_ms"], ort["fastdeploy_int8_ms"], ort["fastdeploy_max_speedup"]) == ("30.53", "9.59", "3.18")
    # PP-LiteSeg: FastDeploy published Paddle Inference only; ours has ONNX Runtime too
    assert keyed[("pp_liteseg_t", "Paddle Inference", "end2end")]["fastdeploy_fp32_ms"] == "4726.65"
    assert keyed[("pp_liteseg_t", "ONNX Runtime", "runtime")]["fastdeploy_fp32_ms"] == "None"
    det = keyed[("ppyoloe_s", "ONNX Runtime", "runtime")]
    assert det["fastdeploy_model"] == "ppyoloe_crn_l_300e_coco" and "PP-YOLOE-l" in det["note"]
    assert det["fastdeploy_max_speedup"] == "2.35" and det["metric"] == "detection agreement"
    assert not any(l["backend"] in ("TensorRT", "Paddle-TensorRT") for l in lines)  # GPU rows are not paired


def test_chart_is_a_png(measured):
    report, out, _ = measured
    png = out / "bench_tables.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 600


def test_console_table_renders(measured):
    from rich.console import Console

    report, _, _ = measured
    console = Console(width=250, record=True)
    console.print(report.rich_table())
    text = console.export_text()
    assert "MobileNetV1_ssld" in text and "PP-LiteSeg-T(STDC1)-cityscapes" in text and "30.53" in text
