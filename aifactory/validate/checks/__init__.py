"""The validation suites: pytest check functions (`check_*`) run by aifactory.validate.runner.

Each module also declares `probes(ctx, machine)`: the shell commands its checks read on a host,
gathered for all hosts in parallel before any check runs.
"""

MODULES = ("node_os", "node_services", "node_slurm", "node_kubernetes", "gpu", "cluster")
