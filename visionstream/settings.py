"""One typed, validated settings object for every visionstream process.

Values come from keyword arguments, then ``VISIONSTREAM_*`` environment variables, then the file that
``VISIONSTREAM_ENV_FILE`` names, if any. Nothing is read at import time: call :func:`load_settings` once and
pass the result on.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import socket
import ssl
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
# Only a file named here is read: a `.env` in whatever directory a command runs in (a checkout, a shared
# folder) would otherwise set a worker's database, buckets or web binds behind the operator's back.
ENV_FILE_VARIABLE = "VISIONSTREAM_ENV_FILE"
# Analyzers, built-in (classify, faces, torchvision) and a user's own, are entry points of this group; a setting
# may also name a builder as module.path:function. Checked here from installed metadata: nothing is imported.
ANALYZER_ENTRY_POINTS = "visionstream.analyzers"
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+")


# The precision settings each exported (CPU) backend can run; auto is fp32 there.
EXPORTED_BACKEND_PRECISIONS = {"onnxruntime": ("auto", "fp32"), "openvino": ("auto", "fp32", "bf16")}


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable and the fix."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=None,  # see ENV_FILE_VARIABLE
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

    # Kafka/PostgreSQL/S3 security: TLS and SASL for every connection (core/kafka_client.py builds the clients'
    # configuration; PostgreSQL takes sslmode/sslrootcert in VISIONSTREAM_DATABASE_URL)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL (TLS, optionally with a client certificate), SASL_PLAINTEXT or "
        "SASL_SSL (TLS and a SASL login: what managed Kafka services ask for)"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="the SASL mechanism the brokers enable: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 "
        "(with VISIONSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL or SASL_PLAINTEXT)"
    )
    kafka_sasl_username: SecretStr | None = Field(None, description="the SASL user name (an API key on Confluent Cloud)")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="the SASL password, or set VISIONSTREAM_KAFKA_SASL_PASSWORD_FILE instead"
    )
    kafka_sasl_password_file: Path | None = Field(
        None, description="a file holding the SASL password (a mounted Secret), instead of "
        "VISIONSTREAM_KAFKA_SASL_PASSWORD"
    )
    kafka_ssl_cafile: Path | None = Field(
        None, description="PEM file of the CA(s) that signed the brokers' certificates; empty: the system's CAs"
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="PEM client certificate for mutual TLS (with VISIONSTREAM_KAFKA_SSL_KEYFILE)"
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="PEM private key of VISIONSTREAM_KAFKA_SSL_CERTFILE (unencrypted)"
    )
    kafka_ssl_check_hostname: bool = Field(
        True, description="true (default) to check that each broker's certificate names the host connected to; "
        "false only for brokers whose certificates do not name their advertised hosts"
    )
    s3_ca_bundle: Path | None = Field(
        None, description="PEM file of the CA(s) that signed the S3 endpoint's certificate (an https:// "
        "VISIONSTREAM_S3_ENDPOINT_URL behind a private CA); empty: the system's CAs"
    )

    # S3
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint URL (http://127.0.0.1:8333 for the local stack); empty for AWS S3"
    )
    s3_region: str = Field("us-east-1", description="S3 region name")
    s3_bucket: str = Field("visionstream", min_length=3, max_length=63, description="S3 bucket holding the images")
    s3_access_key_id: SecretStr | None = Field(None, description="S3 access key id (empty: boto3's default chain)")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret access key")
    s3_concurrency: int = Field(32, ge=1, le=1024, description="concurrent S3 requests per worker")

    # Untrusted input (README "Security"): which buckets a message may name, and what a worker spends on one
    s3_allowed_buckets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated buckets, besides VISIONSTREAM_S3_BUCKET, that image "
        "requests may name; a request naming any other is dead-lettered before any S3 call"
    )
    s3_max_object_bytes: int = Field(
        32 << 20, ge=1024, le=5 << 30, description="largest S3 object (image or claim-check frame) a worker "
        "reads, in bytes; a larger one is dead-lettered without being read"
    )
    max_full_decode_pixels: int = Field(
        24_000_000, ge=1, description="pixel limit for images decoded at full size (PNG; JPEG is decoded at a "
        "reduced DCT scale and has VISIONSTREAM_MAX_IMAGE_PIXELS)"
    )
    decode_memory_bytes: int = Field(
        256 << 20, ge=1 << 20, description="memory one decode may take, in bytes (pixel buffers, and a "
        "progressive JPEG's coefficients); an image that would take more is dead-lettered before decoding"
    )

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
        64_000_000, ge=1, description="images with more pixels than this are rejected (decompression bombs)"
    )

    # Inference backend: what runs the classifier and MTCNN on a CPU (core/backends.py)
    inference_backend: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        "auto", description="auto (on a CPU, the fastest of torch, ONNX Runtime and OpenVINO that agrees with "
        "fp32 torch on >= 99.5% of top-1 labels, and for MTCNN on every net output value within 1e-4 and on "
        ">= 99.5% of the faces (faces compared only where scikit-image's sample photos are installed: the start-up "
        "log says whether), measured at the first start on this machine, each model on its own; torch on CUDA), "
        "torch, onnxruntime or openvino (these two: CPU only)"
    )
    model_cache_dir: Path | None = Field(
        None, description="local folder for the classifier's and MTCNN's ONNX exports and the backend "
        "measurements, keyed by weights digest; empty: ~/.cache/visionstream/models"
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
    # MTCNN's image pyramid (faces/detector.py); other than facenet-pytorch's defaults they enter the detector's
    # model id, as they change results. Measured on the arcade clip at 960 px (bench/mtcnn_pyramid.py): factor
    # 0.6 is ~1.6x the frames/s for ~98% of the default's faces; min face 40 ~1.6x for ~91% (the small faces
    # at the back of the scene).
    face_pyramid_min_face: int = Field(
        20, ge=12, le=4096, description="smallest face MTCNN searches for, in pixels at detection scale (see "
        "VISIONSTREAM_FACE_DETECT_MAX_SIDE); larger: faster, small faces missed; 20: facenet-pytorch's default"
    )
    face_pyramid_factor: float = Field(
        0.709, ge=0.3, le=0.9, description="scale between MTCNN's pyramid levels; smaller: fewer levels, faster, "
        "some faces between levels missed; 0.709: facenet-pytorch's default"
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
    face_embedder_runtime: Literal["auto", "dlib", "openvino"] = Field(
        "auto", description="what runs dlib's face network: auto (OpenVINO when a start-up check finds it embeds "
        "as dlib does, else dlib), dlib (its own code: 76-100 ms a face on a 2-core EPYC), or openvino (the same "
        "weights, ~5 ms a face there, 10-17 under load); the embeddings and their model id are the same"
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

    # Faces you can count on: the detection floor and visits (faces/tracking.py; BENCHMARKS.md "Faces")
    face_min_probability: float = Field(
        0.97, ge=0, le=1, description="MTCNN probability from which a candidate is a face; below it a candidate "
        "is kept in the faces jsonb flagged accepted=false and nothing else sees it (0.97: no false face on "
        "the non-face sample views, 94% of the arcade clip's real faces kept; BENCHMARKS.md)"
    )
    face_min_size: float = Field(
        0.0, ge=0, le=16_384, description="shortest side in original pixels from which a candidate is a face; 0 "
        "(default): measured, a size floor removed real arcade faces and no false face the probability floor kept"
    )
    face_max_per_frame: int = Field(
        100, ge=1, le=10_000, description="most faces kept of one image or frame, the most probable: a crowd "
        "photo is bounded before identification embeds (~1 MB and 5-17 ms a face) and tracking matches its faces; "
        "the rest are counted in visionstream_faces_over_limit and not stored"
    )
    face_tracking: bool = Field(
        True, description="group each camera's faces into tracks, one visit each (visits table); no embedding"
    )
    face_track_min_iou: float = Field(
        0.2, gt=0, le=1, description="overlap (IoU) with a track's last box from which a face continues the track "
        "(a centre within half the box's width also does)"
    )
    face_track_max_gap_frames: int = Field(
        25, ge=0, le=1000, description="frames a track may miss (missed detections, occlusion, skipped frames) and "
        "go on (25: the arcade clip's one occlusion, 23 frames, stays one visit; BENCHMARKS.md)"
    )
    face_track_max_gap_seconds: float = Field(
        1.0, gt=0, le=3600, description="seconds (capture times) a track may go unseen and go on"
    )
    face_tracker_max_tracks: int = Field(
        64, ge=1, le=10_000, description="open tracks kept per camera; the least recently seen are closed first"
    )
    face_tracker_max_cameras: int = Field(
        1000, ge=1, le=1_000_000, description="cameras whose tracks a worker keeps; the longest idle is forgotten"
    )
    # Embed only what is new (faces/reuse.py): a face continuing an identified visit, or one whose visit has
    # its faces for distinct visitors, carries the visit's identity instead of a new embedding (5-14 ms a face on
    # OpenVINO, ~90 on dlib's own)
    face_reembed_frames: int = Field(
        10, ge=1, le=10_000, description="frames after which a face continuing an identified visit is embedded "
        "and matched again (1: every face every frame; face history kept: always every face)"
    )
    face_reembed_min_iou: float = Field(
        0.5, gt=0, le=1, description="overlap (IoU) with the box of the visit's last embedded face below which a "
        "continuing face is embedded again (it moved or turned a lot)"
    )
    face_recheck_unknown_frames: int = Field(
        5, ge=1, le=10_000, description="frames after which a face continuing a visit whose last embedded face "
        "matched nobody is embedded and matched again (1: every frame; an enrolled person first seen turned "
        "away is named up to this many frames late)"
    )
    # Distinct visitors, opt-in (faces/visitors.py): visits grouped by anonymous embeddings into visitor ids
    face_distinct_visitors: bool = Field(
        False, description="true to embed each visit's face and give it an anonymous random visitor id shared "
        "with the visits of the same person (any camera) within the window; false: nothing embedded for visitors"
    )
    face_visitor_match_threshold: float | None = Field(
        None, ge=-1, le=1, description="cosine similarity from which two visits are one visitor; empty: 0.96 for "
        "dlib (measured on the arcade clip, BENCHMARKS.md), 0.7 for inception_resnet_v1 (not measured)"
    )
    face_visitor_faces: int = Field(
        5, ge=1, le=1000, description="faces of a visit whose mean embedding is clustered (a shorter visit: all "
        "of its faces, once its track ends); 5: measured with the threshold, BENCHMARKS.md \"Distinct visitors\""
    )
    face_visitor_window_seconds: float = Field(
        3600.0, gt=0, le=31 * 86400, description="capture-time window in which a returning person is the same "
        "visitor"
    )
    face_visitor_embedding_retention_hours: float = Field(
        24.0, gt=0, description="visionstream people purge deletes anonymous visitor embeddings stored longer "
        "ago than this; visits keep their visitor ids"
    )
    face_visitor_max_candidates: int = Field(
        5000, ge=1, le=1_000_000, description="most stored visits within the window a new visit is compared with"
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
    # The dead-letter breaker (faults.py: DeadLetterBreaker): a bug that fails every message at one stage
    # holds the agent instead of dead-lettering the topic. 100 in a minute: a bug reaches it in about a second
    # at 100 images/s; a poison message, or a few dozen corrupt uploads, never does.
    breaker_dead_letters: int = Field(
        100, ge=0, le=1_000_000, description="dead letters of one stage and error class within "
        "VISIONSTREAM_BREAKER_WINDOW_SECONDS that trip the breaker: the agent then takes no more work until the "
        "fix is deployed and the dead letters retried (0: no breaker)"
    )
    breaker_window_seconds: float = Field(
        60.0, gt=0, le=86_400, description="the window VISIONSTREAM_BREAKER_DEAD_LETTERS counts over"
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

    # Web surfaces: who may read the dashboard and the worker's /stats pages (web_access.py)
    dashboard_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated host names the dashboard answers to besides 127.0.0.1, "
        "localhost, ::1 and its bind address (a request naming another host, as DNS rebinding does, is refused)"
    )
    dashboard_token: SecretStr | None = Field(
        None, description="token the dashboard asks for (open /?token=... once; a cookie keeps it), required when "
        "VISIONSTREAM_DASHBOARD_HOST is not a loopback address"
    )
    dashboard_max_clients: int = Field(
        8, ge=1, le=1000, description="browsers connected to the dashboard at once; more are refused (503)"
    )
    web_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated host names the worker's /stats pages answer to besides "
        "127.0.0.1, localhost, ::1 and its bind address"
    )
    web_stats_token: SecretStr | None = Field(
        None, description="token (Authorization: Bearer) the worker's /stats pages require; without one they "
        "answer only when VISIONSTREAM_WEB_HOST is a loopback address and are off otherwise (/healthz, /readyz "
        "and /metrics are never gated: probes and Prometheus read them)"
    )

    @field_validator("dashboard_token", "web_stats_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if value == "" else value  # an empty line in an env file or a Secret: no token

    @field_validator("dashboard_allowed_hosts", "web_allowed_hosts", mode="before")
    @classmethod
    def _host_names(cls, value: object) -> list[str]:
        names = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        return [name.strip().lower() for name in names if name.strip()]

    @field_validator("image_analyzers", "frame_analyzers", mode="before")
    @classmethod
    def _analyzer_names(cls, value: object) -> list[str]:
        names = comma_list(value)
        if len(set(names)) != len(names):
            raise ValueError(f"must name each analyzer once (got {value!r})")
        for name in names:
            check_analyzer_name(name)  # its ValueError names the analyzers there are
        return names

    @field_validator("s3_allowed_buckets", mode="before")
    @classmethod
    def _bucket_names(cls, value: object) -> list[str]:
        names = comma_list(value)
        for name in names:
            if not is_bucket_name(name):
                raise ValueError(f"bucket {name[:70]!r} is not a valid S3 bucket name")
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

    @field_validator("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password", "model_cache_dir",
                     mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # An empty variable (a Secret's placeholder, an env file's "NAME=") means "not set".
        return None if value == "" else value

    @field_validator("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_sasl_password_file",
                     "s3_ca_bundle", mode="before")
    @classmethod
    def _security_file_exists(cls, value: object) -> Path | None:
        if value is None or str(value).strip() == "":
            return None
        path = Path(str(value)).expanduser()
        if not path.is_file():
            raise ValueError(f"file {path} does not exist or is not a file")
        return path

    @field_validator("kafka_ssl_cafile", "s3_ca_bundle")
    @classmethod
    def _ca_file_parses(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                ssl.create_default_context(cafile=str(value))
            except PermissionError as exc:  # e.g. a Secret mounted 0440 for a group the process is not in
                raise ValueError(f"{value} cannot be read by this process ({exc.strerror})") from None
            except (ssl.SSLError, ValueError) as exc:
                raise ValueError(f"{value} holds no PEM CA certificate ({exc})") from None
        return value

    @model_validator(mode="after")
    def _kafka_security_consistent(self) -> Settings:
        # Each check names the variables to change: a half-configured client fails here, at start, instead of
        # at its first connection (or silently sending in clear what was meant to be encrypted).
        protocol = self.kafka_security_protocol
        sasl = protocol.startswith("SASL_")
        tls = protocol.endswith("SSL")
        if self.kafka_sasl_password is not None and self.kafka_sasl_password_file is not None:
            raise ValueError("set VISIONSTREAM_KAFKA_SASL_PASSWORD or VISIONSTREAM_KAFKA_SASL_PASSWORD_FILE, not both")
        if self.kafka_sasl_password_file is not None:
            try:
                password = self.kafka_sasl_password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:  # e.g. a Secret mounted 0440 for a group the process is not in
                raise ValueError(f"VISIONSTREAM_KAFKA_SASL_PASSWORD_FILE: {self.kafka_sasl_password_file} cannot "
                                 f"be read by this process ({exc.strerror})") from None
            if not password:
                raise ValueError(f"VISIONSTREAM_KAFKA_SASL_PASSWORD_FILE: {self.kafka_sasl_password_file} is empty")
            self.kafka_sasl_password = SecretStr(password)
        if sasl:
            if self.kafka_sasl_mechanism is None:
                raise ValueError(f"VISIONSTREAM_KAFKA_SECURITY_PROTOCOL={protocol} needs "
                                 "VISIONSTREAM_KAFKA_SASL_MECHANISM: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
            if self.kafka_sasl_username is None or self.kafka_sasl_password is None:
                raise ValueError(f"VISIONSTREAM_KAFKA_SASL_MECHANISM={self.kafka_sasl_mechanism} needs "
                                 "VISIONSTREAM_KAFKA_SASL_USERNAME and VISIONSTREAM_KAFKA_SASL_PASSWORD (or _FILE)")
        elif self.kafka_sasl_mechanism or self.kafka_sasl_username or self.kafka_sasl_password:
            raise ValueError(f"SASL settings are set but VISIONSTREAM_KAFKA_SECURITY_PROTOCOL={protocol} never sends "
                             "them: set it to SASL_SSL (or SASL_PLAINTEXT), or unset the SASL settings")
        tls_files = {"VISIONSTREAM_KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
                     "VISIONSTREAM_KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
                     "VISIONSTREAM_KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile}
        if not tls and any(tls_files.values()):
            names = ", ".join(name for name, path in tls_files.items() if path)
            raise ValueError(f"{names} set but VISIONSTREAM_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS: "
                             "set it to SSL or SASL_SSL, or unset them")
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ValueError("VISIONSTREAM_KAFKA_SSL_KEYFILE needs VISIONSTREAM_KAFKA_SSL_CERTFILE (the client "
                             "certificate of that key)")
        if self.kafka_ssl_certfile is not None:
            try:
                ssl.create_default_context().load_cert_chain(
                    str(self.kafka_ssl_certfile), str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None)
            except (ssl.SSLError, ValueError) as exc:
                fix = ("its key is not in that file: set VISIONSTREAM_KAFKA_SSL_KEYFILE to the key's PEM file"
                       if self.kafka_ssl_keyfile is None else
                       "they must be a PEM certificate and its unencrypted PEM private key")
                raise ValueError(f"VISIONSTREAM_KAFKA_SSL_CERTFILE={self.kafka_ssl_certfile}: cannot load the client "
                                 f"certificate ({exc}); {fix}") from None
        return self

    @model_validator(mode="after")
    def _s3_credentials_paired(self) -> Settings:
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError(
                "set both VISIONSTREAM_S3_ACCESS_KEY_ID and VISIONSTREAM_S3_SECRET_ACCESS_KEY, or neither"
            )
        return self

    @model_validator(mode="after")
    def _inference_backend_fits(self) -> Settings:
        backend = self.inference_backend
        if backend in ("onnxruntime", "openvino") and self.device == "cuda":
            raise ValueError(f"VISIONSTREAM_INFERENCE_BACKEND={backend} runs on the CPU only: set "
                             "VISIONSTREAM_DEVICE to cpu or auto, or the backend to torch or auto")
        allowed = EXPORTED_BACKEND_PRECISIONS.get(backend)
        if allowed and self.precision not in allowed:
            raise ValueError(f"VISIONSTREAM_INFERENCE_BACKEND={backend} cannot run VISIONSTREAM_PRECISION="
                             f"{self.precision}: set the precision to {' or '.join(allowed)}, or the backend to torch")
        return self

    @model_validator(mode="after")
    def _some_analyzer(self) -> Settings:
        if not self.image_analyzers and not self.frame_analyzers:
            raise ValueError("set VISIONSTREAM_IMAGE_ANALYZERS or VISIONSTREAM_FRAME_ANALYZERS: a worker with "
                             "neither has nothing to do")
        return self

    @property
    def allowed_buckets(self) -> frozenset[str]:
        """The buckets an image request may name: the configured one and VISIONSTREAM_S3_ALLOWED_BUCKETS."""
        return frozenset((self.s3_bucket, *self.s3_allowed_buckets))

    @property
    def kafka_bootstrap(self) -> str:
        """aiokafka's bootstrap_servers form of broker_url."""
        return self.broker_url[len("kafka://") :].replace(";", ",")

    def topic_names(self) -> list[str]:
        return [self.images_topic, self.predictions_topic, self.image_faces_topic, self.dead_letter_topic,
                self.replay_topic, self.frame_replay_topic,
                self.frames_topic, self.processed_frames_topic, self.identified_faces_topic]


def analyzer_entry_points() -> list[str]:
    return sorted(point.name for point in importlib.metadata.entry_points(group=ANALYZER_ENTRY_POINTS))


def check_analyzer_name(name: str) -> None:
    """Raise ValueError unless ``name`` is an installed entry point or a builder path (nothing imported)."""
    known = analyzer_entry_points()
    if name in known:
        return
    module, _, attribute = name.partition(":")
    if module and attribute and all(part.isidentifier() for part in (*module.split("."), *attribute.split("."))):
        return
    raise ValueError(f"{name!r} is not an analyzer: use one of {', '.join(known)}, or a builder function as "
                     "module.path:function")


def is_bucket_name(bucket: str) -> bool:
    """A name S3 accepts for a bucket (3-63 of a-z 0-9 . -, no "..", not an IP address)."""
    return bool(_BUCKET_NAME.fullmatch(bucket)) and ".." not in bucket and not _IP_ADDRESS.fullmatch(bucket)


def comma_list(value: object) -> list[str]:
    """A list setting's value: "a, b" from the environment, or a list given as one."""
    return [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else list(value)  # type: ignore[call-overload]


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
    shown = ("" if value is None or "secret" in field or "password" in field or "username" in field
             or field == "database_url" else f"={value!r}")
    return f"{env_name(field)}{shown}: {error['msg']}.{hint}"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings once; raise :class:`SettingsError` naming each bad variable and its fix."""
    env_file = os.environ.get(ENV_FILE_VARIABLE) or None
    if env_file is not None and not Path(env_file).is_file():
        raise SettingsError(f"{ENV_FILE_VARIABLE}={env_file!r}: no such file. Fix: name an existing file of "
                            "VISIONSTREAM_* lines, or unset it to read the environment alone")
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors(include_url=False)]
        raise SettingsError("invalid visionstream settings:\n  " + "\n  ".join(lines)) from None
