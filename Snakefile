# SACA / VLN-R1 reproduction workflow. Logic lives in src/saca; rules only wire files.
import shlex
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

# the package of this checkout (the one the rules run), also where it is not installed
SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))
# ... and in every job: rules with `conda:` run in envs that hold the dependencies, not the package (envs/*.yaml),
# and Snakemake does not pass PYTHONPATH into them; the prefix keeps Snakemake's default strict mode
# (quoted: a checkout path with spaces or shell characters is data)
shell.prefix(f"set -euo pipefail; export PYTHONPATH={shlex.quote(str(SRC))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")


configfile: "config/config.yaml"


# workflow/schemas/config.schema.yaml links to the package's copy (src/saca/resources), which the CLI checks --params with.
# Checked now, when the workflow is parsed, before Snakemake can plan a rerun (and delete outputs) over a changed
# param: a misspelled key names its dotted path and the closest known key; an integer key refuses 2.0 and 1e9, a
# number NaN and inf (JSON Schema alone accepts them, and the job would then fail after its outputs were removed).
from saca import SacaError  # noqa: E402
from saca.config import validate_config  # noqa: E402

try:
    validate_config(config)
except SacaError as err:
    sys.exit(f"config error: {err}")
validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"


wildcard_constraints:
    dataset="|".join(DATASETS),
    split="|".join(SPLITS),


include: "workflow/rules/data.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/policy.smk"
include: "workflow/rules/dagger.smk"
include: "workflow/rules/rft.smk"
include: "workflow/rules/auditor.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
