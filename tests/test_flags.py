"""The flag tables (protocol/flags.py) and the console scripts' one parser error style."""

from __future__ import annotations

import pytest

from generator.__main__ import parse_args as parse_generator_args
from generator.__main__ import parser as generator_parser
from generator.config import Options as GeneratorOptions
from protocol import MessageError, flags
from runstatus.__main__ import parse_args as parse_status_args
from trainer.child import generator_args
from trainer.config import parse_args as parse_trainer_args
from trainer.config import parser as trainer_parser
from trainer.recommend import _parser as recommend_parser

TRAINER = ["--data-dir", "gs://b/run", "--dataset", "ml-100k"]


def options(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings} - {"-h", "--help"}


@pytest.mark.parametrize("parse, argv, message", [
    (parse_generator_args, ["--data-dir", "x", "--workers", "0"], "ncf-generator: --workers: expected a positive integer, got 0"),
    (parse_generator_args, ["--data-dir", "x", "--peer-timeout", "soon"], "ncf-generator: --peer-timeout: expected a positive number, got 'soon'"),
    (parse_trainer_args, [*TRAINER, "--l2", "-1"], "ncf-trainer: --l2: expected a non-negative number, got -1"),
    (parse_trainer_args, [*TRAINER, "--target-hr", "1.5"], "ncf-trainer: --target-hr: expected a number in (0, 1], got 1.5"),
    (parse_trainer_args, [*TRAINER, "--layers", "64,0"], "ncf-trainer: --layers: expected a positive integer, got 0"),
    (parse_trainer_args, [*TRAINER, "--synthetic-scale", "0"], "ncf-trainer: --synthetic-scale: expected a number in [0.0001, 1], got 0"),
    (parse_trainer_args, [*TRAINER, "--export", "first"], "ncf-trainer: --export: invalid choice: 'first' (choose from 'best', 'last')"),
    (parse_trainer_args, ["--dataset", "ml-100k"], "ncf-trainer: the following arguments are required: --data-dir"),
    (parse_status_args, ["DIR", "--watch", "0"], "ncf-status: --watch: expected a positive number, got 0"),
    (recommend_parser().parse_args, ["--model", "m", "--user", "1", "--k", "0"], "ncf-recommend: --k: expected a positive integer, got 0"),
])
def test_a_bad_flag_is_one_line_naming_it_and_exit_2(parse, argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        parse(argv)
    assert exit.value.code == 2
    assert capsys.readouterr().err == message + "\n"


def test_flags_take_the_tables_defaults_types_and_presets():
    config = parse_trainer_args([*TRAINER, "--layers", "32,16", "--checkpoint-every-minutes", "2.5", "--xla"])
    assert (config.layers, config.checkpoint_every_minutes, config.xla, config.mixed_precision) == ([32, 16], 2.5, True, False)
    assert (config.batch_size, config.num_neg, config.export, config.read_concurrency) == (1024, 4, "best", 16)
    assert config.ratings is None and config.generator == {}


def test_the_trainer_takes_every_generator_flag_but_the_per_pod_ones():
    # Shared flags under their own names, the generator's own ones as --generator-NAME; --shard
    # and --shards place one pod among several, and a spawned generator is the only one.
    trainer = options(trainer_parser())
    per_pod = {row.option for row in flags.rows(GeneratorOptions) if row.flag.per_pod}
    assert per_pod == {"--shard", "--shards"}
    for flag in options(generator_parser()) - per_pod:
        assert flag in trainer or "--generator-" + flag.removeprefix("--") in trainer, flag
    assert not {"--generator-shard", "--generator-shards", "--shard", "--shards"} & trainer


@pytest.mark.parametrize("flag", ["--generator-shard", "--generator-shards"])
def test_the_trainer_refuses_a_per_pod_generator_flag(flag, capsys):
    with pytest.raises(SystemExit) as exit:
        parse_trainer_args([*TRAINER, "--spawn-generator", flag, "1"])
    assert exit.value.code == 2
    assert f"unrecognized arguments: {flag} 1" in capsys.readouterr().err



def test_spawn_generator_passes_on_every_generator_flag_it_was_given():
    given = {"--workers": "3", "--cache-dir": "gs://b/cache", "--part-examples": "1000", "--upload-concurrency": "4"}
    argv = [*TRAINER, "--peer-timeout", "7.5", "--start-timeout", "60", "--heartbeat-interval", "0.5"]
    for flag, value in given.items():
        argv += ["--generator-" + flag.removeprefix("--"), value]
    options = parse_generator_args(generator_args(parse_trainer_args(argv)))
    assert (options.data_dir, options.peer_timeout, options.start_timeout, options.heartbeat_interval) == \
        ("gs://b/run", 7.5, 60, 0.5)
    assert (options.workers, options.cache_dir, options.part_examples, options.upload_concurrency) == \
        (3, "gs://b/cache", 1000, 4)


def test_spawn_generator_leaves_unset_generator_flags_to_the_generator():
    args = generator_args(parse_trainer_args(TRAINER))
    assert not any(a in args for a in ("--workers", "--cache-dir", "--part-examples", "--upload-concurrency"))
    assert parse_generator_args(args) == parse_generator_args(["--data-dir", "gs://b/run"])


def test_a_spawned_generator_is_the_only_pod_even_in_an_indexed_job(monkeypatch):
    # A trainer pod of an Indexed Job has JOB_COMPLETION_INDEX, which its child inherits: the
    # child must not take it for its --shard (pod 3 of 1 would refuse to start).
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")
    options = parse_generator_args(generator_args(parse_trainer_args(TRAINER)))
    assert (options.shard, options.shards) == (0, 1)


def test_synthetic_scale_reaches_command_json_for_synthetic_20mx16x32_alone():
    config = parse_trainer_args(["--data-dir", "d", "--dataset", "synthetic-20mx16x32", "--synthetic-scale", "0.001"])
    assert config.command("r").dataset.scale == 0.001
    with pytest.raises(MessageError, match="dataset.scale.*only synthetic-20mx16x32 has a scale"):
        parse_trainer_args([*TRAINER, "--synthetic-scale", "0.5"]).command("r")
