"""The VM's scan over a host with registries on disk and in a bucket: one run of the CLI reads the
filesystem ones under --path and the --s3-registries from the bucket, and writes one report and one
textfile (node_exporter refuses a metric family split over files) with both, findings from each."""

from __future__ import annotations

import json

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils import _cli
from tests.support.oci import RegistryClient, make_image
from tests.support.registry import Registry
from tests.support.seaweed import S3Target, SeaweedS3

# Registry and storage behaviour, no Ansible code: once, not again per ansible-core (pyproject markers).
pytestmark = pytest.mark.no_ansible


def orphan(registry, image):
    """Delete one layer's data: the link stays, an orphan layer link."""
    layer = image.blobs[-1].digest
    (registry.v2 / "blobs" / "sha256" / layer[7:9] / layer[7:] / "data").unlink()
    return layer


def test_one_scan_of_registries_on_disk_and_in_a_bucket(tmp_path):
    data = tmp_path / "data"
    with SeaweedS3(tmp_path / "seaweed") as server:
        server.create_bucket("registries")
        target = S3Target(server, "registries", "vm")
        with Registry("private", tmp_path / "unused", tmp_path / "s3work", s3=target) as in_bucket, \
                Registry("dockerhub", data, tmp_path / "fswork") as on_disk:
            s3_image, fs_image = make_image("mixed-s3"), make_image("mixed-fs")
            RegistryClient(in_bucket.url).push("team/app", s3_image, "v1")
            RegistryClient(on_disk.url).push("library/app", fs_image, "v1")
            s3_orphan, fs_orphan = orphan(in_bucket, s3_image), orphan(on_disk, fs_image)
        config = tmp_path / "s3.json"
        config.write_text(json.dumps(target.settings(cache_dir=str(tmp_path / "cache"))))
        config.chmod(0o600)
        report, prom = tmp_path / "scan.json", tmp_path / "scan.prom"
        status = _cli.main(["scan", "--path", str(data), "--s3-config", str(config), "--s3-registries", "private",
                            "--index-registries", "private", "--expect-registries", "private,dockerhub",
                            "--capacity", "--report", str(report), "--prom", str(prom)])
    assert status == _cli.EXIT_FINDINGS
    document = json.loads(report.read_text())
    blob = document["blob_scan"]
    assert blob["registries"] == ["dockerhub", "private"]
    assert sorted((f["registry"], f["digest"]) for f in blob["orphan_layer_links"]) == sorted(
        [("dockerhub", fs_orphan), ("private", s3_orphan)])
    assert [f["path"].startswith("s3://") for f in sorted(blob["orphan_layer_links"], key=lambda f: f["registry"])] \
        == [False, True]
    assert sorted(blob["capacity"]) == ["dockerhub", "private"]
    assert document["index_audit"]["registries"] == ["private"]
    assert document["incomplete_registries"] == [] and document["scan_errors"] == []
    assert document["s3"].startswith("s3://registries/vm")
    text = prom.read_text()
    assert text.count("# TYPE regwarden_scan_findings gauge") == 1
    assert 'regwarden_scan_findings{registry="dockerhub",kind="orphan_layer_links"} 1' in text
    assert 'regwarden_scan_findings{registry="private",kind="orphan_layer_links"} 1' in text
    assert "regwarden_scan_success 1" in text


def test_s3_registries_with_storage_s3_is_a_clear_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "s3.json"
    config.write_text(json.dumps({"bucket": "registries", "endpoint_url": "http://127.0.0.1:9"}))
    status = _cli.main(["scan", "--path", str(data), "--s3-config", str(config), "--s3-registries", "private",
                        "--storage", "s3", "--report", str(tmp_path / "r.json")])
    assert status == _cli.EXIT_ERROR
    assert "--s3-registries names the registries of a filesystem scan" in json.loads(
        (tmp_path / "r.json").read_text())["error"]
