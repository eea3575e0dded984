"""registry_probe, run through ``ansible``, against real registries (Debian's docker-registry).

- The shared damaged tree (:mod:`tests.support.scenario`, restarted): every unfetchable
  reference the probe reports equals, both ways, what a plain HTTP client gets for the same
  references (:mod:`tests.support.truth`): tags, tagged manifests by digest, children of tagged
  indexes, configs and layers of what a tag pulls.
- A private registry over TLS (self-signed, ``ca_path``) with bcrypt htpasswd users, damaged
  while it serves (descriptor cache warm, no restart): the probe with ``verify_blobs`` finds the
  blobs that answer 200 with a full Content-Length and no body; a HEAD does not. Wrong or missing
  credentials, an untrusted certificate and a closed port are clear failures.
- A registry with the Bearer token flow (``auth.token``, a test token server): tokens fetched
  with the user's password, cached per scope; a bad password or a missing scope fail clearly.
- ``playbooks/verify_image.yml`` through ``ansible-playbook``: a healthy tag passes, a damaged
  or missing one fails and names what is broken.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from ansible_collections.regwarden.registry.plugins.module_utils._probe import probe_registry
from ansible_collections.regwarden.registry.plugins.module_utils._registry_http import (
    ProbeError,
    urllib_transport,
)
from ansible_collections.regwarden.registry.plugins.modules.registry_probe import ansible_transport
from tests.support import damage, storage, truth
from tests.support.ansible_run import REPO_ROOT, run_module, run_playbook
from tests.support.auth import TokenServer, self_signed_pair, write_htpasswd
from tests.support.oci import Manifest, RegistryClient, make_image, make_multiarch
from tests.support.registry import Registry, free_port

MODULE = "regwarden.registry.registry_probe"
USER, PASSWORD = "ci", "pr0be-s3cret"


# -- what a client gets, from the truth survey ------------------------------------------------


def expected_findings(t: truth.RegistryTruth, verify_blobs: bool) -> dict[tuple, truth.Probe]:
    """(repo, tag, digest, kind) -> the failing GET, for every reference a client walking the
    tags reaches. Without ``verify_blobs`` the probe sends a HEAD: it cannot see a body that
    does not hash (corrupt) or does not come (short)."""
    found: dict[tuple, truth.Probe] = {}
    tag_targets: set[tuple[str, str]] = set()
    for (repo, tag), probe in t.tags.items():
        if not probe.ok:
            found[(repo, tag, probe.served_digest, "manifest")] = probe
            continue
        tag_targets.add((repo, probe.served_digest))
        by_digest = t.probes[("manifest", repo, probe.served_digest)]
        if not by_digest.ok:
            found[(repo, None, probe.served_digest, "manifest")] = by_digest
    for index in t.indexes.values():
        if not index.tags:
            continue  # an untagged index: no client reaches it by walking tags
        for child in index.children:
            if not child.probe.ok:
                kind = "manifest" if (index.repo, child.digest) in tag_targets else "index_child"
                found[(index.repo, None, child.digest, kind)] = child.probe
    head_blind = () if verify_blobs else (truth.CORRUPT, truth.SHORT)
    for blob in t.blobs.values():
        if not blob.probe.ok and blob.probe.outcome not in head_blind:
            found[(blob.repo, None, blob.digest, blob.kind)] = blob.probe
    return found


def finding_keys(result: dict) -> set[tuple]:
    return {(f["repo"], f["tag"], f["digest"], f["kind"]) for f in result["unfetchable"]}


def assert_equals_truth(result: dict, t: truth.RegistryTruth, verify_blobs: bool) -> None:
    expected = expected_findings(t, verify_blobs)
    got = finding_keys(result)
    assert got == set(expected), (
        f"missed: {sorted(set(expected) - got)}\nflagged but fine: {sorted(got - set(expected))}")
    assert len(result["unfetchable"]) == len(expected)
    for finding in result["unfetchable"]:
        probe = expected[(finding["repo"], finding["tag"], finding["digest"], finding["kind"])]
        assert finding["status"] == probe.status, (finding, probe)
        assert finding["reason"]
        if probe.status == 200 and (verify_blobs or finding["kind"] not in ("config", "layer")):
            assert (finding["bytes_announced"], finding["bytes_received"]) == (probe.announced, probe.received)


def probe_args(registry: Registry, **extra) -> dict:
    return {"url": registry.url, **extra}


def probe_in_process(url, *, validate_certs=True, ca_path=None, timeout=5.0, **options):
    """The module's own transport (ansible.module_utils.urls) and walker, without the process
    start of an ansible run: for the failure modes, which need no module plumbing again."""
    return probe_registry(ansible_transport(validate_certs, ca_path, timeout), url, **options)


# -- the shared damaged tree, restarted ---------------------------------------------------------


@pytest.fixture(scope="module")
def tree_probes(restarted_tree):
    """Probes of the restarted tree, made once: (registry name, verify_blobs) -> result. The
    private registry goes through ``ansible`` (the module's whole path, kept under "module");
    the other two use the module's transport in-process, to keep the suite fast."""
    private, cache = restarted_tree.scenario.private, restarted_tree.scenario.cache
    before = storage.snapshot(restarted_tree.data_dir)
    module_run = run_module(MODULE, probe_args(private, verify_blobs=True))
    assert not module_run.failed, module_run.result.get("msg")
    runs = {
        "module": module_run,
        ("private", True): module_run.result,
        ("dockerhub", True): probe_in_process(cache.url, verify_blobs=True),
        # HEAD only, with catalog pages of two repositories: pagination against the real API.
        ("private", False): probe_in_process(private.url, page_size=2, concurrency=8),
    }
    runs["disk"] = (before, storage.snapshot(restarted_tree.data_dir))
    return runs


@pytest.mark.parametrize("name", ["private", "dockerhub"])
def test_probe_equals_what_an_http_client_gets(restarted_tree, tree_probes, name):
    result = tree_probes[(name, True)]
    registry_truth = restarted_tree.truth[name]
    assert_equals_truth(result, registry_truth, verify_blobs=True)
    assert result["catalog_reachable"] is True
    counts = result["counts"]
    assert counts["repositories"] == len(storage.repositories(restarted_tree.v2(name)))
    assert counts["tags"] == len(registry_truth.tags)
    assert counts["blobs"] == len(registry_truth.blobs)
    assert counts["findings"] == len(result["unfetchable"])
    assert result["unfetchable"] == sorted(
        result["unfetchable"], key=lambda f: (f["repo"] or "", f["tag"] or "", f["digest"] or "", f["kind"]))


def test_module_result_contract(tree_probes, restarted_tree):
    run = tree_probes["module"]
    result = run.result
    facts = result["ansible_facts"]["registry_probe"]
    assert facts == {k: v for k, v in result.items()
                     if k not in ("ansible_facts", "changed", "findings", "invocation", "action") and k[0] != "_"}
    assert result["changed"] is False and result["findings"] == len(result["unfetchable"]) > 0
    assert result["url"] == restarted_tree.scenario.private.url and result["registries"] == [result["url"]]
    assert result["verify_blobs"] is True and result["duration_seconds"] > 0
    for finding in result["unfetchable"]:
        assert set(finding) == {"repo", "tag", "digest", "kind", "status", "bytes_announced", "bytes_received",
                                "reason", "tags", "parents", "platform", "attestation"}
        assert finding["tags"] == sorted(finding["tags"]) and finding["parents"] == sorted(finding["parents"])


def test_the_damaged_tree_gives_every_kind_of_finding(tree_probes, restarted_tree):
    result = tree_probes[("private", True)]
    kinds = {f["kind"] for f in result["unfetchable"]}
    assert kinds == {"manifest", "index_child", "config", "layer"}
    reasons = " | ".join(f["reason"] for f in result["unfetchable"])
    for expected in ("not found (MANIFEST_UNKNOWN", "not found (BLOB_UNKNOWN", "server error 500",
                     "empty body", "content hashes to", "registry served sha256:"):
        assert expected in reasons, expected
    # The shared amd64 child, listed by two tagged indexes, is one finding naming both.
    shared = restarted_tree.scenario.images["worker_shared"].digest
    finding, = [f for f in result["unfetchable"] if f["digest"] == shared]
    assert finding["tags"] == ["v1", "v1-debug"] and len(finding["parents"]) == 2
    assert finding["platform"] == {"os": "linux", "architecture": "amd64", "variant": None}


def test_head_probe_with_small_pages_equals_the_truth_a_head_can_see(restarted_tree, tree_probes):
    head = tree_probes[("private", False)]
    assert_equals_truth(head, restarted_tree.truth["private"], verify_blobs=False)
    full = tree_probes[("private", True)]
    repositories = full["counts"]["repositories"]
    assert head["counts"]["repositories"] == repositories > 2
    # Same walk, one HEAD per GET; the catalog took ceil(repositories / 2) pages instead of one.
    assert head["counts"]["requests"] - full["counts"]["requests"] == -(-repositories // 2) - 1
    # Only the bit-flipped layer is invisible to a HEAD (the registry never reads the bytes).
    corrupt = {f["digest"] for f in full["unfetchable"] if f["reason"].startswith("content hashes")}
    assert corrupt and finding_keys(full) - finding_keys(head) == {k for k in finding_keys(full) if k[2] in corrupt}


def test_probe_changed_nothing_on_disk(tree_probes):
    before, after = tree_probes["disk"]
    assert before == after


# -- TLS + htpasswd, damaged while serving ------------------------------------------------------


@dataclass
class Secured:
    registry: Registry
    ca: Path
    session: requests.Session
    images: dict[str, Manifest]
    truth: truth.RegistryTruth
    gone: str  # layer whose data was removed (cache still warm)
    zeroed: str  # layer truncated to 0 bytes
    deleted_child: str

    def args(self, **extra) -> dict:
        return {"url": self.registry.url, "username": USER, "password": PASSWORD,
                "ca_path": str(self.ca), **extra}


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    base = tmp_path_factory.mktemp("probe-tls")
    cert, key = self_signed_pair(base / "tls")
    htpasswd = write_htpasswd(base / "htpasswd", {USER: PASSWORD, "other": "x"})
    registry = Registry("private", base / "data", base / "work", tls=(cert, key), htpasswd=htpasswd)
    registry.start()
    try:
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE would override the self-signed CA
        session.auth = (USER, PASSWORD)
        session.verify = str(cert)
        client = RegistryClient(registry.url, session=session)
        images = {"app": make_multiarch(31), "tool": make_image(32, flavor="docker", layers=3),
                  "healthy": make_multiarch(33, flavor="docker")}
        client.push("team/app", images["app"], "v1")
        client.push("team/tool", images["tool"], "1")
        client.push("team/healthy", images["healthy"], "1.0")
        for repo, tag in (("team/app", "v1"), ("team/tool", "1"), ("team/healthy", "1.0")):
            assert client.pull(repo, tag).ok  # clients pulled: the descriptor cache is warm
        app, tool = images["app"], images["tool"]
        gone = app.children[0].layers[0].digest
        damage.remove_blob_data(registry, gone)
        damage.zero_blob_data(registry, tool.layers[0].digest)
        damage.corrupt_blob_data(registry, tool.layers[1].digest, offset=50)
        # damage.api_delete_manifest's client has no credentials: the same DELETE, authenticated.
        client.delete_manifest("team/app", app.children[1].digest)
        registry_truth = truth.survey(client, registry.v2, registry.name)
        yield Secured(registry, cert, session, images, registry_truth, gone, tool.layers[0].digest,
                      app.children[1].digest)
    finally:
        registry.stop()


def test_warm_cache_zero_byte_blobs_are_found_over_tls_with_basic_auth(secured):
    run = run_module(MODULE, secured.args(verify_blobs=True))
    assert not run.failed, run.result.get("msg")
    assert_equals_truth(run.result, secured.truth, verify_blobs=True)
    by_digest = {f["digest"]: f for f in run.result["unfetchable"]}
    # The registry still announces the full size and sends nothing: only a GET shows it.
    for digest, image in ((secured.gone, secured.images["app"].children[0]), (secured.zeroed, secured.images["tool"])):
        size = next(b.size for b in image.blobs if b.digest == digest)
        finding = by_digest[digest]
        assert (finding["status"], finding["bytes_announced"], finding["bytes_received"]) == (200, size, 0), finding
        assert finding["reason"] == f"short body: 0 of {size} announced bytes received"
    assert by_digest[secured.deleted_child]["kind"] == "index_child"
    assert by_digest[secured.deleted_child]["status"] == 404
    assert not [f for f in run.result["unfetchable"] if f["repo"] == "team/healthy"]
    assert PASSWORD not in run.stdout + run.stderr


def test_a_head_alone_misses_what_the_warm_cache_hides(secured):
    """Why ``verify_blobs`` exists: HEAD answers 200 with the full length for the blob whose
    data is gone, and for the one truncated to 0 bytes."""
    result = probe_in_process(secured.registry.url, ca_path=str(secured.ca), username=USER, password=PASSWORD)
    flagged = {f["digest"] for f in result["unfetchable"]}
    assert secured.gone not in flagged and secured.zeroed not in flagged
    assert secured.deleted_child in flagged


def test_a_wrong_password_is_a_clear_failure_not_a_finding_list(secured):
    run = run_module(MODULE, secured.args(password="wrong-password"))
    assert run.failed and run.rc != 0
    assert run.result["msg"] == (f"authentication failed for {secured.registry.url} as {USER}: 401 "
                                 "(UNAUTHORIZED: authentication required)")
    assert "unfetchable" not in run.result
    assert "Traceback" not in run.stdout + run.stderr and "module_stderr" not in run.result
    for secret in ("wrong-password", PASSWORD):
        assert secret not in run.stdout + run.stderr


@pytest.mark.parametrize(("change", "message"), [
    ({"username": "nobody", "password": "x"}, "authentication failed for {url} as nobody: 401"),
    ({"username": "other", "password": PASSWORD}, "authentication failed for {url} as other: 401"),
    ({"username": None, "password": None}, "{url} requires authentication: 401"),
    ({"ca_path": None}, "cannot reach {url}: SSLCertVerificationError"),
])
def test_credentials_and_certificates_fail_clearly(secured, change, message):
    options = dict({"username": USER, "password": PASSWORD, "ca_path": str(secured.ca)}, **change)
    with pytest.raises(ProbeError) as caught:
        probe_in_process(secured.registry.url, **options)
    assert str(caught.value).startswith(message.format(url=secured.registry.url)), caught.value
    assert PASSWORD not in str(caught.value)


def test_validate_certs_false_and_an_unreachable_url(secured):
    result = probe_in_process(secured.registry.url, validate_certs=False, username=USER, password=PASSWORD,
                              repositories=["team/healthy"], verify_blobs=True)
    assert result["unfetchable"] == [] and result["counts"]["tags"] == 1
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ProbeError, match=r"cannot reach http://127\.0\.0\.1:\d+: ConnectionRefusedError"):
        probe_in_process(closed)


def test_the_stdlib_transport_sees_the_same(secured):
    """urllib_transport (for a probe run without Ansible, e.g. from a timer) against the module's."""
    options = {"username": USER, "password": PASSWORD, "verify_blobs": True}
    plain = probe_registry(urllib_transport(ca_path=str(secured.ca), timeout=5.0), secured.registry.url, **options)
    module = probe_in_process(secured.registry.url, ca_path=str(secured.ca), **options)
    for result in (plain, module):
        result.pop("duration_seconds")
    assert plain == module and plain["unfetchable"]
    with pytest.raises(ProbeError, match="CERTIFICATE_VERIFY_FAILED"):
        probe_registry(urllib_transport(timeout=5.0), secured.registry.url, **options)
    insecure = probe_registry(urllib_transport(validate_certs=False, timeout=5.0), secured.registry.url, **options)
    insecure.pop("duration_seconds")
    assert insecure == plain


def test_a_server_that_never_answers_times_out():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # connections complete in the backlog; nothing is ever read or sent
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ProbeError, match=r"cannot reach http://127\.0\.0\.1:\d+: timed out"):
            probe_in_process(url, timeout=1.0)
        assert time.monotonic() - started < 10


# -- Bearer tokens ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory):
    base = tmp_path_factory.mktemp("probe-token")
    # The token server grants pull only: fill the storage through a plain registry first.
    with Registry("private", base / "data", base / "work-plain") as plain:
        client = RegistryClient(plain.url)
        client.push("team/app", make_multiarch(41), "v1")
        client.push("team/lib", make_image(42), "1")
    users = {USER: PASSWORD, "limited": "l1m1ted"}
    with TokenServer(base / "token", users, readable={"limited": ["team/app"]}) as server, \
            Registry("private", base / "data", base / "work", token_auth=server.registry_config()) as registry:
        yield registry, server


def test_bearer_tokens_fetched_with_the_password_and_cached_per_scope(token_registry):
    registry, server = token_registry
    run = run_module(MODULE, {"url": registry.url, "username": USER, "password": PASSWORD,
                              "verify_blobs": True, "concurrency": 4})
    assert not run.failed, run.result.get("msg")
    assert run.result["unfetchable"] == [] and run.result["counts"]["tags"] == 2
    assert run.result["counts"]["blobs"] > 6
    assert sorted(server.scopes_requested()) == ["", "registry:catalog:*", "repository:team/app:pull",
                                                 "repository:team/lib:pull"]
    assert {(r["user"], r["service"], r["account"]) for r in server.requests} == {(USER, server.service, USER)}


def test_bearer_bad_password_and_missing_scope_fail_clearly(token_registry):
    registry, server = token_registry
    with pytest.raises(ProbeError) as caught:
        probe_in_process(registry.url, username=USER, password="wrong-password")
    assert str(caught.value) == (f"authentication failed for {registry.url} as {USER}: 401 from the token server "
                                 f"{server.realm} (UNAUTHORIZED: invalid credentials)")
    limited = {"username": "limited", "password": "l1m1ted"}
    assert probe_in_process(registry.url, repositories=["team/app"], **limited)["unfetchable"] == []
    with pytest.raises(ProbeError) as caught:
        probe_in_process(registry.url, repositories=["team/app", "team/lib"], **limited)
    assert str(caught.value) == (f"{registry.url} as limited is not authorized for repository:team/lib:pull "
                                 "(401 insufficient_scope)")


# -- playbooks/verify_image.yml -----------------------------------------------------------------


def verify_image(secured: Secured, repo: str, tag: str):
    return run_playbook(REPO_ROOT / "playbooks" / "verify_image.yml", {
        "registry_url": secured.registry.url, "image_repository": repo, "image_tag": tag,
        "registry_username": USER, "registry_password": PASSWORD, "registry_ca_path": str(secured.ca),
    })


def test_verify_image_passes_for_a_complete_image(secured):
    run = verify_image(secured, "team/healthy", "1.0")
    assert run.rc == 0, run.stdout[-3000:]
    probe = run.task_result("Pull team/healthy:1.0")
    assert probe["unfetchable"] == [] and probe["counts"]["tags"] == 1
    image = secured.images["healthy"]
    assert probe["counts"]["manifests"] == len(list(image.walk()))
    assert probe["counts"]["blobs"] == len({b.digest for m in image.walk() for b in m.blobs})
    assert probe["verify_blobs"] is True
    assert "pulls completely" in run.task_result("Report")["msg"]
    assert PASSWORD not in run.stdout


@pytest.mark.parametrize(("repo", "tag"), [("team/app", "v1"), ("team/healthy", "no-such-tag")])
def test_verify_image_fails_and_names_what_is_broken(secured, repo, tag):
    run = verify_image(secured, repo, tag)
    assert run.rc != 0
    probe = run.task_result(f"Pull {repo}:{tag}")
    assert probe["failed"] and probe["findings"] == len(probe["unfetchable"]) > 0
    expected = {k for k in expected_findings(secured.truth, verify_blobs=True) if k[0] == repo}
    if tag == "no-such-tag":
        expected = {(repo, tag, None, "manifest")}
    assert finding_keys(probe) == expected
    assert probe["msg"] == f"{len(expected)} finding(s) in {secured.registry.url}; see the result lists"
    assert "Report" not in [t["task"]["name"] for t in run.output["plays"][0]["tasks"]]
    assert PASSWORD not in run.stdout
