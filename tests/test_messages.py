"""The protocol messages: strict parsing with errors that name the file, the field and what was expected."""

import json

import pytest

from testkit import builders

from protocol import Command, DatasetMeta, DatasetSpec, MessageError, PartInfo, Ready, Status
from protocol.errors import EXIT_INVALID, exit_code_for
from protocol.messages import IdMaps


def command(**changes) -> Command:
    return builders.command("ml-1m", "gs://b/ratings.dat", **changes)


def test_command_round_trips_through_json():
    original = command(epochs=7, eval_mode="paper")
    assert Command.from_json(original.to_json()) == original


def command_with(change) -> str:
    document = json.loads(command().to_json())
    change(document)
    return json.dumps(document)


@pytest.mark.parametrize(
    "text, field, expected",
    [
        ("{not json", None, "valid JSON"),
        ("[1, 2]", None, "a JSON object"),
        (command_with(lambda d: d.pop("seed")), "seed", "required"),
        (command_with(lambda d: d.update(learning_rate=0.1)), "learning_rate", "only known fields"),
        (command_with(lambda d: d.update(train_batch_size=-5)), "train_batch_size", ">= 1"),
        (command_with(lambda d: d.update(epochs="10")), "epochs", "an integer"),
        (command_with(lambda d: d.update(epochs=True)), "epochs", "an integer"),
        (command_with(lambda d: d.update(eval_mode="fast")), "eval_mode", "'mlperf', 'paper'"),
        (command_with(lambda d: d["dataset"].update(name="ml-5m")), "dataset.name", "one of"),
        (command_with(lambda d: d["dataset"].pop("ratings")), "dataset.ratings", "required"),
        (command_with(lambda d: d.update(protocol=2)), "protocol", "version 1"),
        (command_with(lambda d: d.update(run_id="../etc")), "run_id", "letters, digits"),
    ],
)
def test_invalid_command_names_file_field_and_expectation(text, field, expected):
    with pytest.raises(MessageError) as caught:
        Command.from_json(text, source="gs://bucket/run/command.json")
    message = str(caught.value)
    assert message.startswith("gs://bucket/run/command.json")
    assert expected in message
    if field:
        assert f"'{field}'" in message
    assert "\n" not in message
    assert exit_code_for(caught.value) == EXIT_INVALID


def test_negatives_must_fit_the_item_catalogue():
    meta = DatasetMeta(run_id="run-1", dataset="ml-100k", fingerprint="f", num_users=943,
                       num_items=1682, num_ratings=100000, num_train=99057)
    command(num_neg=4, eval_negatives=999).check_against(meta)
    with pytest.raises(MessageError, match="'num_neg'.*1682 items"):
        command(num_neg=1682).check_against(meta)
    with pytest.raises(MessageError, match="'eval_negatives'"):
        command(eval_negatives=5000).check_against(meta)


def test_differences_lists_settings_not_run_id():
    assert command().differences(command(run_id="other")) == []
    assert command().differences(command(epochs=3, seed=9)) == ["epochs", "seed"]


def test_ready_counts_must_add_up():
    part = PartInfo(name="part-00000", num_examples=10, size=100, crc32c=1)
    Ready(run_id="r", kind="train", epoch=0, num_examples=10, parts=[part])
    with pytest.raises(MessageError, match="'num_examples'"):
        Ready(run_id="r", kind="train", epoch=0, num_examples=11, parts=[part])
    with pytest.raises(MessageError, match="'epoch'"):
        Ready(run_id="r", kind="eval", epoch=3, num_examples=10, parts=[part])
    with pytest.raises(MessageError, match="distinct part names"):
        Ready(run_id="r", kind="train", epoch=0, num_examples=20, parts=[part, part])


def test_part_names_cannot_escape_their_folder():
    document = json.loads(Ready(run_id="r", kind="eval", epoch=None, num_examples=0).to_json())
    document["parts"] = [{"name": "../../command.json", "num_examples": 0, "size": 1, "crc32c": 0}]
    with pytest.raises(MessageError, match="plain file name"):
        Ready.from_json(json.dumps(document), source="ready.json")


def test_nested_field_errors_carry_their_path():
    document = json.loads(Ready(run_id="r", kind="eval", epoch=None, num_examples=0).to_json())
    document["parts"] = [{"name": "p", "num_examples": 0, "size": -1, "crc32c": 0}]
    with pytest.raises(MessageError, match=r"'parts\[0\].size'"):
        Ready.from_json(json.dumps(document))


def test_status_accepts_only_known_states():
    status = Status(side="trainer", state="training", run_id="r", epoch=2, epochs_done=2)
    assert Status.from_json(status.to_json()) == status
    with pytest.raises(MessageError, match="'state'"):
        Status.from_json(status.to_json().replace(b'"training"', b'"sleeping"'))


@pytest.mark.parametrize("build, field", [
    (lambda: Status(side="gen", state="training", run_id="r", epoch=None, epochs_done=0), "side"),
    (lambda: Status(side="trainer", state="bogus", run_id="r", epoch=None, epochs_done=0), "state"),
    (lambda: command(eval_mode="exact"), "eval_mode"),
    (lambda: DatasetSpec("ml-30m"), "name"),
    (lambda: command(num_neg=0), "num_neg"),
])
def test_choices_and_ranges_are_checked_when_a_message_is_built(build, field):
    with pytest.raises(MessageError) as error:
        build()
    assert error.value.field == field


def test_dataset_names_and_eval_modes_come_from_their_types():
    from protocol.messages import DATASETS, EVAL_MODES
    from trainer.config import PRESETS

    assert DATASETS == ("ml-100k", "ml-1m", "ml-20m", "ml-20mx16x32", "synthetic-small", "synthetic-20m",
                        "synthetic-20mx16x32")
    assert EVAL_MODES == ("mlperf", "paper")
    assert set(PRESETS) == set(DATASETS)


def test_a_document_of_another_run_is_refused_in_one_wording():
    from protocol import ForeignRun

    with pytest.raises(ForeignRun) as error:
        command(run_id="theirs").belongs_to("ours", "gs://b/run/command.json")
    assert str(error.value) == ("gs://b/run/command.json is of another run or of different settings (run_id: "
                                "'theirs' in the file, 'ours' from this run): resume with the same settings, or "
                                "use a new --data-dir")
    assert exit_code_for(error.value) == EXIT_INVALID
    assert command(run_id="ours").belongs_to("ours", "x").run_id == "ours"


def test_differences_are_named_and_described_once():
    from protocol.messages import describe_differences, differences

    ours, theirs = {"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": 4}
    assert differences(ours, theirs) == ["b", "c", "d"]
    assert differences(ours, theirs, ignore=("c", "d")) == ["b"]
    assert describe_differences(ours, theirs, ["b"], "the flags", "the file") == "b: 5 in the file, 2 from the flags"


def _part(name: str, count: int) -> PartInfo:
    return PartInfo(name=name, num_examples=count, size=100, crc32c=7)


def test_id_maps_of_a_set_held_whole_keep_their_format():
    # Written before large sets listed users alone: the same keys, the same bytes.
    maps = IdMaps(run_id="r", num_users=3, num_items=5, num_train=9, users=_part("users", 3),
                  items=_part("items", 5), train=_part("train", 9))
    document = json.loads(maps.to_json())
    assert sorted(document) == ["items", "num_items", "num_train", "num_users", "protocol", "run_id", "train", "users"]
    assert document["protocol"] == 1 and document["train"]["num_examples"] == 9
    assert IdMaps.from_json(maps.to_json()) == maps


def test_id_maps_of_a_large_set_list_users_alone():
    maps = IdMaps(run_id="r", num_users=3, num_items=5, num_train=9, users=_part("users", 3))
    read = IdMaps.from_json(maps.to_json())
    assert (read.items, read.train, read.users.num_examples) == (None, None, 3)
    with pytest.raises(MessageError, match=r"users.num_examples.*expected 4"):
        IdMaps(run_id="r", num_users=4, num_items=5, num_train=9, users=_part("users", 3))


def test_only_synthetic_20mx16x32_has_a_scale_within_its_bounds():
    spec = DatasetSpec(name="synthetic-20mx16x32", scale=0.001)
    assert DatasetSpec.from_json(spec.to_json()) == spec
    assert DatasetSpec.from_json('{"name": "synthetic-20mx16x32", "ratings": null}').scale is None  # older files
    for name, scale, expected in (("ml-100k", 0.5, "'dataset.scale': expected null: only synthetic-20mx16x32"),
                                  ("synthetic-20mx16x32", 2.0, "'dataset.scale': expected at most 1"),
                                  ("synthetic-20mx16x32", 1e-6, "'scale': expected a number >= 0.0001")):
        with pytest.raises(MessageError, match=expected):
            DatasetSpec(name=name, scale=scale)
