#!/usr/bin/python
# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: registry_probe
short_description: Pull every tag of a registry over its HTTP API and report what a client cannot fetch
version_added: 0.1.0
description:
  - Walks a distribution (Docker/OCI) registry over HTTP(S) the way a client pulls - the catalog
    (paginated), the tags of each repository (paginated), each tag's manifest by tag and by
    digest with the Accept headers for OCI and Docker v2 manifests, indexes and manifest lists,
    every child of every index, every config and layer.
  - Every reference that does not give a client what it asked for is listed in C(unfetchable) -
    an HTTP error, a body shorter than its Content-Length, content that does not hash to its
    digest, a manifest that does not parse, a registry that serves another digest.
  - This is the authoritative view from the API. The storage scanners
    (M(regwarden.registry.registry_blob_scan), M(regwarden.registry.registry_index_audit)) tell
    why something is broken on disk; this module tells what clients get right now.
  - Authenticates with Basic auth or the Bearer token flow, whichever the registry's
    C(WWW-Authenticate) challenge asks for; tokens are cached per scope.
  - A wrong or missing password, an unreachable URL or a TLS failure fails the task with a clear
    message; they are not reported as findings.
  - Never changes anything.
author:
  - regwarden maintainers (!UNKNOWN)
options:
  url:
    description:
      - Base URL of the registry, for example C(https://registry.example.com:5000).
      - A trailing C(/v2) is ignored.
    type: str
    required: true
  username:
    description:
      - User name for Basic auth or for the token server. Credentials are sent only when the
        registry asks for them, only to the registry's own scheme and host (never to another host
        on a redirect), and to a token server only when its realm is https or the registry's own
        scheme and host. Only http(s) is ever followed, and a redirect from https to http is refused.
      - Without it, a registry asking for a Bearer token gets one requested anonymously (as
        public registries grant pull access); one asking for Basic auth fails the task.
    type: str
  password:
    description:
      - Password for O(username).
    type: str
  repositories:
    description:
      - Repositories to probe. The default is every repository the catalog lists.
      - Tags named literally in O(tags) are fetched in these repositories even when the tag list
        does not show them, so a missing tag is reported.
    type: list
    elements: str
  tags:
    description:
      - Only probe tags matching one of these shell-style globs (C(*), C(?), C([seq])), matched
        against the whole tag name, case-sensitively. For example C(v1.*) or C(latest).
      - A tag name is always a valid glob for itself, since tags cannot contain glob characters.
      - The default probes every tag.
    type: list
    elements: str
  verify_blobs:
    description:
      - GET every config and layer, count the bytes received against Content-Length and the
        descriptor size, and check the sha256 of the content.
      - Without it each blob gets a HEAD only. A HEAD answers 200 with the full length for a blob
        whose data is gone while the registry's in-memory descriptor cache still knows it;
        only a GET shows the missing bytes.
    type: bool
    default: false
  validate_certs:
    description:
      - Verify the registry's TLS certificate.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file of the CA certificates to trust instead of the system bundle (for a registry with
        a private CA or a self-signed certificate).
    type: path
  timeout:
    description:
      - Seconds to wait for a connection or for the next bytes of an answer.
    type: float
    default: 30
  concurrency:
    description:
      - Requests in flight at the same time (a thread pool), between 1 and 64.
    type: int
    default: 4
  page_size:
    description:
      - Entries asked for per page of the catalog and of tag lists (the C(n) parameter); the module
        follows the C(Link) header to the next page. distribution 2.8 refuses more than its
        C(catalog.maxentries) (default 1000) per page.
    type: int
    default: 100
  max_entries:
    description:
      - Entries kept from one listing (the catalog, a repository's tag list). A listing cut there
        is reported as a finding; a registry that pages forever cannot exhaust memory.
    type: int
    default: 100000
  deadline:
    description:
      - Seconds the whole probe may take. Past it the task fails with a clear message, whatever
        the registry sends (slow or endless bodies, endless pagination).
      - Blob bodies are read at most to their descriptor's size + 1, whatever the server sends.
    type: float
    default: 3600
  fail_on_findings:
    description:
      - Fail the task when anything is unfetchable. The findings stay in the result.
    type: bool
    default: false
extends_documentation_fragment:
  - regwarden.registry.attributes
attributes:
  check_mode:
    support: full
    details: The module only reads.
  diff_mode:
    support: none
notes:
  - Redirects (for example to object storage) are followed; the Authorization header is dropped
    when the redirect leaves the registry's host.
  - Each blob is fetched once per repository, however many manifests reference it.
  - Each request opens its own connection. With O(verify_blobs) every layer is downloaded, so
    time and traffic grow with the size of the registry; use O(repositories) and O(tags) to probe
    one image.
seealso:
  - module: regwarden.registry.registry_index_audit
  - module: regwarden.registry.registry_blob_scan
"""

EXAMPLES = r"""
- name: Probe every tag of the private registry (HEAD for blobs)
  regwarden.registry.registry_probe:
    url: https://registry.example.com
    username: ci
    password: "{{ registry_ci_password }}"
  register: probe

- name: Verify one pushed image completely, failing the CI job on any unfetchable reference
  regwarden.registry.registry_probe:
    url: https://registry.example.com
    username: ci
    password: "{{ registry_ci_password }}"
    repositories: [team/app]
    tags: ["{{ ci_commit_sha }}"]
    verify_blobs: true
    fail_on_findings: true
  delegate_to: localhost

- name: Registry with a self-signed certificate
  regwarden.registry.registry_probe:
    url: https://127.0.0.1:5000
    ca_path: /etc/regwarden/registry-ca.pem
    tags: ["v*"]

- name: Show what clients cannot pull
  ansible.builtin.debug:
    msg: "{{ item.repo }} {{ item.tag or item.digest }} ({{ item.kind }}) {{ item.status }} {{ item.reason }}"
  loop: "{{ ansible_facts.registry_probe.unfetchable }}"
"""

RETURN = r"""
url:
  description: The registry URL probed (normalized).
  returned: success
  type: str
registries:
  description: The registry probed, as a one-element list (the same key the storage scanners return).
  returned: success
  type: list
  elements: str
catalog_reachable:
  description:
    - Whether the catalog could be listed completely. Null when O(repositories) was given (the
      catalog was not asked for).
  returned: success
  type: bool
verify_blobs:
  description: Whether blobs were downloaded and hashed (otherwise checked with HEAD).
  returned: success
  type: bool
unfetchable:
  description: Every reference a client could not fetch, sorted by repo, tag, digest and kind.
  returned: success
  type: list
  elements: dict
  contains:
    repo: {description: Repository (null for the catalog)., type: str}
    tag:
      description: The tag asked for; null for references fetched by digest.
      type: str
    digest: {description: "Digest of the reference (C(sha256:<hex>)), null when unknown.", type: str}
    kind:
      description:
        - V(manifest) (a tag, or a tag's manifest by digest), V(index_child), V(config),
          V(layer); V(catalog) or V(tag_list) when a listing failed.
      type: str
    status:
      description: The HTTP status, or the error text when no HTTP answer came.
      type: raw
    bytes_announced: {description: Content-Length of the answer (null when absent)., type: int}
    bytes_received:
      description: Body bytes received (null for a HEAD or when no answer came).
      type: int
    reason: {description: What a client got wrong., type: str}
    tags: {description: Tags whose pull needs this reference., type: list, elements: str}
    parents: {description: Digests of the manifests that reference it., type: list, elements: str}
    platform:
      description: For an index child, its C(os), C(architecture) and C(variant) (null when absent).
      type: dict
    attestation: {description: "For an index child, whether it is a build attestation.", type: bool}
counts:
  description: What the probe walked.
  returned: success
  type: dict
  sample: {repositories: 12, tags: 40, manifests: 95, blobs: 230, requests: 380,
           bytes_received: 1048576, findings: 0}
duration_seconds:
  description: Wall-clock seconds the probe took.
  returned: success
  type: float
findings:
  description: Number of unfetchable references.
  returned: always
  type: int
ansible_facts:
  description: The same result under C(registry_probe).
  returned: success
  type: dict
"""

import traceback
from functools import partial

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import Request, make_context

from ansible_collections.regwarden.registry.plugins.module_utils._module_result import (
    exit_with_facts,
)
from ansible_collections.regwarden.registry.plugins.module_utils._probe import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_PAGE_SIZE,
    count_findings,
    probe_registry,
)
from ansible_collections.regwarden.registry.plugins.module_utils._registry_http import (
    DEFAULT_DEADLINE_SECONDS,
    USER_AGENT,
    ProbeError,
    opener_transport,
)


def ansible_transport(validate_certs, ca_path, timeout):
    """A probe transport on ansible's urls: proxies from the environment, no redirects (the
    probe follows them itself and keeps credentials on the registry's host), raw bytes."""
    context = make_context(cafile=ca_path, validate_certs=validate_certs)
    request = Request(
        timeout=timeout,
        validate_certs=validate_certs,
        http_agent=USER_AGENT,
        follow_redirects="none",
        decompress=False,
        use_netrc=False,
        context=context,
    )
    return opener_transport(lambda method, url, headers: request.open(method, url, headers=headers))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            username=dict(type="str"),
            password=dict(type="str", no_log=True),
            repositories=dict(type="list", elements="str"),
            tags=dict(type="list", elements="str"),
            verify_blobs=dict(type="bool", default=False),
            validate_certs=dict(type="bool", default=True),
            ca_path=dict(type="path"),
            timeout=dict(type="float", default=30),
            concurrency=dict(type="int", default=DEFAULT_CONCURRENCY),
            page_size=dict(type="int", default=DEFAULT_PAGE_SIZE),
            max_entries=dict(type="int", default=DEFAULT_MAX_ENTRIES),
            deadline=dict(type="float", default=DEFAULT_DEADLINE_SECONDS),
            fail_on_findings=dict(type="bool", default=False),
        ),
        required_by={"password": "username"},
        supports_check_mode=True,
    )
    params = module.params
    try:
        transport = ansible_transport(params["validate_certs"], params["ca_path"], params["timeout"])
    except (OSError, ValueError) as exc:
        module.fail_json(msg="cannot load the CA certificates from %s: %s" % (params["ca_path"], exc))
    probe = partial(
        probe_registry,
        transport,
        params["url"],
        username=params["username"],
        password=params["password"],
        repositories=params["repositories"],
        tags=params["tags"],
        verify_blobs=params["verify_blobs"],
        concurrency=params["concurrency"],
        page_size=params["page_size"],
        max_entries=params["max_entries"],
        deadline=params["deadline"],
    )
    try:
        result = probe()
    except ProbeError as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # a bug must still read as a message, not a traceback
        module.fail_json(msg="registry_probe failed unexpectedly: %s: %s" % (type(exc).__name__, exc),
                         exception=traceback.format_exc())
    exit_with_facts(module, "registry_probe", result, count_findings(result), params["fail_on_findings"])


if __name__ == "__main__":
    main()
