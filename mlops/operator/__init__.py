"""The kopf operator: typed custom-resource models, pure builders of desired objects, thin handlers."""
