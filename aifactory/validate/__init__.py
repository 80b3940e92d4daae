"""`aifactory validate`: testinfra suites for every node, GPU acceptance and whole-cluster checks.

The checks (checks/*.py) are pytest functions run in-process by runner.py over ssh (testinfra,
ControlMaster). What each host's checks need is gathered first, in parallel across hosts, in one
ssh round trip per host (probe.py); the checks then assert on those outputs through the parsers
(parsers.py), which are unit-tested with recorded outputs. Results become flat records
(report.py): JSON, JUnit XML, a summary table and the exit code 0/1/2.
"""
