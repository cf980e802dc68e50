"""Dedup: one document per story, and syndicated copies clustered.

Two different problems:

- **The same story again** (a re-polled item, or the same URL in two feeds): recognised by
  the article id, which comes from the canonical URL. :func:`unique_by_id` keeps one per
  batch; collection compares content hashes with the store to skip unchanged ones.
- **The same wire story under other URLs** (AP/Reuters/AFP copy republished by many
  outlets, with a changed headline or a trimmed paragraph): MinHash signatures of word
  shingles, indexed with datasketch's LSH, find candidates in sub-linear time; a candidate
  counts when its estimated Jaccard similarity reaches ``near_duplicate_threshold`` and
  the two were published within ``window_hours`` of each other. Copies share a
  ``cluster_id`` (the first article of the cluster) and point at the closest earlier copy
  with ``duplicate_of``.

Shingles are built from the **lede**: the first ``lede_words`` (80) words of the fullest
text the item carries (its body when that is longer than its summary); the headline joins
in only when that text is too short on its own. Why:

- outlets rewrite the headlines of wire copy but keep its lede: on the fixtures' Geneva
  wire story, headline + lede gives a Jaccard similarity of 0.68 between two copies, the
  lede alone 0.86, a different story on the same talks 0.0;
- feeds carry different amounts of the same story: the wire's ``<description>`` holds the
  whole text, a WordPress copy has a 55-word excerpt ending in "[...]" plus the full text in
  ``content:encoded``, and stored articles may have the page's full text from enrichment.
  Whole texts of different lengths never reach 0.7; their first 80 words do (0.86 for the
  demo's syndicated pair, which scores 0.19 summary against summary, and the highest of
  all pairs of the demo's 89 articles).
"""

from __future__ import annotations

import functools
import re
import threading
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH
from pydantic import BaseModel

from pipeline.config import DedupSettings
from pipeline.models import Article

_WORDS = re.compile(r"\w+", re.UNICODE)
#: Candidates from the LSH scored per article at most (see ``best_match``).
MAX_CANDIDATES = 64


class DedupRecord(BaseModel):
    """What near-duplicate clustering needs of an article already stored."""

    id: str
    published: datetime
    title: str = ""
    summary: str = ""
    body: str = ""
    cluster_id: str | None = None
    feed_id: str | None = None

    @classmethod
    def from_article(cls, article: Article) -> DedupRecord:
        return cls(
            id=article.id,
            published=article.published,
            title=article.title,
            summary=article.summary,
            body=article.body,
            cluster_id=article.cluster_id,
            feed_id=article.source.feed_id,
        )

    @classmethod
    def from_document(cls, doc_id: str, doc: Mapping[str, Any]) -> DedupRecord:
        """From an articles-index document (``_source``, possibly filtered to a few fields)."""
        source = doc.get("source")
        feed_id = (
            source.get("feed_id") if isinstance(source, Mapping) else doc.get("source.feed_id")
        )
        stamp = doc.get("@timestamp") or doc.get("published")
        if isinstance(stamp, str):
            published = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        elif isinstance(stamp, datetime):
            published = stamp
        else:
            published = datetime.fromtimestamp(0, tz=UTC)
        if published.tzinfo is None:
            published = published.replace(tzinfo=UTC)
        return cls(
            id=doc_id,
            published=published,
            title=str(doc.get("title") or ""),
            summary=str(doc.get("summary") or ""),
            body=str(doc.get("body") or ""),
            cluster_id=doc.get("cluster_id") or None,
            feed_id=feed_id,
        )


def dedup_text(summary: str, body: str = "", words: int = 80) -> str:
    """The lede whose shingles identify a story (see the module docstring for why)."""
    fullest = body if len(body) > len(summary) else summary
    return " ".join(_WORDS.findall(fullest[: words * 20])[:words])


def shingles(text: str, size: int) -> set[str]:
    """Word n-grams of the case-folded text (letters and digits of any script)."""
    words = _WORDS.findall(text.casefold())
    if len(words) < size:
        return {" ".join(words)} if words else set()
    return set(map(" ".join, zip(*(words[i:] for i in range(size)), strict=False)))


def unique_by_id(articles: Iterable[Article]) -> tuple[list[Article], int]:
    """First article of each id, in order, and how many repeats were dropped."""
    seen: set[str] = set()
    out: list[Article] = []
    dropped = 0
    for article in articles:
        if article.id in seen:
            dropped += 1
            continue
        seen.add(article.id)
        out.append(article)
    return out, dropped


@functools.cache
def _seed_minhash(num_perm: int) -> MinHash:
    """The permutations every signature of a run shares (made once per process)."""
    return MinHash(num_perm=num_perm, seed=1)


_hashers = threading.local()


def _hasher(num_perm: int) -> MinHash:
    """A MinHash to reuse (``clear()`` between texts) in this thread: making one costs as
    much as hashing a lede. Its input values are our shingle hashes (see ``shingle_hash``)."""
    cache: dict[int, MinHash] | None = getattr(_hashers, "by_perm", None)
    if cache is None:
        cache = _hashers.by_perm = {}
    mh = cache.get(num_perm)
    if mh is None:
        seed = _seed_minhash(num_perm)
        mh = cache[num_perm] = MinHash(
            num_perm=num_perm, permutations=seed.permutations, scheme=seed.scheme, hashfunc=int
        )
    return mh


def shingle_hash(gram: str) -> int:
    """The 32-bit value a shingle enters MinHash with: CRC-32 of its UTF-8 bytes.

    datasketch's default (SHA-1 truncated to 32 bits) was half the cost of a signature.
    Any well-spread 32-bit value will do: datasketch's permutation scheme runs every input
    through the MurmurHash3 finalizer before its affine permutations, and on 5,000 text
    pairs the estimates' error (bias, spread) was the same for both (docs/decisions.md).
    Signatures are never stored, so no old values have to match.
    """
    return zlib.crc32(gram.encode("utf-8"))


def text_signature(
    title: str, summary: str, body: str, settings: DedupSettings
) -> np.ndarray | None:
    """MinHash values of an article's text, or None when it is too short to cluster safely.

    A plain array so that parse workers can compute it next to the parsing (it is most of
    the cost of clustering) and send it back cheaply.
    """
    size = settings.shingle_words
    text = dedup_text(summary, body, settings.lede_words)
    grams = shingles(text, size)
    if len(grams) < settings.min_shingles:
        # Too little text to go by: the headline has to help after all.
        grams = shingles(f"{title} {text}", size)
    if len(grams) < settings.min_shingles:
        return None
    mh = _hasher(settings.num_perm)
    mh.clear()
    mh.update_batch([zlib.crc32(g.encode("utf-8")) for g in grams])  # = shingle_hash
    values: np.ndarray = mh.hashvalues.copy()
    return values


@dataclass
class _Entry:
    id: str
    published: datetime
    cluster_id: str
    signature: np.ndarray
    bands: list[bytes]


class NearDuplicateIndex:
    """MinHash LSH over recent articles, queried one article at a time.

    datasketch makes the signatures and chooses the banding (``MinHashLSH``'s optimiser
    picks bands x rows for the threshold); the band tables are plain dicts here. Through
    ``MinHashLSH.query`` + ``insert`` each article's 21 band keys were built twice, one
    numpy byteswap each, and made most of the clustering time of a 20,000-article run;
    here they are slices of one ``tobytes()``. Candidates come back in the order they
    were indexed (oldest first), so which ones are scored under ``MAX_CANDIDATES`` does
    not depend on set order.
    """

    def __init__(self, settings: DedupSettings) -> None:
        self.settings = settings
        self.window = timedelta(hours=settings.window_hours)
        # LSH is a candidate filter: set it below the decision threshold so that pairs
        # right at the threshold are not lost to its banding; the estimate decides.
        bands = MinHashLSH(
            threshold=max(0.2, settings.near_duplicate_threshold - 0.15),
            num_perm=settings.num_perm,
        ).hashranges
        itemsize = _seed_minhash(settings.num_perm).hashvalues.itemsize
        self._slices = [(start * itemsize, end * itemsize) for start, end in bands]
        # A bucket is one id (almost every band key is unique) or a list of ids: hundreds
        # of thousands of one-element lists cost memory and garbage-collector time.
        self._tables: list[dict[bytes, str | list[str]]] = [{} for _ in bands]
        self._entries: dict[str, _Entry] = {}

    def signature(self, title: str, summary: str, body: str = "") -> np.ndarray | None:
        """MinHash values of a text, or None when it is too short to cluster safely."""
        return text_signature(title, summary, body, self.settings)

    def bands(self, signature: np.ndarray) -> list[bytes]:
        """The signature's band keys (pass them to ``add``/``best_match`` to reuse them)."""
        raw = signature.tobytes()
        return [raw[start:end] for start, end in self._slices]

    def add(
        self,
        record_id: str,
        published: datetime,
        cluster_id: str | None,
        signature: np.ndarray,
        bands: list[bytes] | None = None,
    ) -> None:
        if record_id in self._entries:
            self.remove(record_id)
        if bands is None:
            bands = self.bands(signature)
        self._entries[record_id] = _Entry(
            record_id, published, cluster_id or record_id, signature, bands
        )
        for table, key in zip(self._tables, bands, strict=True):
            bucket = table.get(key)
            if bucket is None:
                table[key] = record_id
            elif isinstance(bucket, str):
                table[key] = [bucket, record_id]
            else:
                bucket.append(record_id)

    def remove(self, record_id: str) -> None:
        entry = self._entries.pop(record_id, None)
        if entry is None:
            return
        for table, key in zip(self._tables, entry.bands, strict=True):
            bucket = table[key]
            if isinstance(bucket, str):
                del table[key]
            else:
                bucket.remove(record_id)
                if len(bucket) == 1:
                    table[key] = bucket[0]

    def add_records(self, records: Iterable[DedupRecord]) -> None:
        for record in records:
            sig = self.signature(record.title, record.summary, record.body)
            if sig is not None:
                self.add(record.id, record.published, record.cluster_id, sig)

    def candidates(self, bands: list[bytes]) -> Iterator[str]:
        """Ids sharing at least one band key, each once, oldest first per band."""
        seen: set[str] = set()
        for table, key in zip(self._tables, bands, strict=True):
            bucket = table.get(key)
            if bucket is None:
                continue
            for record_id in (bucket,) if isinstance(bucket, str) else bucket:
                if record_id not in seen:
                    seen.add(record_id)
                    yield record_id

    def best_match(
        self,
        signature: np.ndarray,
        published: datetime,
        exclude: str,
        bands: list[bytes] | None = None,
    ) -> tuple[_Entry, float] | None:
        """The most similar indexed article within the time window, if similar enough.

        At most :data:`MAX_CANDIDATES` candidates are scored: a story syndicated a thousand
        times needs one good match, not a thousand comparisons per copy.
        """
        best: tuple[_Entry, float] | None = None
        scored = 0
        size = len(signature)
        for key in self.candidates(self.bands(signature) if bands is None else bands):
            entry = self._entries[key]
            if entry.id == exclude:
                continue
            if abs(entry.published - published) > self.window:
                continue
            scored += 1
            # The MinHash estimate of Jaccard similarity (as datasketch's jaccard()).
            similarity = int(np.count_nonzero(signature == entry.signature)) / size
            if similarity >= self.settings.near_duplicate_threshold and (
                best is None
                or similarity > best[1]
                or (similarity == best[1] and entry.published < best[0].published)
            ):
                best = (entry, similarity)
            if scored >= MAX_CANDIDATES:
                break
        return best


def cluster_near_duplicates(
    articles: Sequence[Article],
    recent: Iterable[DedupRecord],
    settings: DedupSettings,
    signatures: Mapping[str, np.ndarray | None] | None = None,
) -> list[Article]:
    """Articles with ``cluster_id`` / ``duplicate_of`` set, in the order given.

    ``recent`` are stored articles from the window (their own cluster ids are kept).
    Articles of this batch are taken oldest first, so the first copy of a story founds
    its cluster and later copies join it. ``signatures`` (article id -> values of
    :func:`text_signature`) saves recomputing those the parse workers already made.
    """
    index = NearDuplicateIndex(settings)
    batch_ids = {a.id for a in articles}
    # A stored version of an article in this batch is replaced by the new version.
    index.add_records(r for r in recent if r.id not in batch_ids)
    known = signatures or {}
    updated: dict[str, Article] = {}
    for article in sorted(articles, key=lambda a: (a.published, a.id)):
        if article.id in known:
            sig = known[article.id]
        else:
            sig = index.signature(article.title, article.summary, article.body)
        if sig is None:
            updated[article.id] = article.model_copy(
                update={"cluster_id": None, "duplicate_of": None}
            )
            continue
        bands = index.bands(sig)
        match = index.best_match(sig, article.published, exclude=article.id, bands=bands)
        if match is None:
            cluster_id, duplicate_of = article.id, None
        else:
            cluster_id, duplicate_of = match[0].cluster_id, match[0].id
        index.add(article.id, article.published, cluster_id, sig, bands)
        updated[article.id] = article.model_copy(
            update={"cluster_id": cluster_id, "duplicate_of": duplicate_of}
        )
    return [updated[a.id] for a in articles]
