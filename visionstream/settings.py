"""One typed, validated settings object for every visionstream process.

Values come from keyword arguments, then ``VISIONSTREAM_*`` environment variables, then an optional
``.env`` file. Nothing is read at import time: call :func:`load_settings` once and pass the result on.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "VISIONSTREAM_"


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable and the fix."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # Kafka
    broker_url: str = Field(
        "kafka://127.0.0.1:9092",
        description="Kafka bootstrap servers as kafka://host:port[;host:port]",
    )
    app_id: str = Field("visionstream", description="Faust application id, also the consumer group")
    images_topic: str = Field("vs-images", description="topic of image keys to classify")
    predictions_topic: str = Field("vs-predictions", description="topic the classifier publishes results to")
    image_faces_topic: str = Field("vs-image-faces", description="topic of the faces found in S3 images, by image key")
    dead_letter_topic: str = Field("vs-dead-letters", description="topic of messages that could not be processed")
    replay_topic: str = Field(
        "vs-replay", description="topic `visionstream replay` sends past image keys to, for workers of another "
        "model version (they consume it as their VISIONSTREAM_IMAGES_TOPIC)"
    )
    frame_replay_topic: str = Field(
        "vs-frame-replay", description="topic `visionstream replay --camera` sends archived frames to, for workers "
        "of another detector version (they consume it as their VISIONSTREAM_FRAMES_TOPIC)"
    )
    topic_partitions: int = Field(4, ge=1, le=10_000, description="partitions of every visionstream topic")
    topic_replication: int = Field(1, ge=1, le=10, description="replication factor of every visionstream topic")

    # S3
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint URL (http://127.0.0.1:8333 for the local stack); empty for AWS S3"
    )
    s3_region: str = Field("us-east-1", description="S3 region name")
    s3_bucket: str = Field("visionstream", min_length=3, max_length=63, description="S3 bucket holding the images")
    s3_access_key_id: SecretStr | None = Field(None, description="S3 access key id (empty: boto3's default chain)")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret access key")
    s3_concurrency: int = Field(32, ge=1, le=1024, description="concurrent S3 requests per worker")

    # PostgreSQL
    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/postgres"),
        description="PostgreSQL URL, postgresql://user:password@host:port/dbname",
    )
    database_pool_size: int = Field(4, ge=1, le=100, description="PostgreSQL connections per worker")

    # Analyzers: what runs on which input; a worker loads only the models they name
    image_analyzers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["classify", "faces"],
        description="comma-separated analyzers run on every S3 image: classify, faces, an entry point of the "
        "visionstream.analyzers group, or a builder function as module.path:function; empty for a worker that "
        "takes no images (a frames-only worker, e.g. one replaying archived frames)",
    )
    frame_analyzers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["faces"],
        description="comma-separated analyzers run on camera frames, named like VISIONSTREAM_IMAGE_ANALYZERS, "
        "or empty for a worker that takes no frames (and loads no model for them)",
    )

    # Model and batching
    model_name: Literal["squeezenet1_1"] = Field("squeezenet1_1", description="classification model")
    model_weights: Path | None = Field(
        None, description="local weights file (a state_dict); empty: torchvision's weights API and hub cache"
    )
    allow_random_weights: bool = Field(
        False, description="true to run with untrained weights when none can be loaded (labels are meaningless)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto, cpu or cuda")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto (fp16 on CUDA, bf16 on CPUs with bf16 support, else fp32), fp32, bf16 or fp16"
    )
    compile_model: bool = Field(
        True, description="torch.compile the classifier at start (about 20 s; 1.5-2x faster on CPU); "
        "falls back to eager when this machine cannot compile"
    )
    top_k: int = Field(5, ge=1, le=1000, description="predictions stored per image")
    batch_size: int = Field(32, ge=1, le=4096, description="largest inference batch")
    max_batch_delay: float = Field(
        0.05, gt=0, le=60, description="seconds to wait for a batch to fill before running what arrived"
    )
    # 3, not 2: +9% img/s on 2 cores with the model thread busier (bench/compare_trees.py, BENCHMARKS.md).
    batches_in_flight: int = Field(
        3, ge=1, le=16, description="image batches a worker handles at once: the next batches' S3 GETs and "
        "decoding overlap the model on this one"
    )
    decode_workers: int = Field(2, ge=1, le=256, description="threads decoding and preprocessing JPEGs")
    max_image_pixels: int = Field(
        89_478_485, ge=1, description="images with more pixels than this are rejected (decompression bombs)"
    )

    # Video frames and faces
    frames_topic: str = Field("vs-frames", description="topic of camera frames (JPEG value, metadata in headers)")
    processed_frames_topic: str = Field(
        "vs-processed-frames", description="topic of per-frame face results (and skips), keyed by camera id"
    )
    identified_faces_topic: str = Field(
        "vs-identified-faces", description="topic of faces matched to an enrolled person, keyed by person"
    )
    max_message_bytes: int = Field(
        900_000, ge=1_000, description="frames larger than this go to S3 and travel as a reference (claim check)"
    )
    face_batch_size: int = Field(8, ge=1, le=1024, description="largest face-detection batch of frames")
    face_detect_max_side: int = Field(
        960, ge=64, le=16_384, description="frames are scaled down to this longest side for face detection"
    )
    frame_mode: Literal["live", "archive"] = Field(
        "live", description="live: skip frames older than the max lag; archive: process every frame"
    )
    max_frame_lag_seconds: float = Field(
        2.0, gt=0, description="in live mode, frames captured longer ago than this are skipped"
    )
    camera_max_frame_lag: dict[str, float] = Field(
        default_factory=dict, description='per-camera max lag overrides as JSON, e.g. {"door": 0.5}'
    )
    frame_archive: bool = Field(
        False, description="on to store each processed frame's JPEG in S3 (frames/<camera>/<date>/<seq>.jpg) and its "
        "key in frame_results.archive_key, so frames can be searched and replayed; off (default) stores nothing"
    )
    face_embedder: Literal["dlib", "inception_resnet_v1"] = Field(
        "dlib", description="face embedding model: dlib (ships in face-recognition-models) or inception_resnet_v1 "
        "(needs its weights file)"
    )
    face_embedding_weights: Path | None = Field(
        None, description="InceptionResnetV1 state_dict file; empty: facenet-pytorch's vggface2 file in the hub cache"
    )
    face_match_threshold: float | None = Field(
        None, ge=-1, le=1, description="cosine similarity from which a face is an enrolled person; empty: the "
        "embedder's measured default (dlib 0.92, i.e. distance 0.40; inception_resnet_v1 0.7)"
    )
    store_face_embeddings: bool = Field(
        False, description="true to store every detected face's embedding (face_embeddings) so people enrolled "
        "later are found in the past (enroll --backfill); biometric data: off by default"
    )
    face_embedding_retention_days: float = Field(
        30.0, gt=0, description="visionstream people purge deletes stored face embeddings older than this"
    )

    # Faults (faults.py)
    message_max_attempts: int = Field(
        5, ge=1, le=100, description="attempts of a message that keeps failing while its service works (about "
        "8 s with the backoff), before it is dead-lettered; outages are waited out without a limit"
    )
    stop_grace_seconds: float = Field(
        30.0, gt=0, le=3600, description="seconds a stopping worker keeps finishing its in-flight batches; what "
        "is not finished then stays unacked and is redelivered"
    )

    # Metrics and dashboard
    metrics_max_cameras: int = Field(
        50, ge=1, le=10_000, description="cameras labelled by their id in worker metrics; more are labelled 'other'"
    )
    dashboard_host: str = Field("127.0.0.1", description="address the dashboard's web server binds to")
    dashboard_port: int = Field(6080, ge=1, le=65535, description="port of the dashboard's web server")
    dashboard_fps: float = Field(
        12.0, gt=0, le=60, description="video frames per second shown per camera, whatever the analysis rate"
    )
    dashboard_refresh_seconds: float = Field(
        2.0, ge=0.2, le=600, description="seconds between the dashboard's panel updates (and PostgreSQL totals)"
    )

    # Worker
    hostname: str = Field(default_factory=socket.gethostname, min_length=1, description="hostname stored with results")
    web_host: str = Field("127.0.0.1", description="address the worker's web server binds to")
    web_port: int = Field(6066, ge=1, le=65535, description="port of the worker's web server")
    data_dir: Path = Field(Path(".visionstream"), description="folder for the local stack and worker state")

    @field_validator("image_analyzers", "frame_analyzers", mode="before")
    @classmethod
    def _analyzer_names(cls, value: object) -> list[str]:
        from visionstream.core.analyzers import check_analyzer_name

        names = [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        if len(set(names)) != len(names):
            raise ValueError(f"must name each analyzer once (got {value!r})")
        for name in names:
            check_analyzer_name(name)  # its ValueError names the analyzers there are
        return names

    @field_validator("broker_url")
    @classmethod
    def _broker_url_scheme(cls, value: str) -> str:
        if not value.startswith("kafka://") or len(value) <= len("kafka://"):
            raise ValueError("must look like kafka://host:port (several separated by ';')")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_scheme(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        return value

    @field_validator("s3_endpoint_url", mode="before")
    @classmethod
    def _endpoint_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("model_weights", "face_embedding_weights", mode="before")
    @classmethod
    def _weights_exist(cls, value: object) -> Path | None:
        if value is None or str(value).strip() == "":
            return None
        value = Path(str(value)).expanduser()
        if not value.is_file():
            raise ValueError(f"file {value} does not exist")
        return value

    @model_validator(mode="after")
    def _s3_credentials_paired(self) -> Settings:
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError(
                "set both VISIONSTREAM_S3_ACCESS_KEY_ID and VISIONSTREAM_S3_SECRET_ACCESS_KEY, or neither"
            )
        return self

    @model_validator(mode="after")
    def _some_analyzer(self) -> Settings:
        if not self.image_analyzers and not self.frame_analyzers:
            raise ValueError("set VISIONSTREAM_IMAGE_ANALYZERS or VISIONSTREAM_FRAME_ANALYZERS: a worker with "
                             "neither has nothing to do")
        return self

    @property
    def kafka_bootstrap(self) -> str:
        """aiokafka's bootstrap_servers form of broker_url."""
        return self.broker_url[len("kafka://") :].replace(";", ",")

    def topic_names(self) -> list[str]:
        return [self.images_topic, self.predictions_topic, self.image_faces_topic, self.dead_letter_topic,
                self.replay_topic, self.frame_replay_topic,
                self.frames_topic, self.processed_frames_topic, self.identified_faces_topic]


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _describe(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ()) if part != "__root__"]
    if not loc:
        return f"settings: {error['msg']}"
    field = loc[0]
    info = Settings.model_fields.get(field)
    hint = f" Fix: set {env_name(field)} to {info.description}." if info and info.description else ""
    value = error.get("input")
    shown = "" if value is None or "secret" in field or "password" in field or field == "database_url" else f"={value!r}"
    return f"{env_name(field)}{shown}: {error['msg']}.{hint}"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings once; raise :class:`SettingsError` naming each bad variable and its fix."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors(include_url=False)]
        raise SettingsError("invalid visionstream settings:\n  " + "\n  ".join(lines)) from None
