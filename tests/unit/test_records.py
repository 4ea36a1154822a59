"""Parsing of images-topic messages: every way a message can be malformed gets a clear reason."""

import json

import pytest

from visionstream.core.records import (
    MalformedMessage,
    key_of_malformed,
    parse_image_request,
)
from visionstream.images.producer import encode_request


def test_producer_encoding_round_trips():
    request = parse_image_request(b"k", encode_request("a/b c'\"\\ü.jpg", "bucket-1"))
    assert request.image_key == "a/b c'\"\\ü.jpg"
    assert request.bucket == "bucket-1"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty message value"),
        (b"\xff\xfe not json", "value is not JSON"),
        (b"[1, 2]", "value is not a JSON object"),
        (json.dumps({"image_key": "x", "v": 99}).encode(), "unknown record version 99"),
        (json.dumps({"bucket": "b"}).encode(), "image_key missing"),
        (json.dumps({"image_key": 5}).encode(), "image_key missing"),
        (json.dumps({"image_key": "x", "bucket": 3}).encode(), "bucket is not a string"),
    ],
)
def test_malformed_messages_are_named(value, reason):
    with pytest.raises(MalformedMessage, match=reason):
        parse_image_request(b"key", value)


def test_key_of_malformed_keeps_undecodable_bytes_visible():
    assert key_of_malformed(None) == ""
    assert key_of_malformed(b"ok") == "ok"
    assert key_of_malformed(b"\xff") == "\\xff"



# What the sink publishes on the predictions topic (plain JSON agreeing with the database) is checked on the
# records a real worker published: test_classify_e2e.py::test_keys_to_results_end_to_end.
