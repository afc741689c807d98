"""argparse, as ``actions-service`` uses it: suggestions for mistyped words, case-blind
choices, defaults in ``--help``.

``SuggestingParser.error`` adds "did you mean ...?" to argparse's "invalid choice" and
"unrecognized arguments" messages, drawing candidates from the whole command tree (the
top-level parser reports a subcommand's unknown flags). Errors exit with status 2, as
argparse's always do.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Iterator
from typing import NoReturn


def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every subcommand parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from walk(sub)


def _candidates(parser: argparse.ArgumentParser) -> list[str]:
    words: list[str] = []
    for each in walk(parser):
        for action in each._actions:
            words.extend(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                words.extend(action.choices)
            elif action.choices is not None:
                words.extend(str(choice) for choice in action.choices)
    return list(dict.fromkeys(words))


def suggestion(word: str, candidates: list[str]) -> str | None:
    flag = word.split("=", 1)[0]
    near = difflib.get_close_matches(flag, candidates, n=1, cutoff=0.6)
    return near[0] if near else None


class SuggestingParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors suggest the nearest known word."""

    root: argparse.ArgumentParser | None = None  # set on subparsers: the whole tree

    def error(self, message: str) -> NoReturn:
        tree = self.root or self
        candidates = _candidates(tree)
        hints: list[str] = []
        choice = re.search(r"invalid choice: '([^']*)'", message)
        if choice:
            near = suggestion(choice.group(1), candidates)
            if near:
                hints.append(near)
        unknown = re.search(r"unrecognized arguments: (.*)", message)
        if unknown:
            for word in unknown.group(1).split():
                if word.startswith("-"):
                    near = suggestion(word, candidates)
                    if near:
                        hints.append(near)
        if hints:
            message += f" (did you mean {' / '.join(dict.fromkeys(hints))}?)"
        super().error(message)


def link_tree(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let every SuggestingParser in the tree suggest from the whole tree."""
    for each in walk(parser):
        if isinstance(each, SuggestingParser) and each is not parser:
            each.root = parser
    return parser


def upper(text: str) -> str:
    """An argparse ``type`` for case-blind upper-case choices (``--log-level debug``)."""
    return text.strip().upper()


__all__ = ["SuggestingParser", "link_tree", "suggestion", "upper", "walk"]
