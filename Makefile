# couponflow: `make demo` runs the pipeline on the embedded defaults, `make test` tests it.
# Both create the virtual environment and install everything on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_WORKSPACE ?= var/demo
DEMO_DAYS ?= 3
AIRFLOW_PORT ?= 8080

.PHONY: install demo airflow test test-unit test-fast lint check-docker screenshots format lock clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: install  ## a fresh workspace, history seeded, the DAG run for $(DEMO_DAYS) days
	rm -rf $(DEMO_WORKSPACE)
	$(BIN)/couponflow --workspace $(DEMO_WORKSPACE) demo --days $(DEMO_DAYS)

airflow: install  ## the Airflow UI over $(DEMO_WORKSPACE) (api-server, scheduler, dag-processor) until Ctrl-C
	test -f $(DEMO_WORKSPACE)/params.yaml || $(BIN)/couponflow --workspace $(DEMO_WORKSPACE) init
	$(BIN)/couponflow --workspace $(DEMO_WORKSPACE) airflow --port $(AIRFLOW_PORT)

# The layers (tests/conftest.py): unit tests run our code in-process in about a minute;
# integration tests run the tools, servers, Redis and child processes; e2e the pipeline.
test: install lint  ## every layer, the slowest tests listed
	$(BIN)/pytest -q --durations=15

test-unit: install  ## the unit layer only: no tool, server or child process; two processes
	$(BIN)/pytest -q -n 2 -m "not integration and not e2e"

test-fast: test-unit

# The pages a reviewer reads, as headless Chromium shows them (docs/runbook.md, "The pages in
# a real browser"): the browser tests run with COUPONFLOW_SCREENSHOTS set, each saving the
# page it checked. The Airflow UI's needs a pipeline run on a tiny world (a few minutes).
SCREENSHOTS ?= docs/screenshots
screenshots: install
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null \
		|| { echo "screenshots need Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"; exit 1; }
	COUPONFLOW_SCREENSHOTS=$(SCREENSHOTS) $(BIN)/pytest -q -m browser tests/test_browser.py tests/test_pipeline_e2e.py

lint: install  ## ruff, mypy over the code and benchmarks ([tool.mypy]), no committed secrets
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python tools/check_secrets.py

# The deployment files without a Docker daemon or cluster: Debian's docker-compose (1.29)
# validates the compose file, kubectl renders the kustomization offline, and the tests
# hold the manifests to their invariants. No image is built.
check-docker: install
	@command -v docker-compose >/dev/null || { echo "check-docker needs docker-compose: apt-get install docker-compose"; exit 1; }
	docker-compose --env-file docker/.env.example -f docker/compose.yaml --profile serve config -q
	@command -v kubectl >/dev/null || { echo "check-docker needs kubectl"; exit 1; }
	kubectl kustomize docker/k8s > /dev/null
	$(BIN)/pytest -q tests/test_deploy_manifests.py

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lock: install  ## re-pin every package after a dependency change (the images' extra too)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,deploy]'
	{ head -2 constraints.txt; $(BIN)/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.new
	mv constraints.new constraints.txt

clean:
	rm -rf var .pytest_cache
