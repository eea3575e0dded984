# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Relink orphan image-index children whose content is intact, so no rebuild is needed.

A child is repairable when its manifest blob is present and hashes to its digest, it is an
image manifest, and its config and every layer have data. Then the missing links (its
revision link and the repository's _layers links for its blobs) are written, exactly the
files a push would have created. Anything else is marked ``rebuild_required``; an invalid
link file is never overwritten (someone should look at it).
"""


from ansible_collections.regwarden.registry.plugins.module_utils._manifest import InvalidManifest
from ansible_collections.regwarden.registry.plugins.module_utils._repository import UnreadableManifest
from ansible_collections.regwarden.registry.plugins.module_utils._storage import (
    DATA_EMPTY,
    EMPTY_SHA256,
    LINK_INVALID,
    LINK_MISSING,
    LINK_UNREADABLE,
    digest_of,
)
from ansible_collections.regwarden.registry.plugins.module_utils._writer import WriteRefused

REPAIRABLE = "repairable"  # found by a plain audit (repair off)
WOULD_REPAIR = "would repair"  # check mode
REPAIRED = "repaired"
NOT_REPAIRED = "not repaired"

_LINK_PARTS = {
    "layer": ("_layers", "sha256"),
    "revision": ("_manifests", "revisions", "sha256"),
}


class ChildRepair:
    """Outcome for one child digest in one repository."""

    __slots__ = ("links", "reason", "rebuild_required", "status", "written")

    def __init__(self, status, reason, rebuild_required, links=()):
        self.status = status
        self.reason = reason
        self.rebuild_required = rebuild_required
        self.links = list(links)
        self.written = []


def plan_child_repair(repo, cache, blobs, child_hex):
    """ChildRepair with status REPAIRABLE and the links to write, or NOT_REPAIRED and why."""
    revision_state, _reason = repo.revision_state(child_hex)
    if revision_state == LINK_INVALID:
        return ChildRepair(NOT_REPAIRED, "the child's revision link file is invalid; inspect it by hand", False)
    if revision_state == LINK_UNREADABLE:
        return ChildRepair(NOT_REPAIRED, "the child's revision link could not be read (see scan_errors)", False)
    manifest = cache.get(child_hex)
    if manifest is cache.GONE:
        return ChildRepair(NOT_REPAIRED, "manifest blob data gone", True)
    if isinstance(manifest, UnreadableManifest):
        return ChildRepair(NOT_REPAIRED, "%s; not judged" % manifest, False)
    if isinstance(manifest, InvalidManifest):
        return ChildRepair(NOT_REPAIRED, "manifest content invalid: %s" % manifest, True)
    if not manifest.intact:
        return ChildRepair(NOT_REPAIRED, "manifest blob does not hash to its digest", True)
    if manifest.is_index:
        return ChildRepair(NOT_REPAIRED, "the child is itself an index; not relinked", True)
    links = []
    if revision_state == LINK_MISSING:
        links.append(("revision", child_hex, repo.revision_path(child_hex)))
    for blob_hex, kind in manifest.blobs:
        state = blobs.data_state(blob_hex)
        if state < 0 or (state == DATA_EMPTY and blob_hex != EMPTY_SHA256):
            return ChildRepair(NOT_REPAIRED, "%s %s data gone" % (kind, digest_of(blob_hex)), True)
        link_state, _reason = repo.layer_state(blob_hex)
        if link_state == LINK_INVALID:
            return ChildRepair(NOT_REPAIRED, "the _layers link of %s %s is invalid; inspect it by hand"
                               % (kind, digest_of(blob_hex)), False)
        if link_state == LINK_UNREADABLE:
            return ChildRepair(NOT_REPAIRED, "the _layers link of %s %s could not be read (see scan_errors)"
                               % (kind, digest_of(blob_hex)), False)
        if link_state == LINK_MISSING and ("layer", blob_hex) not in [(k, h) for k, h, _path in links]:
            links.append(("layer", blob_hex, repo.layer_path(blob_hex)))
    return ChildRepair(REPAIRABLE, None, False, links)


def _write_links(repo, plan, writer):
    """Write (or check) the planned links, revision link last so the child is served only once
    complete; the paths done go to ``plan.written``. WriteRefused/OSError stop at the first failure."""
    ordered = ([link for link in plan.links if link[0] == "layer"]
               + [link for link in plan.links if link[0] == "revision"])
    for kind, hex_digest, path in ordered:
        parts = _LINK_PARTS[kind] + (hex_digest,)
        if writer.write_link(repo.write_base, parts, hex_digest):
            plan.written.append(path)
        if writer.apply:
            repo.mark_linked(kind, hex_digest)


def apply_child_repair(repo, plan, writer):
    """Check every planned link, then (``writer.apply``) write them; sets the plan's status.

    Nothing is written when any link would be refused (a symlinked directory, an invalid
    link file in the way): check mode and the real run refuse the same children.
    """
    try:
        _write_links(repo, plan, writer.checking())
    except (WriteRefused, OSError) as exc:
        plan.status = NOT_REPAIRED
        plan.reason = "not relinked: %s" % _text(exc)
        plan.written = []
        return plan
    if not writer.apply:
        plan.status = WOULD_REPAIR
        return plan
    plan.written = []
    try:
        _write_links(repo, plan, writer)
    except (WriteRefused, OSError) as exc:
        plan.status = NOT_REPAIRED
        plan.reason = "relinking failed after %d of %d links: %s" % (len(plan.written), len(plan.links), _text(exc))
        return plan
    plan.status = REPAIRED
    return plan


def _text(exc):
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def repair_children(repo, cache, blobs, findings, writer):
    """Plan repairs for one repository's orphan-child findings; apply them through ``writer``.

    ``writer`` None: a plain audit (each finding says whether it is repairable); a check-mode
    writer plans and checks; a real one writes. Annotates each finding with ``repair``,
    ``rebuild_required`` and ``repair_reason``; returns the paths of the links written (or, in
    check mode, that would be written). A child that could not be relinked is also a scan error.
    """
    outcomes = {}
    written = []
    for finding in findings:
        child_hex = finding["child_digest"][len("sha256:"):]
        outcome = outcomes.get(child_hex)
        if outcome is None:
            outcome = plan_child_repair(repo, cache, blobs, child_hex)
            if outcome.status == REPAIRABLE and writer is not None:
                apply_child_repair(repo, outcome, writer)
                if outcome.status == NOT_REPAIRED:
                    repo.errors.add(repo.revision_path(child_hex), outcome.reason)
                written.extend(outcome.written)
            outcomes[child_hex] = outcome
        finding["repair"] = outcome.status
        finding["rebuild_required"] = outcome.rebuild_required
        finding["repair_reason"] = outcome.reason
    return written
