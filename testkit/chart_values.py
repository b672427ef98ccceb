"""Chart value sets the chart tests share: every CI profile plus edge cases, and the training
values with the flags each must render as."""

from __future__ import annotations

from generator.__main__ import parser as generator_parser
from testkit.k8s_support import CI_VALUES, load_values

EVERY_TRAINING_VALUE = {
    "dataset": "ml-1m",
    "ratings": "gs://bucket/movielens/ml-1m/ratings.dat",
    "syntheticScale": 0.25,  # rendered whatever the dataset: DatasetSpec refuses it for ml-1m, not the parser
    "epochs": 17,
    "batchSize": 1048576,  # large: Helm reads numbers as float64; must not print 1.048576e+06
    "evalBatchSize": 160000,
    "numNeg": 7,
    "evalNegatives": 99,
    "evalMode": "paper",
    "learningRate": 0.0005,
    "mfDim": 24,
    "l2": 1e-06,  # small floats print in exponent form, which the trainer's float() reads
    "layers": [128, 64, 32],
    "seed": 0,  # zero is a value, not "unset"
    "targetHr": 0.635,
    "bufferEpochs": 5,
    "mixedPrecision": True,
    "xla": True,
    "stepsPerExecution": 32,
    "recipe": "mlperf-v0.5-large-batch",  # its batch size and learning rate give way to the flags above
    "adamBeta1": 0.25,
    "adamBeta2": 0.5,
    "adamEpsilon": 1e-07,
    "warmupSteps": 100,
    "export": "last",
    "readConcurrency": 8,
    "checkpointEvery": 2,
    "checkpointEveryMinutes": 7.5,
    "slices": 6,
}
# What the trainer must receive for EVERY_TRAINING_VALUE, flag by flag.
EVERY_TRAINING_FLAG = {
    "--dataset": "ml-1m",
    "--ratings": "gs://bucket/movielens/ml-1m/ratings.dat",
    "--synthetic-scale": "0.25",
    "--epochs": "17",
    "--batch-size": "1048576",
    "--eval-batch-size": "160000",
    "--num-neg": "7",
    "--eval-negatives": "99",
    "--eval-mode": "paper",
    "--learning-rate": "0.0005",
    "--mf-dim": "24",
    "--l2": "1e-06",
    "--layers": "128,64,32",
    "--seed": "0",
    "--target-hr": "0.635",
    "--buffer-epochs": "5",
    "--mixed-precision": True,
    "--xla": True,
    "--steps-per-execution": "32",
    "--recipe": "mlperf-v0.5-large-batch",
    "--adam-beta-1": "0.25",
    "--adam-beta-2": "0.5",
    "--adam-epsilon": "1e-07",
    "--warmup-steps": "100",
    "--export": "last",
    "--read-concurrency": "8",
    "--checkpoint-every": "2",
    "--checkpoint-every-minutes": "7.5",
    "--slices": "6",
}
EVERY_TIMEOUT_VALUE = {"start": 5400, "peer": 90.5, "heartbeatInterval": 0.25, "permissionWait": 45.5}
EVERY_GENERATOR_VALUE = {"workers": 3, "cacheDir": "gs://b/cache", "partExamples": 100000, "uploadConcurrency": 4,
                         "shards": 3, "timeouts": EVERY_TIMEOUT_VALUE}
# A value for every flag the chart renders (tests/test_chart_flags.py: a flag without one fails).
# trainer.hosts is 1 so that both workloads render it: above 1 needs jobset (tests/test_chart_hosts.py).
EVERY_FLAG_VALUE = {"dataDir": "gs://b/p", "generator": EVERY_GENERATOR_VALUE,
                    "trainer": {"training": EVERY_TRAINING_VALUE, "timeouts": EVERY_TIMEOUT_VALUE,
                                "accelerator": {"require": "cpu"}, "hosts": 1}}
# Every flag ncf-generator knows, from its own parser.
GENERATOR_FLAGS = {option for action in generator_parser()._actions for option in action.option_strings} - {"-h", "--help"}

EDGE_CASES = {
    "defaults": {},
    "every-training-value": {"dataDir": "gs://b/p", "trainer": {"training": EVERY_TRAINING_VALUE}},
    "every-flag-value": EVERY_FLAG_VALUE,
    "nvidia-2-gpus-spot-with-user-placement": {
        "dataDir": "gs://b/p",
        "trainer": {
            "accelerator": {"preset": "nvidia", "nvidia": {"type": "nvidia-tesla-a100", "count": 2}},
            "spot": True,
            "nodeSelector": {"pool": "a100"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
            "resources": {"requests": {"cpu": "8", "memory": "32Gi"}},
        },
        "generator": {"spot": True},
    },
    "tpu-1x1": {"dataDir": "gs://b/p", "trainer": {"accelerator": {"preset": "tpu"}}},
    "emulator": {"dataDir": "gs://emu-bucket/runs/x", "gcsEmulator": {"enabled": True}},
    "generator-only": {"dataDir": "gs://b/p", "trainer": {"enabled": False}},
    "trainer-only-local-dir": {"dataDir": "/mnt/runs/x", "generator": {"enabled": False}},
    "existing-service-account": {"dataDir": "gs://b/p", "serviceAccount": {"create": False, "name": "shared"}},
    # HTTPS to named hosts only, through GKE's FQDNNetworkPolicy; GroupLens too (no ratings).
    "fqdn-egress": {"dataDir": "gs://b/p", "networkPolicy": {"googleApis": {"egress": "fqdn"}}},
    "overrides": {
        "dataDir": "gs://b/p",
        "fullnameOverride": "my-run",
        "serviceAccount": {"gcpServiceAccount": "runner@proj.iam.gserviceaccount.com", "annotations": {"a": "b"}},
        "imagePullSecrets": [{"name": "regcred"}],
        "generator": {
            "workers": 3, "cacheDir": "gs://b/cache",
            "timeouts": {"start": 3600, "peer": 600, "heartbeatInterval": 5},
            "extraArgs": ["--part-examples=100000"], "env": [{"name": "X", "value": "1"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["cpu"]}]}]}}},
            "podAnnotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
            "podLabels": {"team": "recsys"},
            "scratch": {"medium": "Memory", "sizeLimit": "512Mi"},
            "terminationGracePeriodSeconds": 60,
            "job": {"backoffLimit": 0, "activeDeadlineSeconds": 7200, "ttlSecondsAfterFinished": None,
                    "failJobOnExitCodes": [], "ignoreDisruptions": False},
        },
        "trainer": {
            "image": {"repository": "r/t", "tag": "1.2.3", "pullPolicy": "Always"},
            "args": ["--data-dir=gs://other/x", "--dataset=ml-100k"],
            "extraArgs": ["--epochs=1"],
            "job": {"failJobOnExitCodes": [2, 3]},
        },
    },
    # Both Jobs in one JobSet, queued by Kueue, with the emulator.
    "jobset-kueue-emulator": {
        "dataDir": "gs://emu-bucket/runs/x",
        "workload": "jobset",
        "kueue": {"queueName": "team-a"},
        "gcsEmulator": {"enabled": True},
        "jobset": {"maxRestarts": 0, "ttlSecondsAfterFinished": None},
    },
    "jobs-kueue-no-network-policy-no-tests": {
        "dataDir": "gs://b/p",
        "kueue": {"queueName": "team-a"},
        "networkPolicy": {"enabled": False},
        "tests": {"enabled": False},
        "trainer": {"accelerator": {"preset": "tpu"}, "timeouts": {"start": 0.5, "peer": 90.25, "heartbeatInterval": 1e-3}},
    },
}


def multi_host(values: dict) -> bool:
    """Whether several trainer pods train together (trainer.hosts > 1)."""
    return (values.get("trainer", {}).get("hosts") or 1) > 1


def workloads(values: dict) -> list[str]:
    """The workloads a value set renders under: a multi-host trainer needs jobset, and the
    schema refuses it under jobs."""
    return ["jobset"] if multi_host(values) else ["jobs", "jobset"]


def with_workloads(value_sets: list[tuple[str, dict]]) -> list[tuple[str, dict, str]]:
    """(name, values, workload) for each value set under each workload it renders under."""
    return [(name, values, workload) for name, values in value_sets for workload in workloads(values)]


def all_value_sets() -> list[tuple[str, dict]]:
    return [(p.name, load_values(p)) for p in CI_VALUES] + list(EDGE_CASES.items())


ALL_VALUE_SETS = all_value_sets()
IDS = [name for name, _ in ALL_VALUE_SETS]
