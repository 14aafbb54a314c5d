"""The config's sections read from YAML nodes into specs: every key checked, every problem located."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from supervisor import values as v
from supervisor.spec import (
    CLIENT_AUTH,
    HANDLER_ERROR_POLICIES,
    KINDS,
    LOG_FORMATS,
    LOG_LEVELS,
    LOOPS,
    RESTART_TYPES,
    STRATEGIES,
    BackoffSpec,
    Config,
    ConsoleSpec,
    LoggingSpec,
    MetricsSpec,
    ServerSpec,
    SupervisorSpec,
    TlsSpec,
)
from supervisor.yamlnodes import REFUSED, NodeReader


class ConfigReader(NodeReader):
    # -- sections -------------------------------------------------------------------------------------------------

    def config(self, root: Node | None, path: Path) -> Config | None:
        if root is None or (isinstance(root, ScalarNode) and root.tag == "tag:yaml.org,2002:null"):
            self.fail(None, "", "the config is empty; it needs at least a 'servers' list")
            return None
        top = self.mapping(root, "", ("supervisor", "metrics", "console", "logging", "servers"))
        if top is None:
            return None
        locations = {".": self.loc(root, "")}
        for section in ("supervisor", "metrics", "console", "logging"):
            node = top.get(section)
            if node is None:
                continue
            locations[section] = self.loc(top.at(section, node), section)
            if isinstance(node, MappingNode):
                for key_node, _ in node.value:
                    if isinstance(key_node, ScalarNode):
                        kpath = f"{section}.{key_node.value}"
                        locations.setdefault(kpath, self.loc(key_node, kpath))
        sup = self.supervisor(top.get("supervisor"))
        metrics = self.metrics(top.get("metrics"))
        console = self.console(top.get("console"))
        logs = self.logging(top.get("logging"))
        servers = self.servers(top.get("servers"), root)
        return Config(path=path, servers=servers, supervisor=sup, metrics=metrics, console=console, logging=logs,
                      locations=locations)  # fmt: skip

    def supervisor(self, node: Node | None) -> SupervisorSpec:
        d = SupervisorSpec()
        if node is None or (f := self.mapping(node, "supervisor", _keys(SupervisorSpec))) is None:
            return d
        p = "supervisor"
        return SupervisorSpec(
            strategy=self.field(f, "strategy", p, v.choice(STRATEGIES), d.strategy),
            max_restarts=self.field(f, "max_restarts", p, v.int_in(0, 1_000_000), d.max_restarts),
            restart_window=self.field(f, "restart_window", p, v.duration(positive=True), d.restart_window),
            shutdown_timeout=self.field(f, "shutdown_timeout", p, v.duration(positive=True), d.shutdown_timeout),
            loop=self.field(f, "loop", p, v.choice(LOOPS), d.loop),
            max_loop_lag=self.field(f, "max_loop_lag", p, v.duration(positive=True), d.max_loop_lag),
            workers=self.field(f, "workers", p, v.workers, d.workers),
        )

    def metrics(self, node: Node | None) -> MetricsSpec:
        d = MetricsSpec()
        if node is None or (f := self.mapping(node, "metrics", _keys(MetricsSpec))) is None:
            return d
        p = "metrics"
        return MetricsSpec(
            enabled=self.field(f, "enabled", p, v.as_bool, d.enabled),
            host=self.field(f, "host", p, v.host, d.host),
            port=self.field(f, "port", p, v.int_in(0, 65535), d.port),
        )

    def console(self, node: Node | None) -> ConsoleSpec:
        d = ConsoleSpec()
        if node is None or (f := self.mapping(node, "console", _keys(ConsoleSpec))) is None:
            return d
        p = "console"
        return ConsoleSpec(
            enabled=self.field(f, "enabled", p, v.as_bool, d.enabled),
            host=self.field(f, "host", p, v.host, d.host),
            # the web UI takes port + 1, and aiomonitor cannot report a port chosen by the OS
            port=self.field(f, "port", p, v.int_in(1, 65534), d.port),
            allow_remote=self.field(f, "allow_remote", p, v.as_bool, d.allow_remote),
            repl=self.field(f, "repl", p, v.as_bool, d.repl),
        )

    def logging(self, node: Node | None) -> LoggingSpec:
        d = LoggingSpec()
        if node is None or (f := self.mapping(node, "logging", _keys(LoggingSpec, "where"))) is None:
            return d
        p = "logging"
        dict_config: dict[str, Any] = {}
        where = ""
        if (dc_node := f.get("dict_config")) is not None:
            at = f.at("dict_config", dc_node)
            where = str(self.loc(at, f"{p}.dict_config"))
            value = self.data(dc_node, at, f"{p}.dict_config")
            if value is REFUSED:
                pass
            elif not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                self.fail(at, f"{p}.dict_config", f"expected a logging.config.dictConfig mapping, got {v.show(value)}")
            elif value.get("version") != 1:
                self.fail(at, f"{p}.dict_config", "expected 'version: 1' in it (the dictConfig schema's only version)")
            else:
                dict_config = value
            for key in ("level", "format"):  # the user's mapping decides: say so rather than ignore it
                if key in f:
                    self.fail(f.at(key, f[key]), f"{p}.{key}", "not with dict_config: its loggers, handlers and "
                              "formatters decide (supervisor.logs.JsonFormatter is one to name there)")  # fmt: skip
        return LoggingSpec(
            level=self.field(f, "level", p, v.choice(LOG_LEVELS), d.level),
            format=self.field(f, "format", p, v.choice(LOG_FORMATS), d.format),
            dict_config=dict_config,
            where=where,
        )

    def servers(self, node: Node | None, root: Node) -> tuple[ServerSpec, ...]:
        if node is None:
            self.fail(root, "servers", "missing; declare at least one server (name, handler, port)")
            return ()
        if not isinstance(node, SequenceNode) or not node.value:
            got = "an empty list" if isinstance(node, SequenceNode) else v.show(self.scalar(node))
            self.fail(node, "servers", f"expected a non-empty list of servers, got {got}")
            return ()
        specs = [s for i, item in enumerate(node.value) if (s := self.server(item, f"servers[{i}]")) is not None]
        return tuple(specs)

    def server(self, node: Node, p: str) -> ServerSpec | None:
        f = self.mapping(node, p, _keys(ServerSpec))
        if f is None:
            return None
        required = ("name", "handler") if "unix" in f else ("name", "handler", "port")
        missing = [k for k in required if k not in f]
        for key in missing:
            self.fail(node, f"{p}.{key}", "missing; every server needs name, handler and port (or unix: a path)")
        for key in ("port", "host") if "unix" in f else ("mode",):
            if key in f:
                other = "unix" if key != "mode" else "port"
                self.fail(f.at(key, f[key]), f"{p}.{key}", f"not with {other}: a server listens on host and port, "
                          "or on a unix socket path (with mode)")  # fmt: skip
        locations = {".": self.loc(node, p)} | {k: self.loc(f.at(k, v), f"{p}.{k}") for k, v in f.items()}
        if isinstance(tls_node := f.get("tls"), MappingNode):  # the plan checks the files: it points at tls.KEY
            for key_node, _ in tls_node.value:
                if isinstance(key_node, ScalarNode) and isinstance(key_node.value, str):
                    locations[f"tls.{key_node.value}"] = self.loc(key_node, f"{p}.tls.{key_node.value}")
        d = ServerSpec(name="", handler="", port=0)
        name = self.field(f, "name", p, v.name, "")
        handler = self.field(f, "handler", p, v.handler_path, "")
        port = self.field(f, "port", p, v.int_in(0, 65535), 0)
        options: Mapping[str, Any] = {}
        if (opt_node := f.get("options")) is not None:
            value = self.data(opt_node, f.at("options", opt_node), f"{p}.options")
            if value is REFUSED:
                pass
            elif isinstance(value, dict) and all(isinstance(k, str) for k in value):
                options = value
            else:
                expected = "expected a mapping of option names to values"
                self.fail(f.at("options", opt_node), f"{p}.options", f"{expected}, got {v.show(value)}")
        after: tuple[str, ...] = ()
        if (after_node := f.get("after")) is not None:
            value = self.data(after_node, f.at("after", after_node), f"{p}.after")
            if isinstance(value, str):
                value = [value]
            if value is REFUSED:
                pass
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                after = tuple(value)
            else:
                expected = "expected a list of server names"
                self.fail(f.at("after", after_node), f"{p}.after", f"{expected}, got {v.show(value)}")
        spec = ServerSpec(
            name=name,
            handler=handler,
            port=port,
            kind=self.field(f, "kind", p, v.choice(KINDS), d.kind),
            host=self.field(f, "host", p, v.host, d.host),
            unix=self.field(f, "unix", p, v.socket_path, d.unix),
            mode=self.field(f, "mode", p, v.file_mode, d.mode),
            tls=self.tls(f.get("tls"), f"{p}.tls"),
            restart=self.field(f, "restart", p, v.choice(RESTART_TYPES), d.restart),
            on_handler_error=self.field(f, "on_handler_error", p, v.choice(HANDLER_ERROR_POLICIES), d.on_handler_error),
            backoff=self.backoff(f.get("backoff"), f"{p}.backoff"),
            shutdown_timeout=self.field(f, "shutdown_timeout", p, v.duration(positive=True), d.shutdown_timeout),
            backlog=self.field(f, "backlog", p, v.int_in(1, 65535), d.backlog),
            max_connections=self.field(f, "max_connections", p, v.int_in(0, 10_000_000), d.max_connections),
            idle_timeout=self.field(f, "idle_timeout", p, v.duration(), d.idle_timeout),
            read_limit=self.field(f, "read_limit", p, v.size_in(1024, 1 << 30), d.read_limit),
            max_write_buffer=self.field(f, "max_write_buffer", p, v.size_in(0, 1 << 40), d.max_write_buffer),
            start_timeout=self.field(f, "start_timeout", p, v.duration(positive=True), d.start_timeout),
            start_retries=self.field(f, "start_retries", p, v.int_in(0, 1_000_000), d.start_retries),
            after=after,
            options=options,
            locations=locations,
        )
        return None if missing else spec

    def tls(self, node: Node | None, p: str) -> TlsSpec | None:
        if node is None or (f := self.mapping(node, p, _keys(TlsSpec))) is None:
            return None
        for key in ("cert", "key"):
            if key not in f:
                self.fail(node, f"{p}.{key}", "missing; tls needs cert and key (PEM files)")
        client_auth = self.field(f, "client_auth", p, v.choice(CLIENT_AUTH), "")
        if client_auth in ("optional", "required") and "ca" not in f:
            self.fail(f.at("client_auth", f["client_auth"]), f"{p}.client_auth",
                      f"{client_auth} needs ca: the CA file client certificates are verified against")  # fmt: skip
        return TlsSpec(
            cert=self.field(f, "cert", p, v.file_path, ""),
            key=self.field(f, "key", p, v.file_path, ""),
            ca=self.field(f, "ca", p, v.file_path, ""),
            client_auth=client_auth,
            handshake_timeout=self.field(f, "handshake_timeout", p, v.duration(positive=True), 10.0),
        )

    def backoff(self, node: Node | None, p: str) -> BackoffSpec:
        d = BackoffSpec()
        if node is None or (f := self.mapping(node, p, _keys(BackoffSpec))) is None:
            return d
        spec = BackoffSpec(
            initial=self.field(f, "initial", p, v.duration(), d.initial),
            factor=self.field(f, "factor", p, v.float_in(1.0, 100.0), d.factor),
            max=self.field(f, "max", p, v.duration(), d.max),
            jitter=self.field(f, "jitter", p, v.float_in(0.0, 1.0), d.jitter),
            reset_after=self.field(f, "reset_after", p, v.duration(), d.reset_after),
        )
        if spec.max < spec.initial:
            default = "" if "max" in f else " (the default)"
            self.fail(
                f.at("max", node),
                f"{p}.max",
                f"expected a duration >= backoff.initial ({spec.initial:g}s), got {spec.max:g}s{default}",
            )
        return spec


def _keys(cls: type, *internal: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("locations", *internal))
