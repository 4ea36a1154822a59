"""core/s3.py's ObjectReader, the hot GET, without a server: signed as botocore signs, its error answers read as
botocore's (tests/integration/test_s3_reader.py runs it against the local S3)."""

from __future__ import annotations

import datetime as dt

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from visionstream.core.faults import Fault
from visionstream.core.s3 import ObjectReader, _client_error, s3_fault

NOW = dt.datetime(2026, 12, 3, 1, 2, 3, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize("key", ["plain/key.jpg", "spaces and ümlauts/+=&?#%.jpg", "a/../b.jpg", "~tilde/*!'()"])
def test_signature_is_botocores(monkeypatch, key, token):
    from urllib.parse import quote

    reader = ObjectReader(None, "http://127.0.0.1:8333/", "eu-west-3", None, max_bytes=1 << 20)
    path = f"/bucket/{quote(key, safe='/~')}"
    ours = reader.signed_headers(path, ("AKID", "secret/key+", token), NOW)

    request = AWSRequest(method="GET", url=f"http://127.0.0.1:8333{path}", headers={})
    monkeypatch.setattr("botocore.auth.datetime.datetime", type("Frozen", (dt.datetime,), {
        "utcnow": classmethod(lambda cls: NOW.replace(tzinfo=None)),
        "now": classmethod(lambda cls, tz=None: NOW if tz else NOW.replace(tzinfo=None))}))
    S3SigV4Auth(Credentials("AKID", "secret/key+", token), "s3", "eu-west-3").add_auth(request)
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours["x-amz-date"] == request.headers["X-Amz-Date"]


@pytest.mark.parametrize(("status", "body", "fault"), [
    (404, b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>", Fault.BAD_MESSAGE),
    (403, b"<Error><Code>AccessDenied</Code></Error>", Fault.BAD_MESSAGE),
    (403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>", Fault.OUTAGE),
    (503, b"<Error><Code>SlowDown</Code></Error>", Fault.OUTAGE),
    (500, b"", None),
])
def test_error_answers_classify_like_botocores(status, body, fault):
    error = _client_error(status, body)
    assert isinstance(error, ClientError) and error.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert s3_fault(error) is fault
