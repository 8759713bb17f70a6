#!/usr/bin/env python3
"""Classify images with a tritongen ensemble served by Triton (gRPC or HTTP).

    python clients/classify.py MODEL IMAGE [IMAGE ...] [-i grpc|http] [--url HOST:PORT]

All images go in one batched request; prints the top-k per image.
"""
from __future__ import annotations

import argparse
import sys

from tritongen.client import ClassificationClient
from tritongen.errors import TritongenError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="ensemble name")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--protocol", "-i", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--url", default=None, help="Triton endpoint HOST:PORT (default: the protocol's port on 127.0.0.1)")
    args = parser.parse_args(argv)
    try:
        with ClassificationClient(args.model, url=args.url, protocol=args.protocol) as client:
            results = client.classify(args.images)
    except TritongenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path, result in zip(args.images, results):
        print(path)
        for class_id, score, label in result.rows():
            print(f"  {class_id:>5}  {score:.4f}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
