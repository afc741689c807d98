"""The ``watch`` view: what a watcher knows (``WatchState``) and how it is shown.

Pure state and text (``render_table`` takes the state and a clock and returns text) plus
``Screen``, which writes it to a stream, and the two ways ``actions-service watch`` shows
a stream (``TableView``, ``JsonLines``); no networking, so it is tested without a server
or a terminal. ``actions.watch_follow`` feeds it from the WatchForUpdates stream.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Final, TextIO

from flyteidl2.actions import actions_service_pb2 as pb
from flyteidl2.common import phase_pb2
from flyteidl2.workflow.state_service_pb2 import ActionUpdate
from google.protobuf import json_format

from actions._gen.actions.console.v1 import console_pb2 as cpb
from actions.phases import TERMINAL as TERMINAL_PHASES
from actions.phases import name as phase_name

# --------------------------------------------------------------------------- state

# Children in these phases make ``watch --until-done`` exit non-zero.
UNSUCCESSFUL: Final = frozenset(
    {
        phase_pb2.ACTION_PHASE_FAILED,
        phase_pb2.ACTION_PHASE_ABORTED,
        phase_pb2.ACTION_PHASE_TIMED_OUT,
    }
)
# Phases whose NOTE says more with the action's details (a condition's prompt, an abort's
# reason, an error the update did not carry), which the watch stream does not have.
DETAIL_PHASES: Final = frozenset(
    {
        phase_pb2.ACTION_PHASE_PAUSED,
        phase_pb2.ACTION_PHASE_ABORTED,
        phase_pb2.ACTION_PHASE_FAILED,
        phase_pb2.ACTION_PHASE_TIMED_OUT,
    }
)


@dataclass
class ChildRow:
    name: str
    phase: int
    since: float  # when this watcher first saw the phase (monotonic seconds)
    note: str = ""  # error, signalled value, what it waits for, or output URI
    # The details fetched for ``detail_phase`` (None: not asked for yet): shown instead
    # of ``note`` while the phase is the same.
    detail: str = ""
    detail_phase: int | None = None

    @property
    def shown_note(self) -> str:
        if self.detail and self.detail_phase == self.phase:
            return self.detail
        return self.note

    def wants_detail(self) -> bool:
        """In a phase with more to say, not asked about in this phase yet, and the
        update did not say it already (an error it carried)."""
        return (
            self.phase in DETAIL_PHASES
            and self.detail_phase != self.phase
            and not self.note.startswith("error:")
        )


@dataclass
class WatchState:
    """What ``watch`` knows: the parent's phase and each direct child's latest update.

    A reconnect (``resync``) keeps the rows on show, marked as reconnecting, and the
    time each phase was first seen; the new snapshot then restates every child, and the
    children it does not restate (deleted meanwhile) are dropped at its sentinel.
    """

    run: str
    parent: str
    started: float
    parent_phase: int | None = None
    synced: bool = False  # the snapshot sentinel has arrived
    reconnecting: bool = False  # between a lost stream and the new snapshot's sentinel
    parent_gone: bool = False  # found deleted (aborted) after its children were aborted
    children: dict[str, ChildRow] = field(default_factory=dict)
    _restated: set[str] = field(default_factory=set)
    _parent_restated: bool = False

    def apply(self, response: pb.WatchForUpdatesResponse, now: float) -> bool:
        """Fold one response in; True when something visible changed."""
        if response.WhichOneof("message") == "control_message":
            if response.control_message.sentinel and not self.synced:
                self._end_resync()
                self.synced = True
                return True
            return False
        update = response.action_update
        if update.action_id.name == self.parent:
            self._parent_restated = True
            changed = self.parent_phase != update.phase
            self.parent_phase = update.phase
            return changed
        name = update.action_id.name
        if not self.synced:
            self._restated.add(name)
        note = _note(update)
        row = self.children.get(name)
        if row is None:
            self.children[name] = ChildRow(name, update.phase, now, note)
            return True
        if row.phase == update.phase and row.note == note:
            return False
        if row.phase != update.phase:
            row.since = now
        row.phase, row.note = update.phase, note
        return True

    def resync(self) -> None:
        """The stream was lost; a reconnect brings a fresh snapshot that restates
        everything. Until its sentinel the rows stay on show, marked as reconnecting."""
        self.synced = False
        self.reconnecting = True
        self._restated = set()
        self._parent_restated = False

    def _end_resync(self) -> None:
        if self.reconnecting:
            for name in [n for n in self.children if n not in self._restated]:
                del self.children[name]  # gone while we were away
            if not self._parent_restated:
                self.parent_phase = None
        self.reconnecting = False
        self._restated = set()

    def wanting_details(self, name: str | None = None) -> list[str]:
        """Children (``name`` alone, when given) whose NOTE wants details, each marked
        as asked for in its phase: one request per child and phase, whatever comes of it."""
        if not self.synced:
            return []
        rows = self.children.values() if name is None else [self.children.get(name)]
        wanted = []
        for row in rows:
            if row is not None and row.wants_detail():
                row.detail_phase = row.phase
                wanted.append(row.name)
        return wanted

    def set_detail(self, name: str, text: str) -> bool:
        """Show ``text`` for child ``name`` in the phase its details were asked for."""
        row = self.children.get(name)
        if row is None or row.detail_phase != row.phase or row.detail == text:
            return False
        row.detail = text
        return True

    def counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for row in self.children.values():
            counts[row.phase] = counts.get(row.phase, 0) + 1
        return counts

    def parent_missing(self) -> bool:
        """The snapshot has neither the parent nor any child: no such action."""
        return self.synced and self.parent_phase is None and not self.children

    def all_children_terminal(self) -> bool:
        return all(row.phase in TERMINAL_PHASES for row in self.children.values())

    def done(self) -> bool:
        """Nothing more will happen: every child is terminal, and there is at least
        one child or the parent itself is terminal (a leaf that finished)."""
        if not self.synced or not self.all_children_terminal():
            return False
        if self.children:
            return True
        return self.parent_phase is not None and self.parent_phase in TERMINAL_PHASES

    def unsuccessful(self) -> list[ChildRow]:
        """Children that FAILED, were ABORTED or TIMED_OUT (natural order)."""
        return [row for row in sorted_rows(self) if row.phase in UNSUCCESSFUL]


def natural_key(name: str) -> list[tuple[int, int | str]]:
    """c1, c2, c10 rather than c1, c10, c2."""
    return [
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part
    ]


def sorted_rows(state: WatchState) -> list[ChildRow]:
    return sorted(state.children.values(), key=lambda row: natural_key(row.name))


def _note(update: ActionUpdate) -> str:
    """What the NOTE column says from the update alone. The watch stream carries the
    error of a FAILED action and a condition's signalled value; it does not carry an
    abort's reason or a condition's prompt (ActionUpdate has no field for either), so
    those rows say what the phase means until their details arrive (``set_detail``)."""
    phase = update.phase
    if update.HasField("error") and (update.error.message or update.error.code):
        code = f"[{update.error.code}] " if update.error.code else ""
        return f"error: {code}{update.error.message}".strip()
    if update.HasField("value"):
        primitive = update.value.scalar.primitive
        kind = primitive.WhichOneof("value")
        if kind is not None:
            return f"value: {json.dumps(getattr(primitive, kind))}"
    if phase == phase_pb2.ACTION_PHASE_FAILED:
        return "failed (no error reported)"
    if phase == phase_pb2.ACTION_PHASE_ABORTED:
        return "aborted"
    if phase == phase_pb2.ACTION_PHASE_TIMED_OUT:
        return "timed out"
    if phase == phase_pb2.ACTION_PHASE_PAUSED:
        return "waiting for a signal"
    return update.output_uri


def detail_note(view: cpb.ActionView) -> str:
    """The NOTE an action's details give (the console read API's view): a paused
    condition's prompt and type, an abort's reason, an error; "" when they add nothing."""
    condition = view.condition if view.HasField("condition") else None
    error = view.error if view.HasField("error") else None
    if view.phase == "PAUSED" and condition is not None:
        kind = condition.value_type or "a signal"
        prompt = condition.prompt or condition.name
        return f"waiting for {kind}: {prompt}" if prompt else f"waiting for {kind}"
    if view.phase == "ABORTED" or view.abort_reason:
        return f"aborted: {view.abort_reason}" if view.abort_reason else ""
    if error is not None and (error.message or error.code):
        code = f"[{error.code}] " if error.code else ""
        return f"error: {code}{error.message}".strip()
    if view.phase == "TIMED_OUT" and condition is not None:
        prompt = condition.prompt or condition.name
        return f"timed out waiting: {prompt}" if prompt else ""
    return ""


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


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the cut marked with an ellipsis."""
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(
    state: WatchState,
    now: float,
    *,
    color: bool = False,
    width: int = 120,
    height: int | None = None,
) -> str:
    """The watch screen as text: a header, counts per phase, one row per child.

    Pure (state and clock in, text out) so it is tested without a terminal. Every line
    is cut to ``width``; with ``height``, rows that do not fit are summed up in a last
    "… N more" line, so the frame never scrolls. Padding and cutting are done on the
    plain text; colour codes are added afterwards so columns line up.
    """
    parent_phase = "?" if state.parent_phase is None else phase_name(state.parent_phase)
    if state.reconnecting:
        status = "  (reconnecting…)"
    elif not state.synced:
        status = "  (loading snapshot)"
    else:
        status = ""
    lines = [
        clip(
            f"run {state.run}  parent {state.parent} ({parent_phase})  "
            f"elapsed {format_duration(now - state.started)}  "
            f"children {len(state.children)}{status}",
            width,
        )
    ]
    counts = state.counts()
    parts = [(f"{phase_name(phase)} {counts[phase]}", phase) for phase in sorted(counts)]
    plain_counts = "  ".join(text for text, _ in parts)
    if not parts:
        lines.append(clip(_no_children(state), width))
    elif len(plain_counts) <= width:
        lines.append("  ".join(_paint(text, phase, color) for text, phase in parts))
    else:
        lines.append(clip(plain_counts, width))
    if state.children:
        rows = sorted_rows(state)
        room = len(rows) if height is None else max(1, height - len(lines) - 1)
        shown = rows if len(rows) <= room else rows[: max(0, room - 1)]
        name_w = max(6, *(len(r.name) for r in shown)) if shown else 6
        phase_w = max(5, *(len(phase_name(r.phase)) for r in shown)) if shown else 5
        lines.append(clip(f"{'ACTION':<{name_w}}  {'PHASE':<{phase_w}}  {'FOR':>8}  NOTE", width))
        for row in shown:
            lines.append(_row_line(row, now, name_w, phase_w, width, color))
        if len(shown) < len(rows):
            lines.append(clip(f"… {len(rows) - len(shown)} more", width))
    return "\n".join(lines) + "\n"


def _no_children(state: WatchState) -> str:
    if not state.synced:
        return "no children yet"
    if state.parent_phase is not None and state.parent_phase in TERMINAL_PHASES:
        return "no children"
    return "no children yet; waiting for them (Ctrl-C to stop)"


def _row_line(row: ChildRow, now: float, name_w: int, phase_w: int, width: int,
              color: bool) -> str:  # fmt: skip
    phase = f"{phase_name(row.phase):<{phase_w}}"
    head = f"{row.name:<{name_w}}  "
    line = f"{head}{phase}  {format_duration(now - row.since):>8}"
    if row.shown_note:
        line += f"  {row.shown_note}"
    line = clip(line, width)
    end = len(head) + len(phase)
    if color and len(line) >= end and line[len(head) : end] == phase:
        line = line[: len(head)] + _paint(phase, row.phase, color) + line[end:]
    return line


# --------------------------------------------------------------------------- output

NOT_A_TERMINAL_WIDTH: Final = sys.maxsize  # lines written to a file or pipe are not cut


class Screen:
    """Writes the table: redrawn in place on a terminal, appended otherwise."""

    def __init__(self, out: TextIO, *, live: bool, color: bool) -> None:
        self.out = out
        self.live = live
        self.color = color
        self._drawn_lines = 0

    def draw(self, state: WatchState, now: float) -> None:
        if self.live:
            # One column and one line spare: a full last column would wrap on some
            # terminals, and a full screen would scroll; either breaks redrawing.
            columns, rows = _terminal_size(self.out)
            text = render_table(state, now, color=self.color, width=columns - 1, height=rows - 1)
        else:
            text = render_table(state, now, color=self.color, width=NOT_A_TERMINAL_WIDTH)
        if self.live and self._drawn_lines:
            # Back to the first line of the previous frame, then clear to the end.
            self.out.write(f"\x1b[{self._drawn_lines}F\x1b[J")
        self.out.write(text)
        self.out.flush()
        self._drawn_lines = text.count("\n")

    def event(self, row: ChildRow) -> None:
        """Non-live mode: one line per child change after the snapshot."""
        self.line(f"{row.name} {phase_name(row.phase)} {row.shown_note}".rstrip())

    def line(self, text: str) -> None:
        """Non-live mode: one time-stamped line."""
        self.out.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        self.out.flush()


class TableView:
    """Shows a watch as a table: redrawn on every change on a terminal; otherwise the
    snapshot once, then one line per child change (and a line when the stream is
    lost and the watch reconnects)."""

    def __init__(self, screen: Screen) -> None:
        self.screen = screen
        self._drew_table = False
        self._events = 0  # lines printed since the table

    def show(
        self,
        response: pb.WatchForUpdatesResponse,
        state: WatchState,
        *,
        changed: bool,
        was_synced: bool,
        now: float,
    ) -> None:
        if not changed:
            return
        if self.screen.live:
            if state.synced or state.reconnecting:
                self.screen.draw(state, now)  # (while loading, the ticker shows progress)
            return
        if not self._drew_table:
            if state.synced:
                self.screen.draw(state, now)  # the snapshot, once
                self._drew_table = True
        elif response.WhichOneof("message") == "action_update":
            row = state.children.get(response.action_update.action_id.name)
            if row is not None:
                self.screen.event(row)
                self._events += 1

    def lost(self, state: WatchState, error: Exception, now: float) -> None:
        if self.screen.live:
            self.screen.draw(state, now)
        else:
            self.screen.line(f"stream lost ({error}); reconnecting…")

    def finish(self, state: WatchState, now: float) -> None:
        """The watch ended: the last frame on a terminal; otherwise a one-line summary
        (the table was printed once already, and every change since)."""
        if self.screen.live:
            self.screen.draw(state, now)
            return
        if not self._drew_table and state.synced:
            self.screen.draw(state, now)
            return
        if not self._events:
            return  # the table printed is the final state already
        counts = state.counts()
        summary = "  ".join(f"{phase_name(p)} {counts[p]}" for p in sorted(counts))
        self.screen.line(f"children {len(state.children)}: {summary or 'none'}")


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

    def lost(self, state: WatchState, error: Exception, now: float) -> None:
        pass  # the output stays pure JSON; the new snapshot follows

    def finish(self, state: WatchState, now: float) -> None:
        pass


def _terminal_size(out: TextIO) -> tuple[int, int]:
    """(columns, lines) of the terminal ``out`` writes to; 80x24 when unknown (a pty
    without a size reports 0)."""
    try:
        size = os.get_terminal_size(out.fileno())
    except (OSError, AttributeError, ValueError):
        return 80, 24
    return (size.columns if size.columns > 0 else 80), (size.lines if size.lines > 0 else 24)
