# Shared helpers for the rules. Each rules file adds its final outputs to TARGETS.
import json
import shlex

RESULTS = config.get("results", "results")
DATASETS = list(config["datasets"])
SPLITS = ["train", "val_seen", "val_unseen"]
SACA = "python -m saca"
# The package source is an input of every rule, so that editing the code reruns what it affects.
SACA_SRC = sorted(str(p) for p in Path("src/saca").rglob("*.py"))

TARGETS = []


def all_targets():
    return TARGETS


def as_json(obj):
    """A config section as one shell-quoted JSON word (a dict interpolated into shell: is not JSON)."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def dataset_cfg(wildcards):
    return config["datasets"][wildcards.dataset]


def scene_ids():
    sc = config["scenes"]
    return [f"house_{i:03d}" for i in range(sc["train"] + sc["val_unseen"])]


wildcard_constraints:
    dataset="|".join(DATASETS),
    split="|".join(SPLITS),
