"""trainer.hosts: several trainer pods that train together (issue 20), rendered by Helm's
engine: under workload: jobset one Indexed Job of M pods with JobSet's stable hostnames and
JAX's coordinator wired to host 0; on a multi-host TPU slice GKE's variables instead; under
workload: jobs a schema error. The rendered JobSet is validated against the JobSet CRD
(v0.12.0) and its Jobs against Kubernetes' schema, and the rendered arguments go through the
trainer's own parser with the environment each pod gets."""

from __future__ import annotations

import helm_python
import pytest

from testkit.k8s_support import (CHART_DIR, KUBE_VERSIONS, by_kind, flags, job, jobset_errors, jobset_jobs,
                                 load_values, main_container, notes, pod_spec, render, validate)
from trainer.config import parse_args as parse_trainer_args
from trainer.hosts import COORDINATOR_PORT

A3 = load_values(CHART_DIR / "ci" / "gke-a3-8gpu-values.yaml")
TPU_4X4 = {"preset": "tpu", "tpu": {"type": "tpu-v5-lite-podslice", "topology": "4x4", "count": 4}}


def multi_host(hosts: int, **values) -> list[dict]:
    return render({"dataDir": "gs://b/p", "workload": "jobset", **values,
                   "trainer": {"hosts": hosts, **values.get("trainer", {})}})


def the_jobset(objects: list[dict]) -> dict:
    (jobset,) = by_kind(objects, "JobSet")
    return jobset


def replicated_job(jobset: dict, name: str) -> dict:
    (rjob,) = [r for r in jobset["spec"]["replicatedJobs"] if r["name"] == name]
    return rjob


def pod_hostname(jobset: dict, rjob: str, pod_index: int) -> str:
    """A pod's DNS name as JobSet defines it (the CRD's spec.network.enableDNSHostnames):
    <jobSet.name>-<replicatedJob.name>-<job-index>-<pod-index>.<subdomain>."""
    return f"{jobset['metadata']['name']}-{rjob}-0-{pod_index}.{jobset['spec']['network']['subdomain']}"


@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_render_one_indexed_trainer_job_of_m_pods_with_dns_hostnames(hosts):
    jobset = the_jobset(multi_host(hosts))
    trainer = replicated_job(jobset, "trainer")
    assert trainer["replicas"] == 1, "one Indexed Job of M pods, not M Jobs"
    spec = trainer["template"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", hosts, hosts)
    # A dead host is recreated for its index alone (same hostname); one out of retries fails the Job.
    assert spec["backoffLimitPerIndex"] == 6 and spec["maxFailedIndexes"] == 0 and "backoffLimit" not in spec
    assert [r["action"] for r in spec["podFailurePolicy"]["rules"]] == ["FailJob", "Ignore"]
    assert jobset["spec"]["network"] == {"enableDNSHostnames": True, "subdomain": jobset["metadata"]["name"]}
    generator = replicated_job(jobset, "generator")["template"]["spec"]
    assert "completionMode" not in generator and generator["backoffLimit"] == 6


@pytest.mark.parametrize("hosts", [2, 4])
def test_every_host_gets_the_count_and_host_0s_hostname_and_its_index_from_the_job(hosts, monkeypatch):
    objects = multi_host(hosts)
    jobset = the_jobset(objects)
    args = main_container(job(objects, "trainer"))["args"]
    got = flags(main_container(job(objects, "trainer")))
    coordinator = f"{pod_hostname(jobset, 'trainer', 0)}:{COORDINATOR_PORT}"
    assert (got["--hosts"], got["--coordinator"]) == (str(hosts), coordinator)
    assert "--host-index" not in got, "each pod's index comes from JOB_COMPLETION_INDEX"
    for index in range(hosts):  # Kubernetes sets JOB_COMPLETION_INDEX in an Indexed Job's pod i
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
        config = parse_trainer_args(args)
        assert (config.hosts, config.host_index, config.coordinator) == (hosts, index, coordinator)


def test_multi_host_jobset_validates_against_the_crd_and_kubernetes():
    jobset = the_jobset(multi_host(3, generator={"shards": 2}, jobset={"restartFailedJobOnly": True}))
    assert jobset_errors(jobset) == []
    for child in jobset_jobs(jobset):
        for version in (KUBE_VERSIONS[0], KUBE_VERSIONS[-1]):
            validate(child, version)


def test_pod_names_fit_what_the_jobset_webhook_checks():
    # The webhook refuses a JobSet whose longest Indexed pod name, <job>-<podIndex>-<5 random>,
    # passes 63 characters (JobSet v0.12.0, pkg/webhooks/jobset_webhook.go).
    jobset = the_jobset(multi_host(16, fullnameOverride="x" * 60, generator={"shards": 12}))
    for rjob in ("generator", "trainer"):
        last = replicated_job(jobset, rjob)["template"]["spec"]["completions"] - 1
        longest = f"{jobset['metadata']['name']}-{rjob}-0-{last}-abcde"
        assert len(longest) <= 63, longest
        assert len(pod_hostname(jobset, rjob, last).split(".")[0]) <= 63


def test_jobs_workload_refuses_several_hosts_naming_the_value_and_jobset():
    with pytest.raises(helm_python.HelmValuesError, match=r"(?s)'/trainer/hosts': maximum.*'/workload'.*'jobset'"):
        render({"dataDir": "gs://b/p", "trainer": {"hosts": 2}})
    with pytest.raises(helm_python.HelmValuesError, match=r"'/trainer/hosts': minimum"):
        render({"dataDir": "gs://b/p", "workload": "jobset", "trainer": {"hosts": 0}})
    one = job(render({"dataDir": "gs://b/p", "trainer": {"hosts": 1}}), "trainer")
    assert flags(main_container(one))["--hosts"] == "1" and "--coordinator" not in flags(main_container(one))
    assert "completionMode" not in one["spec"]


def test_notes_follow_every_trainer_host():
    text = notes({"workload": "jobset", "trainer": {"hosts": 3}})
    assert ("logs -f --prefix --max-log-requests 3 -l jobset.sigs.k8s.io/jobset-name=ncf-ncf-tandem,"
            "jobset.sigs.k8s.io/replicatedjob-name=trainer") in text
    assert "--max-log-requests" not in notes({"workload": "jobset"})


def test_one_host_leaves_the_jobset_as_it_was():
    objects = render({"workload": "jobset"})
    assert the_jobset(objects)["spec"]["network"] == {"enableDNSHostnames": False}
    assert not [p for p in by_kind(objects, "NetworkPolicy") if "trainer-hosts" in p["metadata"]["name"]]


def test_a_multi_host_tpu_slice_uses_gkes_variables_one_node_pool_and_every_chip(monkeypatch):
    objects = multi_host(4, trainer={"accelerator": TPU_4X4})
    jobset = the_jobset(objects)
    container = main_container(job(objects, "trainer"))
    got = flags(container)
    assert got["--hosts"] == "4" and got["--accelerator"] == "tpu"
    assert "--coordinator" not in got, "GKE's TPU_WORKER_HOSTNAMES say where host 0 is"
    assert container["resources"]["limits"]["google.com/tpu"] == 4
    annotations = replicated_job(jobset, "trainer")["template"]["metadata"]["annotations"]
    assert annotations["alpha.jobset.sigs.k8s.io/exclusive-topology"] == "cloud.google.com/gke-nodepool"
    # What GKE injects into an Indexed Job's pods with a subdomain that request TPUs.
    workers = [pod_hostname(jobset, "trainer", i) for i in range(4)]
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", ",".join(workers))
    monkeypatch.setenv("TPU_WORKER_ID", "3")
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    config = parse_trainer_args(container["args"])
    assert (config.hosts, config.host_index, config.coordinator) == (4, 3, f"{workers[0]}:{COORDINATOR_PORT}")


def test_a_tpu_topology_must_match_hosts_times_chips():
    with pytest.raises(helm_python.HelmError, match=r"trainer.accelerator.tpu: topology 4x4 has 16 chips, "
                                                    r"but trainer.hosts \(2\) x tpu.count \(4\) is 8"):
        multi_host(2, trainer={"accelerator": TPU_4X4})
    one_host = {**TPU_4X4, "tpu": {**TPU_4X4["tpu"], "topology": "2x2"}}
    single = render({"dataDir": "gs://b/p", "trainer": {"accelerator": one_host}})
    assert "--hosts" not in flags(main_container(job(single, "trainer")))


def first_action(jobset: dict, replicated_job_name: str, reason: str) -> tuple[str, list[str]]:
    """The action JobSet takes on a failed Job: the first rule that matches its replicatedJob
    (none listed: any) and reason (none listed: any), else RestartJobSet (the CRD's rules)."""
    for rule in jobset["spec"]["failurePolicy"]["rules"]:
        if replicated_job_name in rule.get("targetReplicatedJobs", [replicated_job_name]) and \
                reason in rule.get("onJobFailureReasons", [reason]):
            return rule["action"], rule.get("targetReplicatedJobs", [])
    return "RestartJobSet", []


def test_with_restart_job_a_job_out_of_retries_restarts_itself_alone():
    jobset = the_jobset(multi_host(2, jobset={"restartFailedJobOnly": True}))
    for name in ("generator", "trainer"):
        assert first_action(jobset, name, "BackoffLimitExceeded") == ("RestartJob", [name])
        # Exit code 2 and a deadline still fail the JobSet at once.
        assert first_action(jobset, name, "PodFailurePolicy")[0] == "FailJobSet"
        assert first_action(jobset, name, "DeadlineExceeded")[0] == "FailJobSet"
    assert jobset_errors(jobset) == []


def test_by_default_a_job_out_of_retries_restarts_both():
    # RestartJob needs the controller's alpha feature gate: off by default, the pair restarts.
    jobset = the_jobset(multi_host(2))
    for name in ("generator", "trainer"):
        assert first_action(jobset, name, "BackoffLimitExceeded") == ("RestartJobSet", [])


def test_the_a3_profile_trains_on_two_nodes_of_eight_h100s():
    objects = render(A3)
    jobset = the_jobset(objects)
    trainer = job(objects, "trainer")
    assert trainer["spec"]["completions"] == trainer["spec"]["parallelism"] == 2
    pod = pod_spec(trainer)
    assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-h100-80gb"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    got = flags(main_container(trainer))
    assert (got["--recipe"], got["--hosts"], got["--accelerator"]) == ("mlperf-v0.5-large-batch", "2", "gpu")
    assert got["--coordinator"] == f"{pod_hostname(jobset, 'trainer', 0)}:{COORDINATOR_PORT}"
    config = parse_trainer_args(main_container(trainer)["args"])
    assert (config.batch_size, config.learning_rate, config.hosts) == (1_048_576, 0.0045, 2)
    assert jobset_errors(jobset) == []
