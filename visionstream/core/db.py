"""PostgreSQL access: connection pool and ordered SQL migrations."""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

from visionstream.settings import Settings

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every process that migrates this database.
_MIGRATION_LOCK_ID = 0x5653_4D49


class Parameters(list[object]):
    """A query's bound values, gathered while its text is built: ``bind(value)`` keeps one and returns its
    placeholder ($1, $2, ...), so the SQL never holds a value."""

    def bind(self, value: object) -> str:
        self.append(value)
        return f"${len(self)}"


async def connect(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(settings.database_url.get_secret_value())


async def count_rows(settings: Settings, query: str, args: list[object]) -> int:
    """How many rows a selection query returns, counted in a READ ONLY transaction (it may hold an operator's
    own SQL condition: `replay --where`, `produce keys --where`)."""
    conn = await connect(settings)
    try:
        async with conn.transaction(readonly=True):
            return await conn.fetchval(f"SELECT count(*) FROM ({query}) AS selected", *args)
    finally:
        await conn.close()


async def create_pool(settings: Settings) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        settings.database_url.get_secret_value(),
        min_size=1,
        max_size=settings.database_pool_size,
    )


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every migration shipped with the package, in order."""
    folder = resources.files("visionstream.migrations")
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


async def migrate(settings: Settings) -> list[str]:
    """Apply the migrations not yet recorded in schema_migrations; return the versions applied."""
    conn = await connect(settings)
    try:
        # Serialise concurrent migrators (several workers starting at once).
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            applied = []
            for version, sql in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                log.info("applied migration %s", version)
                applied.append(version)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)
    finally:
        await conn.close()
