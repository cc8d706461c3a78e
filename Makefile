# The project's entry points. `make run` and `make test` are the README's two quick-start commands;
# `.ci/run` calls `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
export MLOPS_CACHE ?= $(HOME)/.cache/mlops-operator

.PHONY: install run demo test test-unit test-integration lint tools manifests cluster cluster-down bench clean

install:  ## install the package with every test dependency (editable)
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev]'

run: install  ## install, then run the main job on its embedded default
	mlops serve --demo --port 5000

test: install tools lint  ## install everything, build/reuse the control plane, run every test tier
	$(PYTHON) -m pytest tests

test-unit: install
	$(PYTHON) -m pytest tests/unit

test-integration: install tools
	$(PYTHON) -m pytest tests/integration

lint:
	ruff check mlops tests benchmarks
	lint-imports

tools:  ## build (or reuse from $(MLOPS_CACHE)) etcd, kube-apiserver, controller-manager, scheduler, kwok, helm, kubeconform, luahealth
	bash hack/build-control-plane.sh
	bash hack/build-tools.sh

manifests:  ## render manifests/, the chart's crds/ and README values table, the Argo CD health patch from their sources
	bash hack/build-tools.sh
	$(PYTHON) hack/render.py

cluster: install tools  ## start a local control plane; writes .cluster/kubeconfig
	$(PYTHON) -m mlops.testing.cluster up --dir .cluster

cluster-down:
	$(PYTHON) -m mlops.testing.cluster down --dir .cluster

clean:
	rm -rf .mlops .pytest_cache .ruff_cache build *.egg-info
