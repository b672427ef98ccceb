"""A program's flags as one table: the fields of its options dataclass, each declared with `flag(...)`.

The field's name is the flag (`batch_size` is `--batch-size`) and its annotation the flag's type:
`bool` a switch, `int`/`float`/`str` a value, `list[int]` comma-separated integers, a `Literal[...]`
the choices, `X | None` a value that may stay unset. `flag(...)` gives the rest: the default (written
only there), the bounds, the help, and the Helm chart value that renders the flag (or why the chart
has none). `rows` reads the table, `build_parser` makes the argparse parser from it, and `to_argv`
writes values back as flags (the trainer's --spawn-generator). How to add a flag: trainer/config.py.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from types import UnionType
from typing import Any, Literal

from .cli import Bounds, Parser, number


@dataclass(frozen=True)
class Flag:
    help: str
    bounds: Bounds | None = None
    required: bool = False
    # The chart value that renders it, under the component's values: "training.batchSize".
    chart: str | None = None
    # Or why the chart has no value for it: it sets the flag itself, or the flag makes no sense there.
    not_in_chart: str | None = None
    # Said in --help where the default is not a plain value (a dataset's preset, the machine's CPUs).
    default_text: str | None = None
    # Why another program that runs this one as its only pod (the trainer's --spawn-generator)
    # does not pass it on: the flag places one pod among several (--shard, --shards).
    per_pod: str | None = None


def flag(default: Any = MISSING, *, help: str, bounds: Bounds | None = None, chart: str | None = None,
         not_in_chart: str | None = None, default_factory: Callable[[], Any] | Any = MISSING,
         default_text: str | None = None, per_pod: str | None = None) -> Any:
    """A dataclass field that is a flag. No default (and no default_factory): a required flag."""
    if (chart is None) == (not_in_chart is None):
        raise TypeError(f"{help!r}: a flag names its chart value or says why the chart has none")
    required = default is MISSING and default_factory is MISSING
    meta = Flag(help=help, bounds=bounds, required=required, chart=chart, not_in_chart=not_in_chart,
                default_text=default_text, per_pod=per_pod)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"flag": meta})


@dataclass(frozen=True)
class Row:
    """One flag of a table, resolved: its field's name, value type, choices and default."""
    name: str
    kind: type  # bool, int, float, str or list (of int)
    choices: tuple[str, ...] | None
    default: Any  # MISSING for a required flag
    flag: Flag

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def passed_on(self, name: str, program: str, not_in_chart: str) -> Row:
        """This flag of another program, taken under another name to pass on to it; unset by
        default (the program's own default applies)."""
        meta = dataclasses.replace(self.flag, help=f"{program}'s {self.option}: {self.flag.help}", required=False,
                                   chart=None, not_in_chart=not_in_chart, default_text=f"{program}'s default")
        return Row(name, self.kind, self.choices, None, meta)


def rows(options: type) -> list[Row]:
    """The flags of an options dataclass, in field order (fields without flag(...) are not flags)."""
    hints = typing.get_type_hints(options)
    table = []
    for field in dataclasses.fields(options):
        meta = field.metadata.get("flag")
        if meta is None:
            continue
        kind, choices = _kind(hints[field.name])
        default = field.default_factory() if field.default_factory is not MISSING else field.default
        table.append(Row(field.name, kind, choices, default, meta))
    return table


def _kind(hint: Any) -> tuple[type, tuple[str, ...] | None]:
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) is Literal:
        return str, typing.get_args(hint)
    if typing.get_origin(hint) is list:
        return list, None
    return hint, None


def build_parser(table: list[Row], prog: str, description: str) -> Parser:
    parser = Parser(prog=prog, description=description)
    for row in table:
        parser.add_argument(row.option, dest=row.name, help=_help(row), **_argument(row))
    return parser


def _argument(row: Row) -> dict[str, Any]:
    if row.kind is bool:
        return {"action": "store_true"}
    argument: dict[str, Any] = {"required": row.flag.required, "choices": row.choices}
    if not row.flag.required:
        argument["default"] = row.default
    if row.kind is list:
        argument["type"] = int_list(row.flag.bounds)
    elif row.kind in (int, float):
        argument["type"] = number(row.kind, row.flag.bounds)
    return argument


def _help(row: Row) -> str:
    if row.flag.default_text:
        return f"{row.flag.help} (default: {row.flag.default_text})"
    if row.kind is bool or row.default in (None, MISSING):
        return row.flag.help
    return f"{row.flag.help} (default: %(default)s)"


def int_list(bounds: Bounds | None) -> Callable[[str], list[int]]:
    """An argparse type: "64,32,16" -> [64, 32, 16], each integer within bounds."""
    item = number(int, bounds)

    def convert(text: str) -> list[int]:
        return [item(part) for part in text.split(",")]
    convert.__name__ = "list of integers"
    return convert


def to_argv(row: Row, value: Any) -> list[str]:
    """The command-line words that give row's flag this value ([] for unset or a false switch)."""
    if value is None or value is False:
        return []
    if value is True:
        return [row.option]
    if isinstance(value, list):
        return [row.option, ",".join(str(v) for v in value)]
    return [row.option, str(value)]
