"""BMC credentials by reference: site files name a reference, the secret lives in the store.

The store is a directory of `<ref>.json` files ({"username", "password"}), mode 0600, outside the
repository (AIFACTORY_CREDENTIALS_DIR moves it). Pulumi reads them into secret outputs; nothing
else prints them.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass

from aifactory import paths


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never leak the password into logs or tracebacks
        return f"Credentials(username={self.username!r}, password=***)"


class MissingCredentials(LookupError):
    pass


def load(ref: str) -> Credentials:
    path = paths.credentials_dir() / f"{ref}.json"
    try:
        data = json.loads(path.read_text())
        return Credentials(str(data["username"]), str(data["password"]))
    except FileNotFoundError:
        raise MissingCredentials(
            f"no credentials {ref!r}: create {path} with username and password"
        ) from None
    except (ValueError, KeyError) as e:
        raise MissingCredentials(
            f"credentials file {path} is not JSON with username and password: {e}"
        ) from None


def ensure(ref: str, username: str = "admin") -> Credentials:
    """Load the credentials, generating a random password the first time (emulated BMCs)."""
    try:
        return load(ref)
    except MissingCredentials:
        pass
    creds = Credentials(username, secrets.token_urlsafe(18))
    d = paths.credentials_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = d / f"{ref}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"username": creds.username, "password": creds.password}, f)
    return creds
