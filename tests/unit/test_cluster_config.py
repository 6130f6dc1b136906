"""cluster.yaml is a valid Ray autoscaler config with CPU, GPU and TPU worker types."""
from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_yaml_matches_rays_schema_and_has_every_worker_kind():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema = json.loads((Path(os.path.dirname(ray.__file__)) / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["provider"]["type"] == "gcp"
    assert any("GPU" in t["resources"] for t in types.values())
    tpu = [t for t in types.values() if "acceleratorType" in t["node_config"]]
    assert tpu and config["head_node_type"] not in [n for n, t in types.items() if t in tpu]  # a TPU is never the head


def test_every_worker_type_can_write_the_bucket():
    # GCE's default scopes give storage read-only; a gs:// run root needs read-write on every worker
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    writable = {"https://www.googleapis.com/auth/devstorage.read_write", "https://www.googleapis.com/auth/cloud-platform"}
    for name, node_type in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue  # `ray up` gives the head its own account with the cloud-platform scope
        accounts = node_type["node_config"].get("serviceAccounts", [])
        assert accounts and set(accounts[0]["scopes"]) & writable, name


def test_every_node_runs_with_the_token_the_client_sends():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert config["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
