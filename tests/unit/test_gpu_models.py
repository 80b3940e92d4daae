"""Every GPU model a site may declare is one the emulated hardware can show and the roles can read."""

import re

import pytest
import yaml

from aifactory.site.gpus import GPU_MODELS
from sandbox.hardware import PRODUCTS
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def test_the_emulated_driver_names_every_model_and_the_role_reads_it_back():
    defaults = yaml.safe_load((REPO / "playbooks/roles/k8s_worker/defaults/main.yml").read_text())
    role_models = defaults["k8s_worker_gpu_models"]
    assert set(PRODUCTS) == set(GPU_MODELS) == set(role_models)
    for model, product in PRODUCTS.items():
        # the role's reading (vars/main.yml): the first token of the product that is a model name
        tokens = re.findall("[a-z0-9]+", product.lower())
        assert next(t for t in tokens if t in role_models) == model, product
