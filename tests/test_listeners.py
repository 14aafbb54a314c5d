"""TLS and unix-socket listeners, with real sockets and the stdlib's TLS client: certificates checked at
``check`` time, client certificates, handshake faults that are the client's, a renewed certificate on a kept
socket by reload, and unix sockets that replace a stale file, take their mode and are removed at shutdown."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
from pathlib import Path

import pytest
import trustme

from supervisor.errors import ConfigError
from supervisor.state import ChildState
from tests.helpers import DEADLINE, eventually, plan_from, port_of, running, wait_state, write_config_file


async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each line with the client certificate's commonName ("-" without one) and the line."""
    cert = writer.get_extra_info("peercert") or {}
    cn = dict(pair[0] for pair in cert.get("subject", ())).get("commonName", "-")
    while line := await reader.readline():
        writer.write(f"{cn} {line.decode().strip()}\n".encode())
        await writer.drain()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def server_files(ca: trustme.CA, where: Path, name: str = "server") -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost", common_name=name)
    cert.private_key_pem.write_to_path(str(where / f"{name}.key"))
    cert.cert_chain_pems[0].write_to_path(str(where / f"{name}.pem"))
    return where / f"{name}.pem", where / f"{name}.key"


def client_context(ca: trustme.CA, cert_name: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if cert_name:
        ca.issue_cert(cert_name, common_name=cert_name).configure_cert(ctx)
    return ctx


async def tls_ask(port: int, ctx: ssl.SSLContext, line: bytes = b"hi") -> tuple[bytes, str]:
    """One line over TLS: the answer and the commonName of the certificate the server presented."""
    async with asyncio.timeout(DEADLINE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
        try:
            served = dict(p[0] for p in writer.get_extra_info("peercert")["subject"])["commonName"]
            writer.write(line + b"\n")
            return await reader.readline(), served
        finally:
            writer.close()


TLS_CONFIG = """
servers:
  - name: secure
    handler: "tests.test_listeners:peer"
    port: 0
    tls: {{cert: server.pem, key: server.key{extra}}}
  - {{name: plain, handler: "tests.apps:lines", port: 0}}
"""


async def test_tls_server_serves_a_verifying_client_and_shrugs_off_plaintext(tmp_path: Path, ca: trustme.CA) -> None:
    server_files(ca, tmp_path)
    plan = plan_from(tmp_path, TLS_CONFIG.format(extra=", handshake_timeout: 0.5s"))
    async with running(plan) as sup:
        port = port_of(sup, "secure")
        assert await tls_ask(port, client_context(ca)) == (b"- hi\n", "server")
        # plaintext to the TLS port: the handshake fails; that is the client's problem, not the server's
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            assert await reader.read() == b""  # closed without an answer
            writer.close()
            # silent client: cut at handshake_timeout, not held for ever
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = asyncio.get_running_loop().time()
            assert await reader.read() == b""
            assert asyncio.get_running_loop().time() - started < 5
            writer.close()
        # a client that does not trust the server's CA gives up; the server stays up
        with pytest.raises(ssl.SSLCertVerificationError):
            await tls_ask(port, client_context(trustme.CA()))
        assert await tls_ask(port, client_context(ca)) == (b"- hi\n", "server")
        snap = sup.snapshot().child("secure")
        assert snap is not None
        assert (snap.state, snap.generation) == (ChildState.RUNNING, 1)
        assert sup.counters()["secure"].handler_errors == 0
        stats = sup.counters()["secure"]
        # three ClientHellos (the untrusting client sent one too), two served; plaintext and silence never said hello
        assert (stats.tls_handshakes, stats.total) == (3, 2)


async def test_client_auth_required_rejects_a_client_without_a_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    server_files(ca, tmp_path)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    plan = plan_from(tmp_path, TLS_CONFIG.format(extra=", ca: ca.pem"))  # client_auth: required by default
    async with running(plan) as sup:
        port = port_of(sup, "secure")
        assert await tls_ask(port, client_context(ca, "alice")) == (b"alice hi\n", "server")
        # TLS 1.3: the client's handshake ends before the server checks its certificate; the refusal is an
        # alert at the first read (an SSLError), or the connection closed without an answer
        for ctx in (client_context(ca), _foreign_client(ca)):
            try:
                answer, _ = await tls_ask(port, ctx)
            except (ssl.SSLError, ConnectionError):
                continue
            assert answer == b"", f"served a client it should have refused: {answer!r}"
        assert sup.counters()["secure"].total == 1  # only alice's connection reached the handler


def _foreign_client(ca: trustme.CA) -> ssl.SSLContext:
    ctx = client_context(ca)
    trustme.CA().issue_cert("mallory", common_name="mallory").configure_cert(ctx)
    return ctx


async def test_reload_renews_the_certificate_on_the_kept_socket(tmp_path: Path, ca: trustme.CA) -> None:
    server_files(ca, tmp_path)
    text = TLS_CONFIG.format(extra="")
    plan = plan_from(tmp_path, text)
    async with running(plan) as sup:
        port = port_of(sup, "secure")
        ctx = client_context(ca)
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
        # a renewed certificate at the same paths (what certbot does), then a reload
        renewed = ca.issue_cert("127.0.0.1", common_name="renewed")
        renewed.private_key_pem.write_to_path(str(tmp_path / "server.key"))
        renewed.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
        write_config_file(tmp_path, text)
        result = await sup.reload("test")
        assert result.ok, result.text
        assert "server secure changed (tls)" in result.text
        assert await tls_ask(port, ctx) == (b"- hi\n", "renewed")  # same port, new certificate
        writer.write(b"still\n")  # the connection made before the reload is still served
        assert await reader.readline() == b"- still\n"
        writer.close()
        plain = sup.snapshot().child("plain")
        assert plain is not None
        assert plain.generation == 1  # the unchanged server was not touched


async def test_reload_refuses_to_turn_tls_on_for_a_kept_socket(tmp_path: Path, ca: trustme.CA) -> None:
    server_files(ca, tmp_path)
    plan = plan_from(tmp_path, "servers:\n  - {name: secure, handler: 'tests.test_listeners:peer', port: 0}\n")
    async with running(plan) as sup:
        write_config_file(tmp_path, TLS_CONFIG.format(extra=""))
        result = await sup.reload("test")
        assert not result.ok
        assert "turning tls on or off needs a new socket" in result.text
        snap = sup.snapshot()
        assert [(c.name, c.generation) for c in snap.children] == [("secure", 1)]


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        ("{cert: nothere.pem, key: server.key}", "servers[0].tls.cert: cannot read {dir}/nothere.pem: No such file"),
        ("{cert: server.pem, key: other.key}", "servers[0].tls.key: does not belong to the certificate"),
        ("{cert: server.key, key: server.key}", "servers[0].tls.cert: {dir}/server.key holds no PEM certificate"),
        ("{cert: server.pem, key: server.pem}", "servers[0].tls.key: {dir}/server.pem holds no PEM private key"),
        ("{cert: server.pem, key: locked.key}", "servers[0].tls.key: the key is encrypted with a passphrase"),
        ("{cert: server.pem, key: server.key, client_auth: required}", "servers[0].tls.client_auth: required needs ca"),
        ("{cert: server.pem}", "servers[0].tls.key: missing; tls needs cert and key"),
        ("{cert: server.pem, key: server.key, ca: server.key}", "servers[0].tls.ca: {dir}/server.key holds no PEM"),
    ],
)
def test_bad_tls_settings_are_located_at_check(tmp_path: Path, ca: trustme.CA, tls: str, expected: str) -> None:
    server_files(ca, tmp_path)
    server_files(ca, tmp_path, "other")
    (tmp_path / "other.pem").unlink()
    locked = ca.issue_cert("127.0.0.1").private_key_pem.bytes()
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(locked, None)
    (tmp_path / "locked.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError) as info:
        plan_from(tmp_path, f"servers:\n  - {{name: s, handler: 'tests.apps:lines', port: 0, tls: {tls}}}\n")
    problems = info.value.problems
    assert len(problems) == 1, problems
    assert expected.format(dir=tmp_path.resolve()) in problems[0]
    assert problems[0].startswith(f"{tmp_path / 'supervisor.yaml'}:4: ")  # file and line, then the key


# -- unix sockets ----------------------------------------------------------------------------------------------


async def unix_ask(path: Path, line: bytes) -> bytes:
    async with asyncio.timeout(DEADLINE):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(line + b"\n")
            return await reader.readline()
        finally:
            writer.close()


async def test_unix_socket_replaces_a_stale_file_takes_its_mode_and_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # what a killed supervisor leaves: a socket file nobody listens on
    stale.close()
    plan = plan_from(
        tmp_path,
        "servers:\n  - {name: u, handler: 'tests.apps:lines', unix: app.sock, mode: '0600', "
        "on_handler_error: restart}\n",
    )
    assert plan.servers[0].unix == str(path)
    async with running(plan) as sup:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert await unix_ask(path, b"hello") == b"hello\n"
        snap = sup.snapshot().child("u")
        assert snap is not None
        assert snap.address == f"unix:{path}"
        # a restart keeps the socket: a client connecting meanwhile is served by the next generation
        assert await unix_ask(path, b"crash") == b""
        await wait_state(sup, "u", ChildState.RUNNING, generation=2)
        assert await unix_ask(path, b"again") == b"again\n"
    assert not path.exists()  # removed at shutdown


async def test_unix_socket_in_use_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "busy.sock"
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(path))
    other.listen(1)
    try:
        plan = plan_from(
            tmp_path,
            "supervisor: {max_restarts: 0}\n"
            "servers:\n  - {name: u, handler: 'tests.apps:lines', unix: busy.sock, start_retries: 0}\n",
        )
        from supervisor import Supervisor
        from supervisor.errors import GaveUp

        sup = Supervisor(plan)
        with pytest.raises(GaveUp):
            async with asyncio.timeout(DEADLINE):
                await sup.serve()
        child = sup.snapshot().child("u")
        assert child is not None
        assert "another process is listening on this socket file" in child.last_error
        assert path.exists()  # the other process's socket file is left alone
    finally:
        other.close()


def problems_of(tmp_path: Path, *servers: str) -> list[str]:
    """The problems of a config with these server entries (each gets the lines handler), without the file name."""
    entries = "".join(f"  - {entry[:-1]}, handler: 'tests.apps:lines'}}\n" for entry in servers)
    with pytest.raises(ConfigError) as info:
        plan_from(tmp_path, "servers:\n" + entries)
    return [p.split("supervisor.yaml:", 1)[1] for p in info.value.problems]


def test_unix_path_problems_are_located_at_check(tmp_path: Path) -> None:
    (tmp_path / "file.sock").write_text("not a socket")
    problems = problems_of(tmp_path, "{name: a, unix: file.sock}", "{name: b, unix: nodir/b.sock}",
                           "{name: c, unix: file.sock}")  # fmt: skip
    assert problems[0].startswith("4: servers[0].unix: ")
    assert problems[0].endswith("exists and is not a socket; the supervisor replaces only a stale socket file, "
                                "remove it yourself")  # fmt: skip
    assert problems[1].startswith("5: servers[1].unix: ")
    assert "nodir does not exist; create it" in problems[1]
    assert problems[2].startswith("6: servers[2].unix: ")
    assert problems[2].endswith("is already used by server 'a'; pick another path")


def test_unix_and_port_settings_do_not_mix(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "{name: c, unix: c.sock, port: 8080}", "{name: d, port: 0, mode: '0600'}",
                           "{name: e, unix: e.sock, mode: '999'}")  # fmt: skip
    assert problems[0].startswith("4: servers[0].port: not with unix: ")
    assert problems[1].startswith("5: servers[1].mode: not with port: ")
    assert problems[2].startswith("6: servers[2].mode: expected permission bits in octal")
    assert len(problems) == 3


async def test_tls_over_a_unix_socket(tmp_path: Path, ca: trustme.CA) -> None:
    server_files(ca, tmp_path)
    plan = plan_from(
        tmp_path,
        "servers:\n  - {name: s, handler: 'tests.test_listeners:peer', unix: s.sock, "
        "tls: {cert: server.pem, key: server.key}}\n",
    )
    async with running(plan):
        ctx = client_context(ca)
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_unix_connection(
                str(tmp_path / "s.sock"), ssl=ctx, server_hostname="localhost"
            )
            writer.write(b"x\n")
            assert await reader.readline() == b"- x\n"
            writer.close()
    await eventually(lambda: not (tmp_path / "s.sock").exists())


def test_a_failed_unix_bind_leaves_the_other_processs_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: another process binding the path between our stale-file probe and our bind keeps its
    socket file (our cleanup used to unlink it, cutting that process off from its clients)."""
    from supervisor import sockets

    path = tmp_path / "race.sock"
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(path))
    other.listen(1)
    try:
        monkeypatch.setattr(sockets, "_remove_stale", lambda _path: None)  # the probe saw nothing: the race
        plan = plan_from(tmp_path, "servers:\n  - {name: u, handler: 'tests.apps:lines', unix: race.sock}\n")
        with pytest.raises(OSError, match="Address already in use"):
            sockets.bind(plan.servers[0])
        assert path.exists()
    finally:
        other.close()


async def test_reload_refuses_a_client_auth_change_on_a_kept_socket(tmp_path: Path, ca: trustme.CA) -> None:
    """Found in review: OpenSSL keeps sessions on the listener's outer context, so a session made under
    client_auth none resumed under required without a certificate; such a change needs a new socket."""
    server_files(ca, tmp_path)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    plan = plan_from(tmp_path, TLS_CONFIG.format(extra=""))
    async with running(plan) as sup:
        write_config_file(tmp_path, TLS_CONFIG.format(extra=", ca: ca.pem, client_auth: required"))
        result = await sup.reload("test")
        assert not result.ok
        assert "changing tls client_auth, ca or handshake_timeout needs a new socket" in result.text
        assert await tls_ask(port_of(sup, "secure"), client_context(ca)) == (b"- hi\n", "server")  # old rules
