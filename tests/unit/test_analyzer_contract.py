"""The analyzer contract as the composition root applies it (core/analyzers.py, worker/assemble.py): builders
by entry point or dotted path, the names they may take, followers, and where outputs go (no servers)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from visionstream.core.analyzers import (
    Analyzer,
    AnalyzerNotFound,
    FollowerContext,
    OutputContext,
    Outputs,
    build_analyzers,
)
from visionstream.core.faults import RetryPolicy
from visionstream.core.inputs import InputSpec
from visionstream.core.sinks import INSERT_ANALYZER_RESULTS
from visionstream.settings import Settings
from visionstream.worker.assemble import declared_outputs, with_followers

PLUGIN = '''
from visionstream.core.analyzers import Analyzer


def build(settings):
    return Analyzer("{name}", "plug", "plug@1", None, lambda decoded: decoded, list)
'''


def plugin(tmp_path, monkeypatch, module: str, name: str) -> str:
    (tmp_path / f"{module}.py").write_text(PLUGIN.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{module}:build"


def analyzer(name: str, **hooks) -> Analyzer:
    return Analyzer(name, name, f"{name}@1", None, None, list, **hooks)


def test_a_dotted_builder_is_loaded_and_may_not_take_an_installed_analyzers_name(tmp_path, monkeypatch):
    settings = Settings()
    [built] = build_analyzers([plugin(tmp_path, monkeypatch, "plug_ok", "scene")], settings)
    assert (built.name, built.model_id) == ("scene", "plug@1")
    # Its outputs would land where the face detector's readers expect MTCNN's faces.
    with pytest.raises(ValueError, match="calls itself 'faces', an installed analyzer's name"):
        build_analyzers([plugin(tmp_path, monkeypatch, "plug_faces", "faces")], settings)
    with pytest.raises(AnalyzerNotFound, match="'no_such_module_h27:build' cannot be loaded"):
        build_analyzers(["no_such_module_h27:build"], settings)


def test_followers_come_right_after_their_analyzer_and_names_stay_unique():
    async def follow(leader: Analyzer, context: FollowerContext) -> list[Analyzer]:
        return [analyzer(f"{leader.name}-next", after=leader.name)]

    context = FollowerContext(Settings(), None, None)
    built = asyncio.run(with_followers([analyzer("a", followers=follow), analyzer("b")], context))
    assert [a.name for a in built] == ["a", "a-next", "b"]
    with pytest.raises(ValueError, match="two analyzers call themselves 'a-next'"):
        asyncio.run(with_followers([analyzer("a", followers=follow), analyzer("a-next")], context))


def test_an_outputs_hook_replaces_the_json_rows_and_the_input_writes_its_own_first():
    def own(a: Analyzer, context: OutputContext) -> Outputs:
        table = SimpleNamespace(insert=f"INSERT INTO {context.input}_{a.name}")
        return Outputs([table], [lambda outcome: []], [lambda database: ("after", database)])

    spec = InputSpec("agent", "images", "S3 images", None, [], lambda settings: None,
                     outputs=lambda context: Outputs([SimpleNamespace(insert="INSERT INTO input_rows")]))
    analyzers = [analyzer("hooked", outputs=own), analyzer("plain")]
    context = OutputContext("images", {a.name: a for a in analyzers}, Settings(), None, lambda name: name,
                            RetryPolicy(1))
    outputs = declared_outputs(spec, analyzers, context)
    assert [t.insert for t in outputs.tables] == ["INSERT INTO input_rows", "INSERT INTO images_hooked",
                                                  INSERT_ANALYZER_RESULTS]
    assert len(outputs.records) == 1 and [build("db") for build in outputs.after_database] == [("after", "db")]
