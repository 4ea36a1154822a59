"""The Kafka/S3 security settings: what each combination builds, and each misconfiguration stopped at load."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest

from visionstream.core.kafka_client import (
    explain_kafka_failure,
    faust_broker_credentials,
    kafka_client_kwargs,
)
from visionstream.core.s3 import client_kwargs
from visionstream.dev.certs import CertificateAuthority
from visionstream.settings import SettingsError, load_settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority()
    client = ca.issue(folder, "client", ["worker"], client=True)
    return {"ca": ca.write_ca(folder / "ca.pem"), "cert": client.cert, "key": client.key}


def settings(**fields: object):
    return load_settings(**fields)


def test_plaintext_is_the_default_and_sends_nothing_else() -> None:
    kwargs = kafka_client_kwargs(settings(broker_url="kafka://a:9092;b:9093"))
    assert kwargs == {"bootstrap_servers": "a:9092,b:9093", "security_protocol": "PLAINTEXT"}
    assert faust_broker_credentials(settings()) is None


def test_sasl_ssl_scram_builds_the_same_login_for_aiokafka_and_faust(pki: dict[str, Path]) -> None:
    s = settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                 kafka_sasl_username="alice", kafka_sasl_password="s3cret", kafka_ssl_cafile=pki["ca"])
    kwargs = kafka_client_kwargs(s)
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("alice", "s3cret")
    context = kwargs["ssl_context"]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1  # only the given CA, not the system's
    credentials = faust_broker_credentials(s)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.mechanism.value == "SCRAM-SHA-512"
    assert (credentials.username, credentials.password) == ("alice", "s3cret")
    assert "s3cret" not in repr(s) and "alice" not in repr(s)


def test_sasl_plaintext_plain_has_no_tls() -> None:
    s = settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                 kafka_sasl_username="key", kafka_sasl_password="secret")
    assert "ssl_context" not in kafka_client_kwargs(s)
    assert faust_broker_credentials(s).protocol.value == "SASL_PLAINTEXT"


def test_mutual_tls_loads_the_client_certificate(pki: dict[str, Path]) -> None:
    s = settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki["ca"], kafka_ssl_certfile=pki["cert"],
                 kafka_ssl_keyfile=pki["key"], kafka_ssl_check_hostname=False)
    kwargs = kafka_client_kwargs(s)
    assert kwargs["security_protocol"] == "SSL" and not kwargs["ssl_context"].check_hostname
    credentials = faust_broker_credentials(s)
    assert isinstance(credentials, faust.SSLCredentials) and credentials.protocol.value == "SSL"


def test_password_from_a_mounted_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    s = settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256",
                 kafka_sasl_username="u", kafka_sasl_password_file=secret)
    assert kafka_client_kwargs(s)["sasl_plain_password"] == "from-file"


@pytest.mark.parametrize(("fields", "names"), [
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u", "kafka_sasl_password": "p"},
     "VISIONSTREAM_KAFKA_SASL_MECHANISM"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "u"},
     "VISIONSTREAM_KAFKA_SASL_PASSWORD"),
    ({"kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "u", "kafka_sasl_password": "p"},
     "VISIONSTREAM_KAFKA_SECURITY_PROTOCOL=PLAINTEXT never sends them"),
    ({"kafka_security_protocol": "SASLSSL"}, "VISIONSTREAM_KAFKA_SECURITY_PROTOCOL"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI"}, "VISIONSTREAM_KAFKA_SASL_MECHANISM"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"},
     "VISIONSTREAM_KAFKA_SSL_CAFILE"),
])
def test_misconfigurations_name_the_setting(fields: dict[str, object], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        settings(**fields)


def test_a_ca_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(SettingsError, match="VISIONSTREAM_KAFKA_SSL_CAFILE.*holds no PEM CA certificate"):
        settings(kafka_security_protocol="SSL", kafka_ssl_cafile=garbage)
    with pytest.raises(SettingsError, match="VISIONSTREAM_S3_CA_BUNDLE.*holds no PEM CA certificate"):
        settings(s3_ca_bundle=garbage)


def test_client_certificate_without_its_key_is_refused(pki: dict[str, Path]) -> None:
    with pytest.raises(SettingsError, match="VISIONSTREAM_KAFKA_SSL_CERTFILE.*VISIONSTREAM_KAFKA_SSL_KEYFILE"):
        settings(kafka_security_protocol="SSL", kafka_ssl_certfile=pki["cert"])
    with pytest.raises(SettingsError, match="VISIONSTREAM_KAFKA_SSL_KEYFILE needs"):
        settings(kafka_security_protocol="SSL", kafka_ssl_keyfile=pki["key"])
    with pytest.raises(SettingsError, match="does not use TLS"):
        settings(kafka_ssl_cafile=pki["ca"])


def test_errors_never_show_credentials() -> None:
    with pytest.raises(SettingsError) as error:
        settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="user-x", kafka_sasl_password="pw-y")
    assert "user-x" not in str(error.value) and "pw-y" not in str(error.value)


def test_s3_ca_bundle_reaches_boto(pki: dict[str, Path]) -> None:
    assert client_kwargs(settings(s3_ca_bundle=pki["ca"]))["verify"] == str(pki["ca"])
    assert "verify" not in client_kwargs(settings())


def test_failures_are_explained_by_setting() -> None:
    s = settings(kafka_security_protocol="SSL")
    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    untrusted.verify_message = "unable to get local issuer certificate"
    assert "VISIONSTREAM_KAFKA_SSL_CAFILE" in explain_kafka_failure(s, "h", 1, untrusted)
    wrong_host = ssl.SSLCertVerificationError(1, "certificate verify failed")
    wrong_host.verify_message = "Hostname mismatch, certificate is not valid for 'h'."
    assert "VISIONSTREAM_BROKER_URL" in explain_kafka_failure(s, "h", 1, wrong_host)
    assert explain_kafka_failure(s, "h", 1, ConnectionRefusedError()) is None  # an outage, not a setting


def test_empty_variables_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MECHANISM", "USERNAME", "PASSWORD"):
        monkeypatch.setenv(f"VISIONSTREAM_KAFKA_SASL_{name}", "")
    assert kafka_client_kwargs(settings())["security_protocol"] == "PLAINTEXT"
