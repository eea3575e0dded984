# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Relink orphan image-index children whose content is intact, so no rebuild is needed.

A child is repairable when its manifest blob is present and hashes to its digest, it is an
image manifest, and its config and every layer have data. Then the missing links (its
revision link and the repository's _layers links for its blobs) are written, exactly the
files a push would have created. Anything else is marked ``rebuild_required``; an invalid
link file is never overwritten (someone should look at it).
"""


from ansible_collections.regwarden.registry.plugins.module_utils._manifest import (
    InvalidManifest,
)
from ansible_collections.regwarden.registry.plugins.module_utils._storage import (
    DATA_EMPTY,
    EMPTY_SHA256,
    LINK_INVALID,
    LINK_MISSING,
    close_fd,
    digest_of,
    make_dirs_at,
    write_link_at,
)

REPAIRABLE = "repairable"  # found by a plain audit (repair off)
WOULD_REPAIR = "would repair"  # check mode
REPAIRED = "repaired"
NOT_REPAIRED = "not repaired"


class ChildRepair:
    """Outcome for one child digest in one repository."""

    __slots__ = ("links", "reason", "rebuild_required", "status")

    def __init__(self, status, reason, rebuild_required, links=()):
        self.status = status
        self.reason = reason
        self.rebuild_required = rebuild_required
        self.links = list(links)


def plan_child_repair(repo, cache, blobs, child_hex):
    """ChildRepair with status REPAIRABLE and the links to write, or NOT_REPAIRED and why."""
    revision_state, _reason = repo.revision_state(child_hex)
    if revision_state == LINK_INVALID:
        return ChildRepair(NOT_REPAIRED, "the child's revision link file is invalid; inspect it by hand", False)
    manifest = cache.get(child_hex)
    if manifest is cache.GONE:
        return ChildRepair(NOT_REPAIRED, "manifest blob data gone", True)
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
        if link_state == LINK_MISSING and ("layer", blob_hex) not in [(k, h) for k, h, _path in links]:
            links.append(("layer", blob_hex, repo.layer_path(blob_hex)))
    return ChildRepair(REPAIRABLE, None, False, links)


def apply_child_repair(repo, plan):
    """Write the planned links (revision link last, so the child is served only once complete)."""
    ordered = ([link for link in plan.links if link[0] == "layer"]
               + [link for link in plan.links if link[0] == "revision"])
    for kind, hex_digest, _path in ordered:
        parts = ("_layers", "sha256", hex_digest) if kind == "layer" else \
            ("_manifests", "revisions", "sha256", hex_digest)
        fd = make_dirs_at(repo.fd, parts)
        try:
            write_link_at(fd, hex_digest)
        finally:
            close_fd(fd)
        repo.mark_linked(kind, hex_digest)
    plan.status = REPAIRED
    return plan


def repair_children(repo, cache, blobs, findings, mode):
    """Plan repairs for one repository's orphan-child findings; apply them when mode is "apply".

    ``mode``: "report" (plain audit), "check" (repair in check mode) or "apply". Annotates each
    finding with ``repair``, ``rebuild_required`` and ``repair_reason``; returns the paths of
    the links written (or, in check mode, that would be written).
    """
    outcomes = {}
    written = []
    for finding in findings:
        child_hex = finding["child_digest"][len("sha256:"):]
        outcome = outcomes.get(child_hex)
        if outcome is None:
            outcome = plan_child_repair(repo, cache, blobs, child_hex)
            if outcome.status == REPAIRABLE and mode != "report":
                if mode == "apply":
                    apply_child_repair(repo, outcome)
                else:
                    outcome.status = WOULD_REPAIR
                written.extend(path for _kind, _hex, path in outcome.links)
            outcomes[child_hex] = outcome
        finding["repair"] = outcome.status
        finding["rebuild_required"] = outcome.rebuild_required
        finding["repair_reason"] = outcome.reason
    return written
