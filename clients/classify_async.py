#!/usr/bin/env python3
"""Classify many images concurrently with a tritongen ensemble (asyncio, gRPC or HTTP).

    python clients/classify_async.py MODEL IMAGE [IMAGE ...] [-i grpc|http] [--url HOST:PORT]
        [--concurrency 8] [--shared-memory system|none] [--compression gzip|none]

Each image is its own request, up to --concurrency of them in flight at once; Triton's
dynamic batcher merges them on the server. (``client.classify(many_images)`` instead sends
batches of max_batch_size images, also concurrently.) Prints the top-k per image.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time

from tritongen.client import AsyncClassificationClient
from tritongen.errors import TritongenError


async def classify_all(args) -> list:
    limit = asyncio.Semaphore(args.concurrency)
    async with AsyncClassificationClient(args.model, url=args.url, protocol=args.protocol, timeout=args.timeout,
                                         shared_memory=args.shared_memory, compression=args.compression) as client:

        async def one(path: str):
            async with limit:
                (result,) = await client.classify([path])
                return result

        return await asyncio.gather(*(one(path) for path in args.images))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="ensemble name")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--protocol", "-i", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--url", default=None, help="Triton endpoint HOST:PORT (default: the protocol's port on 127.0.0.1)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--shared-memory", choices=("none", "system"), default="none")
    parser.add_argument("--compression", choices=("none", "gzip"), default="none")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        results = asyncio.run(classify_all(args))
    except TritongenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path, result in zip(args.images, results):
        print(path)
        for class_id, score, label in result.rows():
            print(f"  {class_id:>5}  {score:.4f}  {label}")
    print(f"{len(results)} images in {time.perf_counter() - start:.2f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
