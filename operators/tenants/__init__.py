"""The tenant operator: one `Tenant` object becomes GPU quota on Kubernetes and on Slurm.

Modules, one concept each: `spec` (the API as Python), `crd` (the CustomResourceDefinition with its
OpenAPI schema and CEL rules), `kubernetes_side` and `slurm` (what each scheduler gets, and how it is
applied), `capacity` (over-commit against the site), `metrics`, `config`, and `handlers` (kopf).
"""
