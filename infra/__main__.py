"""The aifactory Pulumi program: `pulumi up --stack local` deploys sites/local.yaml end to end.

Stack configuration (Pulumi.<stack>.yaml):
  aifactory:site              site file, relative to the project root (required)
  aifactory:configure         run Ansible after power-on (default true)
  aifactory:bmcTimeout        seconds per BMC request (default 10)
  aifactory:bmcRetries        retries of a BMC that does not answer (default 2)
  aifactory:bootTimeout       seconds from power-on to ssh (default 180)
  aifactory:shutdownTimeout   seconds of graceful shutdown before forcing off (default 60)
  aifactory:devicePluginImage NVIDIA device plugin image on the site's registry (real sites)
  aifactory:tenantOperatorImage  the tenant operator's image (default: the bundle's, by digest, from
                              the site registry; "none": not deployed)
  aifactory:waitForSsh        wait for ssh after power-on (default true; false for BMC-only emulation)
BMC credentials come from the credentials store by the references in the site file and are
secrets from the moment they are read.
"""

import sys
from pathlib import Path

import pulumi

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the program runs from infra/; the packages live at the root
    sys.path.insert(0, str(REPO))

from aifactory import credentials, images, toolchain  # noqa: E402
from aifactory.site.validate import SiteInvalid, load_site  # noqa: E402
from infra.machine import Timeouts  # noqa: E402
from infra.site import AiFactorySite, AiFactorySiteArgs  # noqa: E402

config = pulumi.Config("aifactory")
site_file = REPO / config.require("site")
try:
    site = load_site(site_file)
except SiteInvalid as e:
    raise pulumi.RunError(f"{site_file}: " + "; ".join(str(f) for f in e.findings)) from None

creds = {}
for ref in sorted({m.bmc.credentials for m in site.machines}):
    try:
        c = credentials.load(ref)
    except credentials.MissingCredentials as e:
        raise pulumi.RunError(str(e)) from None
    creds[ref] = (c.username, pulumi.Output.secret(c.password))

operator_image = config.get("tenantOperatorImage") or toolchain.image_ref(images.OPERATOR_REF)
kueue_image = config.get("kueueImage") or toolchain.image_ref(images.KUEUE_REF)
retries = config.get_int("bmcRetries")
timeouts = Timeouts(
    bmc_timeout=config.get_float("bmcTimeout") or 10,
    bmc_retries=2 if retries is None else retries,
    boot_timeout=config.get_float("bootTimeout") or 180,
    shutdown_timeout=config.get_float("shutdownTimeout") or 60,
    wait_ssh=config.get_bool("waitForSsh") is not False,
)
AiFactorySite(
    site.name,
    AiFactorySiteArgs(
        site,
        creds,
        timeouts,
        configure=config.get_bool("configure") is not False,
        device_plugin_image=config.get("devicePluginImage"),
        tenant_operator_image=operator_image if operator_image != "none" else None,
        kueue_image=kueue_image if kueue_image != "none" else None,
    ),
)
pulumi.export("site", site.name)
pulumi.export("machines", [m.name for m in site.machines])
pulumi.export("gpus", sum(m.gpu_count for m in site.machines))
