# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How every regwarden module takes its storage options and hands its result back to Ansible.

One argument spec for the storage options (doc fragment regwarden.registry.storage), one diff
helper, one error path: a clear fail_json for bad input or an incomplete scan (with what was
found), never a traceback.
"""

import copy
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.regwarden.registry.plugins.module_utils._driver import DEFAULT_MAX_FINDINGS
from ansible_collections.regwarden.registry.plugins.module_utils._registry_http import ProbeError
from ansible_collections.regwarden.registry.plugins.module_utils._storage import IncompleteScan, ScanError

# Bad input or a run that could not be made: a plain message, no trace.
CLEAR_ERRORS = (ScanError, ProbeError)

DEFAULT_PATH = "/opt/registry/data"

# The ``s3`` option's settings (validated by _s3_view.s3_settings, which names every bad value).
S3_OPTIONS = dict(
    endpoint_url=dict(type="str"),
    bucket=dict(type="str", required=True),
    prefix=dict(type="str", default=""),
    region=dict(type="str"),
    access_key=dict(type="str", no_log=True),
    secret_key=dict(type="str", no_log=True),
    ca_bundle=dict(type="path"),
    validate_certs=dict(type="bool", default=True),
    verify_links=dict(type="bool", default=False),
    cache_dir=dict(type="path"),
    workers=dict(type="int"),
)


def storage_argument_spec(fail_on_findings=True, **options):
    """The options every storage module shares, plus the module's own ``options``."""
    spec = dict(
        path=dict(type="path", default=DEFAULT_PATH),
        storage=dict(type="str", default="filesystem", choices=["filesystem", "s3"]),
        s3=dict(type="dict", options=S3_OPTIONS),
        allow_incomplete=dict(type="bool", default=False),
        max_findings=dict(type="int", default=DEFAULT_MAX_FINDINGS),
    )
    if fail_on_findings:
        spec["fail_on_findings"] = dict(type="bool", default=False)
    spec.update(options)
    return spec


def storage_module(fail_on_findings=True, **options):
    """The AnsibleModule of a storage module: the shared options, the module's own, check mode."""
    return AnsibleModule(argument_spec=storage_argument_spec(fail_on_findings, **options), supports_check_mode=True,
                         required_if=[("storage", "s3", ("s3",))])


def storage_of(params):
    """What the analyses scan: the ``path`` (filesystem) or an S3 backend built from ``s3``.

    Called inside the module's scan, so a bad S3 setting is a clear failure (ScanError).
    """
    if params["storage"] != "s3":
        return params["path"]
    from ansible_collections.regwarden.registry.plugins.module_utils._s3_view import S3Storage

    return S3Storage(params["s3"])


def scan_options(module):
    """The keyword arguments every analysis takes from the shared options and check mode."""
    params = module.params
    return {"check_mode": module.check_mode, "allow_incomplete": params["allow_incomplete"],
            "max_findings": params["max_findings"]}


def lines_diff(header, removed=(), added=()):
    """A diff of what a run removed (before) and wrote (after), one entry a line; None when nothing."""
    if not removed and not added:
        return None
    return {
        "before_header": header,
        "after_header": header,
        "before": "".join("%s\n" % line for line in removed),
        "after": "".join("%s\n" % line for line in added),
    }


def run_and_exit(module, fact_name, scan, count_findings=None, fail_on_findings=False, diff=None):
    """Run ``scan()`` (returning a result) and exit: every module's one way out.

    ``count_findings(result)``: how many findings the result holds (None: a writer with no
    findings of its own); ``diff(result)``: the diff when run with --diff.
    """
    try:
        result = scan()
    except IncompleteScan as exc:
        _fail(module, fact_name, str(exc) + " (set allow_incomplete: true to report it instead)", exc.result)
    except CLEAR_ERRORS as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # a state no rule foresaw: a clear failure, with the trace for a bug report
        module.fail_json(msg="internal error: %s: %s" % (type(exc).__name__, exc), exception=traceback.format_exc())
    findings = count_findings(result) if count_findings is not None else 0
    exit_with_facts(module, fact_name, result, findings, fail_on_findings,
                    diff(result) if diff is not None and module._diff else None)


def _fail(module, fact_name, message, result):
    result = dict(result)
    changed = bool(result.pop("changed", False))
    module.fail_json(msg=message, changed=changed, ansible_facts={fact_name: copy.deepcopy(result)}, **result)


def exit_with_facts(module, fact_name, result, findings, fail_on_findings, diff=None):
    """Exit with the result at top level and under ansible_facts.<fact_name>.

    ``fail_on_findings`` fails the task when ``findings`` > 0, keeping the findings in the result.
    """
    result = dict(result)
    changed = bool(result.pop("changed", False))
    facts = copy.deepcopy(result)
    extra = {"ansible_facts": {fact_name: facts}}
    if diff is not None:
        extra["diff"] = diff
    if fail_on_findings and findings:
        module.fail_json(
            msg="%d finding(s) in %s; see the result lists" % (findings, ", ".join(result["registries"])),
            changed=changed,
            findings=findings,
            **dict(result, **extra)
        )
    module.exit_json(changed=changed, findings=findings, **dict(result, **extra))
