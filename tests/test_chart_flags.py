"""The chart renders every flag of both programs, and only flags they know.

The flag lists come from the programs' own parsers (their argparse actions). The chart is
rendered by Helm's engine with a value for every flag (testkit.chart_values.EVERY_FLAG_VALUE)
and the Job's arguments go through the programs' real parse_args. Flags the chart has no value
for are those whose table row says why (`not_in_chart`, e.g. --data-dir: from dataDir).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest

from generator.__main__ import parse_args as parse_generator_args
from generator.__main__ import parser as generator_parser
from generator.config import Options
from protocol import flags
from testkit.builders import REPO
from testkit.chart_values import EVERY_FLAG_VALUE
from testkit.k8s_support import job, main_container, render
from trainer.config import parse_args as parse_trainer_args
from trainer.config import parser as trainer_parser
from trainer.config import table as trainer_table

PROGRAMS = {
    "generator": (generator_parser, parse_generator_args, lambda: flags.rows(Options)),
    "trainer": (trainer_parser, parse_trainer_args, trainer_table),
}
COMPONENTS = list(PROGRAMS)


def known_flags(component: str) -> set[str]:
    parser = PROGRAMS[component][0]()
    return {option for action in parser._actions for option in action.option_strings} - {"-h", "--help"}


def not_in_chart(component: str) -> dict[str, str]:
    """Flag -> why the chart has no value for it, from the program's table."""
    return {row.option: row.flag.not_in_chart for row in PROGRAMS[component][2]() if row.flag.not_in_chart}


def rendered_args(values: dict, component: str) -> list[str]:
    return main_container(job(render(values), component))["args"]


def coverage(values: dict, component: str) -> tuple[set[str], set[str]]:
    """(flags the parser knows that values render no value for, rendered flags the parser does not know)."""
    rendered = {arg.split("=", 1)[0] for arg in rendered_args(values, component) if arg.startswith("--")}
    known = known_flags(component)
    return known - rendered - set(not_in_chart(component)), rendered - known


@pytest.mark.parametrize("workload", ["jobs", "jobset"])
@pytest.mark.parametrize("component", COMPONENTS)
def test_every_flag_has_a_chart_value_and_every_rendered_flag_is_known(component, workload):
    missing, unknown = coverage({**EVERY_FLAG_VALUE, "workload": workload}, component)
    assert not missing, (f"{component} flags the chart cannot set: {sorted(missing)}; give each a chart value "
                         "(trainer/config.py says how) and a value in testkit/chart_values.py EVERY_FLAG_VALUE")
    assert not unknown, f"the chart renders {component} flags its parser does not know: {sorted(unknown)}"


@pytest.mark.parametrize("component", COMPONENTS)
def test_the_program_reads_each_chart_value_as_its_flag(component):
    parse = PROGRAMS[component][1]
    parsed = parse(rendered_args(EVERY_FLAG_VALUE, component))
    rendered = {arg.split("=", 1)[0] for arg in rendered_args(EVERY_FLAG_VALUE, component)}
    for row in PROGRAMS[component][2]():
        if row.option not in rendered or not row.flag.chart:
            continue  # a flag without a value: the test above names it
        value = EVERY_FLAG_VALUE[component]
        for key in row.flag.chart.split("."):
            value = value[key]
        got = getattr(parsed, row.name)
        assert got == (pytest.approx(value) if isinstance(value, float) else value), (row.option, row.flag.chart)


def test_a_value_left_out_is_reported_as_missing():
    values = copy.deepcopy(EVERY_FLAG_VALUE)
    del values["trainer"]["training"]["readConcurrency"]
    del values["generator"]["partExamples"]
    for component, flag in (("trainer", "--read-concurrency"), ("generator", "--part-examples")):
        missing, unknown = coverage(values, component)
        assert missing - coverage(EVERY_FLAG_VALUE, component)[0] == {flag} and not unknown


def test_a_rendered_flag_the_parser_does_not_know_is_reported_and_refused(capsys):
    values = copy.deepcopy(EVERY_FLAG_VALUE)
    values["trainer"]["extraArgs"] = ["--no-such-flag=1"]
    assert coverage(values, "trainer")[1] == {"--no-such-flag"}
    with pytest.raises(SystemExit) as exit:
        parse_trainer_args(rendered_args(values, "trainer"))
    assert exit.value.code == 2
    assert capsys.readouterr().err == "ncf-trainer: unrecognized arguments: --no-such-flag=1\n"


@pytest.mark.parametrize("component", COMPONENTS)
def test_flags_the_chart_leaves_out_say_why(component):
    reasons = not_in_chart(component)
    assert "--data-dir" in reasons  # set from dataDir, the same for both Jobs
    assert all(reason.strip() for reason in reasons.values())
    assert set(reasons) <= known_flags(component)


def test_schema_table_and_readme_are_what_scripts_chart_flags_writes():
    done = subprocess.run([sys.executable, "scripts/chart_flags.py", "--check"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
