"""The Helm chart, rendered by Helm's own engine: lint, schema, Kubernetes schemas, semantics.

No cluster: helm-python-sdk renders offline, kubernetes-validate checks every
object against the OpenAPI schemas of Kubernetes 1.29 to 1.37 in strict mode
(unknown fields are errors).
"""

from __future__ import annotations

import copy
import json
import re

import helm_python
import kubernetes_validate
import pytest
import yaml

from protocol.messages import DATASETS, EVAL_MODES

from testkit.k8s_support import (
    ACCELERATOR_LABEL_PREFIXES,
    CHART_DIR,
    CI_VALUES,
    KUBE_VERSIONS,
    all_pod_specs,
    by_kind,
    chart,
    deep_merge,
    env,
    flags,
    job,
    load_values,
    main_container,
    notes,
    pod_spec,
    render,
    requests_accelerator,
    validate,
)

from testkit.chart_values import (ALL_VALUE_SETS, EDGE_CASES, EVERY_TRAINING_FLAG, EVERY_TRAINING_VALUE,
                                   GENERATOR_FLAGS, IDS)


def test_ci_value_files_exist():
    names = {p.name for p in CI_VALUES}
    assert {"kind-values.yaml", "gke-l4-values.yaml", "gke-tpu-v5e-values.yaml"} <= names


# --- lint, render, Kubernetes schemas ---------------------------------------------------

@pytest.mark.parametrize("values", [v for _, v in ALL_VALUE_SETS], ids=IDS)
def test_lint_strict(values):
    report = helm_python.lint(CHART_DIR, copy.deepcopy(values), strict=True, namespace="ncf",
                              kube_version="v1.29.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("values", [v for _, v in ALL_VALUE_SETS], ids=IDS)
def test_every_object_validates_strictly_on_kubernetes_1_29_to_1_37(values):
    objects = render(values)
    assert objects
    shipped = set(kubernetes_validate.utils.all_versions())
    for version in KUBE_VERSIONS:
        assert version in shipped, f"kubernetes-validate ships no schema for {version}"
        for obj in objects:
            try:
                # A JobSet against the JobSet CRD's schema, its Jobs against Kubernetes'.
                validate(obj, version)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid on {version}: {e.message} at {list(e.path)}")


def test_default_render_has_the_expected_objects():
    objects = render({})
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == [
        ("Job", "ncf-ncf-tandem-generator"),
        ("Job", "ncf-ncf-tandem-trainer"),
        ("NetworkPolicy", "ncf-ncf-tandem-test"),
        ("NetworkPolicy", "ncf-ncf-tandem-workloads"),
        ("Pod", "ncf-ncf-tandem-test-result"),
        ("Role", "ncf-ncf-tandem-test"),
        ("RoleBinding", "ncf-ncf-tandem-test"),
        ("ServiceAccount", "ncf-ncf-tandem"),
        ("ServiceAccount", "ncf-ncf-tandem-test"),
    ]
    # Every namespaced object names the release's namespace (helm template | kubectl apply).
    assert {o["metadata"]["namespace"] for o in objects} == {"ncf"}


@pytest.mark.parametrize("values", [v for _, v in ALL_VALUE_SETS], ids=IDS)
def test_labels_follow_the_recommended_labels(values):
    for obj in render(values):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "ncf-tandem"
        assert labels["app.kubernetes.io/instance"] == "ncf"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == chart().metadata["appVersion"]
        if obj["kind"] == "Job":
            component = labels["app.kubernetes.io/component"]
            assert component in ("generator", "trainer")
            assert obj["metadata"]["name"].endswith("-" + component)
            tmpl = obj["spec"]["template"]["metadata"]["labels"]
            assert tmpl["app.kubernetes.io/component"] == component
            assert tmpl["app.kubernetes.io/instance"] == "ncf"


# --- security ---------------------------------------------------------------------

@pytest.mark.parametrize("values", [v for _, v in ALL_VALUE_SETS], ids=IDS)
def test_every_container_is_restricted_non_root_with_read_only_root(values):
    specs = all_pod_specs(render(values))
    assert specs
    for name, spec in specs:
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True, name
        mounts_tmp_volume = None
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
            assert not sc.get("privileged"), (name, c["name"])
            assert "resources" in c, (name, c["name"])
            for m in c.get("volumeMounts", []):
                if m["mountPath"] == "/tmp":
                    mounts_tmp_volume = m["name"]
        if spec["containers"][0]["name"] != "fake-gcs-server":
            # Writable scratch: /tmp is an emptyDir, and HOME and the caches point there.
            assert mounts_tmp_volume, name
            (vol,) = [v for v in spec["volumes"] if v["name"] == mounts_tmp_volume]
            assert "emptyDir" in vol, name
            e = env(spec["containers"][0])
            assert e["HOME"] == "/tmp" and e["MPLCONFIGDIR"].startswith("/tmp/"), name
            assert e["KERAS_HOME"].startswith("/tmp/"), name


def jobs_service_account(objects: list[dict]) -> dict:
    (sa,) = [o for o in by_kind(objects, "ServiceAccount")
             if o["metadata"]["labels"].get("app.kubernetes.io/component") != "test"]
    return sa


def test_service_account_workload_identity_and_no_secrets():
    objects = render(EDGE_CASES["overrides"])
    sa = jobs_service_account(objects)
    assert sa["metadata"]["name"] == "my-run"
    assert sa["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "runner@proj.iam.gserviceaccount.com", "a": "b"}
    assert sa["automountServiceAccountToken"] is False
    for name, spec in all_pod_specs(objects):
        if spec["containers"][0]["name"] == "fake-gcs-server":
            continue
        # The helm test pod has its own ServiceAccount (tests/test_chart_platform.py).
        expected = "my-run-test" if name.endswith("-test-result") else "my-run"
        assert spec["serviceAccountName"] == expected, name
    assert not by_kind(objects, "Secret")
    # Without a Google service account there is no Workload Identity annotation.
    for sa in by_kind(render({}), "ServiceAccount"):
        assert "annotations" not in sa["metadata"]
    # An existing ServiceAccount is used, not created (only the test pod's own is).
    objects = render(EDGE_CASES["existing-service-account"])
    assert [sa["metadata"]["name"] for sa in by_kind(objects, "ServiceAccount")] == ["ncf-ncf-tandem-test"]
    assert pod_spec(job(objects, "trainer"))["serviceAccountName"] == "shared"


def test_values_hold_no_credentials():
    text = (CHART_DIR / "values.yaml").read_text() + "".join(p.read_text() for p in CI_VALUES)
    for word in ("private_key", "BEGIN PRIVATE", "client_secret", "GOOGLE_APPLICATION_CREDENTIALS"):
        assert word not in text


# --- accelerators: the trainer and only the trainer ------------------------------------

def accelerator_labels(selector: dict) -> dict:
    return {k: v for k, v in (selector or {}).items() if k.startswith(ACCELERATOR_LABEL_PREFIXES)}


def accelerator_tolerations(tolerations: list) -> list:
    return [t for t in tolerations or [] if t.get("key") in ("nvidia.com/gpu", "google.com/tpu")]


@pytest.mark.parametrize("values", [v for _, v in ALL_VALUE_SETS], ids=IDS)
def test_generator_never_gets_an_accelerator(values):
    objects = render(values)
    for name, spec in all_pod_specs(objects):
        if name.endswith("-trainer"):
            continue
        assert not requests_accelerator(spec), name
        assert not accelerator_labels(spec.get("nodeSelector")), name
        assert not accelerator_tolerations(spec.get("tolerations")), name


def test_generator_stays_off_accelerator_nodes_unless_told_otherwise():
    spec = pod_spec(job(render({}), "generator"))
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [
        {"key": "cloud.google.com/gke-accelerator", "operator": "DoesNotExist"},
        {"key": "cloud.google.com/gke-tpu-accelerator", "operator": "DoesNotExist"}]}]
    # A user's node affinity replaces it.
    spec = pod_spec(job(render(EDGE_CASES["overrides"]), "generator"))
    assert spec["affinity"] == EDGE_CASES["overrides"]["generator"]["affinity"]


def test_preset_none_gives_the_trainer_no_accelerator():
    spec = pod_spec(job(render({}), "trainer"))
    assert not requests_accelerator(spec)
    assert "nodeSelector" not in spec and "tolerations" not in spec


def test_preset_nvidia():
    values = {"trainer": {"accelerator": {"preset": "nvidia", "nvidia": {"type": "nvidia-h100-80gb", "count": 8}}}}
    spec = pod_spec(job(render(values), "trainer"))
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    res = spec["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 8
    # Exact: requests equal limits, the GPUs included (and /tmp's ephemeral storage requested).
    assert res["limits"] == {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": 8}
    assert res["requests"] == {**res["limits"], "ephemeral-storage": "10Gi"}
    assert "google.com/tpu" not in res["limits"]
    assert env(spec["containers"][0])["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib64"


def test_preset_tpu():
    values = {"trainer": {"accelerator": {"preset": "tpu", "tpu": {
        "type": "tpu-v5-lite-podslice", "topology": "2x2", "count": 4}}}}
    spec = pod_spec(job(render(values), "trainer"))
    assert spec["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                    "cloud.google.com/gke-tpu-topology": "2x2"}
    assert spec["tolerations"] == [{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}]
    limits = spec["containers"][0]["resources"]["limits"]
    assert limits["google.com/tpu"] == 4 and "nvidia.com/gpu" not in limits
    assert spec["containers"][0]["resources"]["requests"] == {**limits, "ephemeral-storage": "10Gi"}


def test_user_placement_and_spot_join_the_preset():
    objects = render(EDGE_CASES["nvidia-2-gpus-spot-with-user-placement"])
    trainer = pod_spec(job(objects, "trainer"))
    assert trainer["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100",
                                       "cloud.google.com/gke-spot": "true", "pool": "a100"}
    assert [t["key"] for t in trainer["tolerations"]] == ["nvidia.com/gpu", "cloud.google.com/gke-spot", "dedicated"]
    assert trainer["containers"][0]["resources"] == {
        "requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 2, "ephemeral-storage": "10Gi"},
        "limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 2}}
    generator = pod_spec(job(objects, "generator"))
    assert generator["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}
    assert generator["tolerations"] == [{"key": "cloud.google.com/gke-spot", "operator": "Equal",
                                         "value": "true", "effect": "NoSchedule"}]


def test_spot_is_per_component():
    trainer_only = render({"trainer": {"spot": True}})
    assert pod_spec(job(trainer_only, "trainer"))["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}
    assert "nodeSelector" not in pod_spec(job(trainer_only, "generator"))


def test_gke_profiles():
    l4 = render(load_values(CHART_DIR / "ci" / "gke-l4-values.yaml"))
    spec = pod_spec(job(l4, "trainer"))
    assert spec["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert flags(main_container(job(l4, "trainer")))["--dataset"] == "ml-20m"
    assert flags(main_container(job(l4, "trainer")))["--data-dir"].startswith("gs://")
    # The ServiceAccounts are made once per namespace (tests/test_chart_gke.py).
    assert spec["serviceAccountName"] == "ncf-tandem" and not by_kind(l4, "ServiceAccount")

    tpu = render(load_values(CHART_DIR / "ci" / "gke-tpu-v5e-values.yaml"))
    spec = pod_spec(job(tpu, "trainer"))
    assert spec["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"] == "tpu-v5-lite-podslice"
    chips = {"1x1": 1, "2x2": 4}[spec["nodeSelector"]["cloud.google.com/gke-tpu-topology"]]
    assert spec["containers"][0]["resources"]["limits"]["google.com/tpu"] == chips
    assert spec["containers"][0]["image"].endswith("-tpu")


# --- arguments --------------------------------------------------------------------

def test_trainer_gets_every_training_value_as_the_right_flag():
    objects = render(EDGE_CASES["every-training-value"])
    got = flags(main_container(job(objects, "trainer")))
    assert got == {"--data-dir": "gs://b/p", **EVERY_TRAINING_FLAG}
    # Every key the schema allows under trainer.training is exercised here.
    assert set(chart().schema["properties"]["trainer"]["properties"]["training"]["properties"]) == set(EVERY_TRAINING_VALUE)


def test_generator_gets_no_training_flag():
    for _, values in ALL_VALUE_SETS:
        objects = render(values)
        if not values.get("generator", {}).get("enabled", True):
            continue
        got = flags(main_container(job(objects, "generator")))
        assert set(got) <= GENERATOR_FLAGS, got
        assert got["--data-dir"] == values.get("dataDir", chart().values["dataDir"])


def test_unset_values_leave_the_programs_defaults():
    objects = render({})
    assert flags(main_container(job(objects, "trainer"))) == {
        "--data-dir": chart().values["dataDir"], "--dataset": "ml-20m"}
    assert flags(main_container(job(objects, "generator"))) == {"--data-dir": chart().values["dataDir"]}


def test_generator_and_timeout_flags():
    objects = render(EDGE_CASES["overrides"])
    assert flags(main_container(job(objects, "generator"))) == {
        "--data-dir": "gs://b/p", "--workers": "3", "--cache-dir": "gs://b/cache",
        "--start-timeout": "3600", "--peer-timeout": "600", "--heartbeat-interval": "5", "--part-examples": "100000"}
    trainer = render({"trainer": {"timeouts": {"start": 7200, "peer": 900, "heartbeatInterval": 10}}})
    got = flags(main_container(job(trainer, "trainer")))
    assert (got["--start-timeout"], got["--peer-timeout"], got["--heartbeat-interval"]) == ("7200", "900", "10")


def test_args_replace_and_extra_args_append():
    c = main_container(job(render(EDGE_CASES["overrides"]), "trainer"))
    assert c["args"] == ["--data-dir=gs://other/x", "--dataset=ml-100k", "--epochs=1"]
    assert c["image"] == "r/t:1.2.3" and c["imagePullPolicy"] == "Always"


def test_kind_profile_args():
    objects = render(load_values(CHART_DIR / "ci" / "kind-values.yaml"))
    trainer = flags(main_container(job(objects, "trainer")))
    assert trainer["--dataset"] == "synthetic-small" and int(trainer["--epochs"]) in (1, 2)
    for component in ("generator", "trainer"):
        c = main_container(job(objects, component))
        assert c["imagePullPolicy"] == "Never"
        assert not c["image"].endswith(":latest") and ":" in c["image"]


def test_image_tag_defaults_to_app_version():
    app_version = chart().metadata["appVersion"]
    objects = render({})
    assert main_container(job(objects, "generator"))["image"] == f"ncf-tandem-generator:{app_version}"
    assert main_container(job(objects, "trainer"))["image"] == f"ncf-tandem-trainer:{app_version}"


# --- Job knobs --------------------------------------------------------------------

def test_job_defaults_fail_fast_on_exit_code_2_and_ignore_disruptions():
    for component in ("generator", "trainer"):
        j = job(render({}), component)
        spec = j["spec"]
        assert spec["backoffLimit"] == 6 and spec["ttlSecondsAfterFinished"] == 604800
        assert "activeDeadlineSeconds" not in spec
        assert spec["template"]["spec"]["restartPolicy"] == "Never"
        assert spec["podFailurePolicy"]["rules"] == [
            {"action": "FailJob", "onExitCodes": {"containerName": component, "operator": "In", "values": [2]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]


def test_job_knobs_are_per_component():
    objects = render(EDGE_CASES["overrides"])
    gen = job(objects, "generator")["spec"]
    assert gen["backoffLimit"] == 0 and gen["activeDeadlineSeconds"] == 7200
    assert "ttlSecondsAfterFinished" not in gen and "podFailurePolicy" not in gen
    tmpl = job(objects, "generator")["spec"]["template"]
    assert tmpl["metadata"]["annotations"] == {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}
    assert tmpl["metadata"]["labels"]["team"] == "recsys"
    assert tmpl["spec"]["terminationGracePeriodSeconds"] == 60
    assert tmpl["spec"]["volumes"] == [{"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "512Mi"}}]
    assert tmpl["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert env(main_container(job(objects, "generator")))["X"] == "1"
    tr = job(objects, "trainer")["spec"]
    assert tr["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2, 3]


def test_disabled_components_render_no_job():
    assert not [o for o in render(EDGE_CASES["generator-only"]) if o["kind"] == "Job"
                and o["metadata"]["labels"]["app.kubernetes.io/component"] == "trainer"]
    assert not [o for o in render(EDGE_CASES["trainer-only-local-dir"]) if o["kind"] == "Job"
                and o["metadata"]["labels"]["app.kubernetes.io/component"] == "generator"]


# --- GCS emulator -----------------------------------------------------------------

def test_emulator_off_by_default():
    objects = render({})
    assert not by_kind(objects, "Deployment") and not by_kind(objects, "Service")
    for component in ("generator", "trainer"):
        e = env(main_container(job(objects, component)))
        assert "STORAGE_EMULATOR_HOST" not in e
        assert "initContainers" not in pod_spec(job(objects, component))


def test_emulator_deployment_service_and_job_env():
    objects = render(EDGE_CASES["emulator"])
    (svc,) = by_kind(objects, "Service")
    (dep,) = by_kind(objects, "Deployment")
    url = f"http://{svc['metadata']['name']}:4443"
    assert svc["spec"]["ports"][0]["port"] == 4443
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
    server = dep["spec"]["template"]["spec"]["containers"][0]
    assert server["image"].startswith("fsouza/fake-gcs-server:")
    args = server["args"]
    pairs = dict(zip(args[::2], args[1::2]))
    assert pairs["-scheme"] == "http" and pairs["-backend"] == "memory" and pairs["-port"] == "4443"
    assert pairs["-external-url"] == url
    # The bucket of dataDir is created at start: a folder under -data becomes a bucket.
    init = dep["spec"]["template"]["spec"]["initContainers"][0]
    assert init["args"] == ["emu-bucket"] and pairs["-data"] == "/data"
    for component in ("generator", "trainer"):
        spec = pod_spec(job(objects, component))
        e = env(main_container(job(objects, component)))
        assert e["STORAGE_EMULATOR_HOST"] == url
        # protocol/storage.py turns gcsfs's gRPC probe off itself when the emulator is set.
        assert "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT" not in e
        (wait,) = spec["initContainers"]
        assert f"{url}/storage/v1/b/emu-bucket" in wait["args"][0]
    (test_pod,) = by_kind(objects, "Pod")
    assert env(test_pod["spec"]["containers"][0])["STORAGE_EMULATOR_HOST"] == url


def test_emulator_needs_a_gs_data_dir():
    with pytest.raises(helm_python.HelmError, match="gs://bucket/prefix"):
        render({"dataDir": "/local/dir", "gcsEmulator": {"enabled": True}})


# --- helm test hook and NOTES -----------------------------------------------------

def test_helm_test_hook_runs_ncf_status_on_the_run_and_the_release():
    objects = render(load_values(CHART_DIR / "ci" / "kind-values.yaml"))
    (pod,) = by_kind(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    assert c["image"] == main_container(job(objects, "generator"))["image"]
    assert c["command"] == ["ncf-status"]
    # The real parser reads them: the run directory, the release's Jobs, --watch until done or failed.
    from runstatus.__main__ import parse_args as parse_status_args
    args = parse_status_args(c["args"])
    assert args.run_dir == "gs://ncf-kind/runs/smoke"
    assert (args.namespace, args.release) == ("ncf", "ncf")
    assert args.watch and args.watch > 0 and not args.json
    # The watch ends at the pod's deadline when the run is not done by then.
    assert pod["spec"]["activeDeadlineSeconds"] == 600


def test_notes_explain_logs_and_status():
    text = notes(load_values(CHART_DIR / "ci" / "kind-values.yaml"))
    assert "logs -f job/ncf-ncf-tandem-generator" in text
    assert "logs -f job/ncf-ncf-tandem-trainer" in text
    assert "ncf-status gs://ncf-kind/runs/smoke" in text
    assert "helm test ncf" in text


# --- the schema rejects what it must ---------------------------------------------------

REJECTED = [
    ({"dataDir": "gs://b/p", "epochs": 3}, r"at '':.*additional properties 'epochs' not allowed"),
    ({"trainer": {"training": {"epoch": 3}}}, r"at '/trainer/training':.*additional properties 'epoch' not allowed"),
    ({"generator": {"training": {"epochs": 3}}}, r"at '/generator':.*additional properties 'training' not allowed"),
    ({"generator": {"accelerator": {"preset": "nvidia"}}}, r"at '/generator':.*additional properties 'accelerator' not allowed"),
    ({"trainer": {"training": {"epochs": "ten"}}}, r"at '/trainer/training/epochs':.*got string"),
    ({"trainer": {"training": {"epochs": -1}}}, r"at '/trainer/training/epochs':.*minimum"),
    ({"trainer": {"training": {"epochs": 0}}}, r"at '/trainer/training/epochs':.*minimum"),
    ({"trainer": {"training": {"batchSize": 2.5}}}, r"at '/trainer/training/batchSize'"),
    ({"trainer": {"training": {"learningRate": 0}}}, r"at '/trainer/training/learningRate'"),
    ({"trainer": {"training": {"targetHr": 1.5}}}, r"at '/trainer/training/targetHr'"),
    ({"trainer": {"training": {"l2": -0.1}}}, r"at '/trainer/training/l2':.*minimum"),
    ({"trainer": {"training": {"dataset": "ml-10m"}}}, r"at '/trainer/training/dataset':.*one of"),
    ({"trainer": {"training": {"evalMode": "fast"}}}, r"at '/trainer/training/evalMode':.*one of"),
    ({"trainer": {"training": {"layers": "64,32"}}}, r"at '/trainer/training/layers':.*got string"),
    ({"trainer": {"training": {"mixedPrecision": "yes"}}}, r"at '/trainer/training/mixedPrecision':.*got string"),
    ({"trainer": {"accelerator": {"preset": "gpu"}}}, r"at '/trainer/accelerator/preset':.*one of 'none', 'nvidia', 'tpu'"),
    ({"trainer": {"accelerator": {"nvidia": {"count": 0}}}}, r"at '/trainer/accelerator/nvidia/count':.*minimum"),
    ({"trainer": {"accelerator": {"tpu": {"topology": "four"}}}}, r"at '/trainer/accelerator/tpu/topology'"),
    ({"generator": {"workers": -2}}, r"at '/generator/workers':.*minimum"),
    ({"generator": {"job": {"backoffLimit": "many"}}}, r"at '/generator/job/backoffLimit':.*got string"),
    ({"generator": {"image": {"pullPolicy": "Sometimes"}}}, r"at '/generator/image/pullPolicy'"),
    ({"dataDir": "s3://bucket/x"}, r"at '/dataDir'"),
    ({"serviceAccount": {"gcpServiceAccount": "not-an-email"}}, r"at '/serviceAccount/gcpServiceAccount'"),
    ({"serviceAccount": {"keyJson": "{...}"}}, r"at '/serviceAccount':.*additional properties 'keyJson' not allowed"),
    ({"gcsEmulator": {"port": 70000}}, r"at '/gcsEmulator/port'"),
]


@pytest.mark.parametrize("values,message", REJECTED, ids=[m.split("'")[1] or "root" for _, m in REJECTED])
def test_schema_rejects(values, message):
    with pytest.raises(helm_python.HelmValuesError) as info:
        render(values)
    assert re.search(message, str(info.value), re.S), str(info.value)
    # helm lint (what `helm install` runs first) refuses them too.
    report = helm_python.lint(CHART_DIR, copy.deepcopy(values), strict=True)
    assert report["errors"] or any(m["severity"] >= 3 for m in report["messages"]), report


def test_schema_is_strict_wherever_it_is_ours():
    schema = chart().schema
    open_maps = {  # free-form Kubernetes objects and string maps, by design
        "podSecurityContext", "securityContext", "affinity", "nodeSelector", "podAnnotations",
        "podLabels", "annotations", "requests", "limits", "global",
        "env",  # a list of Kubernetes EnvVar objects; Kubernetes' own schema checks them
    }

    def walk(node, path):
        node = resolve(schema, node)
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, path
            for key, sub in node["properties"].items():
                if key not in open_maps:
                    walk(sub, f"{path}.{key}")
        for key in ("items",):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{path}[]")

    walk(schema, "")
    # Every default value passes it, and every values.yaml key is described.
    chart().validate_schema(chart().values)


def test_values_yaml_and_schema_agree():
    def keys(d, prefix=""):
        for k, v in d.items():
            yield prefix + k
            if isinstance(v, dict) and v and k not in ("resources", "podSecurityContext", "securityContext", "podLabels"):
                yield from keys(v, prefix + k + ".")
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    schema = chart().schema
    for key in keys(defaults):
        node = schema
        for part in key.split("."):
            node = resolve(schema, resolve(schema, node)["properties"][part])


def resolve(schema: dict, node: dict) -> dict:
    """`node`, or what its local "$ref" (#/$defs/NAME) points to."""
    while "$ref" in node:
        assert node["$ref"].startswith("#/$defs/"), node["$ref"]
        node = schema["$defs"][node["$ref"].removeprefix("#/$defs/")]
    return node


def test_merged_profile_values_pass_the_schema():
    for path in CI_VALUES:
        merged = deep_merge(chart().values, load_values(path))
        chart().validate_schema(merged)


# --- one place for each idea -----------------------------------------------------------

def test_generator_and_trainer_share_each_common_block_through_defs():
    schema = chart().schema
    gen = schema["properties"]["generator"]["properties"]
    tr = schema["properties"]["trainer"]["properties"]
    common = set(gen) & set(tr)
    assert {"image", "timeouts", "resources", "scratch", "job", "env", "nodeSelector"} <= common
    for key in common:
        # The same schema for both, and anything past a plain type lives once, in $defs.
        assert gen[key] == tr[key], key
        if set(gen[key]) - {"type", "description"}:
            assert "$ref" in gen[key], f"{key}: repeated inline instead of a $ref to $defs"
    # Every $def is used, and every $ref points at one.
    text = json.dumps(schema)
    for name in schema["$defs"]:
        assert f'"#/$defs/{name}"' in text, f"$defs/{name} is never used"
    for ref in re.findall(r'"\$ref": "([^"]+)"', text):
        assert ref.removeprefix("#/$defs/") in schema["$defs"], ref


def test_schema_enums_are_the_protocols():
    training = chart().schema["properties"]["trainer"]["properties"]["training"]["properties"]
    assert tuple(training["dataset"]["enum"]) == DATASETS
    # "" leaves the trainer's own default.
    assert tuple(v for v in training["evalMode"]["enum"] if v) == EVAL_MODES
    assert "" in training["evalMode"]["enum"]


def test_every_dataset_and_eval_mode_renders_as_its_flag():
    for dataset in DATASETS:
        got = flags(main_container(job(render({"trainer": {"training": {"dataset": dataset}}}), "trainer")))
        assert got["--dataset"] == dataset
    for mode in EVAL_MODES:
        got = flags(main_container(job(render({"trainer": {"training": {"evalMode": mode}}}), "trainer")))
        assert got["--eval-mode"] == mode


@pytest.mark.parametrize("component", ["generator", "trainer"])
def test_timeouts_are_numbers_fractions_included(component):
    values = {component: {"timeouts": {"start": 5400, "peer": 90.5, "heartbeatInterval": 0.25}}}
    got = flags(main_container(job(render(values), component)))
    assert (got["--start-timeout"], got["--peer-timeout"], got["--heartbeat-interval"]) == ("5400", "90.5", "0.25")
    timeouts = resolve(chart().schema, chart().schema["properties"][component]["properties"]["timeouts"])
    for key in ("start", "peer", "heartbeatInterval"):
        assert "number" in resolve(chart().schema, timeouts["properties"][key])["type"], key
    for bad in (0, -1, "60"):
        with pytest.raises(helm_python.HelmValuesError, match=f"/{component}/timeouts/peer"):
            render({component: {"timeouts": {"peer": bad}}})


def test_resources_are_exact():
    # A limit that differs from its request is refused, naming the value to fix.
    with pytest.raises(helm_python.HelmError, match=r"generator.resources: requests.memory \(4Gi\) and limits.memory \(8Gi\) must be equal"):
        render({"generator": {"resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}}})
    # A limit alone gives the request; equal ones are accepted as they are.
    res = main_container(job(render({"generator": {"resources": {
        "requests": {"cpu": "1", "memory": None}, "limits": {"cpu": "1", "memory": "3Gi"}}}}), "generator"))["resources"]
    assert res == {"requests": {"cpu": "1", "memory": "3Gi", "ephemeral-storage": "4Gi"},
                   "limits": {"cpu": "1", "memory": "3Gi"}}
    for name, values in ALL_VALUE_SETS:
        for _, spec in all_pod_specs(render(values)):
            for c in spec["containers"] + spec.get("initContainers", []):
                res = c["resources"]
                # Ephemeral storage is requested for /tmp alone (tests/test_chart_gke.py).
                exact = {k: v for k, v in res["requests"].items() if k != "ephemeral-storage"}
                assert exact == res["limits"], (name, c["name"], res)
                assert {"cpu", "memory"} <= set(res["requests"]), (name, c["name"], res)
