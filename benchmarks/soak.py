"""Memory over a long run: RSS of tritonserver and of each Python-backend stub every N requests.

Serves REPO with `tritongen.serve.TritonServer`, sends REQUESTS images (round-robin over
--images, one per request, --concurrency requests in flight through the async SDK) to the model
NAME, and prints a row of resident memory (MB) per process every --every requests. With --big
IMAGE, every --big-every-th request sends that image instead (e.g. a 6000x6000 JPEG): the rows
after it show whether its memory was given back.

    .venv/bin/python benchmarks/soak.py REPO NAME --images PHOTOS --requests 2000 --big big.jpg
"""
from __future__ import annotations

import zlib  # noqa: F401  (before paddle)

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path


def process_rss(server_pid: int) -> dict[str, int]:
    """Resident MB of the server and of each child (stubs by their instance name)."""
    rows: dict[str, int] = {}
    children = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == server_pid:
                        children.append(int(pid))
            except (OSError, IndexError, ValueError):
                continue
    for pid in [server_pid, *children]:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = "tritonserver" if pid == server_pid else (args[-3].decode() if len(args) > 3 else str(pid))
        rows[name] = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) // 1024
    return rows


async def soak(args: argparse.Namespace, url: str, server_pid: int) -> None:
    from tritongen.client import async_client_for

    photos = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    data = [p.read_bytes() for p in photos]
    big = args.big.read_bytes() if args.big else None
    sent = errors = 0
    header_printed = False
    started = time.monotonic()
    async with await async_client_for(args.name, url=url, timeout=300) as client:
        queue = asyncio.Semaphore(args.concurrency)

        async def one(i: int) -> None:
            nonlocal errors
            image = big if big is not None and i % args.big_every == args.big_every - 1 else data[i % len(data)]
            async with queue:
                try:
                    await client.run([image])
                except Exception as exc:  # counted and shown: a soak goes on
                    errors += 1
                    print(f"request {i}: {str(exc).splitlines()[0][:200]}", file=sys.stderr)

        while sent < args.requests:
            batch = min(args.every, args.requests - sent)
            await asyncio.gather(*(one(sent + k) for k in range(batch)))
            sent += batch
            rss = process_rss(server_pid)
            if not header_printed:
                print(f"{'requests':>9} {'errors':>6} {'s':>6}  " + "  ".join(f"{n:>14}" for n in rss) + "   (RSS, MB)")
                header_printed = True
            print(f"{sent:>9} {errors:>6} {time.monotonic() - started:>6.1f}  " + "  ".join(f"{v:>14}" for v in rss.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("name")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100, help="print a row every this many requests")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--big", type=Path, help="a large image sent every --big-every requests")
    parser.add_argument("--big-every", type=int, default=250)
    args = parser.parse_args()

    from tritongen.measure import cpu_info
    from tritongen.serve import TritonServer
    from tritongen.serve.server import free_port

    print(f"CPU: {cpu_info()}")
    with TritonServer(args.repo, free_port(), free_port(), free_port()) as server:
        asyncio.run(soak(args, server.grpc_url, server.process.pid))


if __name__ == "__main__":
    main()
