"""The ``watch`` view: what a watcher knows (``WatchState``) and how it is shown.

Pure state and text (``render_table`` takes the state and a clock and returns text) plus
``Screen``, which writes it to a stream, and the two ways ``actions-service watch`` shows
a stream (``TableView``, ``JsonLines``); no networking, so it is tested without a server
or a terminal. ``actions.watch_follow`` feeds it from the WatchForUpdates stream.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Final, TextIO

from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2
from flyteidl2.workflow.state_service_pb2 import ActionUpdate
from google.protobuf import json_format

from actions.phases import TERMINAL as TERMINAL_PHASES
from actions.phases import name as phase_name

# --------------------------------------------------------------------------- state


@dataclass
class ChildRow:
    name: str
    phase: int
    since: float  # when this watcher saw the phase begin (monotonic seconds)
    note: str = ""  # error message, signalled value or output URI


@dataclass
class WatchState:
    """What ``watch`` knows: the parent's phase and each direct child's latest update."""

    run: str
    parent: str
    started: float
    parent_phase: int | None = None
    synced: bool = False  # the snapshot sentinel has arrived
    children: dict[str, ChildRow] = field(default_factory=dict)

    def apply(self, response: pb.WatchForUpdatesResponse, now: float) -> bool:
        """Fold one response in; True when something visible changed."""
        if response.WhichOneof("message") == "control_message":
            if response.control_message.sentinel and not self.synced:
                self.synced = True
                return True
            return False
        update = response.action_update
        if update.action_id.name == self.parent:
            changed = self.parent_phase != update.phase
            self.parent_phase = update.phase
            return changed
        note = _note(update)
        row = self.children.get(update.action_id.name)
        if row is None:
            self.children[update.action_id.name] = ChildRow(
                update.action_id.name, update.phase, now, note
            )
            return True
        if row.phase == update.phase and row.note == note:
            return False
        if row.phase != update.phase:
            row.since = now
        row.phase, row.note = update.phase, note
        return True

    def resync(self) -> None:
        """A reconnect brings a fresh snapshot: forget what it will restate."""
        self.synced = False
        self.children.clear()
        self.parent_phase = None

    def counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for row in self.children.values():
            counts[row.phase] = counts.get(row.phase, 0) + 1
        return counts

    def done(self) -> bool:
        return (
            self.synced
            and bool(self.children)
            and all(row.phase in TERMINAL_PHASES for row in self.children.values())
        )


def _note(update: ActionUpdate) -> str:
    if update.HasField("error") and (update.error.message or update.error.code):
        return f"error: {update.error.code} {update.error.message}".strip()
    if update.HasField("value"):
        primitive = update.value.scalar.primitive
        kind = primitive.WhichOneof("value")
        if kind is not None:
            return f"value: {json.dumps(getattr(primitive, kind))}"
    return update.output_uri


_COLOURS: Final[dict[int, str]] = {
    phase_pb2.ACTION_PHASE_QUEUED: "34",  # blue
    phase_pb2.ACTION_PHASE_WAITING_FOR_RESOURCES: "34",
    phase_pb2.ACTION_PHASE_INITIALIZING: "36",  # cyan
    phase_pb2.ACTION_PHASE_RUNNING: "36;1",
    phase_pb2.ACTION_PHASE_PAUSED: "33",  # yellow
    phase_pb2.ACTION_PHASE_SUCCEEDED: "32",  # green
    phase_pb2.ACTION_PHASE_RECOVERED: "32",
    phase_pb2.ACTION_PHASE_FAILED: "31;1",  # red
    phase_pb2.ACTION_PHASE_TIMED_OUT: "31",
    phase_pb2.ACTION_PHASE_ABORTED: "35",  # magenta
}


def _paint(text: str, phase: int, color: bool) -> str:
    code = _COLOURS.get(phase) if color else None
    return f"\x1b[{code}m{text}\x1b[0m" if code else text


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def render_table(state: WatchState, now: float, *, color: bool = False, width: int = 120) -> str:
    """The watch screen as text: a header, counts per phase, one row per child.

    Pure (state and clock in, text out) so it is tested without a terminal. Padding is
    computed on the plain text; colour codes are added afterwards so columns line up.
    """
    parent_phase = "?" if state.parent_phase is None else phase_name(state.parent_phase)
    status = "" if state.synced else "  (loading snapshot)"
    lines = [
        f"run {state.run}  parent {state.parent} ({parent_phase})  "
        f"elapsed {format_duration(now - state.started)}  "
        f"children {len(state.children)}{status}"
    ]
    counts = state.counts()
    lines.append(
        "  ".join(
            _paint(f"{phase_name(phase)} {counts[phase]}", phase, color) for phase in sorted(counts)
        )
        or "no children yet"
    )
    if state.children:
        rows = sorted(state.children.values(), key=lambda r: r.name)
        name_w = max(6, *(len(r.name) for r in rows))
        phase_w = max(5, *(len(phase_name(r.phase)) for r in rows))
        lines.append(f"{'ACTION':<{name_w}}  {'PHASE':<{phase_w}}  {'FOR':>8}  NOTE")
        for row in rows:
            phase = _paint(f"{phase_name(row.phase):<{phase_w}}", row.phase, color)
            line = f"{row.name:<{name_w}}  {phase}  {format_duration(now - row.since):>8}"
            note_room = max(0, width - name_w - phase_w - 14)
            if row.note and note_room:
                note = row.note if len(row.note) <= note_room else row.note[: note_room - 1] + "…"
                line += f"  {note}"
            lines.append(line)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- output


class Screen:
    """Writes the table: redrawn in place on a terminal, appended otherwise."""

    def __init__(self, out: TextIO, *, live: bool, color: bool) -> None:
        self.out = out
        self.live = live
        self.color = color
        self._drawn_lines = 0

    def draw(self, state: WatchState, now: float) -> None:
        width = _terminal_width(self.out)
        text = render_table(state, now, color=self.color, width=width)
        if self.live and self._drawn_lines:
            # Back to the first line of the previous frame, then clear to the end.
            self.out.write(f"\x1b[{self._drawn_lines}F\x1b[J")
        self.out.write(text)
        self.out.flush()
        self._drawn_lines = text.count("\n")

    def event(self, row: ChildRow) -> None:
        """Non-live mode: one line per child change after the snapshot."""
        stamp = time.strftime("%H:%M:%S")
        self.out.write(f"{stamp} {row.name} {phase_name(row.phase)} {row.note}".rstrip() + "\n")
        self.out.flush()


class TableView:
    """Shows a watch as a table: redrawn on every change on a terminal; otherwise the
    snapshot once, then one line per child change."""

    def __init__(self, screen: Screen) -> None:
        self.screen = screen

    def show(
        self,
        response: pb.WatchForUpdatesResponse,
        state: WatchState,
        *,
        changed: bool,
        was_synced: bool,
        now: float,
    ) -> None:
        if not changed or not state.synced:
            return  # (on a terminal the ticker shows progress while loading)
        if self.screen.live or not was_synced:
            self.screen.draw(state, now)  # a terminal, or the snapshot once
        elif response.WhichOneof("message") == "action_update":
            row = state.children.get(response.action_update.action_id.name)
            if row is not None:
                self.screen.event(row)


class JsonLines:
    """Shows a watch as the raw responses, one proto-JSON object per line."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def show(
        self,
        response: pb.WatchForUpdatesResponse,
        state: WatchState,
        *,
        changed: bool,
        was_synced: bool,
        now: float,
    ) -> None:
        self.out.write(json_format.MessageToJson(response, indent=None) + "\n")
        self.out.flush()


def _terminal_width(out: TextIO) -> int:
    try:
        columns = os.get_terminal_size(out.fileno()).columns
    except (OSError, AttributeError, ValueError):
        return 120
    return columns if columns > 0 else 120  # a pty without a size reports 0
