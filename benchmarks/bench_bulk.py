"""Bulk indexing: Store.write against a raw ``_bulk`` loop over the same documents.

    .venv/bin/python benchmarks/bench_bulk.py [--docs 50000] [--batch 500] [--rounds 1]

Generates article documents the size the pipeline writes (title, summary, a body of about
3 KB, topics, actors, territories with coordinates, a 384-d float32 embedding), then
indexes them twice into fresh indices created by ``Store.setup()`` (same mappings, same
settings): once with a bare loop that serialises each batch and POSTs it to ``_bulk``, and
once through ``Store.write`` (per-batch real-time look-up across backing indices, bulk
helpers, per-document results, spool on outage). Prints docs/s for both and the ratio
store / raw (the aim is >= 0.8). Never fails on timing. Indices are deleted afterwards.

The target node is ``STANCEWATCH_ES_URL`` (default ``http://127.0.0.1:9200``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from elasticsearch import Elasticsearch

from pipeline.config import Environment, StoreSettings
from pipeline.models import (
    Article,
    ClassifiedText,
    SourceInfo,
    StanceMention,
    TerritoryMention,
    TopicScore,
)
from pipeline.store import KINDS, Store

ACTORS = [
    "Jens Stoltenberg",
    "Volodymyr Zelenskyy",
    "Vladimir Putin",
    "Recep Tayyip Erdoğan",
    "Antony Blinken",
    "Nikol Pashinyan",
    "Ilham Aliyev",
    "Mark Rutte",
]
PLACES = [
    ("Crimea", 45.3, 34.4),
    ("Donetsk Oblast", 48.0, 37.8),
    ("Zaporizhzhia Oblast", 47.5, 35.6),
    ("Nagorno-Karabakh", 39.8, 46.75),
    ("Golan Heights", 33.0, 35.75),
    ("Kherson Oblast", 46.6, 32.6),
]
SENTENCES = [
    "{a} said on {d} that any settlement would have to address the future of {p}.",
    "Diplomats familiar with the talks said the draft framework leaves the status of {p} open.",
    "“We will not trade our land for a pause in the fighting,” {a} told reporters.",
    "Negotiators met for a third day behind closed doors, according to two officials.",
    "Analysts cautioned that a ceasefire along the current front line could freeze the conflict.",
    "{a} urged both sides to return to the table before winter, a spokesperson said.",
    "The proposal, first reported on {d}, would place {p} under an interim administration.",
    "Fighting continued overnight near the outskirts of the city, local authorities said.",
    "Officials in several capitals described the exchange as constructive but inconclusive.",
]


def float32_vector(rng: random.Random) -> list[float]:
    """A unit 384-d vector whose values are float32 round-trips, like a model's .tolist()."""
    values = [rng.gauss(0.0, 1.0) for _ in range(384)]
    norm = sum(v * v for v in values) ** 0.5
    packed = struct.pack("384f", *(v / norm for v in values))
    return list(struct.unpack("384f", packed))


def make_documents(count: int, seed: int = 7) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    out: list[tuple[str, dict[str, Any]]] = []
    for n in range(count):
        actors = rng.sample(ACTORS, 2)
        places = rng.sample(PLACES, 2)
        published = start + timedelta(minutes=17 * n)
        day = published.strftime("%A")

        def sentence(
            template: str, actors: list[str] = actors, places: list[Any] = places, day: str = day
        ) -> str:
            return template.format(a=rng.choice(actors), p=rng.choice(places)[0], d=day)

        body = " ".join(sentence(rng.choice(SENTENCES)) for _ in range(22))
        url = f"https://news{n % 40}.example.org/world/{published:%Y/%m/%d}/story-{n}"
        stances = [
            StanceMention(
                actor=actors[0],
                mention=actors[0].split()[-1],
                topic=rng.choice(["territorial_concessions", "peace_talks"]),
                stance=rng.choice(["support", "oppose", "neutral"]),
                score=round(rng.random(), 4),
                evidence=sentence(SENTENCES[2]),
            )
        ]
        article = Article(
            id=uuid.UUID(int=rng.getrandbits(128)).hex,
            url=url,
            canonical_url=url,
            source=SourceInfo(
                feed_id=f"feed-{n % 40}",
                name=f"Example News {n % 40}",
                domain=f"news{n % 40}.example.org",
                language="en",
                country="GB",
            ),
            title=sentence("{a} and envoys discuss the future of {p} as talks resume"),
            summary=" ".join(sentence(rng.choice(SENTENCES)) for _ in range(3)),
            body=body,
            published=published,
            fetched_at=published + timedelta(minutes=3),
            content_hash=f"{rng.getrandbits(256):064x}",
            language="en",
            classification=ClassifiedText(
                id="x",
                topics={
                    "territorial_concessions": TopicScore(label=n % 3 == 0, score=rng.random()),
                    "peace_talks": TopicScore(label=n % 2 == 0, score=rng.random()),
                },
                stances=stances,
                actors=actors,
                territories=[TerritoryMention(name=p, lat=lat, lon=lon) for p, lat, lon in places],
                embedding=float32_vector(rng),
                model="stancewatch-minilm",
                model_version="2025.1",
            ),
        )
        out.append((article.id, article.to_document()))
    return out


def raw_bulk(
    client: Elasticsearch, alias: str, docs: list[tuple[str, dict[str, Any]]], batch: int
) -> int:
    """The floor: serialise each batch and POST it, nothing else (errors only counted)."""
    errors = 0
    for start in range(0, len(docs), batch):
        lines = []
        for doc_id, doc in docs[start : start + batch]:
            lines.append(json.dumps({"index": {"_index": alias, "_id": doc_id}}))
            lines.append(json.dumps(doc, separators=(",", ":"), ensure_ascii=False))
        response = client.bulk(operations="\n".join(lines) + "\n")
        if response.get("errors"):
            errors += sum(1 for item in response["items"] if item["index"].get("error"))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=StoreSettings().bulk_size)
    parser.add_argument("--rounds", type=int, default=1, help="Alternate raw/store this often")
    args = parser.parse_args()
    url = os.environ.get("STANCEWATCH_ES_URL", "http://127.0.0.1:9200").rstrip("/")

    started = time.perf_counter()
    docs = make_documents(args.docs)
    size = sum(len(json.dumps(d, separators=(",", ":"))) for _, d in docs[:1000]) / min(
        1000, len(docs)
    )
    print(
        f"generated {len(docs):,} article documents in {time.perf_counter() - started:.1f} s; "
        f"average {size / 1024:.1f} KiB of JSON each ({size * len(docs) / 2**20:,.0f} MiB total)"
    )
    settings = StoreSettings(bulk_size=args.batch, request_timeout_s=120)
    client = Elasticsearch(url, request_timeout=120)
    prefixes: list[str] = []
    scratch = Path(tempfile.mkdtemp(prefix="swbench-"))
    raw_rates: list[float] = []
    store_rates: list[float] = []
    lookup_s: list[float] = []
    raw_cpu: list[float] = []
    store_cpu: list[float] = []
    try:
        for round_no in range(1, args.rounds + 1):
            for mode in ("raw", "store"):
                prefix = f"swbench-{uuid.uuid4().hex[:8]}"
                prefixes.append(prefix)
                env = Environment(
                    es_url=url,
                    index_prefix=prefix,
                    outbox=scratch / "outbox",
                    data_dir=scratch / prefix,
                )
                with Store(env, settings) as store:
                    store.setup()
                    t0, cpu0 = time.perf_counter(), time.process_time()
                    if mode == "raw":
                        failed = raw_bulk(client, store.alias("articles"), docs, args.batch)
                    else:
                        locate = store._locate
                        spent = [0.0]

                        def timed(
                            kind: Any, ids: list[str], locate: Any = locate, spent: Any = spent
                        ) -> Any:
                            t = time.perf_counter()
                            try:
                                return locate(kind, ids)
                            finally:
                                spent[0] += time.perf_counter() - t

                        store._locate = timed  # type: ignore[method-assign]
                        report = store.write("articles", docs)
                        lookup_s.append(spent[0])
                        failed = len(report.failed) + report.spooled
                    took = time.perf_counter() - t0
                    cpu = time.process_time() - cpu0
                    (raw_cpu if mode == "raw" else store_cpu).append(cpu)
                    store.refresh("articles")
                    indexed = store.count("articles")
                rate = len(docs) / took
                if mode == "store":
                    extra = f", id look-ups {lookup_s[-1]:.1f} s = {lookup_s[-1] / took:.0%}"
                else:
                    extra = ""
                (raw_rates if mode == "raw" else store_rates).append(rate)
                print(
                    f"round {round_no} {mode:>5}: {took:7.1f} s  {rate:8,.0f} docs/s  "
                    f"client CPU {cpu:5.1f} s  ({indexed:,} indexed, {failed} failed{extra})"
                )
                client.options(ignore_status=404).indices.delete(index=f"{prefix}-*")
    finally:
        for prefix in prefixes:
            client.options(ignore_status=404).indices.delete(index=f"{prefix}-*")
            for kind in KINDS:
                client.options(ignore_status=404).indices.delete_index_template(
                    name=f"{prefix}-{kind}"
                )
        client.close()
        shutil.rmtree(scratch, ignore_errors=True)
    raw, mine = sum(raw_rates) / len(raw_rates), sum(store_rates) / len(store_rates)
    print(
        f"\nraw _bulk loop: {raw:,.0f} docs/s   Store.write: {mine:,.0f} docs/s   "
        f"ratio {mine / raw:.2f} (aim >= 0.80; batch {args.batch}, {len(docs):,} docs, {url})"
    )
    print(
        f"client CPU per 1,000 docs: raw {1000 * sum(raw_cpu) / len(raw_cpu) / len(docs):.2f} s, "
        f"store {1000 * sum(store_cpu) / len(store_cpu) / len(docs):.2f} s "
        "(wall-clock rates depend on what else the node and the machine are doing; "
        f"load average now {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
