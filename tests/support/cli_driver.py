"""Run the client commands in-process, their output captured."""

from __future__ import annotations

import io

import trio

from actions import client_cli as cli


class Capture(io.StringIO):
    """stdout for an in-process command; ``seen(text)`` waits until it was written."""

    def __init__(self) -> None:
        super().__init__()
        self._written = trio.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        self._written.set()
        self._written = trio.Event()
        return written

    async def seen(self, needle: str) -> None:
        with trio.fail_after(10):
            while needle not in self.getvalue():
                await self._written.wait()


async def run(url: str, *argv: str, out: io.StringIO | None = None) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``actions-service <argv> --url <url>``."""
    args = cli.parse_args([*argv, "--url", url])
    out = out if out is not None else io.StringIO()
    err = io.StringIO()
    code = await cli.run_client_command_async(args, out, err)
    return code, out.getvalue(), err.getvalue()
