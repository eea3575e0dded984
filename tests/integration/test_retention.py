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


def _write_pull_log(path, pulls):
    """nginx's pull log lines (the role's log_format) for ``pulls``: [(uri path, time)]."""
    import json

    with open(path, "a") as handle:
        for uri, when in pulls:
            handle.write(json.dumps({"t": "%.3f" % when, "m": "GET", "s": "200", "u": uri}) + "\n")


def test_pulled_within_and_keep_last_pulled_keep_what_clients_use_through_gc(tmp_path):
    """An index kept by a pull of one platform's child by digest pulls whole after GC; a tag neither
    pulled recently nor among the last pulled is gone."""
    from tests.support.ansible_run import run_module as run

    with Registry("private", tmp_path / "data", tmp_path) as registry:
        client = RegistryClient(registry.url)
        now = time.time()
        tags = ["child-pulled", "last-pulled", "forgotten", "newest"]
        images = {}
        for tag in tags:
            images[tag] = make_multiarch("pulls-" + tag)
            client.push("team/app", images[tag], tag)
        # All pushed 60 days ago, in this order: pushes alone would keep only "newest".
        for link in (registry.v2 / "repositories" / "team" / "app").rglob("link"):
            os.utime(link, (now - 60 * DAY, now - 60 * DAY))
        for position, tag in enumerate(tags):
            link = registry.v2 / "repositories" / "team" / "app" / "_manifests" / "tags" / tag / "current" / "link"
            os.utime(link, (now - 60 * DAY + position, now - 60 * DAY + position))
        arm64 = images["child-pulled"].children[1]
        logs, records = tmp_path / "logs", tmp_path / "records"
        logs.mkdir()
        _write_pull_log(logs / "private.log", [
            ("/v2/team/app/manifests/forgotten", now - 50 * DAY),
            ("/v2/team/app/manifests/last-pulled", now - 40 * DAY),
        ])
        # Recording began 45 days ago (the first fold), then one platform was pulled by digest yesterday.
        from ansible_collections.regwarden.registry.plugins.module_utils import _pull_records

        _pull_records.fold(str(logs), str(records), "private", now=now - 45 * DAY)
        _write_pull_log(logs / "private.log", [("/v2/team/app/manifests/" + arm64.digest, now - DAY)])
        _pull_records.fold(str(logs), str(records), "private", now=now)
        args = {"path": str(tmp_path / "data"), "keep": 1, "pulled_within": 30 * DAY, "keep_last_pulled": 2,
                "pull_records": str(records), "delete_untagged": True, "grace_period": 0}
        checked = run("regwarden.registry.registry_tag_cleanup", args, check=True)
        assert not checked.failed, checked.result
        # last-pulled: not within 30 days, but one of the 2 last pulled (with child-pulled).
        assert [f["tag"] for f in checked.result["removed_tags"]] == ["forgotten"]
        assert client.tags("team/app") == sorted(tags)
        run_result = run("regwarden.registry.registry_tag_cleanup", args)
        assert not run_result.failed and run_result.result["changed"], run_result.result
        registry.stop()
        registry.garbage_collect()
        registry.start()
        assert client.tags("team/app") == ["child-pulled", "last-pulled", "newest"]
        for tag in ("child-pulled", "last-pulled", "newest"):
            report = client.pull("team/app", tag)
            assert report.ok and report.digest == images[tag].digest, (tag, report.problems)
        # Both platforms of the index kept by one child's pull, by digest too.
        for child in images["child-pulled"].children:
            assert client.pull("team/app", child.digest).ok
        gone = images["forgotten"].children[0].blobs[-1].digest
        assert not (registry.v2 / "blobs" / "sha256" / gone[7:9] / gone[7:] / "data").exists()

        # Without pull records the rule is refused, naming the file; nothing changes.
        refused = run("regwarden.registry.registry_tag_cleanup", dict(args, pull_records=str(tmp_path / "none")))
        assert refused.failed and "no pull records for registry private" in refused.result["msg"], refused.result
