"""charts/ncf-tandem/README.md: its values table is values.yaml, key for key, default for default."""

from __future__ import annotations

import json
import re

import yaml

from testkit.k8s_support import CHART_DIR

README = CHART_DIR / "README.md"
ROW = re.compile(r"^\| `([^`]+)` \| `(.*)` \| (.*) \|$")


def leaves(values: dict, prefix: str = ""):
    """(dotted key, default) of every leaf: a scalar, a list or an empty map."""
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def table() -> dict[str, tuple[object, str]]:
    """The README's values table: {key: (default, description)}."""
    text = README.read_text()
    section = text.split("\n## Values\n", 1)[1]
    rows = {}
    for line in section.splitlines():
        m = ROW.match(line)
        if m:
            key, default, description = m.groups()
            assert key not in rows, f"{key} twice in the values table"
            rows[key] = (json.loads(default), description)
    return rows


def test_values_table_lists_every_key_with_its_default_and_nothing_else():
    defaults = dict(leaves(yaml.safe_load((CHART_DIR / "values.yaml").read_text())))
    rows = table()
    assert sorted(set(defaults) - set(rows)) == [], "values.yaml keys missing from the README table"
    assert sorted(set(rows) - set(defaults)) == [], "README table keys that values.yaml does not have"
    wrong = {k: (rows[k][0], v) for k, v in defaults.items() if rows[k][0] != v}
    assert not wrong, f"README default != values.yaml default: {wrong}"


def test_values_table_rows_follow_values_yaml_order():
    # A reader comparing the two files finds each key in the same place.
    defaults = [k for k, _ in leaves(yaml.safe_load((CHART_DIR / "values.yaml").read_text()))]
    assert list(table()) == defaults


def test_every_top_level_block_is_described():
    rows = table()
    top = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    for block in top:
        first = next(k for k in rows if k == block or k.startswith(block + "."))
        assert rows[first][1].strip(), f"{first}: no description"
