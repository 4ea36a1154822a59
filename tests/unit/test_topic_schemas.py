"""The topics' contract (visionstream/schemas): every topic has a schema, every record the product's builders
write validates against its topic's schema, and what a schema accepts on an input topic the worker accepts."""

from __future__ import annotations

import json

import jsonschema
import pytest

from visionstream.classification.sinks import prediction_records
from visionstream.core.faults import REASON_LIMIT, BadMessage
from visionstream.core.pipeline import AnalyzedImage, Failed, Outcome
from visionstream.core.records import SourceRef, connect_error_headers, parse_image_request
from visionstream.core.sinks import error_records
from visionstream.faces.detector import DetectedFace, Faces
from visionstream.faces.identifier import Identified
from visionstream.faces.identities import Match
from visionstream.faces.sinks import image_face_topics
from visionstream.frames.records import frame_headers, parse_frame
from visionstream.frames.sinks import frame_topics
from visionstream.images.producer import encode_request
from visionstream.schemas import message_errors as errors
from visionstream.schemas import schemas
from visionstream.settings import Settings

TOPIC_SETTINGS = sorted(name for name in Settings.model_fields if name.endswith("_topic"))
JPEG = b"\xff\xd8\xff\xe0" + bytes(60) + b"\xff\xd9"


def test_every_topic_has_one_valid_schema():
    for name, schema in schemas().items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert name == "common.json" or schema["x-value-encoding"] in ("json", "bytes"), name
    described = [setting for schema in schemas().values() for setting in schema.get("x-topic-settings", ())]
    assert sorted(described) == TOPIC_SETTINGS
    settings = Settings.model_construct()  # the defaults, unvalidated: nothing here reads the environment
    assert sorted(settings.topic_names()) == sorted(getattr(settings, name) for name in TOPIC_SETTINGS)


def _face(x: float) -> DetectedFace:
    return DetectedFace((x, 10.0, x + 40.0, 60.0), 0.99, tuple((x + i, 20.0 + i) for i in range(5)))


def _results() -> list[AnalyzedImage]:
    """An image classified, one with two faces (one identified, one candidate below the floor), one with none."""
    faces = Faces([_face(1.0), _face(100.0)], below_floor=[_face(300.0)])
    identified = Identified(embeddings=None, matches=[Match("alice", 0.93, "dlib@19.24"), None])
    return [
        AnalyzedImage("cats/1.jpg", SourceRef("vs-images", 1, 7),
                      {"classify": [(281, "tabby", 0.61), (282, "tiger cat", 0.2)], "faces": Faces()}),
        AnalyzedImage("people/ü 2.jpg", SourceRef("vs-images", 0, 3),
                      {"classify": [(1, "goldfish", 0.5)], "faces": faces, "identify": identified}),
    ]


class _Topic:
    def __init__(self, setting: str) -> None:
        self.setting = setting


def _check_records(records, count: int) -> None:
    assert len(records) == count
    for topic, key, record in records:
        assert errors(topic.setting, key.encode(), record.dumps()) == [], (topic.setting, record)


def test_prediction_records_match_the_schema():
    outcome = Outcome(results=_results(), computed_at=1_700_000_000.5)
    records = [(_Topic("predictions_topic"), r.image_key, r)
               for r in prediction_records(outcome, "squeezenet1_1@abc", "host-1")]
    _check_records(records, 2)


def test_image_face_records_match_the_schema():
    outcome = Outcome(results=_results(), computed_at=1_700_000_000.5)
    records = image_face_topics(_Topic("image_faces_topic"), _Topic("identified_faces_topic"),
                                "mtcnn@2.6.0", "host-1")(outcome)
    _check_records(records, 3)  # two images' faces, alice once
    assert [topic.setting for topic, _, _ in records].count("identified_faces_topic") == 1


def test_processed_frame_records_match_the_schema():
    frames = [parse_frame(b"door", JPEG, frame_headers(seq, 1_700_000_000.25 + seq, 640, 480)) for seq in range(3)]
    identified = Identified(embeddings=None, matches=[Match("bob", 0.9, "dlib@19.24")])
    outcome = Outcome(results=[
        AnalyzedImage(frames[0].frame_key, SourceRef("vs-frames", 0, 0),
                      {"faces": Faces([_face(5.0)]), "identify": identified, "visits": ["v-1"]},
                      frames[0], (320, 240)),  # the JPEG's own size differs from the headers' claim
        AnalyzedImage(frames[1].frame_key, SourceRef("vs-frames", 0, 1), {"faces": Faces()}, frames[1], (640, 480)),
        AnalyzedImage(frames[2].frame_key, SourceRef("vs-frames", 0, 2), {}, frames[2], skip_reason="lag 9.1s"),
    ], computed_at=1_700_000_003.0)
    records = frame_topics(_Topic("processed_frames_topic"), _Topic("identified_faces_topic"), "host-1")(outcome)
    _check_records(records, 4)
    assert json.loads(records[0][2].dumps())["header_size"] == "640x480"


def test_dead_letters_and_their_connect_headers_match_the_schema():
    ref = SourceRef("vs-images", 2, 41)
    outcome = Outcome(failed=[
        Failed.of("cats/1.jpg", ref, "fetch", BadMessage("NoSuchKey")),
        Failed.of("", ref, "parse", BadMessage("value is not JSON: Expecting value: line 1 column 1 (char 0)")),
        Failed.of("k", ref, "classify", BadMessage.from_exception(RuntimeError("x" * 5000), attempts=5)),
        Failed.of("k2", ref, "store", BadMessage("OSError: cannot reach postgresql://vs:hunter2@db:5432/vs")),
    ], computed_at=1_700_000_000.0)
    letters = error_records(outcome, "host-1")
    headers = [dict(connect_error_headers(letter)) for letter in letters]
    for letter, header in zip(letters, headers, strict=True):
        assert errors("dead_letter_topic", letter.image_key.encode(), letter.dumps(), header) == []
        assert (header["__connect.errors.topic"], header["__connect.errors.partition"],
                header["__connect.errors.offset"]) == (b"vs-images", b"2", b"41")
    assert [h["__connect.errors.exception.class.name"] for h in headers] == [
        b"NoSuchKey", b"visionstream.core.records.MalformedMessage", b"RuntimeError", b"OSError"]
    assert len(headers[2]["__connect.errors.exception.message"].decode()) == REASON_LIMIT  # bounded like the reason
    assert headers[3]["__connect.errors.exception.message"] == b"OSError: cannot reach postgresql://***@db:5432/vs"
    # masked where the reason is made, so the value (and processing_errors, the log) agree with the header
    assert letters[3].reason == "OSError: cannot reach postgresql://***@db:5432/vs"
    assert all(b"hunter2" not in letter.dumps() and not any(b"hunter2" in v for v in header.values())
               for letter, header in zip(letters, headers, strict=True))


# What a schema accepts on an input topic, the worker parses; what the worker refuses, the schema refuses.
REQUESTS = [
    (json.dumps({"image_key": "a/b.jpg"}), True),
    (json.dumps({"image_key": "a/b.jpg", "bucket": "photos-2", "v": 1}), True),
    (json.dumps({"image_key": "a/b.jpg", "bucket": None, "extra": [1]}), True),
    (json.dumps({"image_key": "x", "v": 2}), False),
    (json.dumps({"image_key": ""}), False),
    (json.dumps({"image_key": 5}), False),
    (json.dumps({"image_key": "x", "bucket": "Not_A_Bucket"}), False),
    (json.dumps({"image_key": "x", "bucket": 3}), False),
    (json.dumps({"image_key": "a\u0000b"}), False),
    (json.dumps({"bucket": "photos"}), False),
    ("[1, 2]", False),
]


@pytest.mark.parametrize(("value", "valid"), REQUESTS)
def test_image_request_schema_agrees_with_the_worker(value: str, valid: bool):
    assert (errors("images_topic", b"k", value.encode()) == []) is valid
    if valid:
        parse_image_request(b"k", value.encode())
    else:
        with pytest.raises(ValueError):
            parse_image_request(b"k", value.encode())


def test_the_producer_writes_what_the_schema_describes():
    assert errors("images_topic", "ü/1.jpg".encode(), encode_request("ü/1.jpg", "photos")) == []


def _headers(**changes):
    headers = dict(frame_headers(12, 1_700_000_000.5, 640, 480))
    headers.update({name.replace("_", "-"): value for name, value in changes.items() if value is not None})
    for name in [name for name, value in changes.items() if value is None]:
        del headers[name.replace("_", "-")]
    return headers


FRAMES = [
    (b"door", JPEG, _headers(), True),
    (b"door", b"", _headers(vs_s3_key=b"frames/door/12.jpg"), True),
    (b"door", JPEG, _headers(vs_v=b"2"), False),
    (b"door", JPEG, _headers(vs_seq=b"-1"), False),
    (b"door", JPEG, _headers(vs_width=b"0"), False),
    (b"door", JPEG, _headers(vs_captured=b"nan"), False),
    (b"door", JPEG, _headers(vs_height=None), False),
    (b"door", b"", _headers(), False),
    (b"", JPEG, _headers(), False),
]


@pytest.mark.parametrize(("key", "value", "headers", "valid"), FRAMES)
def test_frame_schema_agrees_with_the_worker(key, value, headers, valid):
    assert (errors("frames_topic", key, value, headers) == []) is valid
    if valid:
        parse_frame(key, value, headers)
    else:
        with pytest.raises(ValueError):
            parse_frame(key, value, headers)
