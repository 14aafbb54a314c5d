"""A real ``supervisor run`` with a TLS server and a unix-socket server: ``openssl s_client`` and the stdlib's
client are served, the handshake counter is on /metrics, SIGTERM exits 0 and removes the socket file."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
import trustme

from tests.e2e_util import free_port, require_tool, write_config
from tests.proc import SupervisorProcess

CONFIG = """
metrics: {{port: {metrics}}}
console: {{enabled: false}}
servers:
  - {{name: secure, handler: "supervisor.handlers.echo:handle", port: 0, tls: {{cert: s.pem, key: s.key}}}}
  - {{name: local, handler: "supervisor.handlers.echo:handle", unix: local.sock, mode: "0660"}}
"""


@pytest.mark.e2e
def test_tls_and_unix_servers_in_a_real_process(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", common_name="secure")
    cert.private_key_pem.write_to_path(str(tmp_path / "s.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "s.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    metrics = free_port()
    config = write_config(tmp_path, CONFIG.format(metrics=metrics))
    sock_path = tmp_path / "local.sock"
    with SupervisorProcess(config) as sp:
        port = sp.ready()["secure"]
        sp.wait_for(rf"server local listening on unix:{sock_path} \(generation 1\)")
        # openssl's own client, verifying the chain against our CA; killed at a deadline whatever happens
        with subprocess.Popen(
            [require_tool("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(tmp_path / "ca.pem"),
             "-verify_return_error", "-quiet"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        ) as s_client:  # fmt: skip
            deadline = threading.Timer(20, s_client.kill)
            deadline.start()
            try:
                assert s_client.stdin is not None
                assert s_client.stdout is not None
                s_client.stdin.write("ping\n")
                s_client.stdin.flush()
                assert s_client.stdout.readline() == "ping\n"
            finally:
                deadline.cancel()
                s_client.kill()
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"hello\n")
            assert tls.recv(100) == b"hello\n"
        with socket.socket(socket.AF_UNIX) as local:
            local.settimeout(5)
            local.connect(str(sock_path))
            local.sendall(b"there\n")
            assert local.recv(100) == b"there\n"
        assert oct(sock_path.stat().st_mode & 0o777) == "0o660"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        assert 'supervisor_tls_handshakes_total{server="secure"} 2.0' in text
        assert "PRIVATE" not in text  # no key material on /metrics
        assert "BEGIN" not in text
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    assert not sock_path.exists()
    assert "Traceback" not in sp.output
