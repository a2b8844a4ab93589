"""Checks of a cluster submission that Snakemake and its SLURM executor leave to the cluster.

The SLURM profile (``profiles/slurm/config.yaml``) ships with placeholders for the account and the partition.
Left in place, every job would fail at ``sbatch`` ("invalid partition"), one by one, after the DAG was built;
:func:`check_slurm_placeholders` refuses them before the first job is submitted (the workflow's ``onstart``
handler, ``workflow/rules/common.smk``), naming the profile key and the command-line alternative.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from saca import SacaError

PROFILE = "profiles/slurm/config.yaml"
# resource name -> the placeholder the profile ships with
PLACEHOLDERS = {"slurm_account": "YOUR_ACCOUNT", "slurm_partition": "YOUR_PARTITION"}


def check_slurm_placeholders(jobs: Iterable[tuple[str, Mapping]], profile: str = PROFILE) -> None:
    """Raise SacaError (one line) when a job to be submitted still has a placeholder account or partition.

    ``jobs``: (rule name, resources) of every job the SLURM executor would submit (not the local rules).
    """
    hits: dict[str, set[str]] = {}
    for rule, resources in jobs:
        for key, placeholder in PLACEHOLDERS.items():
            if str(resources.get(key, "")) == placeholder:
                hits.setdefault(key, set()).add(rule)
    if not hits:
        return
    keys = sorted(hits)
    rules = sorted(set().union(*hits.values()))
    shown = ", ".join(rules[:5]) + (f" and {len(rules) - 5} more" if len(rules) > 5 else "")
    names = " and ".join(f"{k} '{PLACEHOLDERS[k]}'" for k in keys)
    sets = " ".join(f"{k}=NAME" for k in keys)
    raise SacaError(
        f"{profile}: default-resources: {names} {'are' if len(keys) > 1 else 'is'} still the placeholder"
        f"{'s' if len(keys) > 1 else ''} (rules {shown}); "
        f"set your cluster's value{'s' if len(keys) > 1 else ''} there, or pass --default-resources {sets} (it replaces "
        f"the profile's whole default-resources list) or --set-resources RULE:{keys[0]}=NAME per rule"
    )
