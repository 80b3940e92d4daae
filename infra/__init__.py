"""The Pulumi program and its components (entry point: __main__.py, see Pulumi.yaml)."""
