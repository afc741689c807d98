"""``actions-service serve`` start-up failures: one line naming the thing and the cause,
exit status 2, no traceback, and nothing created before the configuration works."""

from __future__ import annotations

import errno
import logging
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from actions import cli, preflight
from actions.preflight import StartupError, check_data_dir, describe_open_error

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """cli.main installs a handler on the root logger; put things back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def serve(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """Run ``actions-service serve`` in-process; (exit status, stderr lines)."""
    code = cli.main(["serve", *argv])
    return code, capsys.readouterr().err.splitlines()


def assert_one_line(lines: list[str], *needles: str) -> None:
    assert len(lines) == 1, lines  # no traceback, no "listening" line
    assert "could not start" in lines[0], lines
    for needle in needles:
        assert needle in lines[0], lines


# --------------------------------------------------------------------------- data directory


def test_data_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    code, lines = serve(capsys, "--port", "0", "--data-dir", str(tmp_path / "afile"))
    assert code == 2
    assert_one_line(lines, "actions.dataDir", str(tmp_path / "afile"), "is not a directory")


def test_data_dir_below_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    code, lines = serve(capsys, "--port", "0", "--data-dir", str(tmp_path / "afile" / "sub"))
    assert code == 2
    assert_one_line(lines, f"cannot create {tmp_path / 'afile' / 'sub'}", "not a directory")


def test_garbage_database_is_refused_as_corrupt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "flyte.sqlite3").write_bytes(os.urandom(4096))
    code, lines = serve(capsys, "--port", "0", "--data-dir", str(tmp_path))
    assert code == 2
    assert_one_line(lines, str(tmp_path / "flyte.sqlite3"), "not an SQLite database")


def test_truncated_database_is_refused_as_corrupt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "flyte.sqlite3"
    conn = sqlite3.connect(database)
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.executemany("INSERT INTO t VALUES (?)", [("y" * 500,)] * 2000)
    conn.commit()
    conn.close()
    os.truncate(database, 20_000)  # the header survives, the pages do not
    code, lines = serve(capsys, "--port", "0", "--data-dir", str(tmp_path))
    assert code == 2
    assert_one_line(lines, str(database), "corrupt")


def test_a_file_from_a_newer_version_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "flyte.sqlite3"
    with sqlite3.connect(database) as conn:
        conn.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"
            "INSERT INTO meta VALUES ('schema', 99), ('rv', 7), ('compacted', 0);"
        )
    code, lines = serve(capsys, "--port", "0", "--data-dir", str(tmp_path))
    assert code == 2
    assert_one_line(lines, str(database), "unsupported store schema version 99")
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT key, value FROM meta ORDER BY key").fetchall() == [
            ("compacted", 0),
            ("rv", 7),
            ("schema", 99),
        ]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == {"meta"}  # nothing created in a file this version does not know


def test_zero_byte_database_is_a_new_store(tmp_path: Path) -> None:
    """SQLite itself leaves a zero-byte file before the first write: accepted as new."""
    database = tmp_path / "flyte.sqlite3"
    database.touch()
    check_data_dir(tmp_path, database)  # no error


def test_read_only_and_permission_denied_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tests may run as root, which file modes do not stop: pretend instead.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(StartupError, match=r"actions.dataDir: .* is not usable: permission denied"):
        check_data_dir(tmp_path, tmp_path / "flyte.sqlite3")

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(StartupError, match="read-only file system"):
        check_data_dir(tmp_path, tmp_path / "flyte.sqlite3")
    with pytest.raises(StartupError, match=rf"cannot create {tmp_path / 'new'} in {tmp_path}"):
        check_data_dir(tmp_path / "new", tmp_path / "new" / "flyte.sqlite3")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (sqlite3.OperationalError("attempt to write a readonly database"), "read-only"),
        (sqlite3.DatabaseError("file is not a database"), "corrupt"),
        (sqlite3.DatabaseError("database disk image is malformed"), "corrupt"),
        (sqlite3.OperationalError("unable to open database file"), "cannot open the file"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
        (OSError(errno.EACCES, "Permission denied"), "Permission denied"),
    ],
)
def test_open_errors_are_said_in_operator_terms(error: BaseException, reason: str) -> None:
    text = describe_open_error(Path("/d/flyte.sqlite3"), error)
    assert text.startswith("actions.dataDir:") and "/d/flyte.sqlite3" in text
    assert reason in text


# --------------------------------------------------------------------------- the port


def test_port_in_use_names_the_port_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / "data"
        code, lines = serve(capsys, "--port", str(port), "--data-dir", str(data))
    assert code == 2
    assert_one_line(lines, f"actions.server.port: cannot listen on 127.0.0.1:{port}", "in use")
    assert not data.exists()  # checked before the store was opened


def test_bind_errors_name_the_cause() -> None:
    assert "permission denied" in str(
        preflight.bind_error("0.0.0.0", 80, OSError(errno.EACCES, "Permission denied"))
    )
    elsewhere = preflight.bind_error("10.9.9.9", 1, OSError(errno.EADDRNOTAVAIL, "Cannot assign"))
    assert str(elsewhere) == (
        "actions.server.host: cannot listen on 10.9.9.9:1: the address is not one of this machine's"
    )
    unknown = preflight.bind_error("nohost.invalid", 1, socket.gaierror(-2, "Name unknown"))
    assert str(unknown).startswith("actions.server.host: cannot listen on nohost.invalid:1")


# --------------------------------------------------------------------------- Kubernetes


def test_kubernetes_without_the_crd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kube_emulator import Emulator

    with Emulator(crds=[], namespaces=["flyte"]) as emu:
        kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig", namespace="flyte")
        code, lines = serve(capsys, "--port", "0", "--store", "kubernetes",
                            "--kubeconfig", str(kubeconfig))  # fmt: skip
    assert code == 2
    assert "API server http://127.0.0.1:" in lines[0] and "context emulator" in lines[0]
    assert_one_line(lines[1:], "CRD taskactions.flyte.org is not installed", "API server")


def test_kubernetes_never_creates_a_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kube_emulator import Emulator
    from kubernetes import client

    with Emulator(crds=[ROOT / "k8s" / "crd.yaml"], namespaces=["flyte"]) as emu:
        kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig", namespace="flyte")
        code, lines = serve(capsys, "--port", "0", "--store", "kubernetes",
                            "--kubeconfig", str(kubeconfig), "--namespace", "typo")  # fmt: skip
        namespaces = client.CoreV1Api(emu.api_client()).list_namespace().items
    assert code == 2
    assert_one_line(lines[1:], "actions.kubernetes.namespace: namespace 'typo' does not exist")
    assert [ns.metadata.name for ns in namespaces] == ["flyte"]


def test_kubernetes_unknown_context(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kube_emulator import Emulator

    with Emulator(crds=[], namespaces=["flyte"]) as emu:
        kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig", namespace="flyte")
        code, lines = serve(capsys, "--port", "0", "--store", "kubernetes",
                            "--kubeconfig", str(kubeconfig), "--context", "nope")  # fmt: skip
    assert code == 2
    assert_one_line(lines, f"kubeconfig {kubeconfig}, context 'nope'")


# --------------------------------------------------------------------------- flags


def test_log_level_flag_is_case_blind(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "--log-level", "debug"]) == 0
    assert "level: DEBUG" in capsys.readouterr().out


def test_runtime_failure_exits_1_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def broken(config: object, **kwargs: object) -> None:
        raise RuntimeError("the fan-out fell over")

    monkeypatch.setattr(cli.app_module, "serve", broken)
    code, lines = serve(capsys, "--memory", "--port", "0")
    assert code == 1
    assert lines == [line for line in lines if "Traceback" not in line]
    assert lines[-1].endswith("actions-service failed: RuntimeError: the fan-out fell over")


def test_unreachable_api_server_is_not_a_start_up_error() -> None:
    """Out of reach, the API server cannot say what is missing: the service starts, not
    ready, and the warning names the server and the cause in one line."""
    from kubernetes import client

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    api = client.ApiClient(configuration)
    try:
        problem = preflight.check_kubernetes("X", api, "flyte", (1.0, 1.0))
    finally:
        api.close()
    assert problem is not None
    assert problem.startswith("API server X unreachable: ") and "refused" in problem
    assert "HTTPConnectionPool" not in problem
