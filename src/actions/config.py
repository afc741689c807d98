"""Configuration: the Flyte deployment's keys, from defaults, a YAML file, the environment,
then flags (each later source overrides the earlier ones, key by key).

Every key is described once, in ``KEYS``: its YAML path, its type, its environment
variable (the path upper-snake-cased: ``actions.server.port`` -> ``ACTIONS_SERVER_PORT``)
and, for the common ones, a ``serve`` flag. Unknown YAML keys and bad values are errors
that name the key (``ConfigError``), raised at start-up. ``dump`` renders the effective
configuration as YAML that ``load`` reads back unchanged.

YAML shape (every key optional)::

    actions:
      store: embedded               # embedded | kubernetes | memory
      dataDir: ~/.local/share/actions-service
      watchWorkers: 10
      watchBufferSize: 100
      watchSubscriberBufferSize: 1000
      kubernetes: {namespace: flyte, kubeconfig: null, context: null, inCluster: null,
                   qps: 50, burst: 100, connectTimeout: 5, requestTimeout: 30,
                   watchTimeout: 300, timeout: null, clusterName: null}
      executor: null                # flyte | none; null: flyte on kubernetes, else none
      runServiceUrl: null           # Flyte's run service (http://...:8090)
      recordFilterSize: null        # accepted, ignored
      server:
        host: 127.0.0.1
        port: 8091
        gracefulTimeout: 10
        writeTimeout: 30
        keepAliveTimeout: 75
        tls: {certFile: null, keyFile: null, clientCaFile: null,
              requireClientCert: false, reloadInterval: 5}
        auth: {tokenFile: null}
      limits: {maxStreamsPerConnection: 1000, maxWatchSubscriptions: 10000,
               maxServerStreams: 11000, maxServerStreamsPerConnection: 500,
               maxMessageSize: 4194304}
      log: {format: plain, level: INFO, accessLog: true}
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from actions.kube_names import is_dns_label

CONFIG_ENV: Final = "ACTIONS_CONFIG"  # path of the YAML file, when --config is not given
STORE_KINDS: Final = ("embedded", "kubernetes", "memory")
EXECUTORS: Final = ("flyte", "none")
LogFormat = Literal["plain", "json"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("plain", "json")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A configuration problem; the message starts with the key (and its source)."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "actions-service"


@dataclass(frozen=True)
class Config:
    # Store and watch fan-out.
    store: str = "embedded"  # actions.store
    data_dir: Path | None = None  # actions.dataDir; None = default_data_dir()
    watch_workers: int = 10  # actions.watchWorkers
    watch_buffer_size: int = 100  # actions.watchBufferSize
    subscriber_buffer_size: int = 1000  # actions.watchSubscriberBufferSize
    # Kubernetes (store: kubernetes). namespace also names the embedded database file.
    namespace: str = "flyte"  # actions.kubernetes.namespace
    kubeconfig: Path | None = None
    kube_context: str | None = None
    in_cluster: bool | None = None  # None: in-cluster when running in a pod
    kube_qps: float = 50.0
    kube_burst: int = 100
    kube_connect_timeout: float = 5.0
    kube_request_timeout: float = 30.0
    kube_watch_timeout: int = 300
    # Flyte's keys for the same things (a Flyte deployment's file carries them).
    kube_timeout: float | None = None  # actions.kubernetes.timeout; wins over requestTimeout
    kube_cluster_name: str | None = None  # actions.kubernetes.clusterName; ignored
    # Flyte: its executor, its run service.
    executor: str | None = None  # actions.executor; None: flyte on kubernetes, else none
    run_service_url: str | None = None  # actions.runServiceUrl; None: not notified
    record_filter_size: int | None = None  # actions.recordFilterSize; ignored
    # Server.
    host: str = "127.0.0.1"  # actions.server.host
    port: int = 8091  # actions.server.port
    graceful_timeout: float = 10.0
    write_timeout: float = 30.0  # actions.server.writeTimeout
    keep_alive_timeout: float = 75.0  # actions.server.keepAliveTimeout
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    tls_require_client_cert: bool = False
    tls_reload_interval: float = 5.0
    auth_token_file: Path | None = None
    # Limits.
    max_streams_per_connection: int = 1000
    max_watch_subscriptions: int | None = 10_000
    max_server_streams: int | None = 11_000  # watches, health watches, reflection
    max_server_streams_per_connection: int | None = 500
    max_message_size: int = 4 * 1024 * 1024
    # HTTP/2 flood limits per connection (connect_proto.FloodLimits): past any of them
    # within the window the connection gets GOAWAY ENHANCE_YOUR_CALM.
    h2_flood_window: float = 10.0
    h2_flood_early_resets: int = 200  # rapid reset, CVE-2023-44487
    h2_flood_early_reset_share: float = 0.5
    h2_flood_pings: int = 100
    h2_flood_settings: int = 100
    h2_flood_empty_data: int = 1000
    # Logs.
    log_format: LogFormat = "plain"
    log_level: str = "INFO"
    access_log: bool = True

    @property
    def executor_runs(self) -> bool:
        """Flyte's executor reconciles the TaskActions (``actions.executor``; by default
        on a Kubernetes store, and never on the others)."""
        if self.executor is None:
            return self.store == "kubernetes"
        return self.executor == "flyte"

    @property
    def effective_request_timeout(self) -> float:
        return self.kube_request_timeout if self.kube_timeout is None else self.kube_timeout

    def ignored_keys(self) -> list[str]:
        """Keys of a Flyte deployment this service has no use for, when set (reported
        once at start-up)."""
        return [key.path for key in KEYS if key.ignored and getattr(self, key.attr) is not None]

    def resolved_data_dir(self) -> Path:
        return (self.data_dir or default_data_dir()).expanduser()

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    def validate(self) -> Config:
        """Check ranges and combinations; raises ConfigError naming the key."""
        for key in KEYS:
            key.check(getattr(self, key.attr))
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError(
                "actions.server.tls.certFile and actions.server.tls.keyFile: give both or neither"
            )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError("actions.server.tls.clientCaFile: client certificates need TLS "
                              "(set actions.server.tls.certFile and keyFile)")  # fmt: skip
        if self.tls_require_client_cert and self.tls_client_ca_file is None:
            raise ConfigError(
                "actions.server.tls.requireClientCert: needs actions.server.tls.clientCaFile"
            )
        return self

    def check_files(self) -> Config:
        """Files named by the configuration exist (at start-up, not on the first use)."""
        for key in KEYS:
            value = getattr(self, key.attr)
            if key.is_file and value is not None and not Path(value).expanduser().is_file():
                raise ConfigError(f"{key.path}: no such file: {value}")
        return self


# --------------------------------------------------------------------------- value types


class _Kind:
    """How one key's values are read from YAML (typed) and from text (env, flags)."""

    name = "value"

    def from_yaml(self, value: Any) -> Any:
        raise NotImplementedError

    def from_text(self, text: str) -> Any:
        return self.from_yaml(text)

    def to_yaml(self, value: Any) -> Any:
        return value


class _Str(_Kind):
    name = "a string"

    def __init__(self, choices: tuple[str, ...] = (), *, upper: bool = False) -> None:
        self.choices = choices
        self.upper = upper

    def from_yaml(self, value: Any) -> Any:
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a non-empty string, got {value!r}")
        if self.upper:
            value = value.upper()
        if self.choices and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}")
        return value


class _Path(_Kind):
    name = "a path"

    def from_yaml(self, value: Any) -> Any:
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a path, got {value!r}")
        return Path(value).expanduser()

    def to_yaml(self, value: Any) -> Any:
        return None if value is None else str(value)


class _Int(_Kind):
    name = "an integer"

    def from_yaml(self, value: Any) -> Any:
        # bool is an int in Python; "true" for a count is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value

    def from_text(self, text: str) -> Any:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None


class _Float(_Kind):
    name = "a number"

    def from_yaml(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)

    def from_text(self, text: str) -> Any:
        try:
            return float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None


class _Duration(_Kind):
    """Seconds: a number, or a Go duration such as ``30s``, ``1m30s``, ``500ms``."""

    name = "a duration"
    _PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
    _UNIT: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                    "h": 3600.0}  # fmt: skip

    def from_yaml(self, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a duration such as 30s, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            return self.from_text(value)
        raise ValueError(f"expected a duration such as 30s, got {value!r}")

    def from_text(self, text: str) -> Any:
        text = text.strip()
        try:
            return float(text)
        except ValueError:
            pass
        parts = self._PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"expected a duration such as 30s, got {text!r}")
        return sum(float(n) * self._UNIT[u] for n, u in parts)

    def to_yaml(self, value: Any) -> Any:
        return None if value is None else f"{value:g}s"


class _Bool(_Kind):
    name = "true or false"
    _TEXT: Final = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

    def from_yaml(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value

    def from_text(self, text: str) -> Any:
        try:
            return self._TEXT[text.strip().lower()]
        except KeyError:
            raise ValueError(f"expected true or false, got {text!r}") from None


Check = Callable[[Any], str | None]  # returns what is wrong, or None


def _at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be at least {low:g}, got {v!r}"


def _share(v: Any) -> str | None:
    return None if 0 <= v < 1 else f"must be at least 0 and below 1, got {v!r}"


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"must be greater than 0, got {v!r}"


def _port(v: Any) -> str | None:
    return None if 0 <= v <= 65535 else f"must be between 0 and 65535, got {v!r}"


def _run_service_url(v: Any) -> str | None:
    from actions.runservice.client import url_problem  # the client's own rule

    return url_problem(v)


def _dns_label(v: Any) -> str | None:
    return None if is_dns_label(v) else f"must be a DNS-1123 label, got {v!r}"


@dataclass(frozen=True)
class Key:
    path: str  # YAML path, e.g. actions.server.port
    attr: str  # Config field
    kind: _Kind
    help: str
    optional: bool = False  # null allowed (means "not set" / "no limit")
    valid: Check | None = None
    flag: str | None = None  # serve/config flag, e.g. --port
    is_file: bool = False  # must exist at start-up
    ignored: bool = False  # a Flyte key accepted for compatibility, unused

    @property
    def env(self) -> str:
        return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", self.path).replace(".", "_").upper()

    def check(self, value: Any) -> None:
        if value is None:
            if not self.optional:
                raise ConfigError(f"{self.path}: must be set")
            return
        if self.valid is not None:
            problem = self.valid(value)
            if problem:
                raise ConfigError(f"{self.path}: {problem}")


KEYS: Final[tuple[Key, ...]] = (
    Key("actions.store", "store", _Str(STORE_KINDS), "store backend", flag="--store"),
    Key("actions.dataDir", "data_dir", _Path(), "embedded store directory", True,
        flag="--data-dir"),
    Key("actions.watchWorkers", "watch_workers", _Int(), "watch workers (shards)",
        valid=_at_least(1)),
    Key("actions.watchBufferSize", "watch_buffer_size", _Int(), "capacity of each shard channel",
        valid=_at_least(1)),
    Key("actions.watchSubscriberBufferSize", "subscriber_buffer_size", _Int(),
        "actions buffered per watch stream before it is resynced", valid=_at_least(1)),
    Key("actions.kubernetes.namespace", "namespace", _Str(), "namespace of the TaskActions",
        valid=_dns_label, flag="--namespace"),
    Key("actions.kubernetes.kubeconfig", "kubeconfig", _Path(), "kubeconfig file", True,
        flag="--kubeconfig", is_file=True),
    Key("actions.kubernetes.context", "kube_context", _Str(), "kubeconfig context", True,
        flag="--context"),
    Key("actions.kubernetes.inCluster", "in_cluster", _Bool(),
        "use the pod's service account (null: when running in a pod)", True),
    Key("actions.kubernetes.qps", "kube_qps", _Float(), "API requests per second",
        valid=_positive),
    Key("actions.kubernetes.burst", "kube_burst", _Int(), "API request burst", valid=_at_least(1)),
    Key("actions.kubernetes.connectTimeout", "kube_connect_timeout", _Float(),
        "seconds to connect to the API server", valid=_positive),
    Key("actions.kubernetes.requestTimeout", "kube_request_timeout", _Float(),
        "seconds for one API request", valid=_positive),
    Key("actions.kubernetes.watchTimeout", "kube_watch_timeout", _Int(),
        "server-side lifetime of one watch request, seconds", valid=_at_least(1)),
    Key("actions.kubernetes.timeout", "kube_timeout", _Duration(),
        "one API request's timeout, e.g. 30s (Flyte's key; null: requestTimeout)", True,
        valid=_positive),
    Key("actions.kubernetes.clusterName", "kube_cluster_name", _Str(),
        "Flyte's cluster name (ignored)", True, ignored=True),
    Key("actions.executor", "executor", _Str(EXECUTORS),
        "flyte: Flyte's executor runs the TaskActions; none: the service resolves and times "
        "out conditions itself (null: flyte on kubernetes, else none)", True),
    Key("actions.runServiceUrl", "run_service_url", _Str(),
        "Flyte's run service base URL, told about every action (null: none)", True,
        valid=_run_service_url),
    Key("actions.recordFilterSize", "record_filter_size", _Int(),
        "Flyte's record filter size (ignored)", True, ignored=True),
    Key("actions.server.host", "host", _Str(), "address to bind", flag="--host"),
    Key("actions.server.port", "port", _Int(), "port to bind (0: any free)", valid=_port,
        flag="--port"),
    Key("actions.server.gracefulTimeout", "graceful_timeout", _Float(),
        "seconds in-flight calls get to finish on shutdown", valid=_at_least(0),
        flag="--graceful-timeout"),
    Key("actions.server.writeTimeout", "write_timeout", _Float(),
        "seconds a response write may wait for a client that reads nothing; then the call "
        "is abandoned", valid=_positive),
    Key("actions.server.keepAliveTimeout", "keep_alive_timeout", _Float(),
        "seconds an idle connection (no calls) is kept open", valid=_positive),
    Key("actions.server.tls.certFile", "tls_cert_file", _Path(), "server certificate chain (PEM)",
        True, flag="--tls-cert", is_file=True),
    Key("actions.server.tls.keyFile", "tls_key_file", _Path(), "server private key (PEM)", True,
        flag="--tls-key", is_file=True),
    Key("actions.server.tls.clientCaFile", "tls_client_ca_file", _Path(),
        "CA bundle for client certificates (mTLS)", True, flag="--tls-client-ca", is_file=True),
    Key("actions.server.tls.requireClientCert", "tls_require_client_cert", _Bool(),
        "refuse clients without a certificate", flag="--require-client-cert"),
    Key("actions.server.tls.reloadInterval", "tls_reload_interval", _Float(),
        "seconds between checks of the certificate files", valid=_positive),
    Key("actions.server.auth.tokenFile", "auth_token_file", _Path(),
        "bearer token file (connect_proto._extras.auth format); null: no auth", True,
        flag="--auth-token-file", is_file=True),
    Key("actions.limits.maxStreamsPerConnection", "max_streams_per_connection", _Int(),
        "HTTP/2 concurrent streams per connection", valid=_at_least(1)),
    Key("actions.limits.maxWatchSubscriptions", "max_watch_subscriptions", _Int(),
        "open WatchForUpdates streams in total (null: no limit)", True, valid=_at_least(1),
        flag="--max-watch-subscriptions"),
    Key("actions.limits.maxServerStreams", "max_server_streams", _Int(),
        "open server streams of every kind in total (null: no limit)", True,
        valid=_at_least(1)),
    Key("actions.limits.maxServerStreamsPerConnection", "max_server_streams_per_connection",
        _Int(), "open server streams of every kind per client connection (null: no limit)",
        True, valid=_at_least(1)),
    Key("actions.limits.maxMessageSize", "max_message_size", _Int(),
        "largest request or response message, bytes", valid=_at_least(1024)),
    Key("actions.limits.h2Flood.window", "h2_flood_window", _Float(),
        "seconds over which the HTTP/2 flood limits count frames", valid=_positive),
    Key("actions.limits.h2Flood.earlyResets", "h2_flood_early_resets", _Int(),
        "streams a client may reset before their response, per connection and window",
        valid=_at_least(1)),
    Key("actions.limits.h2Flood.earlyResetShare", "h2_flood_early_reset_share", _Float(),
        "share of the streams opened that must be reset early too before it counts",
        valid=_share),
    Key("actions.limits.h2Flood.pings", "h2_flood_pings", _Int(),
        "PINGs while nothing is sent, per connection and window", valid=_at_least(1)),
    Key("actions.limits.h2Flood.settings", "h2_flood_settings", _Int(),
        "SETTINGS frames per connection and window", valid=_at_least(1)),
    Key("actions.limits.h2Flood.emptyData", "h2_flood_empty_data", _Int(),
        "empty DATA frames that do not end a stream, per connection and window",
        valid=_at_least(1)),
    Key("actions.log.format", "log_format", _Str(LOG_FORMATS), "plain or json",
        flag="--log-format"),
    Key("actions.log.level", "log_level", _Str(LOG_LEVELS, upper=True), "log level",
        flag="--log-level"),
    Key("actions.log.accessLog", "access_log", _Bool(), "one log line per RPC"),
)  # fmt: skip

_BY_PATH: Final = {key.path: key for key in KEYS}
_BY_ATTR: Final = {key.attr: key for key in KEYS}
assert set(_BY_ATTR) == {f.name for f in fields(Config)}, "every Config field needs a Key"


def key_for(attr: str) -> Key:
    return _BY_ATTR[attr]


# --------------------------------------------------------------------------- sources


def _walk(tree: Mapping[str, Any], prefix: str, out: dict[str, Any], source: str) -> None:
    for name, value in tree.items():
        path = f"{prefix}.{name}" if prefix else str(name)
        if path in _BY_PATH:
            out[path] = value
        elif isinstance(value, Mapping) and any(p.startswith(path + ".") for p in _BY_PATH):
            _walk(value, path, out, source)
        else:
            near = difflib.get_close_matches(path, _BY_PATH, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"{path}: unknown key in {source}{hint}")


def from_mapping(
    tree: Mapping[str, Any], base: Config | None = None, *, source: str = "configuration"
) -> Config:
    """Apply a parsed YAML tree to ``base`` (defaults when None). Unknown keys, values of
    the wrong type and values out of range raise ConfigError naming the key."""
    if not isinstance(tree, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    found: dict[str, Any] = {}
    _walk(tree, "", found, source)
    changes: dict[str, Any] = {}
    for path, value in found.items():
        key = _BY_PATH[path]
        if value is None:
            if not key.optional:
                raise ConfigError(f"{path}: must not be null (in {source})")
            changes[key.attr] = None
            continue
        try:
            changes[key.attr] = key.kind.from_yaml(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc} (in {source})") from None
    return replace(base or Config(), **changes).validate()


def read_file(path: Path, base: Config | None = None) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return from_mapping(tree or {}, base, source=str(path))


def load(path: Path | None, base: Config | None = None) -> Config:
    """Defaults (or ``base``), then the YAML file at ``path`` if given."""
    if path is None:
        return (base or Config()).validate()
    return read_file(path, base)


def _from_text(key: Key, text: str, where: str) -> Any:
    if key.optional and text.strip().lower() in ("null", "none"):
        return None
    try:
        return key.kind.from_text(text)
    except ValueError as exc:
        raise ConfigError(f"{key.path}: {exc} (from {where})") from None


def from_env(env: Mapping[str, str], base: Config) -> Config:
    """Apply the ``ACTIONS_*`` variables of ``KEYS``; an empty variable counts as unset
    (Kubernetes manifests often carry empty values)."""
    changes = {
        key.attr: _from_text(key, env[key.env], key.env)
        for key in KEYS
        if env.get(key.env, "") != ""
    }
    return replace(base, **changes).validate()


def from_flags(flags: Mapping[str, str | None], base: Config) -> Config:
    """Apply flag values (text, keyed by Config attribute; None = not given)."""
    changes: dict[str, Any] = {}
    for attr, text in flags.items():
        if text is None:
            continue
        key = _BY_ATTR[attr]
        changes[attr] = _from_text(key, text, key.flag or attr)
    return replace(base, **changes).validate()


def resolve(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, str | None] | None = None,
) -> Config:
    """The effective configuration: defaults < YAML file < environment < flags.

    The file is ``config_file`` (``--config``) or else ``$ACTIONS_CONFIG``."""
    env = os.environ if env is None else env
    path = config_file or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    config = load(path)
    config = from_env(env, config)
    return from_flags(flags or {}, config)


# --------------------------------------------------------------------------- output


def to_mapping(config: Config) -> dict[str, Any]:
    """The nested YAML tree of every key (the inverse of ``from_mapping``)."""
    tree: dict[str, Any] = {}
    for key in KEYS:
        node = tree
        *parents, leaf = key.path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        value = getattr(config, key.attr)
        node[leaf] = None if value is None else key.kind.to_yaml(value)
    return tree


def dump(config: Config) -> str:
    """The effective configuration as YAML (the data directory resolved)."""
    effective = replace(config, data_dir=config.resolved_data_dir())
    return yaml.safe_dump(to_mapping(effective), sort_keys=False, default_flow_style=False)
