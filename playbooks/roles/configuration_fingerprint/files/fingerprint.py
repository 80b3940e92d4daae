"""The files aifactory's playbooks manage on a host, and whether they changed since the last run.

    python3 fingerprint.py record PATTERN...   print the record: the patterns and, for every file they
                                              match, "sha256:<hex>" (a symbolic link: "symlink:<target>")
    python3 fingerprint.py compare RECORD      print {"drifted": [...]}: "<path> (changed|added|removed)"
                                              for every file the RECORD's patterns match now that differs
                                              from it; "<RECORD> (missing)" when there is none
    python3 fingerprint.py state RECORD INPUTS SPEC
                                              write RECORD: the INPUTS digest `aifactory configure` gave,
                                              the SPEC of what to compare (JSON) and the host's state as a
                                              whole (see `state` below), for the next run to compare
    python3 fingerprint.py converged RECORD   print {"inputs": ..., "differs": [...]}: the INPUTS digest
                                              RECORD (written by `state` at the end of the last run) names,
                                              and how the host's state now differs from the state it
                                              recorded, by its own SPEC. The controller compares the
                                              digest: the SPEC follows from those inputs, so the host
                                              needs nothing from the controller: `aifactory configure`
                                              runs it over ssh (aifactory/converged.py).

A pattern is a file, a directory (every file below it) or a glob. The configuration_fingerprint role
records at the end of every run; infra/configuration.py compares over ssh on `pulumi refresh`
(`python3 - compare RECORD` with this file on stdin): one script, so both see the same files.
Standard library only: it runs on the hosts' own python3.
"""

import fnmatch
import glob
import json
import os
import stat
import subprocess
import sys

try:  # the builtin module: hashlib loads OpenSSL, a tenth of what a probe costs a host
    from _sha256 import sha256
except ImportError:  # Python 3.12 and later: hashlib's
    from hashlib import sha256


def _digest(path):
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return "symlink:" + os.readlink(path)
        if not stat.S_ISREG(st.st_mode):
            return None  # sockets, devices: nothing a playbook writes
        h = sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return "sha256:" + h.hexdigest()
    except FileNotFoundError:  # gone between listing and reading
        return None
    except OSError as e:
        return "unreadable: " + (e.strerror or type(e).__name__)


def digests(patterns):
    paths = set()
    for pattern in patterns:
        for top in glob.glob(pattern):
            if os.path.isdir(top) and not os.path.islink(top):
                for parent, dirs, names in os.walk(top):
                    # Links to directories are recorded as links, not followed.
                    paths.update(os.path.join(parent, n) for n in names + dirs)
            else:
                paths.add(top)
    files = {p: _digest(p) for p in sorted(paths) if not os.path.isdir(p) or os.path.islink(p)}
    return {p: d for p, d in files.items() if d is not None}


def compare(record_path):
    try:
        with open(record_path) as f:
            record = json.load(f)
        patterns, recorded = record["patterns"], record["files"]
    except FileNotFoundError:
        return [record_path + " (missing)"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{record_path} (unreadable: {e})"]
    now = digests(patterns)
    drifted = []
    for path in sorted(set(recorded) | set(now)):
        if path not in now:
            drifted.append(path + " (removed)")
        elif path not in recorded:
            drifted.append(path + " (added)")
        elif now[path] != recorded[path]:
            drifted.append(path + " (changed)")
    return drifted


def _run(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return "error: " + type(e).__name__


def _trees(tops):
    """Size, mtime and mode of every file below tops (binaries, image archives): a stat, no read."""
    out = {}
    for top in tops:
        for parent, _dirs, names in os.walk(top):
            for name in names:
                path = os.path.join(parent, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                out[path] = (
                    f"{st.st_size} {st.st_mtime_ns} {stat.S_IMODE(st.st_mode):o} {st.st_uid}:{st.st_gid}"
                )
    return out


# Where `systemctl enable`, `disable` and `mask` write: links in *.wants / *.requires directories,
# and masks (a unit linked to /dev/null).
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system")


def _units(patterns):
    """{unit: "active" | "inactive" | "failed" | ...} for the loaded services matching patterns, from
    `systemctl list-units`; their enablement is in _unit_links (reading it from systemd too, with
    `systemctl show`, doubled the cost of a probe on a worker)."""
    states = {}
    listed = _run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "--full", "--", *patterns])
    for line in listed.splitlines():
        fields = line.split()  # UNIT LOAD ACTIVE SUB DESCRIPTION
        if len(fields) >= 4:
            states[fields[0]] = "active" if fields[2] in ("active", "activating", "reloading") else fields[2]
    return states


def _unit_links(patterns):
    """{link: target} of the links that enable or mask the units matching patterns."""
    links = {}
    for top in UNIT_DIRS:
        parents = [top, *glob.glob(top + "/*.wants"), *glob.glob(top + "/*.requires")]
        for parent in parents:
            try:
                names = os.listdir(parent)
            except OSError:
                continue
            for name in names:
                path = os.path.join(parent, name)
                if any(fnmatch.fnmatchcase(name, p) for p in patterns) and os.path.islink(path):
                    links[path] = os.readlink(path)
    return links


def _kernel(sysctl_conf, modules_conf):
    """The live value of every setting sysctl_conf sets; whether each module modules_conf lists is loaded."""
    values, modules = {}, {}
    for path, into in ((sysctl_conf, values), (modules_conf, modules)):
        try:
            with open(path) as f:
                lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith(("#", ";"))]
        except OSError:
            continue
        for ln in lines:
            if into is values:
                key = ln.split("=", 1)[0].strip()
                try:
                    with open("/proc/sys/" + key.replace(".", "/")) as f:
                        values[key] = f.read().strip()
                except OSError as e:
                    values[key] = "unreadable: " + type(e).__name__
            else:
                modules[ln] = os.path.exists("/sys/module/" + ln.replace("-", "_"))
    return values, modules


def _ipv4(field):
    """/proc/net/route's address: 8 hex digits, least significant byte first."""
    return ".".join(str(b) for b in int(field, 16).to_bytes(4, "little"))


def _routes():
    """The main table's routes through a gateway but the default ("<net>/<bits> via <gw> dev <if>
    metric <n>"): the pod routes. From /proc, not `ip route`: a process fewer on every probe."""
    routes = []
    try:
        with open("/proc/net/route") as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError as e:
        return ["unreadable: " + type(e).__name__]
    for iface, dest, gateway, flags, _refs, _use, metric, mask, *_ in rows:
        if not int(flags, 16) & 0x2 or int(mask, 16) == 0:  # RTF_GATEWAY; the default route
            continue
        bits = bin(int(mask, 16)).count("1")
        routes.append(f"{_ipv4(dest)}/{bits} via {_ipv4(gateway)} dev {iface} metric {metric}")
    return sorted(routes)


def _slurm_nodes():
    """{node: "up" | "<state> <reason>"}: jobs coming and going (idle, mixed, allocated) are "up"."""
    nodes = {}
    for line in _run(["sinfo", "--noheader", "--Node", "--format=%N|%T|%E"]).splitlines():
        node, _, rest = line.partition("|")
        state, _, reason = rest.partition("|")
        state = state.rstrip("*~#!%$@^-")
        if state in ("idle", "mixed", "allocated", "completing"):
            nodes[node] = "up"
        else:
            nodes[node] = ("drain" if state in ("drained", "draining") else state) + " " + reason.strip()
    return nodes


def _kubernetes_nodes(api):
    """{node: [its aifactory.io/ labels, unschedulable, the cordon annotation]} from the API server."""
    import ssl  # here, on the one host that asks: importing these is a third of a worker's probe
    import urllib.request

    try:
        ctx = ssl.create_default_context(cafile=api["ca"])
        ctx.load_cert_chain(api["cert"], api["key"])
        with urllib.request.urlopen(api["url"] + "/api/v1/nodes", context=ctx, timeout=10) as r:
            items = json.load(r)["items"]
    except (OSError, ValueError, KeyError) as e:
        return {"error": type(e).__name__}
    out = {}
    for n in items:
        meta = n.get("metadata", {})
        labels = {k: v for k, v in (meta.get("labels") or {}).items() if k.startswith(api["prefix"])}
        note = (meta.get("annotations") or {}).get(api["annotation"])
        out[meta.get("name")] = [labels, bool(n.get("spec", {}).get("unschedulable")), note]
    return out


def state(spec):
    """Everything a configure run converges on this host, as one comparable document: the managed
    files (sha256), the installed binaries and archives (stat), the services' states and the links
    that enable them, the kernel settings and modules, the pod routes, and on the controllers the
    Slurm node states and the Kubernetes Nodes' pool labels and cordons."""
    sysctls, modules = _kernel(spec["sysctl_conf"], spec["modules_conf"])
    out = {
        "files": digests([os.path.expanduser(p) for p in spec["patterns"]]),
        "trees": _trees(spec["trees"]),
        "units": _units(spec["units"]),
        "unit_links": _unit_links(spec["units"]),
        "routes": _routes(),
        "sysctl": sysctls,
        "modules": modules,
    }
    if spec.get("slurm"):
        out["slurm"] = _slurm_nodes()
    if spec.get("kubernetes"):
        out["kubernetes"] = _kubernetes_nodes(spec["kubernetes"])
    return out


def converged(record_path):
    """(the inputs digest the record names, what differs from the state it recorded)."""
    try:
        with open(record_path) as f:
            record = json.load(f)
        inputs, spec, then = str(record.get("inputs") or ""), record["spec"], record["state"]
        now = state(spec)
    except FileNotFoundError:
        return "", ["no record of an earlier run"]
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:
        return "", [f"record unreadable: {type(e).__name__}: {e}"]
    differs = []
    for key in sorted(set(now) | set(then)):
        a, b = then.get(key), now.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            names = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            differs.append(f"{key}: " + ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
        else:
            differs.append(key)
    return inputs, differs


def main(argv):
    if len(argv) >= 2 and argv[0] == "record":
        out = {"patterns": argv[1:], "files": digests(argv[1:])}
    elif len(argv) == 2 and argv[0] == "compare":
        out = {"drifted": compare(argv[1])}
    elif len(argv) == 4 and argv[0] == "state":
        spec = json.loads(argv[3])
        record = {"inputs": argv[2], "spec": spec, "state": state(spec)}
        os.makedirs(os.path.dirname(argv[1]), exist_ok=True)
        with open(argv[1] + ".new", "w") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(record, f, indent=2, sort_keys=True)
        os.replace(argv[1] + ".new", argv[1])
        out = {"recorded": argv[1]}
    elif len(argv) == 2 and argv[0] == "converged":
        inputs, differs = converged(argv[1])
        out = {"inputs": inputs, "differs": differs}
    else:
        sys.stderr.write(__doc__)
        return 2
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
