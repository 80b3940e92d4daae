"""sushy-emulator with the aifactory driver: `python -m sandbox.bmc_server --config FILE [emulator args]`.

sushy-tools has no plug-in point for system drivers: with `SUSHY_EMULATOR_FAKE_DRIVER = True` its
Application.systems instantiates `fakedriver.FakeDriver` by name, so the class is swapped in here
before the emulator's own main() runs.
"""

import logging
import signal
import sys

import jinja2
from sushy_tools.emulator import main as emulator
from sushy_tools.emulator.resources.systems import fakedriver

from sandbox import redfish_driver


def main() -> int:
    fakedriver.FakeDriver = redfish_driver.AifactoryDriver
    app = emulator.app
    # Templates of this loader win over the package's: processor.json (GPU processors) and
    # system.json (cores and threads in ProcessorSummary).
    stock_system, _, _ = app.jinja_loader.get_source(app.jinja_env, "system.json")
    ours = {
        "processor.json": redfish_driver.PROCESSOR_TEMPLATE,
        "system.json": redfish_driver.system_template(stock_system),
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
    return emulator.main()


if __name__ == "__main__":
    sys.exit(main())
