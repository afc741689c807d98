"""What a new user meets on the command line: --version, completion, help with defaults
and exit codes, suggestions for typos, usage errors for bad URLs, and a ``watch`` that
ends when there is nothing (more) to watch."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from typing import Any

import pytest
import trio
from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2 as P
from flyteidl2.workflow.state_service_pb2 import ActionUpdate
from test_client_cli import RUN, URIS, Capture, actions_server, run

from actions import cli, watch_view
from actions.completion import bash_script, zsh_script
from actions.watch_view import WatchState, natural_key, render_table


def main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- flags and help


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = main(capsys, "--version")
    assert code == 0 and re.fullmatch(r"actions-service \S+\n", out)


def test_help_documents_exit_codes_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, top, _ = main(capsys, "--help")
    assert code == 0
    assert "exit status of serve and config" in top and "10 + the gRPC code" in top
    code, serve, _ = main(capsys, "serve", "--help")
    serve = " ".join(serve.split())
    assert "(default 8091;" in serve and "(default embedded;" in serve
    assert "(default $XDG_DATA_HOME/actions-service;" in serve
    assert "address already in use" not in serve and "the port in use" in serve
    code, watch, _ = main(capsys, "watch", "--help")
    watch = " ".join(watch.split())
    assert "15 not_found (also: watch of a parent that does not" in watch


@pytest.mark.parametrize("command", ["enqueue", "update", "abort", "signal", "watch", "serve"])
def test_every_flag_has_help(command: str) -> None:
    parser = cli._parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[
        command
    ]  # type: ignore[attr-defined]
    missing = [a.option_strings for a in sub._actions if a.option_strings and not a.help]
    assert missing == []


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["serv"], "did you mean serve?"),
        (["enqeue"], "did you mean enqueue?"),
        (["serve", "--prot", "1"], "did you mean --port?"),
        (["watch", "a0", "--until-dne"], "did you mean --until-done?"),
        (["serve", "--store", "kubernets"], "did you mean kubernetes?"),
    ],
)
def test_typos_get_a_suggestion(
    capsys: pytest.CaptureFixture[str], argv: list[str], hint: str
) -> None:
    code, _, err = main(capsys, *argv)
    assert code == 2 and hint in err, err


def test_log_level_is_case_blind_as_in_the_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = main(capsys, "config", "--log-level", "debug")
    assert code == 0, err
    assert "level: DEBUG" in out


@pytest.mark.parametrize("url", ["localhost:8091", "127.0.0.1:8091", "ftp://host/", "http://"])
def test_url_without_http_scheme_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    code, _, err = main(capsys, "abort", *RUN, "--action", "a0", "--url", url)
    assert code == 2
    assert "--url" in err and "expected http://HOST:PORT" in err


# --------------------------------------------------------------------------- completion


def _bash_complete(script: str, *words: str) -> list[str]:
    line = " ".join(words)
    program = (
        f"{script}\n"
        f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n"
        "_actions_service\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_from_the_parser_tree(capsys: pytest.CaptureFixture[str]) -> None:
    code, script, _ = main(capsys, "completion", "bash")
    assert code == 0 and script == bash_script(cli._parser())
    assert _bash_complete(script, "actions-service", "se") == ["serve"]
    assert "completion" in _bash_complete(script, "actions-service", "")
    assert _bash_complete(script, "actions-service", "serve", "--sto") == ["--store"]
    assert _bash_complete(script, "actions-service", "serve", "--store", "k") == ["kubernetes"]
    assert _bash_complete(script, "actions-service", "serve", "--log-level", "D") == ["DEBUG"]
    assert _bash_complete(script, "actions-service", "watch", "--until") == ["--until-done"]
    assert _bash_complete(script, "actions-service", "completion", "z") == ["zsh"]


def test_zsh_completion_names_every_subcommand_and_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, script, _ = main(capsys, "completion", "zsh")
    assert code == 0 and script == zsh_script(cli._parser())
    assert script.startswith("#compdef actions-service\n")
    for name in ("serve", "config", "enqueue", "update", "abort", "signal", "watch"):
        assert f"    {name})" in script
    assert "'--store[store backend (default embedded" in script
    assert ":value:(embedded kubernetes memory)'" in script
    assert "'--data-dir[" in script and ":path:_files'" in script
    # Help texts cannot break out of their quotes or brackets.
    for line in script.splitlines():
        if line.strip().startswith("'--"):
            assert line.replace("'\\''", "").count("'") % 2 == 0, line


# --------------------------------------------------------------------------- the table


def _update(name: str, phase: int, **kw: Any) -> pb.WatchForUpdatesResponse:
    run_id = {"org": "o", "project": "p", "domain": "development", "name": "r1"}
    return pb.WatchForUpdatesResponse(
        action_update=ActionUpdate(action_id={"run": run_id, "name": name}, phase=phase, **kw)
    )


SENTINEL = pb.WatchForUpdatesResponse(control_message={"sentinel": True})


def _state(children: int) -> WatchState:
    state = WatchState(run="o/p/development/r1", parent="a0", started=0.0)
    state.apply(_update("a0", P.ACTION_PHASE_RUNNING), 0.0)
    for n in range(1, children + 1):
        state.apply(_update(f"c{n}", P.ACTION_PHASE_QUEUED, output_uri=f"s3://b/{n}"), 0.0)
    state.apply(SENTINEL, 0.0)
    return state


def test_rows_sort_naturally() -> None:
    assert sorted(["c10", "c2", "c1", "b", "c1a"], key=natural_key) == [
        "b", "c1", "c1a", "c2", "c10"
    ]  # fmt: skip
    rows = render_table(_state(11), 1.0).splitlines()[3:]
    assert [row.split()[0] for row in rows] == [f"c{n}" for n in range(1, 12)]


def test_table_fits_a_short_and_narrow_terminal() -> None:
    text = render_table(_state(50), 1.0, width=30, height=10)
    lines = text.splitlines()
    assert len(lines) == 10
    assert all(len(line) <= 30 for line in lines)
    assert lines[0].endswith("…")  # the header was cut, not wrapped
    assert lines[-1] == "… 44 more"
    assert [line.split()[0] for line in lines[3:-1]] == [f"c{n}" for n in range(1, 7)]


def test_live_screen_uses_the_terminal_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_view, "_terminal_size", lambda out: (40, 8))
    out = io.StringIO()
    screen = watch_view.Screen(out, live=True, color=False)
    screen.draw(_state(30), 1.0)
    frame = out.getvalue().splitlines()
    assert len(frame) == 7 and all(len(line) <= 39 for line in frame)
    assert frame[-1] == "… 27 more"


def test_notes_say_why() -> None:
    state = _state(0)
    failed = _update("f1", P.ACTION_PHASE_FAILED)
    failed.action_update.error.code = "OOM"
    failed.action_update.error.message = "out of memory"
    for response in (
        failed,
        _update("f2", P.ACTION_PHASE_FAILED),
        _update("x1", P.ACTION_PHASE_ABORTED, output_uri="s3://b/x1"),
        _update("t1", P.ACTION_PHASE_TIMED_OUT),
        _update("k1", P.ACTION_PHASE_PAUSED),
        _update("r1", P.ACTION_PHASE_RUNNING, output_uri="s3://b/r1"),
    ):
        state.apply(response, 1.0)
    notes = {name: row.note for name, row in state.children.items()}
    assert notes == {
        "f1": "error: [OOM] out of memory",
        "f2": "failed (no error reported)",
        "x1": "aborted",
        "t1": "timed out",
        "k1": "waiting for a signal",
        "r1": "s3://b/r1",
    }


def test_a_reconnect_keeps_the_table_and_the_times() -> None:
    state = _state(2)
    state.apply(_update("c1", P.ACTION_PHASE_RUNNING), 5.0)
    state.resync()
    text = render_table(state, 20.0)
    assert "(reconnecting…)" in text and "c1" in text and "c2" in text
    for response in (_update("a0", P.ACTION_PHASE_RUNNING), _update("c1", P.ACTION_PHASE_RUNNING),
                     _update("c2", P.ACTION_PHASE_QUEUED), SENTINEL):  # fmt: skip
        state.apply(response, 20.0)
    assert state.children["c1"].since == 5.0 and state.children["c2"].since == 0.0
    assert "00:15" in render_table(state, 20.0)  # c1 RUNNING since 5.0, not since 20.0


def test_a_leaf_is_done_when_it_is_terminal() -> None:
    state = WatchState(run="r", parent="a0", started=0.0)
    state.apply(_update("a0", P.ACTION_PHASE_RUNNING), 0.0)
    state.apply(SENTINEL, 0.0)
    assert not state.done() and not state.parent_missing()
    assert "no children yet; waiting for them (Ctrl-C to stop)" in render_table(state, 1.0)
    leaf = WatchState(run="r", parent="a0", started=0.0)
    leaf.apply(_update("a0", P.ACTION_PHASE_SUCCEEDED), 0.0)
    leaf.apply(SENTINEL, 0.0)
    assert leaf.done()


# --------------------------------------------------------------------------- watch end to end


async def test_watch_of_an_unknown_parent_is_not_found() -> None:
    async with actions_server() as url:
        with trio.fail_after(10):
            code, _, err = await run(url, "watch", "nope", *RUN)
    assert code == 15  # 10 + NOT_FOUND
    assert err == "error: not_found: parent action 'nope' not found in run o/p/development/r1\n"


async def test_watch_until_done_of_a_finished_leaf_exits() -> None:
    async with actions_server() as url:
        assert (await run(url, "enqueue", *RUN, *URIS, "--action", "a0"))[0] == 0
        for phase in ("running", "succeeded"):
            assert (await run(url, "update", *RUN, "--action", "a0", "--phase", phase))[0] == 0
        with trio.fail_after(10):
            code, out, err = await run(url, "watch", "a0", *RUN, "--until-done")
    assert (code, err) == (0, "")
    assert "parent a0 (SUCCEEDED)" in out and "\nno children\n" in out


async def test_aborting_the_watched_parent_ends_the_watch() -> None:
    async with actions_server() as url:
        assert (await run(url, "enqueue", *RUN, *URIS, "--action", "a0"))[0] == 0
        for child in ("c1", "c2"):
            enqueued = await run(url, "enqueue", *RUN, *URIS, "--action", child, "--parent", "a0")
            assert enqueued[0] == 0
        out = Capture()
        result: list[tuple[int, str, str]] = []

        async def watch() -> None:
            result.append(await run(url, "watch", "a0", *RUN, out=out))

        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                await out.seen("ACTION")
                assert (await run(url, "abort", *RUN, "--action", "a0"))[0] == 0
    code, text, err = result[0]
    assert (code, err) == (1, "parent action 'a0' was aborted (it no longer exists)\n")
    assert " c1 ABORTED aborted" in text and " c2 ABORTED aborted" in text


async def test_a_condition_needs_no_input_uri() -> None:
    async with actions_server() as url:
        assert (await run(url, "enqueue", *RUN, *URIS, "--action", "a0"))[0] == 0
        code, out, err = await run(
            url, "enqueue", *RUN, "--action", "k1", "--parent", "a0", "--type", "condition",
            "--run-output-base", "s3://bucket/o", "--prompt", "ship it?",
        )  # fmt: skip
    assert (code, err) == (0, ""), err
    assert out == "enqueued o/p/development/r1/k1\n"
