"""The files aifactory's playbooks manage on a host, and whether they changed since the last run.

    python3 fingerprint.py record PATTERN...   print the record: the patterns and, for every file they
                                              match, "sha256:<hex>" (a symbolic link: "symlink:<target>")
    python3 fingerprint.py compare RECORD      print {"drifted": [...]}: "<path> (changed|added|removed)"
                                              for every file the RECORD's patterns match now that differs
                                              from it; "<RECORD> (missing)" when there is none

A pattern is a file, a directory (every file below it) or a glob. The configuration_fingerprint role
records at the end of every run; infra/configuration.py compares over ssh on `pulumi refresh`
(`python3 - compare RECORD` with this file on stdin): one script, so both see the same files.
Standard library only: it runs on the hosts' own python3.
"""

import glob
import hashlib
import json
import os
import stat
import sys


def _digest(path):
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return "symlink:" + os.readlink(path)
        if not stat.S_ISREG(st.st_mode):
            return None  # sockets, devices: nothing a playbook writes
        h = hashlib.sha256()
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


def main(argv):
    if len(argv) >= 2 and argv[0] == "record":
        out = {"patterns": argv[1:], "files": digests(argv[1:])}
    elif len(argv) == 2 and argv[0] == "compare":
        out = {"drifted": compare(argv[1])}
    else:
        sys.stderr.write(__doc__)
        return 2
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
