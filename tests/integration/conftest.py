"""Integration tests, each marked `integration` (`pytest -m "not integration"` skips them): real servers (one
local stack for the session, or a module's own for the tests that stop servers), worker processes, and the real
models on the shared media (MTCNN over whole photos and frames: seconds per test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionstream.dev.stack import LocalStack
from visionstream.settings import Settings

from .stacks import running_stack

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """A running LocalStack on free ports under a temporary folder, stopped at the end of the session."""
    with running_stack(tmp_path_factory.mktemp("visionstream")) as local:
        yield local


@pytest.fixture(scope="session")
def stack_settings(stack: LocalStack) -> Settings:
    return stack.settings()
