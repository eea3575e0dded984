"""Does a pull-through cache of distribution 2.8 ever expire anything? Settled on the real registry.

The proxy scheduler keeps, per cached blob and manifest, an expiry time in ``scheduler-state.json``
at the storage root (the fixed 7-day TTL) and, when it passes, calls the local store's ``Delete``.
That ``Delete`` refuses ("unsupported") unless ``storage.delete.enabled`` is set, and the
scheduler then forgets the entry: with delete off, as the role configures caches, nothing ever
expires and a cache only grows. With delete on, expiry unlinks and deletes the blob data. The
test pulls one image through two caches, moves every expiry into the past, restarts them and
looks at what each still links.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.support.oci import RegistryClient, make_image
from tests.support.registry import Registry

# Registry and storage behaviour, no Ansible code: once, not again per ansible-core (pyproject markers).
pytestmark = pytest.mark.no_ansible

STATE_FILE = "scheduler-state.json"
WAIT_S = 30.0


def wait_for(what, predicate, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))


def parse_go_time(text: str) -> datetime:
    """Go's RFC 3339 with nanoseconds (``2026-12-10T15:04:05.123456789Z`` or ``+01:00``), to the second."""
    return datetime.fromisoformat(re.sub(r"\.\d+", "", text).replace("Z", "+00:00"))


def scheduler_state(cache: Registry) -> dict:
    path = cache.root / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def layer_links(cache: Registry, repo: str) -> set[str]:
    layers = cache.v2 / "repositories" / repo / "_layers" / "sha256"
    return {"sha256:" + link.parent.name for link in layers.glob("*/link")}


def revision_links(cache: Registry, repo: str) -> set[str]:
    revisions = cache.v2 / "repositories" / repo / "_manifests" / "revisions" / "sha256"
    return {"sha256:" + link.parent.name for link in revisions.glob("*/link")}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    base = tmp_path_factory.mktemp("expiry-upstream")
    with Registry("upstream", base / "data", base) as registry:
        image = make_image("cache-expiry", layers=2)
        RegistryClient(registry.url).push("team/app", image, "v1")
        yield registry, image


@pytest.mark.parametrize("delete_enabled", [False, True], ids=["delete-off", "delete-on"])
def test_cache_expiry_deletes_only_with_storage_delete_enabled(tmp_path, upstream, delete_enabled):
    registry, image = upstream
    blobs = {blob.digest for blob in image.blobs}
    with Registry("cache", tmp_path / "data", tmp_path, proxy_remote=registry.url,
                  delete_enabled=delete_enabled) as cache:
        report = RegistryClient(cache.url).pull("team/app", "v1")
        assert report.ok, report
        # The cache stores what it streamed in the background and saves its schedule every few seconds.
        wait_for("the cache to link every pulled blob", lambda: layer_links(cache, "team/app") >= blobs)
        state = wait_for("the scheduler to save its state",
                         lambda: (lambda s: s if len(s) == len(blobs) + 1 else None)(scheduler_state(cache)))
        expiries = {parse_go_time(entry["ExpiryData"]) for entry in state.values()}
        # The TTL is the fixed 7 days (proxy.ttl does not exist in 2.8).
        now = datetime.now(timezone.utc)
        assert all(timedelta(days=6, hours=23) < expiry - now <= timedelta(days=7) for expiry in expiries), expiries

        cache.stop()
        past = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000000000Z")
        (cache.root / STATE_FILE).write_text(json.dumps(
            {key: dict(entry, ExpiryData=past) for key, entry in state.items()}))
        cache.start()
        # Every entry fires at start-up and leaves the schedule, whatever Delete answered.
        wait_for("the expired entries to leave the schedule", lambda: scheduler_state(cache) == {} and
                 (cache.root / STATE_FILE).exists())
        log = cache.log_tail(400)
        if delete_enabled:
            wait_for("expiry to unlink the blobs", lambda: not (layer_links(cache, "team/app") & blobs))
            assert revision_links(cache, "team/app") == set()
            # Not only unlinked: the scheduler's vacuum deletes the blob data itself (every other
            # repository of the cache linking it is left with an orphan link), and the next pull
            # fetches it from upstream again.
            assert not [d for d in blobs if (cache.v2 / "blobs" / "sha256" / d[7:9] / d[7:] / "data").exists()]
            assert RegistryClient(cache.url).pull("team/app", "v1").ok
        else:
            time.sleep(2)
            assert layer_links(cache, "team/app") >= blobs, "delete off: expiry removed a link after all"
            assert image.digest in revision_links(cache, "team/app")
            assert "unsupported" in log.lower(), log
