"""The registry metrics the shipped alert rules read exist on a real distribution 2.8 registry, with
the labels the rules group by (the rules' own unit tests only see the names)."""

from __future__ import annotations

import re

import pytest
import requests

from tests.support.oci import RegistryClient, make_image
from tests.support.registry import Registry
from tests.unit.test_alert_rules import REGISTRY_METRICS

# Registry and storage behaviour, no Ansible code: once, not again per ansible-core (pyproject markers).
pytestmark = pytest.mark.no_ansible

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\} ", re.M)


def test_a_real_registry_exports_what_the_alert_rules_read(tmp_path):
    with Registry("metrics", tmp_path / "data", tmp_path, metrics=True) as registry:
        client = RegistryClient(registry.url)
        client.push("team/app", make_image("metrics"), "v1")
        assert client.pull("team/app", "v1").ok
        requests.get(registry.url + "/v2/team/app/manifests/missing", timeout=10)
        text = requests.get("http://127.0.0.1:%d/metrics" % registry.debug_port, timeout=10).text
    labels = {}
    for name, label_text in SAMPLE.findall(text):
        labels.setdefault(name, set()).update(re.findall(r'(\w+)="', label_text))
    assert set(labels) >= REGISTRY_METRICS, sorted(name for name in labels if name.startswith("registry_"))
    assert {"code", "method", "handler"} <= labels["registry_http_requests_total"]
    assert {"driver", "action", "le"} <= labels["registry_storage_action_seconds_bucket"]
    assert re.search(r'registry_http_requests_total\{code="404",handler="manifest",method="get"\} [1-9]', text)
