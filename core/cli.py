"""The scripts' argument parser: argparse, answering a newcomer's slip in one line with the fix."""

from __future__ import annotations

import argparse
import difflib
import typing


class Parser(argparse.ArgumentParser):
    """argparse without prefix matching (``--epoch 2`` is not silently ``--epochs 2``), and a mistyped flag answered
    in one line with the closest valid one, instead of the usage block."""

    def __init__(self, **kwargs: typing.Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        if message.startswith("unrecognized arguments:"):
            wrong = [w for w in message.split(":", 1)[1].split() if w.startswith("-")]
            hints = []
            for w in wrong:
                close = difflib.get_close_matches(w.split("=")[0], flags, n=1, cutoff=0.6)
                hints.append(f"{w} (did you mean {close[0]}?)" if close else w)
            message = f"unknown flag(s) {', '.join(hints) or message.split(':', 1)[1].strip()}"
        self.exit(2, f"error: {message}; {self.prog} --help lists every flag\n")
