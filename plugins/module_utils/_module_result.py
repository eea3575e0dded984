# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How every regwarden module hands its result back to Ansible."""

import copy


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
