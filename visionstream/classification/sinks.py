"""What a classification stores and publishes: prediction_results rows (top-k per image and model), the
Prediction record by image key on the predictions topic (which also feeds the live per-category table).

Every input's classifications go here: an S3 image under its key, a camera frame under "<camera>/<seq>"
with the frames topic as its source (topic, partition, offset).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from visionstream.core.analyzers import Analyzer, OutputContext, Outputs
from visionstream.core.pipeline import AnalyzedImage, Outcome
from visionstream.core.records import Category, Prediction, source_of
from visionstream.core.sinks import Records, ResultTable, columns_of, utc

CLASSIFY = "classify"  # the analyzer's name: the key of its outputs (classification/analyzer.py)

# One statement per table and batch: unnest() turns column arrays into rows in a single round trip. The
# model id keys the rows; backend and precision only describe what ran (the first computation's stays).
INSERT_PREDICTIONS = """
INSERT INTO prediction_results
    (image_key, model, rank, category, class_index, confidence, hostname, time, topic, "partition", "offset",
     backend, "precision")
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::smallint[], $4::text[], $5::integer[], $6::real[],
    $7::text[], $8::timestamptz[], $9::text[], $10::integer[], $11::bigint[], $12::text[], $13::text[])
ON CONFLICT (image_key, model, rank) DO NOTHING
"""


def prediction_columns(results: Sequence[AnalyzedImage], computed_at: float, model: str,
                       hostname: str, backend: str | None = None, precision: str | None = None) -> list[list[Any]]:
    at = utc(computed_at)
    return columns_of([
        (item.image_key, model, rank, category, class_index, confidence, hostname, at,
         item.ref.topic, item.ref.partition, item.ref.offset, backend, precision)
        for item in results if CLASSIFY in item.outputs
        for rank, (class_index, category, confidence) in enumerate(item.outputs[CLASSIFY], start=1)
    ])


def prediction_table(model: str, hostname: str, backend: str | None = None,
                     precision: str | None = None) -> ResultTable[AnalyzedImage]:
    return ResultTable(INSERT_PREDICTIONS,
                       lambda results, at: prediction_columns(results, at, model, hostname, backend, precision))


def prediction_records(outcome: Outcome[AnalyzedImage], model: str, hostname: str) -> list[Prediction]:
    records = []
    for item in outcome.results:
        if CLASSIFY not in item.outputs:
            continue
        top_k = [
            Category(rank=rank, class_index=class_index, category=category, confidence=confidence)
            for rank, (class_index, category, confidence) in enumerate(item.outputs[CLASSIFY], start=1)
        ]
        records.append(
            Prediction(
                image_key=item.image_key, model=model, category=top_k[0].category,
                confidence=top_k[0].confidence, top_k=top_k, hostname=hostname, time=outcome.computed_at,
                source=source_of(item.ref),
            )
        )
    return records


def prediction_topics(predictions_topic: Any, model: str, hostname: str) -> Records:
    def records(outcome: Outcome[Any]) -> list[tuple[Any, str, Any]]:
        return [(predictions_topic, record.image_key, record)
                for record in prediction_records(outcome, model, hostname)]

    return records


def classification_outputs(analyzer: Analyzer, context: OutputContext) -> Outputs:
    """Where any input's classifications go: prediction_results and the predictions topic."""
    hostname = context.settings.hostname
    classifier = analyzer.model  # a Classifier: what ran it is stored beside the model id, never in it
    return Outputs([prediction_table(analyzer.model_id, hostname, getattr(classifier, "backend", None),
                                     getattr(classifier, "precision", None))],
                   [prediction_topics(context.topics.predictions_topic, analyzer.model_id, hostname)])
