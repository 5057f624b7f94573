"""cluster.yaml: valid for Ray's own cluster launcher, resource and label names match eclm, Ray pinned,
loopback-only UIs.

The only unit test that imports Ray: validation uses Ray's config preparation and JSON schema,
exactly what ``ray up`` runs before it contacts any machine (no cluster is started).
"""

import copy
import json
import shlex
from pathlib import Path

import pytest
import yaml

from eclm.resources import CLOUD_RESOURCE, EDGE_RESOURCE, NODE_LABEL, node_selector

jsonschema = pytest.importorskip("jsonschema")
ray_util = pytest.importorskip("ray.autoscaler._private.util")

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    with CLUSTER_YAML.open() as f:
        return yaml.safe_load(f)


def ray_start_commands(commands: list[str]) -> list[list[str]]:
    """Tokens of every ``ray start`` invocation in a list of shell commands."""
    found = []
    for command in commands:
        for part in command.split(";"):
            tokens = shlex.split(part)
            if "ray" in tokens and tokens[tokens.index("ray") + 1:tokens.index("ray") + 2] == ["start"]:
                found.append(tokens)
    return found


def option(tokens: list[str], name: str) -> str | None:
    """Value of ``--name=value`` in ``tokens``, or None."""
    values = [t.split("=", 1)[1] for t in tokens if t.startswith(f"--{name}=")]
    assert len(values) <= 1, f"--{name} given twice in {tokens}"
    return values[0] if values else None


def test_cluster_yaml_passes_rays_own_validation(cluster):
    # Prepare: what `ray up` does first (merge the local provider's defaults, one node type).
    prepared = ray_util.prepare_config(copy.deepcopy(cluster))
    # Execute / Assert: schema and cross-field checks; raises on any problem.
    ray_util.validate_config(prepared)
    assert prepared["provider"]["type"] == "local"
    assert prepared["max_workers"] == len(cluster["provider"]["worker_ips"])


def test_cluster_yaml_matches_rays_json_schema_as_written(cluster):
    schema_path = Path(ray_util.__file__).resolve().parents[1] / "ray-schema.json"
    jsonschema.validate(cluster, json.loads(schema_path.read_text()))


@pytest.mark.parametrize("mutation", [
    lambda c: c.update(head_start_commands=["ray start --head"]),  # misspelt top-level key
    lambda c: c["auth"].update(ssh_key="~/.ssh/id_ed25519"),  # unknown auth key
    lambda c: c.update(idle_timeout_minutes="soon"),  # wrong type
])
def test_validation_would_catch_a_broken_cluster_yaml(cluster, mutation):
    broken = copy.deepcopy(cluster)
    mutation(broken)
    with pytest.raises(jsonschema.ValidationError):
        ray_util.validate_config(ray_util.prepare_config(broken))


def test_on_premise_cluster_named_eclm_with_placeholder_hosts(cluster):
    provider = cluster["provider"]
    assert cluster["cluster_name"] == "eclm"
    assert provider["type"] == "local"
    assert isinstance(provider["head_ip"], str) and provider["head_ip"]
    assert len(provider["worker_ips"]) >= 1 and all(isinstance(ip, str) for ip in provider["worker_ips"])


@pytest.mark.parametrize("section,expected", [
    ("head_start_ray_commands", {CLOUD_RESOURCE: 1}),
    ("worker_start_ray_commands", {EDGE_RESOURCE: 4}),
])
def test_start_commands_declare_exactly_the_eclm_resources(cluster, section, expected):
    starts = ray_start_commands(cluster[section])
    assert len(starts) == 1, f"{section} should start Ray once, found {starts}"
    resources = json.loads(option(starts[0], "resources"))
    assert resources == expected


def test_head_and_workers_have_the_right_roles(cluster):
    (head,) = ray_start_commands(cluster["head_start_ray_commands"])
    (worker,) = ray_start_commands(cluster["worker_start_ray_commands"])
    assert "--head" in head and option(head, "address") is None
    assert "--head" not in worker and option(worker, "address") == "$RAY_HEAD_IP:6379"
    assert option(head, "port") == "6379"


def test_dashboard_and_mlflow_bind_to_loopback_only(cluster):
    (head,) = ray_start_commands(cluster["head_start_ray_commands"])
    assert option(head, "dashboard-host") == "127.0.0.1"
    mlflow = [shlex.split(c) for c in cluster["head_start_ray_commands"] if "mlflow server" in c]
    assert len(mlflow) == 1
    tokens = mlflow[0]
    assert tokens[tokens.index("--host") + 1] == "127.0.0.1"
    all_commands = " ".join(cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"])
    assert "0.0.0.0" not in all_commands


def test_token_authentication_stays_on(cluster):
    starts = (ray_start_commands(cluster["head_start_ray_commands"])
              + ray_start_commands(cluster["worker_start_ray_commands"]))
    # Every `ray start` runs with RAY_AUTH_MODE=token in front of it ...
    for tokens in starts:
        assert tokens[tokens.index("ray") - 1] == "RAY_AUTH_MODE=token", tokens
    # ... every later shell (ray exec / attach, eclm run) gets it from ~/.bashrc ...
    assert any("export RAY_AUTH_MODE=token" in c for c in cluster["initialization_commands"])
    # ... and every node receives the token generated on the operator's machine.
    assert cluster["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert "disabled" not in json.dumps(cluster)


def test_setup_installs_and_enforces_the_installed_ray_version(cluster):
    import ray

    installs = [c for c in cluster["setup_commands"] if c.startswith("pip install")]
    assert len(installs) == 1 and f'"ray[default]=={ray.__version__}"' in installs[0]
    assert "-e ~/eclm" in installs[0]  # one resolver run: eclm's dependencies cannot move the pin
    assert any(f'ray.__version__ != "{ray.__version__}"' in c and "exit 1" in c for c in cluster["setup_commands"])
    assert tuple(map(int, ray.__version__.split(".")[:2])) >= (2, 52)  # knows RAY_AUTH_MODE


def test_every_worker_carries_the_node_label_devices_select_on(cluster):
    (worker,) = ray_start_commands(cluster["worker_start_ray_commands"])
    key, _, value = option(worker, "labels").partition("=")
    assert key == NODE_LABEL and "hostname -s" in value and "~/.eclm-node" in value


def test_repo_is_synced_and_installed_editable_without_git_urls(cluster):
    assert cluster["file_mounts"]["~/eclm"] == "."
    assert any(c.startswith("pip install") and c.endswith(" -e ~/eclm") for c in cluster["setup_commands"])
    assert "git+" not in json.dumps(cluster)
    assert ".git" in cluster["rsync_exclude"]


@pytest.mark.parametrize("name", ["cam-01", "jetson_7", "pi.kitchen", "x"])
def test_node_selector_is_a_label_ray_accepts(name):
    from ray._private.label_utils import validate_label_selector, validate_node_label_syntax

    assert node_selector(name) == {NODE_LABEL: name}
    assert validate_label_selector(node_selector(name)) is None  # what .options(label_selector=...) checks
    validate_node_label_syntax(node_selector(name))  # what `ray start --labels` checks


@pytest.mark.parametrize("bad,error", [("", ValueError), ("cam 01", ValueError), ("-pi", ValueError),
                                       ("a" * 64, ValueError), (7, TypeError)])
def test_node_selector_rejects_names_no_node_could_carry(bad, error):
    from ray._private.label_utils import validate_node_label_syntax

    with pytest.raises(error, match="node name"):
        node_selector(bad)
    if isinstance(bad, str) and bad:  # (Ray allows an empty label value, which names no node)
        with pytest.raises(ValueError):  # Ray agrees: no node can be labelled with it
            validate_node_label_syntax({NODE_LABEL: bad})
