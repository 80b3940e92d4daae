"""Kubernetes operators of the AI factory (kopf)."""
