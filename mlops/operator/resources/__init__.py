"""Pure builders: typed spec (+ observed state) -> desired Kubernetes manifests. No cluster I/O."""
