"""The chart's rendered arguments, parsed by the real `ncf-generator` and `ncf-trainer` parsers.

test_chart.py checks the flags as text; this checks that the programs accept
every profile's (test_chart_flags.py: that they read every value as meant).
"""

from __future__ import annotations

import pytest

from generator.__main__ import parse_args as parse_generator_args
from testkit.k8s_support import job, main_container, render
from testkit.chart_values import ALL_VALUE_SETS, EDGE_CASES, IDS
from trainer.config import parse_args as parse_trainer_args


@pytest.mark.parametrize("values", [v for _, v in ALL_VALUE_SETS], ids=IDS)
def test_both_programs_accept_the_rendered_arguments(values):
    objects = render(values)
    if values.get("generator", {}).get("enabled", True):
        options = parse_generator_args(main_container(job(objects, "generator"))["args"])
        assert options.data_dir == values.get("dataDir", options.data_dir)
    if values.get("trainer", {}).get("enabled", True):
        config = parse_trainer_args(main_container(job(objects, "trainer"))["args"])
        assert config.data_dir.startswith(("gs://", "/"))


def test_generator_reads_its_resources():
    args = main_container(job(render(EDGE_CASES["overrides"]), "generator"))["args"]
    options = parse_generator_args(args)
    assert (options.workers, options.cache_dir) == (3, "gs://b/cache")
    assert (options.start_timeout, options.peer_timeout, options.heartbeat_interval) == (3600, 600, 5)
    assert options.part_examples == 100000


@pytest.mark.parametrize("workload", ["jobs", "jobset"])
def test_fractional_timeouts_reach_both_programs_as_seconds(workload):
    timeouts = {"start": 5400, "peer": 90.5, "heartbeatInterval": 0.25}
    objects = render({"workload": workload, "generator": {"timeouts": timeouts}, "trainer": {"timeouts": timeouts}})
    options = parse_generator_args(main_container(job(objects, "generator"))["args"])
    config = parse_trainer_args(main_container(job(objects, "trainer"))["args"])
    for parsed in (options, config):
        assert (parsed.start_timeout, parsed.peer_timeout, parsed.heartbeat_interval) == (5400, 90.5, 0.25)
