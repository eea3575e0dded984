#!/usr/bin/python
# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# Documentation (options, examples, return values): registry_htpasswd.yml next to this file.

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.regwarden.registry.plugins.module_utils import _htpasswd
from ansible_collections.regwarden.registry.plugins.module_utils import _module_result as common

try:
    import bcrypt
except ImportError:
    bcrypt = None
    BCRYPT_IMPORT_ERROR = traceback.format_exc()
else:
    BCRYPT_IMPORT_ERROR = None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            users=dict(type="list", elements="dict", required=True, options=dict(
                username=dict(type="str", required=True),
                password=dict(type="str", required=True, no_log=True),
            )),
            rounds=dict(type="int", default=10),
        ),
        supports_check_mode=True,
    )
    if bcrypt is None:
        if module.check_mode:
            # A host the role has not installed python3-bcrypt on yet: nothing to compare against.
            module.exit_json(changed=True, path=module.params["path"], added=[], updated=[], removed=[],
                             warnings=["bcrypt is not installed yet: the users cannot be compared in check mode"])
        module.fail_json(msg=missing_required_lib("bcrypt (Debian: python3-bcrypt)"), exception=BCRYPT_IMPORT_ERROR)
    params = module.params
    if not 4 <= params["rounds"] <= 31:
        module.fail_json(msg="rounds must be from 4 to 31, not %d" % params["rounds"])
    names = [user["username"] for user in params["users"]]
    if len(set(names)) != len(names) or any(not name or ":" in name or "\n" in name for name in names):
        module.fail_json(msg="user names must be unique, not empty, and hold no ':' or line break")

    def sync():
        existing = _htpasswd.read_entries(params["path"])
        lines, added, updated, removed = _htpasswd.plan(bcrypt, existing, params["users"], params["rounds"])
        changed = bool(added or updated or removed)
        if changed and not module.check_mode:
            _htpasswd.write(params["path"], lines)
        return {"changed": changed, "path": params["path"], "added": added, "updated": updated, "removed": removed,
                "registries": []}

    common.run_and_exit(module, "registry_htpasswd", sync, diff=lambda result: common.lines_diff(
        "htpasswd users", removed=result["removed"] + result["updated"], added=result["added"] + result["updated"]))


if __name__ == "__main__":
    main()
