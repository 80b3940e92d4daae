"""aifactory: build and run a sovereign GPU AI factory from bare metal."""

__version__ = "0.1.0"
