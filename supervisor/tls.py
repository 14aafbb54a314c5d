"""TLS for a server: the context built from its ``tls:`` section when the plan is made (so ``check`` reports a
missing, unreadable, encrypted or mismatched cert or key at its line), and the listener's outer context, which
hands every handshake to the context of the generation accepting now -- so a reload with a renewed certificate
takes effect on the kept socket, make-before-break, without closing it.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.spec import ServerSpec, TlsSpec
from supervisor.state import ServerStats


@dataclass(frozen=True, slots=True)
class TlsPlan:
    cert: str  # absolute paths
    key: str
    ca: str
    client_auth: str  # none | optional | required
    handshake_timeout: float
    digest: str  # sha256 of the files' contents: a renewed certificate at the same path is a change to reload
    context: ssl.SSLContext = field(compare=False, repr=False)
    ca_digest: str = ""  # sha256 of the ca file alone

    @property
    def fixed(self) -> tuple[str, str, float]:
        """What a kept socket cannot take from a reload: who may connect, and the handshake bound. OpenSSL keeps
        sessions on the listener's outer context, so a client could resume one made under the old rules
        (measured: a session from ``client_auth: none`` resumed under ``required`` without a certificate)."""
        return self.client_auth, self.ca_digest, self.handshake_timeout


_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _no_passphrase() -> str:
    raise ValueError("encrypted")


def tls_plan(spec: ServerSpec, base: Path, problems: list[str]) -> TlsPlan | None:
    """Load ``spec.tls``; each problem names the key (``servers[i].tls.cert``) and what to do."""
    t: TlsSpec | None = spec.tls
    if t is None or not t.cert or not t.key:
        return None  # no tls, or its missing keys were reported while reading
    paths = {k: (base / p).resolve() for k, p in (("cert", t.cert), ("key", t.key), ("ca", t.ca)) if p}
    contents, unreadable, data = hashlib.sha256(), False, {}
    for key, path in paths.items():
        try:
            with path.open("rb") as f:
                data[key] = f.read(1 << 20)  # a PEM file is a few kB: /dev/zero must not hang check
            contents.update(data[key])
        except OSError as exc:
            unreadable = True
            problems.append(f"{spec.where(f'tls.{key}')}: cannot read {path}: {exc.strerror}; give a PEM file "
                            "the supervisor's user can read (relative paths are next to the config)")  # fmt: skip
    if unreadable:
        return None
    for key, marker, what in (("cert", b"-----BEGIN CERTIFICATE-----", "certificate"),
                              ("key", b"PRIVATE KEY-----", "private key"), ("ca", b"-----BEGIN CERTIFICATE-----",
                              "CA certificate")):  # fmt: skip
        if key in data and marker not in data[key]:
            unreadable = True
            problems.append(f"{spec.where(f'tls.{key}')}: {paths[key]} holds no PEM {what}; give a PEM file "
                            f"(-----BEGIN ...-----)")  # fmt: skip
    if unreadable:
        return None
    client_auth = t.client_auth or ("required" if t.ca else "none")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # TLS 1.2+, the stdlib's server defaults
    try:
        context.load_cert_chain(paths["cert"], paths["key"], password=_no_passphrase)
    except ValueError:
        problems.append(f"{spec.where('tls.key')}: the key is encrypted with a passphrase; give an unencrypted "
                        "key, readable only by the supervisor's user")  # fmt: skip
        return None
    except (ssl.SSLError, OSError) as exc:
        which, what = ("tls.key", "does not belong to the certificate") if "MISMATCH" in _reason(exc) else (
            "tls.cert", "not a usable certificate and key pair")  # fmt: skip
        problems.append(f"{spec.where(which)}: {what} ({_reason(exc)}); give the PEM certificate (chain) and the "
                        "private key that belongs to it")  # fmt: skip
        return None
    if "ca" in paths:
        try:
            context.load_verify_locations(cafile=str(paths["ca"]))
        except (ssl.SSLError, OSError) as exc:
            problems.append(f"{spec.where('tls.ca')}: not a PEM file of CA certificates ({_reason(exc)})")
            return None
    context.verify_mode = _VERIFY[client_auth]
    return TlsPlan(
        cert=str(paths["cert"]), key=str(paths["key"]), ca=str(paths.get("ca", "")), client_auth=client_auth,
        handshake_timeout=t.handshake_timeout, digest=contents.hexdigest(), context=context,
        ca_digest=hashlib.sha256(data["ca"]).hexdigest() if "ca" in data else "",
    )  # fmt: skip


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or str(exc)


class Terminator:
    """The one context a listener's ``asyncio.Server`` holds. At each ClientHello it swaps in the context of the
    generation accepting now. OpenSSL copies the verify mode when a connection is created, before the swap, so
    the outer context takes the current one's mode too (measured: without it, client_auth changes are ignored)."""

    def __init__(self, first: TlsPlan, stats: ServerStats) -> None:
        self._stats = stats
        self.current = first.context
        self.timeout = first.handshake_timeout  # fixed for the socket's life: asyncio.Server takes it once
        self.outer = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.outer.load_cert_chain(first.cert, first.key, password=_no_passphrase)
        self.outer.verify_mode = first.context.verify_mode
        self.outer.sni_callback = self._hello  # called for every ClientHello, with or without SNI

    def use(self, plan: TlsPlan) -> None:
        self.current = plan.context
        self.outer.verify_mode = plan.context.verify_mode

    def _hello(self, conn: ssl.SSLObject, _server_name: str | None, _outer: ssl.SSLContext) -> None:
        self._stats.tls_handshakes += 1
        conn.context = self.current
