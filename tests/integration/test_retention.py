"""Retention by age on the real registry: registry_tag_cleanup with ``keep`` and ``pushed_within``
through ``ansible``, then the real ``garbage-collect``: the multi-arch indexes kept by age pull whole
(every platform, every blob), the one past both rules is gone, and nothing kept lost a blob."""

from __future__ import annotations

import os
import time

from tests.support.ansible_run import run_module
from tests.support.oci import RegistryClient, make_multiarch
from tests.support.registry import Registry

DAY = 86400


def test_pushed_within_keeps_recent_indexes_whole_through_gc(tmp_path):
    with Registry("private", tmp_path / "data", tmp_path) as registry:
        client = RegistryClient(registry.url)
        now = time.time()
        ages = {"ancient": 60 * DAY, "last-month": 20 * DAY, "yesterday": 1 * DAY, "today": 0}
        images = {}
        for tag, age in ages.items():
            images[tag] = make_multiarch("retention-" + tag)
            client.push("team/app", images[tag], tag)
            link = registry.v2 / "repositories" / "team" / "app" / "_manifests" / "tags" / tag / "current" / "link"
            os.utime(link, (now - age, now - age))
        args = {"path": str(tmp_path / "data"), "keep": 1, "pushed_within": 30 * DAY, "delete_untagged": True,
                "grace_period": 0}
        checked = run_module("regwarden.registry.registry_tag_cleanup", args, check=True)
        assert not checked.failed, checked.result
        assert [(f["repo"], f["tag"]) for f in checked.result["removed_tags"]] == [("team/app", "ancient")]
        assert client.tags("team/app") == sorted(ages)  # check mode removed nothing

        run = run_module("regwarden.registry.registry_tag_cleanup", args)
        assert not run.failed and run.result["changed"], run.result
        registry.stop()
        registry.garbage_collect()
        registry.start()
        assert client.tags("team/app") == ["last-month", "today", "yesterday"]
        for tag in ("last-month", "today", "yesterday"):
            report = client.pull("team/app", tag)
            assert report.ok and report.digest == images[tag].digest, (tag, report.problems)
        assert client.get_manifest("team/app", "ancient", accept="application/vnd.oci.image.index.v1+json") \
            .status_code == 404
        # The removed index's own blobs were freed by GC.
        gone = images["ancient"].children[0].blobs[-1].digest
        assert not (registry.v2 / "blobs" / "sha256" / gone[7:9] / gone[7:] / "data").exists()
