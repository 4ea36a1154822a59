"""Shared hooks: device checks (tests marked `cuda`) run only where torch sees a CUDA device.

The real servers' fixtures live in tests/integration/conftest.py, so a unit test cannot reach a server."""

from __future__ import annotations

import pytest

# Device checks: tests marked `cuda` run only where torch sees a CUDA device (`pytest -m cuda` on a GPU
# machine runs just them); elsewhere they skip with the reason, and the summary counts them apart.

def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="device check: needs a CUDA device (torch sees none)")
        for item in marked:
            item.add_marker(skip)


_device_checks: dict[str, int] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "cuda" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome = "error" if report.when == "setup" and report.failed else report.outcome
        _device_checks[outcome] = _device_checks.get(outcome, 0) + 1


def pytest_terminal_summary(terminalreporter) -> None:
    if _device_checks:
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(_device_checks.items()))
        terminalreporter.write_sep("=", f"device checks (cuda): {counts}")
