"""How every Kafka client of visionstream connects: bootstrap servers, TLS and SASL, from one Settings object.

The Faust app takes :func:`faust_broker_credentials`; every aiokafka producer, consumer and admin client takes
``**kafka_client_kwargs(settings)``. :func:`check_kafka_connection` makes one connection the way those clients
do and turns a refused login, an untrusted certificate or a protocol mismatch into a
:class:`KafkaSecurityError` naming the setting to fix: aiokafka itself only logs why and then reports
"Unable to bootstrap", which would read like an outage and be waited out forever.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import faust
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, UnsupportedSaslMechanismError
from faust.types.auth import CredentialsT

from visionstream.settings import Settings


class KafkaSecurityError(RuntimeError):
    """A broker refused this client's TLS or SASL configuration; the message names the setting to fix."""


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL clients (None for the plaintext protocols)."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.check_hostname = settings.kafka_ssl_check_hostname
    if settings.kafka_ssl_certfile is not None:
        keyfile = str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None
        context.load_cert_chain(str(settings.kafka_ssl_certfile), keyfile)
    return context


def _sasl_login(settings: Settings) -> tuple[str, str]:
    assert settings.kafka_sasl_username is not None and settings.kafka_sasl_password is not None  # settings checked
    return settings.kafka_sasl_username.get_secret_value(), settings.kafka_sasl_password.get_secret_value()


def kafka_security_kwargs(settings: Settings) -> dict[str, Any]:
    """aiokafka's security arguments: security_protocol, ssl_context and the sasl_* ones."""
    kwargs: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = kafka_ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        username, password = _sasl_login(settings)
        kwargs.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=username,
                      sasl_plain_password=password)
    return kwargs


def kafka_client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments every AIOKafkaProducer/Consumer/AdminClient of visionstream is built with."""
    return {"bootstrap_servers": settings.kafka_bootstrap, **kafka_security_kwargs(settings)}


def faust_broker_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for these settings (None: plaintext)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = kafka_ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    username, password = _sasl_login(settings)
    # Faust picks SASL_SSL when given a context and SASL_PLAINTEXT without one.
    return faust.SASLCredentials(username=username, password=password, ssl_context=context,
                                 mechanism=settings.kafka_sasl_mechanism)


def _brokers(settings: Settings) -> list[tuple[str, int]]:
    brokers = []
    for address in settings.kafka_bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        brokers.append((host.strip("[]") or address, int(port) if port.isdigit() else 9092))
    return brokers


def explain_kafka_failure(settings: Settings, host: str, port: int, exc: BaseException) -> str | None:
    """Which setting a failed connection to ``host:port`` points at, or None when it looks like an outage."""
    protocol = settings.kafka_security_protocol
    where = f"Kafka broker {host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or str(exc)
        if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
            return (f"{where}: its TLS certificate is not for {host!r} ({reason}): put the name the certificate "
                    "holds in VISIONSTREAM_BROKER_URL, or (last resort) VISIONSTREAM_KAFKA_SSL_CHECK_HOSTNAME=false")
        if "expired" in reason.lower():
            return f"{where}: its TLS certificate has expired ({reason}); the broker needs a new certificate"
        return (f"{where}: its TLS certificate is not trusted ({reason}): set VISIONSTREAM_KAFKA_SSL_CAFILE to the "
                "PEM file of the CA that signed it")
    if isinstance(exc, ssl.SSLError):
        reason = str(exc)
        if "WRONG_VERSION_NUMBER" in reason or "wrong version number" in reason or "record layer" in reason:
            return (f"{where} does not speak TLS (VISIONSTREAM_KAFKA_SECURITY_PROTOCOL={protocol}, {reason}): use "
                    "the broker's TLS listener in VISIONSTREAM_BROKER_URL, or PLAINTEXT/SASL_PLAINTEXT")
        if "CERTIFICATE_REQUIRED" in reason or "certificate required" in reason or "ALERT_HANDSHAKE" in reason:
            return (f"{where} refused the TLS handshake ({reason}): it wants a client certificate, set "
                    "VISIONSTREAM_KAFKA_SSL_CERTFILE and VISIONSTREAM_KAFKA_SSL_KEYFILE")
        return f"{where}: TLS handshake failed ({reason}); check the VISIONSTREAM_KAFKA_SSL_* settings"
    if isinstance(exc, UnsupportedSaslMechanismError):
        return (f"{where}: VISIONSTREAM_KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism} is not enabled there "
                f"({exc}): set it to one the broker enables")
    if isinstance(exc, KafkaError) and "auth" in type(exc).__name__.lower():
        return (f"{where} refused the SASL {settings.kafka_sasl_mechanism} login ({type(exc).__name__}): check "
                "VISIONSTREAM_KAFKA_SASL_USERNAME and VISIONSTREAM_KAFKA_SASL_PASSWORD (and the mechanism)")
    if isinstance(exc, KafkaConnectionError) and "closed" in str(exc).lower():
        # A TLS listener drops a plaintext request; an authenticating one drops requests sent before a login;
        # with TLS 1.3 a listener that wants a client certificate closes after the handshake. A broker that
        # merely restarts refuses the TCP connection instead.
        hints = []
        if not protocol.endswith("SSL"):
            hints.append("if that listener expects TLS, set it to SSL or SASL_SSL")
        elif settings.kafka_ssl_certfile is None:
            hints.append("if it wants a client certificate (mutual TLS), set VISIONSTREAM_KAFKA_SSL_CERTFILE and "
                         "VISIONSTREAM_KAFKA_SSL_KEYFILE")
        else:
            hints.append("it may not trust the CA of VISIONSTREAM_KAFKA_SSL_CERTFILE")
        if not protocol.startswith("SASL_"):
            hints.append("if it expects a login, set it to SASL_SSL or SASL_PLAINTEXT with the "
                         "VISIONSTREAM_KAFKA_SASL_* settings")
        return (f"{where} closed the connection before answering (VISIONSTREAM_KAFKA_SECURITY_PROTOCOL={protocol}): "
                + "; ".join(hints))
    return None


async def check_kafka_connection(settings: Settings, timeout: float = 10.0) -> None:
    """Connect to the bootstrap brokers as the clients will; raise KafkaSecurityError if a broker refuses
    this configuration. Unreachable brokers (an outage) are left to the clients' own retries."""
    kwargs = kafka_security_kwargs(settings)
    problems = []
    for host, port in _brokers(settings):
        try:
            conn = await asyncio.wait_for(
                create_conn(host, port, client_id=f"{settings.app_id}-check",
                            request_timeout_ms=int(timeout * 1000), **kwargs), timeout)
        except (OSError, KafkaError, asyncio.TimeoutError) as exc:
            problem = explain_kafka_failure(settings, host, port, exc)
            if problem is not None:
                problems.append(problem)
            continue
        conn.close()
        return  # one broker accepted us: the others are the clients' business, like bootstrap
    if problems:
        raise KafkaSecurityError("; ".join(problems))
