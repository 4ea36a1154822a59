"""The Faust application: topics, agents and tables, built from one Settings object."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from visionstream.core.batching import AgentLifecycle
from visionstream.core.db import migrate
from visionstream.core.kafka_client import faust_broker_credentials
from visionstream.core.records import Prediction, ProcessingError
from visionstream.faces.records import IdentifiedFace, ImageFaces
from visionstream.faust_ext.decode_errors import DeadLetteringTopic
from visionstream.faust_ext.seek_safe_consumer import SeekSafeApp, SeekSafeConsumer
from visionstream.frames.records import ProcessedFrame
from visionstream.health import Readiness, register_health
from visionstream.settings import Settings, SettingsError, load_settings
from visionstream.topics import ensure_topics


class VisionApp(SeekSafeApp):
    """faust.App that knows its visionstream settings and prepares topics and tables before it consumes; its
    Kafka consumer drops records fetched before a seek (faust_ext/seek_safe_consumer.py)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.readiness = Readiness()  # agents report their models here; GET /readyz reads it
        super().__init__(
            settings.app_id,
            broker=settings.broker_url,
            broker_credentials=faust_broker_credentials(settings),
            autodiscover=False,
            store="memory://",
            datadir=str(settings.data_dir / "faust"),
            topic_partitions=settings.topic_partitions,
            topic_replication_factor=settings.topic_replication,
            web_bind=settings.web_host,  # faust's web_host is only the advertised name
            web_host=settings.web_host,
            web_port=settings.web_port,
            # Faust's own pages answer on every bind by default: /router (every worker's URL) and /table (any
            # table key, e.g. each person's count). Off: the /stats pages are the gated way in (web_access.py).
            web_router_enabled=False, web_tables_enabled=False, web_stats_enabled=False, web_graph_enabled=False,
            web_metrics_enabled=False,
            Topic=DeadLetteringTopic,  # a record a table's agent cannot decode is a dead letter, not a crash
        )
        self.stopping = asyncio.Event()
        partitions = settings.topic_partitions
        self.images_topic = self.topic(
            settings.images_topic, key_type=bytes, value_type=bytes,
            key_serializer="raw", value_serializer="raw", partitions=partitions,
        )
        self.predictions_topic = self.topic(
            settings.predictions_topic, key_type=str, value_type=Prediction,
            key_serializer="raw", partitions=partitions,
        )
        self.image_faces_topic = self.topic(
            settings.image_faces_topic, key_type=str, value_type=ImageFaces,
            key_serializer="raw", partitions=partitions,
        )
        self.dead_letter_topic = self.topic(
            settings.dead_letter_topic, key_type=str, value_type=ProcessingError,
            key_serializer="raw", partitions=partitions,
        )
        # Frames: raw JPEG values with their metadata in headers (see frames/records.py).
        self.frames_topic = self.topic(
            settings.frames_topic, key_type=bytes, value_type=bytes,
            key_serializer="raw", value_serializer="raw", partitions=partitions,
        )
        self.processed_frames_topic = self.topic(
            settings.processed_frames_topic, key_type=str, value_type=ProcessedFrame,
            key_serializer="raw", partitions=partitions,
        )
        self.identified_faces_topic = self.topic(
            settings.identified_faces_topic, key_type=str, value_type=IdentifiedFace,
            key_serializer="raw", partitions=partitions,
        )

    def agent_lifecycle(self, agent: str = "") -> AgentLifecycle:
        """How this app's agents learn that the worker stops, abandon events, crash it on a bug, and report a
        tripped dead-letter breaker (/readyz, the metric)."""

        def abandon(events: Sequence[Any]) -> None:
            if isinstance(self.consumer, SeekSafeConsumer):
                self.consumer.abandon(event.message for event in events)

        if self.settings.breaker_dead_letters:
            self.readiness.breaker_closed(agent)
        return AgentLifecycle(grace=self.settings.stop_grace_seconds, stopping=self.stopping,
                              abandon=abandon, crash=self.crash,
                              on_trip=lambda tripped: self.readiness.breaker_tripped(agent, tripped))

    async def on_stop(self) -> None:
        # Before Faust's own stop, which waits for every event handed out to be acked: the agents now have the
        # grace period to finish, then abandon what is left.
        self.stopping.set()
        await super().on_stop()

    async def on_first_start(self) -> None:
        await super().on_first_start()
        # Before the consumer subscribes: an auto-created topic would get the broker's partition count.
        await ensure_topics(self.settings)
        await migrate(self.settings)


def create_app(settings: Settings) -> VisionApp:
    from visionstream.agents.analyze import register_analysis_agent
    from visionstream.faust_ext.consumer_stats import register_consumer_stats
    from visionstream.faust_ext.partition_watchdog import register_partition_watchdog
    from visionstream.frames.input import frame_input
    from visionstream.images.input import image_input
    from visionstream.metrics import register_metrics
    from visionstream.tables.category_counts import register_category_counts
    from visionstream.tables.face_counts import register_face_counts
    from visionstream.tables.image_face_counts import register_image_face_counts
    from visionstream.tables.person_counts import register_person_counts

    app = VisionApp(settings)
    # The S3-image agent keeps its historic name, `classify`; the frames agent is `faces`.
    if settings.image_analyzers:  # a frames-only worker (e.g. replaying archived frames) takes no images
        register_analysis_agent(app, app.images_topic, image_input(settings), batch_size=settings.batch_size,
                                in_flight=settings.batches_in_flight)
    if "classify" in settings.image_analyzers or "classify" in settings.frame_analyzers:
        register_category_counts(app)
    if "faces" in settings.image_analyzers:
        register_image_face_counts(app)
    if settings.frame_analyzers:  # a worker without frame analyzers takes no frames and loads no model for them
        # One batch at a time: a camera's processed frames stay in capture order.
        register_analysis_agent(app, app.frames_topic, frame_input(settings), batch_size=settings.face_batch_size,
                                in_flight=1)
        register_face_counts(app)
        if settings.face_tracking and "faces" in settings.frame_analyzers:
            from visionstream.tables.visit_counts import register_visit_counts

            register_visit_counts(app)  # and /stats/visitors
    if "faces" in settings.image_analyzers or "faces" in settings.frame_analyzers:
        register_person_counts(app)
    register_consumer_stats(app)
    register_metrics(app)
    register_partition_watchdog(app)
    register_health(app)
    return app


_app: VisionApp | None = None


def get_app() -> VisionApp:
    """The process-wide app for ``faust -A visionstream``, built on first use."""
    global _app
    if _app is None:
        try:
            settings = load_settings()
        except SettingsError as exc:
            raise SystemExit(str(exc)) from None
        _app = create_app(settings)
    return _app
