"""argparse, as ``actions-service`` uses it: suggestions for mistyped words, case-blind
choices, defaults in ``--help``.

``SuggestingParser.error`` adds "did you mean ...?" to argparse's "invalid choice" and
"unrecognized arguments" messages, drawing candidates from the subcommand the command
line chose (the top-level parser is the one that reports a subcommand's unknown flags).
Errors exit with status 2, as argparse's always do.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence
from typing import NoReturn


def _candidates(parser: argparse.ArgumentParser) -> list[str]:
    """The flags, subcommands and choices ``parser`` itself knows."""
    words: list[str] = []
    for action in parser._actions:
        words.extend(action.option_strings)
        if action.choices is not None:
            words.extend(str(choice) for choice in action.choices)
    return list(dict.fromkeys(words))


def _innermost(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)command parser the words in ``argv`` select."""
    for word in argv:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and word in action.choices:
                return _innermost(action.choices[word], argv[argv.index(word) + 1 :])
    return parser


def suggestion(word: str, candidates: list[str]) -> str | None:
    flag = word.split("=", 1)[0]
    near = difflib.get_close_matches(flag, candidates, n=1, cutoff=0.6)
    return near[0] if near else None


class SuggestingParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors suggest the nearest known word."""

    argv: list[str] | None = None  # what parse_known_args was given

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self.argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        # The top-level parser reports a subcommand's unknown flags: suggest from the
        # subcommand the words chose; a subparser's own errors, from itself.
        context = _innermost(self, self.argv) if self.argv is not None else self
        candidates = _candidates(context)
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


def upper(text: str) -> str:
    """An argparse ``type`` for case-blind upper-case choices (``--log-level debug``)."""
    return text.strip().upper()


__all__ = ["SuggestingParser", "suggestion", "upper"]
