"""Typed task results, the same whether they come from a server or in-process."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Classification:
    label_ids: list[int]
    scores: list[float]
    labels: list[str] | None = None

    def rows(self) -> list[tuple[int, float, str]]:
        names = self.labels or [""] * len(self.label_ids)
        return list(zip(self.label_ids, self.scores, names))

    def summary(self) -> dict:
        return {"label_ids": self.label_ids, "scores": self.scores, "labels": self.labels}

    def table(self, title: str):
        return _table(title, ("rank", "class id", "score", "label"),
                      [(str(r), str(c), f"{s:.4f}", n) for r, (c, s, n) in enumerate(self.rows(), 1)])

    def render(self, image: np.ndarray) -> np.ndarray:
        """The image with the top-1 class written on it."""
        import cv2

        out = np.ascontiguousarray(image).copy()
        cid, score, name = self.rows()[0]
        cv2.putText(out, f"{name or cid} {score:.2f}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 255), 2, cv2.LINE_AA)
        return out

    @classmethod
    def batch_from_outputs(cls, outputs: dict[str, np.ndarray]) -> list["Classification"]:
        """Split ensemble outputs LABEL_IDS/SCORES[/LABELS] [N, K] into one result per image."""
        results = []
        for i in range(len(outputs["LABEL_IDS"])):
            labels = None
            if "LABELS" in outputs:
                labels = _label_texts(outputs["LABELS"][i])
            results.append(cls([int(v) for v in outputs["LABEL_IDS"][i]], [float(v) for v in outputs["SCORES"][i]], labels))
        return results


def _seg_palette() -> np.ndarray:
    """PaddleSeg's ``utils.visualize.get_color_map_list(256)`` as a [256, 3] BGR table."""
    rgb = np.zeros((257, 3), np.uint8)
    for i in range(257):
        lab, j = i, 0
        while lab:
            for c in range(3):
                rgb[i, c] |= ((lab >> c) & 1) << (7 - j)
            j += 1
            lab >>= 3
    return np.ascontiguousarray(rgb[1:, ::-1])  # PaddleSeg drops entry 0; visualize stacks (c3, c2, c1)


@dataclass
class Segmentation:
    """One image's label map [height, width] (int32 class ids) at the image's own size."""

    label_map: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        return int(self.label_map.shape[0]), int(self.label_map.shape[1])

    def class_ids(self) -> list[int]:
        return [int(v) for v in np.unique(self.label_map)]

    def summary(self) -> dict:
        ids, counts = np.unique(self.label_map, return_counts=True)
        return {"height": self.size[0], "width": self.size[1],
                "class_pixels": {str(int(i)): int(c) for i, c in zip(ids, counts)}}

    def table(self, title: str):
        total = self.label_map.size
        ids, counts = np.unique(self.label_map, return_counts=True)
        return _table(f"{title} ({self.size[1]}x{self.size[0]})", ("class id", "pixels", "share"),
                      [(str(int(i)), str(int(c)), f"{c / total:.1%}") for i, c in zip(ids, counts)])

    def render(self, image: np.ndarray) -> np.ndarray:
        return self.overlay(image)

    def colorize(self) -> np.ndarray:
        """BGR uint8 [H, W, 3] pseudo-colour image with PaddleSeg's palette (ids beyond 255 wrap)."""
        return _seg_palette()[self.label_map.astype(np.int64) % 256]

    def overlay(self, image, weight: float = 0.6) -> np.ndarray:
        """``image`` (BGR array, encoded bytes or a path) blended with the colour map like
        PaddleSeg's ``visualize``: ``image * weight + colours * (1 - weight)``."""
        import cv2

        if not isinstance(image, np.ndarray):
            from .processing.image import decode_image

            data = image if isinstance(image, (bytes, bytearray)) else open(image, "rb").read()
            image = decode_image(bytes(data))
        if image.shape[:2] != self.label_map.shape:
            raise ValueError(f"the image is {image.shape[1]}x{image.shape[0]}, the label map "
                             f"{self.label_map.shape[1]}x{self.label_map.shape[0]}")
        return cv2.addWeighted(image, weight, self.colorize(), 1 - weight, 0)

    @classmethod
    def batch_from_outputs(cls, outputs: dict[str, np.ndarray]) -> list["Segmentation"]:
        """Split LABEL_MAP [N, H, W] (padded to the largest image) and IMAGE_SIZE [N, 2] into
        one result per image, each cropped to its own size."""
        maps = np.asarray(outputs["LABEL_MAP"])
        sizes = np.asarray(outputs["IMAGE_SIZE"]).reshape(len(maps), 2)
        return [cls(np.ascontiguousarray(maps[i, : int(h), : int(w)], dtype=np.int32)) for i, (h, w) in enumerate(sizes)]


@dataclass
class Detection:
    """One image's detections, best first: boxes [x1, y1, x2, y2] in original-image pixels."""

    boxes: list[list[float]]
    scores: list[float]
    label_ids: list[int]
    labels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def summary(self) -> dict:
        return {"boxes": self.boxes, "scores": self.scores, "label_ids": self.label_ids, "labels": self.labels}

    def table(self, title: str):
        names = self.labels or [""] * len(self)
        return _table(f"{title}: {len(self)} detections", ("label", "score", "x1", "y1", "x2", "y2"),
                      [(n or str(c), f"{s:.3f}", *(f"{v:.1f}" for v in b))
                       for b, s, c, n in zip(self.boxes, self.scores, self.label_ids, names)])

    def render(self, image: np.ndarray) -> np.ndarray:
        return self.draw(image)

    @classmethod
    def batch_from_outputs(cls, outputs: dict[str, np.ndarray]) -> list["Detection"]:
        """Split NUM_DETECTIONS [N, 1], BOXES [N, K, 4], SCORES / LABEL_IDS (/ LABELS) [N, K]
        into one result per image, keeping each image's first NUM_DETECTIONS rows."""
        nums = np.asarray(outputs["NUM_DETECTIONS"]).reshape(-1)
        results = []
        for i, n in enumerate(nums):
            n = int(n)
            labels = None
            if "LABELS" in outputs:
                labels = _label_texts(outputs["LABELS"][i][:n])
            results.append(cls(
                [[float(v) for v in box] for box in np.asarray(outputs["BOXES"][i][:n])],
                [float(v) for v in outputs["SCORES"][i][:n]],
                [int(v) for v in outputs["LABEL_IDS"][i][:n]],
                labels,
            ))
        return results

    def draw(self, image: np.ndarray, thickness: int = 2) -> np.ndarray:
        """A copy of ``image`` (BGR uint8) with each box and its label/score drawn."""
        import cv2

        out = np.ascontiguousarray(image).copy()
        for j, (box, score, cid) in enumerate(zip(self.boxes, self.scores, self.label_ids)):
            colour = tuple(int(c) for c in ((cid * 67) % 256, (cid * 151 + 80) % 256, (cid * 199 + 160) % 256))
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
            name = self.labels[j] if self.labels else str(cid)
            cv2.putText(out, f"{name} {score:.2f}", (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1,
                        cv2.LINE_AA)
        return out


def _label_texts(values) -> list[str]:
    """TYPE_STRING outputs arrive as bytes objects."""
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column in ("label", "image") else "right")
    for row in rows:
        table.add_row(*row)
    return table
