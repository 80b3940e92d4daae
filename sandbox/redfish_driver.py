"""The sushy-tools system driver behind the local site's emulated BMCs.

`AifactoryDriver` is sushy-tools' fake driver plus what a GPU server's BMC shows:

- Inventory, from extra keys of each `SUSHY_EMULATOR_FAKE_SYSTEMS` entry: `cpu_sockets`,
  `cpu_cores`, `cpu_threads`, `memory_gib`, `gpu_model`, `gpu_count`. The System reports them as a
  server's BMC does: `ProcessorSummary` with `Count` (sockets), `CoreCount` and
  `LogicalProcessorCount` (threads), `MemorySummary.TotalSystemMemoryGiB`. Its Processors collection
  holds one CPU per socket (`TotalCores`, `TotalThreads`: the system's shared out) and one Processor
  per GPU with `ProcessorType: "GPU"`, `Model: <gpu_model>`, `Manufacturer: "NVIDIA"`. An entry
  with `baseboard: <host's uuid>` and no CPUs is an NVIDIA HGX GPU baseboard (`HGX_Baseboard_0`): a
  second System of the same BMC that lists the server's GPUs and is powered with its host.
  The stock templates hard-code "CPU" as every processor's type and give ProcessorSummary only a
  Count, hence `PROCESSOR_TEMPLATE` and `system_template`, which `sandbox.bmc_server` installs.
- Power: each real transition runs the config's `SUSHY_AIFACTORY_POWER_HOOK` (argv list) as
  `HOOK... <system name> on|off|force-off` (ForceOff cuts the power: no orderly shutdown, as on a
  real server). "On" shows at once (the stock driver applies it after a random
  1-11 s); "Off" shows once the hook has stopped the host, as a real BMC reports Off only when the
  machine is off, so a caller that waits for Off knows the host is down. A failed "off" hook leaves
  the system On. Restarts (ForceRestart, GracefulRestart, PowerCycle) of a running
  system are an off then an on. Hooks run one at a time, in order, on a worker thread, so the HTTP
  request does not wait for them and an "off" never overtakes the "on" before it; their output goes
  to the emulator's log, and a failure or a timeout (`SUSHY_AIFACTORY_POWER_HOOK_TIMEOUT`, s) is
  logged there as an error. A BMC that starts with its system stored On runs the "on" hook again
  (PowerRestorePolicy LastState).

- Power readings and a power limit: each machine has a Chassis of its own (Id: its name, linked from
  its System), with the Redfish `Power` resource (PowerControl:
  PowerConsumedWatts from `sandbox.power_meter`, PowerCapacityWatts, PowerLimit.LimitInWatts,
  which a PATCH sets within the machine's idle..maximum range and which is stored with the system,
  so it outlives a BMC restart as a real BMC's does). `power_resource` renders it.

sushy-tools has no plug-in point for system drivers; `sandbox.bmc_server` swaps this class in.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from pathlib import Path

from sushy_tools import error
from sushy_tools.emulator.resources.systems import fakedriver

from sandbox import power_meter

_STOPPING = "aifactory_stopping"  # an "off" hook is queued or running
INVENTORY_KEYS = (
    "cpu_sockets",
    "cpu_cores",
    "cpu_threads",
    "memory_gib",
    "gpu_model",
    "gpu_count",
    "nics",
    "baseboard",
)
_POWER_STEPS = {
    "On": ("On",),
    "ForceOn": ("On",),
    "ForceOff": ("ForceOff",),  # power cut at once: the host gets no orderly shutdown
    "GracefulShutdown": ("Off",),
    "ForceRestart": ("Off", "On"),
    "GracefulRestart": ("Off", "On"),
    "PowerCycle": ("Off", "On"),
}

# The stock processor.json with the type, cores and threads taken from the driver's processor dicts.
PROCESSOR_TEMPLATE = """{
    "@odata.type": "#Processor.v1_0_7.Processor",
    "Id": {{ processor['id']|string|tojson }},
    "Name": {{ processor.get('type', 'CPU')|tojson }},
    "Socket": {{ processor['socket']|string|tojson }},
    "ProcessorType": {{ processor.get('type', 'CPU')|tojson }},
    {%- if processor.get('type', 'CPU') == 'CPU' %}
    "ProcessorArchitecture": "x86",
    "InstructionSet": "x86-64",
    {%- endif %}
    "Manufacturer": {{ processor['vendor']|string|tojson }},
    "Model": {{ processor['model']|string|tojson }},
    {%- if processor.get('cores') %}
    "TotalCores": {{ processor['cores']|int }},
    "TotalThreads": {{ processor['threads']|int }},
    {%- endif %}
    "Status": {"State": "Enabled", "Health": "OK"},
    "@odata.context": "/redfish/v1/$metadata#Processor.Processor",
    "@odata.id": {{ "/redfish/v1/Systems/%s/Processors/%s"|format(identity, processor['id'])|tojson }}
}
"""

# The stock ProcessorSummary has Count only; a server's BMC also reports cores and threads.
_STOCK_COUNT = '"Count": {{ total_cpus }},'
_COUNTS = (
    '"Count": {{ total_cpus.sockets }}, "CoreCount": {{ total_cpus.cores }}, '
    '"LogicalProcessorCount": {{ total_cpus.threads }},'
)


_STOCK_THERMAL = '"Thermal": {'
_POWER_LINK = '"Power": {"@odata.id": {{ "/redfish/v1/Chassis/%s/Power"|format(identity)|tojson }}},\n    '


def _patched(stock: str, name: str, old: str, new: str) -> str:
    if stock.count(old) != 1:
        raise RuntimeError(f"sushy-tools' {name} no longer has {old!r}: update sandbox.redfish_driver")
    return stock.replace(old, new)


def chassis_template(stock: str) -> str:
    """sushy-tools' chassis.json with the link to the Power resource a server's BMC has."""
    return _patched(stock, "chassis.json", _STOCK_THERMAL, _POWER_LINK + _STOCK_THERMAL)


_STOCK_CHASSIS_LINK = '"/redfish/v1/Chassis/%s"|format(chassis_)'
_OWN_CHASSIS_LINK = '"/redfish/v1/Chassis/%s"|format(name)'


def system_template(stock: str) -> str:
    """sushy-tools' system.json with the ProcessorSummary of `AifactoryDriver.get_total_cpus`, and
    a link to the System's own Chassis (named after it), not the BMC's first."""
    with_counts = _patched(stock, "system.json", _STOCK_COUNT, _COUNTS)
    return _patched(with_counts, "system.json", _STOCK_CHASSIS_LINK, _OWN_CHASSIS_LINK)


class AifactoryDriver(fakedriver.FakeDriver):
    def __init__(self):
        super().__init__()
        # The stored systems outlive a BMC restart (power state must); inventory follows the config,
        # and so does the list of systems (a GPU baseboard taken out of the site file goes).
        configured = {system["uuid"] for system in self._config["SUSHY_EMULATOR_FAKE_SYSTEMS"]}
        for uuid in set(self._systems) - configured:
            del self._systems[uuid]
        for system in self._config["SUSHY_EMULATOR_FAKE_SYSTEMS"]:
            stored = self._systems[system["uuid"]]
            stored.update({k: system[k] for k in INVENTORY_KEYS if k in system})
            self._systems[system["uuid"]] = stored
        self._power_lock = threading.Lock()  # the dev server is threaded; keep read-modify-write whole
        self._hook_queue: queue.SimpleQueue[tuple[str, str, str]] = queue.SimpleQueue()
        # An "off" cut short by a BMC restart is finished now (the hook is idempotent), or the
        # system would say On and count as stopping for ever.
        # A system stored On is booted again (the hook does nothing for a running host): after the
        # machine running the site restarts, the BMCs come back as real ones do after a power cut
        # with PowerRestorePolicy LastState, and the site with them.
        for system in self._config["SUSHY_EMULATOR_FAKE_SYSTEMS"]:
            stored = self._systems[system["uuid"]]
            if stored.get(_STOPPING):
                self._hook_queue.put((stored["uuid"], stored["name"], "off"))  # finish the stop
            elif stored.get("power_state") == "On":
                self._hook_queue.put((stored["uuid"], stored["name"], "on"))
        threading.Thread(target=self._run_hooks, name="power-hook", daemon=True).start()
        # one power meter per host System, by name: the Chassis of the same name reports it
        self.meters = {
            name: power_meter.PowerMeter(
                power_meter.Figures(**p["figures"]), Path(p["cgroup"]) if p.get("cgroup") else None
            )
            for name, p in (self._config.get("SUSHY_AIFACTORY_POWER") or {}).items()
        }

    def power_resource(self, chassis: str) -> dict:
        """The Chassis' Redfish Power resource (Power.v1_7_0: one PowerControl for the server)."""
        meter, system = self._metered(chassis)
        f, limit = meter.figures, system.get("power_limit_w")
        watts = meter.draw_w(system["power_state"] == "On", limit)
        control = {
            "@odata.id": f"/redfish/v1/Chassis/{chassis}/Power#/PowerControl/0",
            "MemberId": "0",
            "Name": "Server Power Control",
            "PowerConsumedWatts": watts,
            "PowerCapacityWatts": f.max_w,
            "PowerLimit": {"LimitInWatts": limit, "LimitException": "NoAction"},
            "Status": {"State": "Enabled", "Health": "OK"},
            "Oem": {"Aifactory": {"AllowableMinWatts": f.idle_w, "AllowableMaxWatts": f.max_w}},
        }
        return {
            "@odata.type": "#Power.v1_7_0.Power",
            "@odata.id": f"/redfish/v1/Chassis/{chassis}/Power",
            "Id": "Power",
            "Name": "Power",
            "PowerControl": [control],
        }

    def set_power_limit(self, chassis: str, watts: int | None) -> None:
        """A node power limit in watts (None: none), within what the server can be held to."""
        meter, system = self._metered(chassis)
        f = meter.figures
        if watts is not None and not f.idle_w <= watts <= f.max_w:
            raise error.BadRequest(f"LimitInWatts {watts} is outside {f.idle_w}..{f.max_w}")
        with self._power_lock:
            self._update(self._get(system["uuid"]), power_limit_w=watts)

    def _metered(self, chassis: str) -> tuple[power_meter.PowerMeter, dict]:
        """The meter and stored System of the server in the Chassis (named after it)."""
        if chassis not in self.meters:
            raise error.NotFound(f"chassis {chassis} has no power meter (a GPU baseboard's, or none)")
        return self.meters[chassis], self._get(self._by_name.get(chassis, chassis))

    def get_total_memory(self, identity):
        return self._get(identity).get("memory_gib")

    def get_total_cpus(self, identity):
        """Sockets, cores and threads, for `system_template`'s ProcessorSummary (None: no CPUs)."""
        system = self._get(identity)
        if not system.get("cpu_sockets"):
            return None
        return {
            "sockets": system["cpu_sockets"],
            "cores": system["cpu_cores"],
            "threads": system["cpu_threads"],
        }

    def get_power_state(self, identity):
        system = self._get(identity)
        if system.get("baseboard"):  # powered with its host
            system = self._get(system["baseboard"])
        return system["power_state"]

    def get_processors(self, identity):
        system = self._get(identity)
        sockets, gpu_model = system.get("cpu_sockets") or 0, system.get("gpu_model")
        processors = []
        for i in range(sockets):
            # The system's cores and threads shared out over its sockets, the first taking what is left.
            cores = system["cpu_cores"] // sockets + (system["cpu_cores"] % sockets if i == 0 else 0)
            threads = system["cpu_threads"] // sockets + (system["cpu_threads"] % sockets if i == 0 else 0)
            cpu = {
                "id": f"CPU{i}",
                "socket": f"CPU {i}",
                "type": "CPU",
                "vendor": "Emulated",
                "model": "x86-64",
            }
            processors.append({**cpu, "cores": cores, "threads": threads})
        processors += [
            {"id": f"GPU{i}", "socket": f"GPU {i}", "type": "GPU", "vendor": "NVIDIA", "model": gpu_model}
            for i in range(system.get("gpu_count") or 0)
        ]
        return processors

    def set_power_state(self, identity, state):
        steps = _POWER_STEPS.get(state)
        if steps is None:
            raise error.NotSupportedError(f"Power state {state} is not supported")
        with self._power_lock:
            system = self._get(identity)
            if system.get("baseboard"):
                raise error.NotSupportedError("a GPU baseboard is powered with its host's system")
            for step in steps:
                target = "Off" if step == "ForceOff" else step
                # A stop in progress counts as Off, so a repeated shutdown does not queue a second hook.
                current = "Off" if system.get(_STOPPING) else system["power_state"]
                if current == target:
                    continue
                if target == "Off":
                    self._update(system, **{_STOPPING: True})
                else:
                    self._update(system, power_state="On", pending_power=None, **{_STOPPING: False})
                self._hook_queue.put(
                    (system["uuid"], system["name"], "force-off" if step == "ForceOff" else step.lower())
                )

    def _hook_done(self, uuid, power, ok):
        """An "off" that the hook carried out (and no "on" has superseded) makes the system Off."""
        if power not in ("off", "force-off"):
            return
        with self._power_lock:
            system = self._get(uuid)
            if system.get(_STOPPING):
                changes = {"power_state": "Off", "pending_power": None} if ok else {}
                self._update(system, **changes, **{_STOPPING: False})

    def _run_hooks(self):
        hook = self._config.get("SUSHY_AIFACTORY_POWER_HOOK")
        timeout = self._config.get("SUSHY_AIFACTORY_POWER_HOOK_TIMEOUT", 300)
        while True:
            uuid, name, power = self._hook_queue.get()
            if not hook:
                self._hook_done(uuid, power, ok=True)
                continue
            argv = [*hook, name, power]
            try:
                rc = subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=timeout, check=False).returncode
            except (OSError, subprocess.SubprocessError) as e:
                self._logger.error("power hook %s failed: %s", argv, e)
                self._hook_done(uuid, power, ok=False)
                continue
            if rc:
                self._logger.error("power hook %s exited with status %d", argv, rc)
            else:
                self._logger.info("power hook %s done", argv)
            self._hook_done(uuid, power, ok=rc == 0)
