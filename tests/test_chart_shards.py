"""generator.shards: the generator as an Indexed Job of N pods (DESIGN.md "Past one pod"),
under either workload, rendered by Helm's engine and validated against Kubernetes' and
the JobSet CRD's schemas; and the MovieLens 1B profile that uses it."""

from __future__ import annotations

import pytest

from testkit.k8s_support import (CHART_DIR, KUBE_VERSIONS, by_kind, flags, job, jobset_errors, load_values,
                                 main_container, pod_spec, render, validate)

ML1B = load_values(CHART_DIR / "ci" / "gke-ml1b-values.yaml")
WORKLOADS = ["jobs", "jobset"]


def sharded(workload: str, shards: int = 4) -> list[dict]:
    return render({"dataDir": "gs://b/p", "workload": workload, "generator": {"shards": shards}})


@pytest.mark.parametrize("workload", WORKLOADS)
def test_shards_render_an_indexed_job_whose_pods_are_retried_alone(workload):
    objects = sharded(workload)
    spec = job(objects, "generator")["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert spec["backoffLimitPerIndex"] == 6 and "backoffLimit" not in spec, "retries count per pod, not per Job"
    rules = spec["podFailurePolicy"]["rules"]
    assert [r["action"] for r in rules] == ["FailJob", "Ignore"], "exit code 2 still fails the Job at once"
    assert flags(main_container(job(objects, "generator")))["--shards"] == "4"
    assert "--shard" not in flags(main_container(job(objects, "generator"))), "its index comes from the Job"
    assert pod_spec(job(objects, "generator"))["restartPolicy"] == "Never"
    trainer = job(objects, "trainer")["spec"]
    assert "completionMode" not in trainer and trainer["backoffLimit"] == 6


def test_one_shard_renders_the_plain_job():
    spec = job(render({"dataDir": "gs://b/p"}), "generator")["spec"]
    assert "completionMode" not in spec and spec["backoffLimit"] == 6


@pytest.mark.parametrize("workload", WORKLOADS)
def test_sharded_jobs_validate_against_kubernetes(workload):
    objects = sharded(workload)
    generator = job(objects, "generator")
    for version in (KUBE_VERSIONS[0], KUBE_VERSIONS[-1]):
        validate(generator, version)
    if workload == "jobset":
        (jobset,) = by_kind(objects, "JobSet")
        assert jobset_errors(jobset) == []


def test_in_a_jobset_a_failed_generator_pod_restarts_nothing_else():
    (jobset,) = by_kind(sharded("jobset"), "JobSet")
    (generator,) = [r for r in jobset["spec"]["replicatedJobs"] if r["name"] == "generator"]
    assert generator["replicas"] == 1, "one Indexed Job of N pods, not N Jobs"
    assert generator["template"]["spec"]["backoffLimitPerIndex"] == 6
    # The JobSet acts only on a failed Job; per-index retries keep the Job from failing.
    assert all(rule["action"] == "FailJobSet" for rule in jobset["spec"]["failurePolicy"]["rules"])


def test_the_ml1b_profile_is_movielens_1b_at_the_mlperf_v06_reference():
    objects = render(ML1B)
    trainer = flags(main_container(job(objects, "trainer")))
    assert {k: trainer[k] for k in ("--dataset", "--batch-size", "--learning-rate", "--mf-dim", "--layers",
                                    "--target-hr", "--eval-negatives", "--slices")} == {
        "--dataset": "ml-20mx16x32", "--batch-size": "65536", "--learning-rate": "0.0002", "--mf-dim": "64",
        "--layers": "256,256,128,64", "--target-hr": "0.51", "--eval-negatives": "999", "--slices": "16"}
    generator = job(objects, "generator")["spec"]
    assert generator["completions"] == generator["parallelism"] == 8
    assert pod_spec(job(objects, "trainer"))["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
