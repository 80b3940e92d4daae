"""sushy-emulator with the aifactory driver: `python -m sandbox.bmc_server --config FILE [emulator args]`.

sushy-tools has no plug-in point for system drivers: with `SUSHY_EMULATOR_FAKE_DRIVER = True` its
Application.systems instantiates `fakedriver.FakeDriver` by name, so the class is swapped in here
before the emulator's own main() runs.
"""

import json
import logging
import signal
import sys

import flask
import jinja2
from sushy_tools import error
from sushy_tools.emulator import api_utils
from sushy_tools.emulator import main as emulator
from sushy_tools.emulator.resources.systems import fakedriver

from sandbox import redfish_driver


def main() -> int:
    fakedriver.FakeDriver = redfish_driver.AifactoryDriver
    app = emulator.app
    # Templates of this loader win over the package's: processor.json (GPU processors) and
    # system.json (cores and threads in ProcessorSummary).
    stock_system, _, _ = app.jinja_loader.get_source(app.jinja_env, "system.json")
    stock_chassis, _, _ = app.jinja_loader.get_source(app.jinja_env, "chassis.json")
    ours = {
        "processor.json": redfish_driver.PROCESSOR_TEMPLATE,
        "system.json": redfish_driver.system_template(stock_system),
        "chassis.json": redfish_driver.chassis_template(stock_chassis),
    }
    app.jinja_loader = jinja2.ChoiceLoader([jinja2.DictLoader(ours), app.jinja_loader])
    # main() installs a SIGCHLD handler that reaps every child, which would steal the power hook's
    # exit status (subprocess then reports 0); the fake driver starts no other children.
    emulator.cleanup_zombies = signal.SIG_DFL
    app.logger.setLevel(logging.INFO)  # power changes and hook runs in the BMC's log
    serve = app.run

    def run(*args, **kwargs):
        # The driver is built at the first Systems request; build it now, so that it restores the
        # power state it stored (LastState) when the BMC starts, not when someone first asks.
        _ = app.systems
        return serve(*args, **kwargs)

    app.run = run
    app.add_url_rule(
        "/redfish/v1/Chassis/<identity>/Power", view_func=power_resource, methods=["GET", "PATCH"]
    )
    return emulator.main()


@api_utils.returns_json
def power_resource(identity):
    """The server's power reading and limit (PATCH PowerControl[0].PowerLimit.LimitInWatts)."""
    app = emulator.app
    identity = app.chassis.name(identity)  # named after its machine; links give its UUID
    if flask.request.method == "PATCH":
        controls = (flask.request.json or {}).get("PowerControl") or [{}]
        limit = (controls[0].get("PowerLimit") or {}) if isinstance(controls[0], dict) else {}
        if "LimitInWatts" not in limit:
            raise error.BadRequest("PATCH sets PowerControl[0].PowerLimit.LimitInWatts (null: no limit)")
        watts = limit["LimitInWatts"]
        if watts is not None and (isinstance(watts, bool) or not isinstance(watts, int | float)):
            raise error.BadRequest(f"LimitInWatts must be a number of watts or null, got {watts!r}")
        app.systems.set_power_limit(identity, None if watts is None else round(watts))
        app.logger.info("power limit of chassis %s set to %s W", identity, watts)
        return "", 204
    return json.dumps(app.systems.power_resource(identity))


if __name__ == "__main__":
    sys.exit(main())
