#!/usr/bin/python
# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Documentation (options, examples, return values): registry_probe.yml next to this file.

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import Request, make_context

from ansible_collections.regwarden.registry.plugins.module_utils._module_result import run_and_exit
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
    run_and_exit(module, "registry_probe", lambda: probe_registry(
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
    ), count_findings, params["fail_on_findings"])


if __name__ == "__main__":
    main()
