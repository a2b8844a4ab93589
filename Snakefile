# SACA / VLN-R1 reproduction workflow. Logic lives in src/saca; rules only wire files.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/policy.smk"
include: "workflow/rules/auditor.smk"


rule all:
    input:
        all_targets(),
    default_target: True
