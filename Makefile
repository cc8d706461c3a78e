# The project's entry points. `make run` and `make test` are the README's two quick-start commands;
# `.ci/run` calls `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
export MLOPS_CACHE ?= $(HOME)/.cache/mlops-operator

.PHONY: install run demo test test-unit test-integration test-e2e lint tools manifests image host-packages cluster cluster-down bench clean

install:  ## install the package with every test dependency (editable)
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev]'

run: install  ## install, then run the main job on its embedded default
	mlops serve --demo --port 5000

test: install tools image lint  ## install everything, build/reuse the control plane, node and image, run every test tier
	MLOPS_E2E=require $(PYTHON) -m pytest tests

test-unit: install
	$(PYTHON) -m pytest tests/unit

test-integration: install tools
	$(PYTHON) -m pytest tests/integration

test-e2e: install tools image  ## the image and a real kubelet node (root): tests/e2e
	MLOPS_E2E=require $(PYTHON) -m pytest tests/e2e

lint:
	ruff check mlops tests benchmarks
	lint-imports
	hadolint Dockerfile

host-packages:  ## Debian packages for the image and the real node (podman, runc, mmdebstrap, CNI, iptables)
	bash hack/host-packages.sh

image:  ## build localhost/mlops-operator:dev with podman (base from Debian packages; layers cached in $(MLOPS_CACHE)/image)
	bash hack/build-image.sh

tools:  ## build (or reuse from $(MLOPS_CACHE)) the control plane, the real node, helm, kubeconform, luahealth
	bash hack/build-control-plane.sh
	bash hack/build-node.sh
	bash hack/build-tools.sh

manifests:  ## render manifests/, the chart's crds/ and README values table, the Argo CD health patch from their sources
	bash hack/build-tools.sh
	$(PYTHON) hack/render.py

cluster: install tools  ## start a local control plane (REAL_NODE=1: plus a real kubelet node); writes .cluster/kubeconfig
	$(PYTHON) -m mlops.testing.cluster up --dir .cluster $(if $(REAL_NODE),--real-node)

cluster-down:
	$(PYTHON) -m mlops.testing.cluster down --dir .cluster

clean:
	rm -rf .mlops .pytest_cache .ruff_cache build *.egg-info
