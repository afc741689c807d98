"""Configuration: precedence (defaults < file < environment < flags), errors that name the
key, ``actions-service config``, and the README table staying in step with ``KEYS``."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
import yaml

from actions import cli
from actions.app import hypercorn_config
from actions.config import (
    CONFIG_ENV,
    KEYS,
    Config,
    ConfigError,
    dump,
    from_env,
    from_mapping,
    load,
    resolve,
)

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _flags(argv: list[str]) -> tuple[Path | None, dict[str, str | None]]:
    args = cli._parser().parse_args(["serve", *argv])
    return args.config, {key.attr: getattr(args, key.attr, None) for key in KEYS}


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "c.yaml",
        "actions:\n"
        "  kubernetes: {namespace: from-file}\n"
        "  watchWorkers: 3\n"
        "  server: {port: 9000, host: 127.0.0.2}\n",
    )
    env = {
        "ACTIONS_SERVER_PORT": "9100",
        "ACTIONS_WATCH_WORKERS": "4",
        "ACTIONS_LOG_LEVEL": "debug",
    }
    config_file, flags = _flags(["--config", str(path), "--port", "9200"])
    c = resolve(config_file, env, flags)
    assert c.port == 9200  # flag beats environment and file
    assert c.watch_workers == 4  # environment beats file
    assert (c.namespace, c.host) == ("from-file", "127.0.0.2")  # file beats defaults
    assert c.watch_buffer_size == 100  # default
    assert c.log_level == "DEBUG"  # normalised


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "actions: {store: memory}\n")
    assert resolve(None, {CONFIG_ENV: str(path)}).store == "memory"
    # --config wins over $ACTIONS_CONFIG.
    other = _write(tmp_path / "o.yaml", "actions: {store: kubernetes}\n")
    assert resolve(other, {CONFIG_ENV: str(path)}).store == "kubernetes"


def test_empty_environment_variable_is_unset_and_null_clears_optional() -> None:
    assert from_env({"ACTIONS_SERVER_PORT": ""}, Config()).port == 8091
    c = from_env({"ACTIONS_LIMITS_MAX_WATCH_SUBSCRIPTIONS": "null"}, Config())
    assert c.max_watch_subscriptions is None
    unlimited = from_mapping({"actions": {"limits": {"maxWatchSubscriptions": None}}})
    assert unlimited.max_watch_subscriptions is None


def test_every_key_set_from_yaml(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem", "tokens.yaml", "kubeconfig"):
        (tmp_path / name).write_text("x")
    text = f"""
actions:
  store: kubernetes
  dataDir: {tmp_path}/data
  watchWorkers: 2
  watchBufferSize: 3
  watchSubscriberBufferSize: 4
  kubernetes:
    namespace: team-a
    kubeconfig: {tmp_path}/kubeconfig
    context: kind
    inCluster: false
    qps: 5
    burst: 6
    connectTimeout: 1.5
    requestTimeout: 7
    watchTimeout: 60
  server:
    host: 0.0.0.0
    port: 9443
    gracefulTimeout: 3
    tls:
      certFile: {tmp_path}/cert.pem
      keyFile: {tmp_path}/key.pem
      clientCaFile: {tmp_path}/ca.pem
      requireClientCert: true
      reloadInterval: 2
    auth: {{tokenFile: {tmp_path}/tokens.yaml}}
  limits: {{maxStreamsPerConnection: 50, maxWatchSubscriptions: 7, maxMessageSize: 65536}}
  log: {{format: json, level: warning, accessLog: false}}
"""
    c = load(_write(tmp_path / "c.yaml", text)).check_files()
    assert c == Config(
        store="kubernetes",
        data_dir=tmp_path / "data",
        watch_workers=2,
        watch_buffer_size=3,
        subscriber_buffer_size=4,
        namespace="team-a",
        kubeconfig=tmp_path / "kubeconfig",
        kube_context="kind",
        in_cluster=False,
        kube_qps=5.0,
        kube_burst=6,
        kube_connect_timeout=1.5,
        kube_request_timeout=7.0,
        kube_watch_timeout=60,
        host="0.0.0.0",
        port=9443,
        graceful_timeout=3.0,
        tls_cert_file=tmp_path / "cert.pem",
        tls_key_file=tmp_path / "key.pem",
        tls_client_ca_file=tmp_path / "ca.pem",
        tls_require_client_cert=True,
        tls_reload_interval=2.0,
        auth_token_file=tmp_path / "tokens.yaml",
        max_streams_per_connection=50,
        max_watch_subscriptions=7,
        max_message_size=65536,
        log_format="json",
        log_level="WARNING",
        access_log=False,
    )
    # The printed configuration reads back as the same configuration.
    assert from_mapping(yaml.safe_load(dump(c))) == c


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"actions": {"server": {"prot": 1}}}, "actions.server.prot: unknown key"),
        ({"actions": {"watchworkers": 1}}, "did you mean actions.watchWorkers"),
        ({"logger": {"level": 1}}, "logger: unknown key"),
        ({"actions": {"server": 8091}}, "actions.server: unknown key"),
        ({"actions": {"watchWorkers": 0}}, "actions.watchWorkers: must be at least 1"),
        ({"actions": {"watchBufferSize": "many"}}, "actions.watchBufferSize: expected an integer"),
        ({"actions": {"watchWorkers": True}}, "actions.watchWorkers: expected an integer"),
        ({"actions": {"server": {"port": 70000}}}, "actions.server.port: must be between"),
        ({"actions": {"server": {"port": None}}}, "actions.server.port: must not be null"),
        ({"actions": {"store": "etcd"}}, "actions.store: expected one of embedded, kubernetes"),
        ({"actions": {"kubernetes": {"namespace": "Team_A"}}}, "actions.kubernetes.namespace"),
        ({"actions": {"kubernetes": {"qps": 0}}}, "actions.kubernetes.qps: must be greater"),
        ({"actions": {"kubernetes": {"inCluster": "yes"}}}, "actions.kubernetes.inCluster"),
        ({"actions": {"log": {"format": "xml"}}}, "actions.log.format: expected one of plain"),
        ({"actions": {"log": {"level": "LOUD"}}}, "actions.log.level"),
        ({"actions": {"limits": {"maxWatchSubscriptions": 0}}}, "maxWatchSubscriptions"),
        (
            {"actions": {"server": {"tls": {"certFile": "/c.pem"}}}},
            "actions.server.tls.certFile and actions.server.tls.keyFile",
        ),
        (
            {"actions": {"server": {"tls": {"clientCaFile": "/ca.pem"}}}},
            "actions.server.tls.clientCaFile: client certificates need TLS",
        ),
        (
            {"actions": {"server": {"tls": {"requireClientCert": True}}}},
            "actions.server.tls.requireClientCert: needs actions.server.tls.clientCaFile",
        ),
        (["actions"], "expected a mapping"),
    ],
)
def test_bad_yaml_is_rejected_naming_the_key(tree: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(tree)  # type: ignore[arg-type]
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ACTIONS_SERVER_PORT": "http"}, "actions.server.port: expected an integer"),
        ({"ACTIONS_KUBERNETES_QPS": "fast"}, "actions.kubernetes.qps: expected a number"),
        ({"ACTIONS_SERVER_TLS_REQUIRE_CLIENT_CERT": "sure"}, "expected true or false"),
        ({"ACTIONS_STORE": "etcd"}, "actions.store: expected one of"),
    ],
)
def test_bad_environment_is_rejected_naming_key_and_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(None, env)
    assert message in str(info.value)
    assert next(iter(env)) in str(info.value)


def test_main_rejects_bad_flag_missing_file_and_unknown_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--port", "eighty"]) == 2
    err = capsys.readouterr().err
    assert "actions.server.port: expected an integer" in err and "--port" in err
    missing = tmp_path / "nope.pem"
    assert cli.main(["serve", "--tls-cert", str(missing), "--tls-key", str(missing)]) == 2
    assert "actions.server.tls.certFile: no such file" in capsys.readouterr().err
    bad = _write(tmp_path / "c.yaml", "actions:\n  server:\n    hots: 0.0.0.0\n")
    assert cli.main(["config", "--config", str(bad)]) == 2
    assert "actions.server.hots: unknown key" in capsys.readouterr().err
    tokens = _write(tmp_path / "tokens.yaml", "tokens: [{name: a}]\n")
    assert cli.main(["serve", "--auth-token-file", str(tokens)]) == 2
    assert "actions.server.auth.tokenFile:" in capsys.readouterr().err


def test_config_command_prints_the_effective_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "c.yaml", "actions: {watchWorkers: 3, server: {port: 9000}}\n")
    monkeypatch.setenv("ACTIONS_SERVER_PORT", "9100")
    monkeypatch.setenv("ACTIONS_LOG_FORMAT", "json")
    assert cli.main(["config", "--config", str(path), "--memory", "--data-dir", str(tmp_path)]) == 0
    tree = yaml.safe_load(capsys.readouterr().out)
    actions = tree["actions"]
    assert actions["watchWorkers"] == 3
    assert actions["server"]["port"] == 9100
    assert actions["log"]["format"] == "json"
    assert (actions["store"], actions["dataDir"]) == ("memory", str(tmp_path))
    assert from_mapping(tree).port == 9100


def test_environment_names_are_derived_and_unique() -> None:
    names = [key.env for key in KEYS]
    assert len(set(names)) == len(names)
    by_path = {key.path: key.env for key in KEYS}
    assert by_path["actions.server.port"] == "ACTIONS_SERVER_PORT"
    assert by_path["actions.watchBufferSize"] == "ACTIONS_WATCH_BUFFER_SIZE"
    assert by_path["actions.server.tls.clientCaFile"] == "ACTIONS_SERVER_TLS_CLIENT_CA_FILE"
    # The client commands' variables (ACTIONS_TOKEN, ACTIONS_ORG ...) are not server keys.
    assert not {"ACTIONS_TOKEN", "ACTIONS_ORG", "ACTIONS_RUN", CONFIG_ENV} & set(names)


def test_readme_configuration_table_lists_every_key() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for key in KEYS:
        assert f"`{key.path}`" in section, key.path
        assert f"`{key.env}`" in section, key.env
        if key.flag:
            assert f"`{key.flag}`" in section, key.flag


def test_listener_settings_reach_hypercorn(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    config = Config(
        port=0,
        graceful_timeout=2.5,
        max_streams_per_connection=7,
        tls_cert_file=certfile,
        tls_key_file=keyfile,
        tls_client_ca_file=cafile,
        tls_require_client_cert=True,
        tls_reload_interval=1.0,
        write_timeout=4.0,
        h2_flood_early_resets=9,
        h2_flood_window=3.0,
    ).validate()
    hconfig = hypercorn_config(config)
    assert hconfig.h2_max_concurrent_streams == 7
    assert hconfig.write_timeout == 4.0
    assert (hconfig.h2_flood_limits.early_resets, hconfig.h2_flood_limits.window) == (9, 3.0)
    assert hconfig.graceful_timeout == 2.5
    assert hconfig.tls is not None and hconfig.tls.client_ca == str(cafile)
    assert hconfig.tls_reload_interval == 1.0
    assert hconfig.create_ssl_context().verify_mode == ssl.CERT_REQUIRED  # type: ignore[union-attr]
