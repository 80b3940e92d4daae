"""The BMCs' power hook: `python -m sandbox.power --site FILE MACHINE on|off`.

Each emulated BMC runs this on a power transition, so pressing a machine's (virtual) power button
through Redfish boots or stops its nspawn host, as on real hardware.
"""

from __future__ import annotations

import argparse
import sys

from aifactory.site.validate import load_site
from sandbox import hosts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--site", required=True)
    p.add_argument("machine")
    p.add_argument("action", choices=["on", "off", "force-off"])
    args = p.parse_args(argv)
    site = load_site(args.site)
    machine = site.machine(args.machine)
    if args.action == "on":
        hosts.power_on(site, machine)
    else:
        hosts.power_off(site, machine, force=args.action == "force-off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
