from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def write_site(tmp_path):
    """Write a site file from YAML text and return its path."""

    def write(text: str, name: str = "site.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return write
