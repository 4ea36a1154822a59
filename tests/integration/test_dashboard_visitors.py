"""The dashboard's visitors panel in a real browser (Debian's Chromium through Playwright, as test_dashboard.py):
what PostgreSQL's visits say, per camera and distinct across cameras, through the page's one WebSocket (so
under the dashboard's access rules: Host, Origin, token)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import uuid

import pytest

from visionstream.core.db import connect, migrate
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import LoggedProcess
from visionstream.faces.visitors import visitors_since

from .test_dashboard import CHROMIUM, _in_thread, _until

# camera suffix, visit, person, visitor (a name of VISITORS), frames
VISITS = [("door", "a", None, "x", 10), ("door", "b", None, "x", 4), ("door", "c", "alice", None, 7),
          ("yard", "d", None, "x", 5), ("yard", "e", None, None, 2)]
VISITORS = {"x": str(uuid.uuid4())}


async def _store_visits(settings, name: str) -> None:
    await migrate(settings)
    conn = await connect(settings)
    try:
        for camera, visit, person, visitor, frames in VISITS:
            await conn.execute(
                "INSERT INTO visits (visit_id, camera_id, first_seq, last_seq, first_seen, last_seen, frames,"
                " best_probability, person, visitor) VALUES ($1, $2, 0, $3, now() - interval '1 minute', now(), $4,"
                " 0.99, $5, $6::uuid)", f"{name}-{camera}/{visit}", f"{name}-{camera}", frames - 1, frames, person,
                VISITORS.get(visitor))
    finally:
        await conn.close()


async def _stored(settings):
    conn = await connect(settings)
    try:
        return await visitors_since(conn)
    finally:
        await conn.close()


def test_the_visitors_panel_shows_postgresql_s_distinct_visitors(stack, tmp_path):
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (the browser test drives Debian's)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    from playwright.sync_api import sync_playwright

    name = f"dashvis{uuid.uuid4().hex[:6]}"
    overrides = dict(app_id=name, dashboard_port=free_port(), dashboard_refresh_seconds=0.5)
    settings = stack.settings(**overrides)
    _in_thread(_store_visits(settings, name))
    dashboard = LoggedProcess("dashboard", [sys.executable, "-m", "visionstream.cli.main", "dashboard"],
                              stack.env(**overrides), tmp_path / "dashboard.log", ready_line="dashboard: http://")
    try:
        dashboard.wait_ready()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{settings.dashboard_port}/")
            shown = _until("the visitors panel", 60, lambda: page.evaluate(
                "() => { const v = window.dashboard.panels?.totals?.visitors; return v && v.cameras && v; }"))
            rows = page.evaluate("""() => [...document.querySelectorAll('#visitors tr')].map(
                tr => [...tr.children].map(td => td.textContent))""")
            total = page.text_content("#visitors-total")
            browser.close()
    finally:
        dashboard.stop()

    # Per camera: the enrolled person by name, the anonymous visitor once, a visit without a visitor by itself.
    door, yard = shown["cameras"][f"{name}-door"], shown["cameras"][f"{name}-yard"]
    assert (door["visits"], door["visitors"], door["faces"]) == (3, 2, 21)
    assert (yard["visits"], yard["visitors"], yard["faces"]) == (2, 2, 7)
    assert [f"{name}-door", "2 visitors", "3 visits", "21 faces"] in rows
    assert [f"{name}-yard", "2 visitors", "2 visits", "7 faces"] in rows
    # Across cameras the visitor seen on both counts once: PostgreSQL's distinct count, as the page shows it
    # (the session's database may hold other tests' visits too, so the page is compared with a fresh read).
    stored = _in_thread(_stored(settings))
    mine = {c: v for c, v in stored["cameras"].items() if c.startswith(name)}
    assert mine == {c: v for c, v in shown["cameras"].items() if c.startswith(name)}
    assert int(total) == shown["visitors"]
    assert shown["visitors"] <= stored["visitors"] and shown["visitors"] >= 3
    assert sum(v["visitors"] for v in mine.values()) == 4  # 3 distinct across the two cameras
