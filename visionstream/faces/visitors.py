"""Distinct visitors (opt-in): anonymous visitor ids for visits, by online clustering of face embeddings.

Each visit (a track, faces/tracking.py) is clustered once, by the mean embedding of its first faces
(``face_visitor_faces``, or all of them if its track ends before), and given the visitor id of the nearest stored embedding of another visit, on any
camera, seen within the window (cosine similarity at least the threshold), or a new random id (uuid4: never
derived from the face). An enrolled person keeps their name (visits.person); no anonymous embedding is stored
for a face that matched them.

``VisitorClusterer`` is the pure decision; ``VisitorMemory`` keeps embeddings in memory (benchmarks, unit
tests); the worker keeps them in PostgreSQL (``VisitorStore``, migration 0012) so that two workers, or a
restarted one, match against the same embeddings. Each batch's assignment runs in one transaction under one
advisory lock per database: two workers can then never both create a visitor for the same person at the same
moment (a split that would count them twice for good); the lock is taken only for batches holding a visit not
yet assigned, a few a second at most at a kiosk. Anonymous embeddings are deleted after their retention by
``visionstream people purge``; the visits keep their visitor id, so the counts stay.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np

from visionstream.settings import Settings

VISITORS = "visitors"  # the AnalyzedImage output the tracking sink sets: a visitor id (or None) per accepted face

# Cosine similarity of two visits' mean dlib embeddings (5 faces each) from which they are one visitor: on the
# arcade clip 0.96 and 0.97 count its 9 people, the clip twice and the clip plus its mirror as 9; 0.95 merges
# two people (bench/faces_counted.py --visitors, BENCHMARKS.md). InceptionResnetV1: not measured, its
# identification threshold.
DEFAULT_VISITOR_THRESHOLDS = {"dlib": 0.96, "inception_resnet_v1": 0.7}

ADVISORY_LOCK = "visionstream.visitors"  # hashed to the one advisory lock all workers of a database take


def visitor_threshold(settings: Settings) -> float:
    if settings.face_visitor_match_threshold is not None:
        return settings.face_visitor_match_threshold
    return DEFAULT_VISITOR_THRESHOLDS[settings.face_embedder]


@dataclass(frozen=True, slots=True)
class KnownVisit:
    """A stored anonymous embedding: the visitor of one visit, when it was seen, on which camera."""

    visitor: str
    embedding: np.ndarray  # unit length
    seen_at: float  # capture time, epoch seconds


class VisitorClusterer:
    """Nearest known visit within the window at least ``threshold`` similar, else a new random id."""

    def __init__(self, threshold: float, window_seconds: float,
                 new_id: Callable[[], str] = lambda: str(uuid.uuid4())) -> None:
        self.threshold = threshold
        self.window_seconds = window_seconds
        self._new_id = new_id

    def assign(self, embedding: np.ndarray, seen_at: float, known: Iterable[KnownVisit],
               busy: frozenset[str] | set[str] = frozenset()) -> tuple[str, bool]:
        """(visitor id, whether it is new). ``busy``: visitors in the same frame, who are someone else."""
        best, best_similarity = None, self.threshold
        for visit in known:
            if visit.visitor in busy or abs(seen_at - visit.seen_at) > self.window_seconds:
                continue
            similarity = float(visit.embedding @ embedding)
            if similarity >= best_similarity:
                best, best_similarity = visit.visitor, similarity
        return (best, False) if best is not None else (self._new_id(), True)


class VisitorMemory:
    """Visitor ids of visits with the embeddings in memory, forgotten after ``retention_seconds`` by the clock."""

    def __init__(self, clusterer: VisitorClusterer, retention_seconds: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.clusterer = clusterer
        self.retention_seconds = retention_seconds
        self._clock = clock
        self._visits: OrderedDict[str, tuple[KnownVisit, float]] = OrderedDict()  # visit -> (known, stored at)
        self.visitors: dict[str, str] = {}  # visit -> visitor, kept after the embedding is forgotten

    def __len__(self) -> int:
        self.purge()
        return len(self._visits)

    def purge(self) -> None:
        now = self._clock()
        while self._visits and now - next(iter(self._visits.values()))[1] > self.retention_seconds:
            self._visits.popitem(last=False)

    def visitor(self, visit: str, embedding: np.ndarray, seen_at: float, busy: frozenset[str] = frozenset()) -> str:
        if visit in self.visitors:
            return self.visitors[visit]
        self.purge()
        visitor, _ = self.clusterer.assign(embedding, seen_at, (k for k, _ in self._visits.values()), busy)
        self._visits[visit] = (KnownVisit(visitor, embedding, seen_at), self._clock())
        self.visitors[visit] = visitor
        return visitor


ASSIGNED = "SELECT visit_id, visitor_id::text FROM visitor_embeddings WHERE visit_id = ANY($1::text[])"
WINDOW = """
SELECT visitor_id::text, embedding, extract(epoch FROM seen_at)::float8 AS seen_at FROM visitor_embeddings
WHERE embedder = $1 AND seen_at >= to_timestamp($2) AND seen_at <= to_timestamp($3)
ORDER BY seen_at DESC LIMIT $4
"""
SET_VISITOR = "UPDATE visits SET visitor = $2::uuid WHERE visit_id = $1 AND visitor IS NULL"
INSERT = """
INSERT INTO visitor_embeddings (visit_id, visitor_id, camera_id, embedder, embedding, seen_at)
VALUES ($1, $2::uuid, $3, $4, $5::real[], to_timestamp($6)) ON CONFLICT (visit_id) DO NOTHING
"""


@dataclass(slots=True)
class NewVisit:
    """A visit not yet assigned: its first embedded face, and the visits beside it in that frame."""

    visit: str
    camera_id: str
    embedding: np.ndarray
    seen_at: float
    beside: list[str]


class PendingVisits:
    """The embeddings of visits not yet assigned, until a visit has ``faces`` of them or its track ends: then
    their mean (one face at a track's start is often small or turned; BENCHMARKS.md "Distinct visitors").
    Bounded: the oldest visits are dropped first. In memory only: a worker that takes over a camera collects a
    visit's faces again."""

    def __init__(self, faces: int, max_visits: int) -> None:
        self.faces = faces
        self._max_visits = max_visits
        self._visits: OrderedDict[str, tuple[str, list[np.ndarray]]] = OrderedDict()  # visit -> camera, faces

    def add(self, camera_id: str, visit: str, embedding: np.ndarray) -> np.ndarray | None:
        """The visit's mean embedding once it has ``faces`` of them, else None."""
        collected = self._visits.setdefault(visit, (camera_id, []))[1]
        collected.append(embedding)
        while len(self._visits) > self._max_visits:
            self._visits.popitem(last=False)
        return self.take(visit) if len(collected) >= self.faces else None

    def take(self, visit: str) -> np.ndarray | None:
        """The mean of what the visit collected (None: nothing), forgetting it."""
        entry = self._visits.pop(visit, None)
        if entry is None:
            return None
        mean = np.mean(entry[1], axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)

    def ended(self, camera_id: str, open_visits: set[str]) -> list[tuple[str, np.ndarray]]:
        """The camera's pending visits whose tracks have ended, with their mean embeddings."""
        done = [v for v, (camera, _) in self._visits.items() if camera == camera_id and v not in open_visits]
        return [(visit, mean) for visit in done if (mean := self.take(visit)) is not None]


class VisitorStore:
    """The visitor of each visit, from and into PostgreSQL (migration 0012); visits already assigned are
    remembered (bounded) so a continuing track costs no query."""

    def __init__(self, settings: Settings, max_remembered: int = 10_000) -> None:
        self.clusterer = VisitorClusterer(visitor_threshold(settings), settings.face_visitor_window_seconds)
        self.embedder = settings.face_embedder
        self.max_candidates = settings.face_visitor_max_candidates
        self.pending = PendingVisits(settings.face_visitor_faces, max_remembered)
        self._max_remembered = max_remembered
        self._remembered: OrderedDict[str, str] = OrderedDict()

    def remembered(self, visit: str) -> str | None:
        return self._remembered.get(visit)

    def _remember(self, visit: str, visitor: str) -> None:
        self._remembered[visit] = visitor
        self._remembered.move_to_end(visit)
        while len(self._remembered) > self._max_remembered:
            self._remembered.popitem(last=False)

    def ready(self, camera_id: str, seen_at: float, visits: Sequence[str], embeddings: Any,
              matches: Sequence[Any], open_visits: set[str], reused: Sequence[bool] = ()) -> list[NewVisit]:
        """After one frame: the visits of its faces that now have their faces collected, and the camera's
        visits whose tracks ended (``open_visits``: the tracks still open) before that; a face of an enrolled
        person, or one not embedded (``reused``: it carries its track's identity, faces/reuse.py), adds
        nothing."""
        out = [NewVisit(visit, camera_id, mean, seen_at, [])
               for visit, mean in self.pending.ended(camera_id, open_visits)]
        if embeddings is None or len(embeddings) != len(visits):
            return out
        for i, visit in enumerate(visits):
            if matches[i] is not None or self.remembered(visit) is not None or (reused and reused[i]):
                continue
            embedding = self.pending.add(camera_id, visit, np.asarray(embeddings[i], np.float32))
            if embedding is not None:
                out.append(NewVisit(visit, camera_id, embedding, seen_at, [b for b in visits if b != visit]))
        return out

    async def assign(self, conn: asyncpg.Connection, new: Sequence[NewVisit]) -> dict[str, str]:
        """Visitor ids of these visits: stored ones (a redelivered frame), else clustered and stored; one
        transaction under the deployment's advisory lock."""
        out: dict[str, str] = {}
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", ADVISORY_LOCK)
            for row in await conn.fetch(ASSIGNED, [n.visit for n in new]):
                out[row["visit_id"]] = row["visitor_id"]
            todo = [n for n in new if n.visit not in out]
            if todo:
                window = self.clusterer.window_seconds
                rows = await conn.fetch(WINDOW, self.embedder, min(n.seen_at for n in todo) - window,
                                        max(n.seen_at for n in todo) + window, self.max_candidates)
                known = [KnownVisit(r["visitor_id"], np.asarray(r["embedding"], np.float32), r["seen_at"])
                         for r in rows]
                for n in todo:
                    busy = {v for b in n.beside if (v := out.get(b) or self.remembered(b))}
                    visitor, _ = self.clusterer.assign(n.embedding, n.seen_at, known, busy)
                    known.append(KnownVisit(visitor, n.embedding, n.seen_at))
                    out[n.visit] = visitor
                    await conn.execute(INSERT, n.visit, visitor, n.camera_id, self.embedder,
                                       n.embedding.astype(float).tolist(), n.seen_at)
                    # A visit assigned after its track ended has no more faces to carry its visitor to the
                    # visits row (written already); a visit still going gets it with its faces' upsert.
                    await conn.execute(SET_VISITOR, n.visit, visitor)
        for visit, visitor in out.items():
            self._remember(visit, visitor)
        return out


async def purge_visitor_embeddings(conn: asyncpg.Connection, older_than_hours: float | None) -> int:
    """Delete anonymous visitor embeddings stored longer ago than the given hours (None: all); visits keep
    their visitor ids. Return how many."""
    if older_than_hours is None:
        status = await conn.execute("DELETE FROM visitor_embeddings")
    else:
        status = await conn.execute(
            "DELETE FROM visitor_embeddings WHERE stored_at < now() - make_interval(secs => $1)",
            older_than_hours * 3600)
    return int(status.split()[-1])


# The last day's distinct visitors per camera and across cameras (an enrolled person by name, an anonymous
# visitor by id, an untagged visit by itself): PostgreSQL-backed, so every worker answers the same.
VISITORS_SINCE = """
WITH recent AS (
    SELECT camera_id, frames, coalesce('person:' || person, 'visitor:' || visitor::text, visit_id) AS who
    FROM visits WHERE first_seen >= now() - make_interval(secs => $1)
)
SELECT camera_id, count(*) AS visits, count(DISTINCT who) AS visitors, sum(frames) AS faces
FROM recent GROUP BY ROLLUP (camera_id) ORDER BY camera_id NULLS LAST
"""
STATS_HOURS = 24.0


async def visitors_since(conn: asyncpg.Connection, hours: float = STATS_HOURS) -> dict[str, Any]:
    rows = await conn.fetch(VISITORS_SINCE, hours * 3600)
    cameras = {r["camera_id"]: {"visits": r["visits"], "visitors": r["visitors"], "faces": r["faces"]}
               for r in rows if r["camera_id"] is not None}
    total = next((r for r in rows if r["camera_id"] is None), None)
    return {"hours": hours, "cameras": cameras, "visitors": total["visitors"] if total else 0,
            "visits": total["visits"] if total else 0}
