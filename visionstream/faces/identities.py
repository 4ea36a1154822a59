"""Who a face is: cosine similarity between its embedding and each enrolled person's, above a threshold.

Enrolled people live in PostgreSQL (face_identities: one L2-normalised mean embedding per name and
embedder). Embeddings of different models mean nothing to each other, so every query names the embedder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import numpy as np

UPSERT_IDENTITY = """
INSERT INTO face_identities (name, embedder, embedding, photos, enrolled_at) VALUES ($1, $2, $3, $4, now())
ON CONFLICT (name, embedder) DO UPDATE SET embedding = EXCLUDED.embedding, photos = EXCLUDED.photos,
    enrolled_at = EXCLUDED.enrolled_at
"""


@dataclass(frozen=True, slots=True)
class Match:
    person: str
    similarity: float
    embedder: str  # name@version of the model whose embeddings matched


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def mean_embedding(embeddings: np.ndarray) -> np.ndarray:
    """One person's reference embedding from several photos' embeddings."""
    return normalise(normalise(embeddings).mean(axis=0))


class IdentityMatcher:
    """Matches face embeddings to the most similar enrolled person, if similar enough."""

    def __init__(self, names: Sequence[str], embeddings: np.ndarray, threshold: float, embedder: str = "") -> None:
        if len(names) != len(set(names)):
            raise ValueError("enrolled names must be unique")
        self.names = list(names)
        self.threshold = threshold
        self.embedder = embedder
        references = np.asarray(embeddings, dtype=np.float32)
        if self.names and (references.ndim != 2 or len(references) != len(self.names)):
            raise ValueError(f"need one embedding per name, got shape {references.shape} for {len(self.names)}")
        self._references = normalise(references)

    def __len__(self) -> int:
        return len(self.names)

    def match(self, embeddings: np.ndarray) -> list[Match | None]:
        """The best enrolled person per embedding (row), or None when no one reaches the threshold."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if not self.names or len(embeddings) == 0:
            return [None] * len(embeddings)
        similarities = normalise(embeddings) @ self._references.T
        best = similarities.argmax(axis=1)
        return [
            Match(self.names[j], float(row[j]), self.embedder) if row[j] >= self.threshold else None
            for row, j in zip(similarities, best, strict=True)
        ]


async def load_matcher(conn: asyncpg.Connection | asyncpg.Pool, embedder: str, threshold: float) -> IdentityMatcher:
    rows = await conn.fetch("SELECT name, embedding FROM face_identities WHERE embedder = $1 ORDER BY name",
                            embedder)
    embeddings = np.array([row["embedding"] for row in rows], dtype=np.float32)
    return IdentityMatcher([row["name"] for row in rows], embeddings, threshold, embedder)


async def store_identity(conn: asyncpg.Connection, name: str, embedder: str, embedding: np.ndarray,
                         photos: int) -> None:
    await conn.execute(UPSERT_IDENTITY, name, embedder, [float(x) for x in embedding], photos)
