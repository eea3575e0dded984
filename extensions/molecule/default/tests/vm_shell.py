"""Commands in the VM through testinfra's ``host``, for every scenario's tests (the s3 scenario
imports this file from here, as it does registry_client.py)."""

import time


class VMShell:
    def __init__(self, host, project):
        self.host = host
        self.project = project

    def run(self, command, *args):
        """host.run with every argument shell-quoted (testinfra wants strings: use %s only)."""
        return self.host.run(command, *[str(arg) for arg in args])

    def unit_property(self, unit, name):
        return self.check("systemctl show --property %s --value %s", name, unit).strip()

    def start_and_wait(self, unit, timeout=600):
        """`systemctl start` of a oneshot unit returns when it finished: (the run, the unit's Result)."""
        result = self.run("timeout %s systemctl start %s", timeout, unit)
        return result, self.unit_property(unit, "Result")

    def check(self, command, *args):
        result = self.run(command, *args)
        assert result.rc == 0, "%s failed (%d): %s %s" % (result.command, result.rc, result.stdout, result.stderr)
        return result.stdout

    def container(self, service):
        """The one container of a Compose service of the stack, running or not."""
        name = self.check(
            "docker ps -a --filter label=com.docker.compose.project=%s "
            "--filter label=com.docker.compose.service=%s --format '{{.Names}}'",
            self.project, service,
        ).strip()
        assert name and "\n" not in name, "not one container for Compose service %s: %r" % (service, name)
        return name

    def wait_until(self, what, predicate, timeout=180, interval=3):
        deadline = time.monotonic() + timeout
        while True:
            last = predicate()
            if last:
                return last
            if time.monotonic() > deadline:
                raise AssertionError("timed out after %ds waiting for %s" % (timeout, what))
            time.sleep(interval)
