"""The completion scripts of ``actions-service completion`` run in the real shells.

zsh runs interactively on a pseudo-terminal (completion only works inside its line
editor): the test types a command line and Tab, and a ``compadd`` wrapper writes down
what completion offered. Both installs the README describes are tried: sourcing the
script, and the script as ``_actions-service`` in ``$fpath`` picked up by ``compinit``
(whose first Tab autoloads it). bash calls the completion function with ``COMP_WORDS``
and ``COMP_CWORD`` set, as ``complete -F`` does.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import require_tool

from actions import cli
from actions.completion import bash_script, commands, zsh_script

ZSH = shutil.which("zsh")
BASH = shutil.which("bash")

# Typed into the interactive zsh before any completion: no rc files (-f), nothing listed
# or beeped, and a compadd that appends what it is given, after matching against the
# word being completed, to $__out (with a tab and its description, when it has one).
# Tab completes, then writes __end__ there; Ctrl-T empties the line and writes
# __clear__. The test waits for each before typing on, and stays in one line-editor
# session (no new prompt: keys typed ahead of one can be lost).
ZSH_SETUP = r"""
unsetopt AUTO_LIST LIST_AMBIGUOUS AUTO_MENU BEEP
bindkey -e
__out={out}
{install}
compadd() {{
  local __a
  for __a in "$@"; do
    [[ $__a == -- ]] && break
    if [[ $__a == -[OAD]* ]]; then builtin compadd "$@"; return; fi
  done
  local -a __hits __descr
  builtin compadd -O __hits "$@"
  local __i=${{@[(i)-d]}}
  if (( __i < $# )); then __descr=("${{(@P)${{@[__i+1]}}}}"); fi
  for __i in {{1..$#__hits}}; do
    if (( $#__descr >= __i )); then
      print -r -- "$__hits[__i]"$'\t'"$__descr[__i]" >> $__out
    else
      print -r -- "$__hits[__i]" >> $__out
    fi
  done
  builtin compadd "$@"
}}
__complete_and_mark() {{
  zle complete-word
  print -r -- __end__ >> $__out
}}
__clear_and_mark() {{
  BUFFER=
  print -r -- __clear__ >> $__out
}}
zle -N __complete_and_mark
zle -N __clear_and_mark
bindkey '^I' __complete_and_mark
bindkey '^T' __clear_and_mark
"""

# The two installs of the README (compinit keeps its dump file in the test's directory).
COMPINIT = "autoload -Uz compinit && compinit -u -d {dir}/zcompdump"
INSTALLS = {
    "source": f"{COMPINIT}\nsource <(cat {{dir}}/script.zsh)",
    "fpath": f"fpath=({{dir}}/functions $fpath)\n{COMPINIT}",
}


class InteractiveZsh:
    """``zsh -f -i`` on a pseudo-terminal; every read has a deadline."""

    def __init__(self, directory: Path, install: str) -> None:
        self.out = directory / "offered"
        self._primary, secondary = pty.openpty()
        env = {"PATH": os.environ.get("PATH", "/bin"), "TERM": "xterm", "HOME": str(directory)}
        self.process = subprocess.Popen(
            [str(ZSH), "-f", "-i"],
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            env=env,
            cwd=directory,
            start_new_session=True,
        )
        os.close(secondary)
        self._count = 0
        self.transcript = b""
        setup = ZSH_SETUP.format(out=self.out, install=INSTALLS[install].format(dir=directory))
        for line in setup.strip().splitlines():
            self._write(line + "\n")
        self._sync()

    def _write(self, text: str) -> None:
        os.write(self._primary, text.encode())

    def _sync(self, seconds: float = 20) -> None:
        """Wait until everything typed so far has run (a marker it prints is seen)."""
        self._count += 1
        # Typed as __do""ne<n>__; printed as __done<n>__, so the echo does not match.
        marker = f"__done{self._count}__".encode()
        self._write(f'print -r -- "__do""ne{self._count}__"\n')
        deadline = time.monotonic() + seconds
        while marker not in self.transcript:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._primary], [], [], left)[0]:
                raise AssertionError(f"zsh did not answer; it printed:\n{self.transcript!r}")
            try:
                self.transcript += os.read(self._primary, 65536)
            except OSError as exc:  # EIO: the shell exited
                raise AssertionError(f"zsh exited; it printed:\n{self.transcript!r}") from exc
        self.transcript = self.transcript.split(marker, 1)[1]

    def complete(self, line: str) -> list[str]:
        """What Tab after ``line`` offers; the line is then emptied (Ctrl-T)."""
        self.out.unlink(missing_ok=True)
        self._write(line + "\t")
        offered = self._wait_for("__end__")
        self.out.unlink()
        self._write("\x14")
        self._wait_for("__clear__")
        return offered

    def _wait_for(self, mark: str, seconds: float = 20) -> list[str]:
        """The lines written to ``self.out`` before ``mark``, once it is there."""
        deadline = time.monotonic() + seconds
        while True:
            lines = self.out.read_text().splitlines() if self.out.exists() else []
            if lines[-1:] == [mark]:
                return lines[:-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"zsh did not write {mark}; it printed {self.transcript!r}")
            time.sleep(0.01)

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)
        os.close(self._primary)


def words(offered: list[str]) -> list[str]:
    return sorted({entry.split("\t")[0] for entry in offered})


def described(offered: list[str], word: str) -> str:
    """The description shown with ``word`` ("" if none)."""
    for entry in offered:
        found, _, shown = entry.partition("\t")
        if found == word:
            return " ".join(shown.split())
    raise AssertionError(f"{word!r} not offered: {offered}")


@pytest.fixture(params=sorted(INSTALLS))
def zsh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InteractiveZsh]:
    require_tool("zsh", ZSH is not None, "apt-get install zsh (scripts/test.sh does, as root)")
    script = zsh_script(cli._parser())
    (tmp_path / "script.zsh").write_text(script)
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / "_actions-service").write_text(script)
    shell = InteractiveZsh(tmp_path, request.param)
    yield shell
    shell.close()


def test_zsh_completes_subcommands_with_their_descriptions(zsh: InteractiveZsh) -> None:
    # The first Tab (which autoloads the function, in the fpath install) completes.
    offered = zsh.complete("actions-service ")
    assert words(offered) == sorted(c.name for c in commands(cli._parser()))
    assert described(offered, "update") == "update -- report an action's phase"
    assert described(offered, "serve") == "serve -- serve the Actions Service"
    assert words(zsh.complete("actions-service se")) == ["serve"]


def test_zsh_completes_a_subcommands_options_and_their_values(zsh: InteractiveZsh) -> None:
    assert words(zsh.complete("actions-service serve --sto")) == ["--store"]
    assert words(zsh.complete("actions-service serve --store ")) == [
        "embedded",
        "kubernetes",
        "memory",
    ]
    assert words(zsh.complete("actions-service serve --log-level D")) == ["DEBUG"]
    assert words(zsh.complete("actions-service watch --until")) == ["--until-done"]
    assert {"bash", "zsh"} <= set(words(zsh.complete("actions-service completion ")))
    assert words(zsh.complete("actions-service completion z")) == ["zsh"]
    options = zsh.complete("actions-service serve --p")
    assert words(options) == ["--port"]
    # Help texts keep their colons and brackets, unescaped.
    assert described(options, "--port").startswith("--port -- port to bind (0: any free)")
    # An option already given is not offered again; the others still are.
    after = words(zsh.complete("actions-service serve --store memory --"))
    assert "--store" not in after and "--port" in after


def test_zsh_completes_paths_for_file_options(zsh: InteractiveZsh, tmp_path: Path) -> None:
    (tmp_path / "settings.yaml").write_text("")
    assert "settings.yaml" in words(zsh.complete("actions-service serve --config set"))


# -- bash ------------------------------------------------------------------------------


def bash_complete(script: str, *typed: str) -> list[str]:
    """Call the completion function as bash's ``complete -F`` would, in a real bash."""
    program = (
        f"{script}\n"
        f"COMP_WORDS=({' '.join(typed)}); COMP_CWORD={len(typed) - 1}\n"
        "_actions_service\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        [str(BASH), "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_bash_registers_and_completes() -> None:
    require_tool("bash", BASH is not None, "install bash")
    script = bash_script(cli._parser())
    registered = subprocess.run(
        [str(BASH), "--norc", "--noprofile", "-c", f"{script}\ncomplete -p actions-service"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert registered.stdout.strip() == "complete -o default -F _actions_service actions-service"
    assert {c.name for c in commands(cli._parser())} <= set(
        bash_complete(script, "actions-service", "")
    )
    assert bash_complete(script, "actions-service", "se") == ["serve"]
    assert bash_complete(script, "actions-service", "serve", "--store", "") == [
        "embedded",
        "kubernetes",
        "memory",
    ]
    assert {"bash", "zsh"} <= set(bash_complete(script, "actions-service", "completion", ""))
    assert bash_complete(script, "actions-service", "completion", "z") == ["zsh"]
