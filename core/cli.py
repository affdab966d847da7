"""The scripts' command line, for any typed config (a dataclass whose fields are the flags): the parser (argparse,
answering a newcomer's slip in one line with the fix), YAML files, value coercion, and ``main_guard``. ``config.py``
defines the configs themselves."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from core.io import ConfigError, Interrupted, M3SError


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
                close = closest_flag(w, flags)
                hints.append(f"{w} (did you mean {close}?)" if close else w)
            message = f"unknown flag(s) {', '.join(hints) or message.split(':', 1)[1].strip()}"
        self.exit(2, f"error: {message}; {self.prog} --help lists every flag\n")


def closest_flag(word: str, flags: list[str]) -> str | None:
    """The flag a mistyped ``word`` most likely meant: a flag whose name starts the word or that the word starts
    (``--lr_rate`` -> ``--lr``, ``--epoch`` -> ``--epochs``), else the closest spelling (``--hiden_channels``)."""
    typed = word.split("=")[0].lstrip("-")
    names = {f.lstrip("-"): f for f in flags}
    stems = [n for n in names if typed.startswith(n + "_") or (n.startswith(typed) and len(typed) >= 3)]
    if stems:
        return names[min(stems, key=lambda n: abs(len(n) - len(typed)))]
    close = difflib.get_close_matches(typed, list(names), n=1, cutoff=0.7)
    return names[close[0]] if close else None


def _base_type(tp: Any) -> tuple[type, bool]:
    """(element type, is_list) of an annotation such as ``int | None`` or ``list[str]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if origin is list:
        return typing.get_args(tp)[0], True
    return tp, False


def _coerce(f: dataclasses.Field, value: Any, hints: dict, aliases: dict) -> Any:
    """Convert a YAML / flag value to the field's type and check its choices; ``aliases`` maps a field to other
    spellings of its values (the reference's ``StepLR`` for ``step``)."""
    tp, is_list = _base_type(hints[f.name])
    if value is None:
        return None
    items = value if is_list else [value]
    if is_list and not isinstance(value, list):
        raise ConfigError(f"{f.name}: expected a list, got {value!r}")
    out = []
    for item in items:
        item = aliases.get(f.name, {}).get(item, item) if isinstance(item, str) else item
        try:
            if (tp is bool) != isinstance(item, bool):  # YAML's true/false only for booleans, and only they take it
                raise TypeError
            if tp is int and isinstance(item, float) and not item.is_integer():
                raise ValueError  # 2.9 epochs is a mistake, not 2
            item = tp(item) if not isinstance(item, tp) else item
        except (TypeError, ValueError):
            raise ConfigError(f"{f.name}: {item!r} is not a valid {tp.__name__}") from None
        choices = f.metadata.get("choices")
        if choices and item not in choices:
            raise ConfigError(f"{f.name}: {item!r} is not one of {', '.join(map(str, choices))}")
        out.append(item)
    return out if is_list else out[0]


def _help(f: dataclasses.Field) -> str:
    """A field's help with its default, said once: a help text that already states its default keeps its own words."""
    text = f.metadata.get("help", "")
    if "default" in text:
        return text
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    shown = " ".join(map(str, default)) if isinstance(default, list) else default
    if shown in ("", None, []):
        return text
    return f"{text} (default: {shown})"


def build_parser(
    cls: type, description: str = "", groups: dict[str, list[str]] | None = None
) -> argparse.ArgumentParser:
    """The parser of a config dataclass; ``groups`` (title -> field names, in order) sorts ``--help`` into sections,
    and fields of no group come last under "other options"."""
    parser = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of defaults (keys = flag names); flags override it")
    sections = {}
    for title, names in (groups or {}).items():
        group = parser.add_argument_group(title)
        sections |= dict.fromkeys(names, group)
    other = parser.add_argument_group("other options") if groups else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, is_list = _base_type(hints[f.name])
        names = [f.metadata.get("flag") or f"--{f.name}"] + ([f.metadata["short"]] if f.metadata.get("short") else [])
        # argparse's own default display is off: SUPPRESS keeps the values given explicitly apart from defaults
        kwargs: dict[str, Any] = {"dest": f.name, "help": _help(f), "default": argparse.SUPPRESS}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = str if tp is str else tp
            if is_list:
                kwargs["nargs"] = "+" if f.name not in ("tags", "extra_features") else "*"
        choices = [c for c in f.metadata.get("choices") or () if c != ""]  # "" (unset) is said by the help text
        if choices:
            kwargs["metavar"] = "{" + ",".join(map(str, choices)) + "}"
        sections.get(f.name, other).add_argument(*names, **kwargs)
    return parser


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}; fix that line (keys are flag names)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of flag names to values")
    return data


def from_dict(cls: type, values: dict, source: str = "config", aliases: dict | None = None) -> Any:
    """Build a config from a mapping, refusing unknown keys and bad values."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    cfg = cls(**{k: _coerce(fields[k], v, hints, aliases or {}) for k, v in values.items()})
    return cfg


def main_guard(fn: typing.Callable[[], None]) -> None:
    """Run a script's main, turning the errors we raise on purpose into one clear line and exit status 2."""
    for stream in (sys.stdout, sys.stderr):
        # a video id from a file name that is not valid UTF-8 (caf\xe9.mp4) must not kill a run when it is printed
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        fn()
    except Interrupted as err:  # Ctrl-C / SIGTERM where the run knows what it kept: one line, the shell's 130
        print(f"{err}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (M3SError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
