# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scan several registries at once, one process each.

Registries share nothing on disk (each has its own blob store and repositories), so each is
scanned whole by one process and every "at most once per registry" guarantee still holds.
Threads would not help: the scans are Python between system calls, and measured with two
threads on two cores they took longer than one (the GIL changes hands at every call).

The calling thread forks every worker itself and reads their results from pipes: no helper
threads (multiprocessing.Pool keeps some, and forking next to threads can deadlock the child).
"""

import multiprocessing
import multiprocessing.connection
import os
import sys

# More than a few processes only thrash the dentry and page caches of a registry host.
MAX_PROCESSES = 4


class WorkerFailed(Exception):
    """A registry's worker process died or could not hand its result back."""


def default_processes():
    try:
        cpus = len(os.sched_getaffinity(0))  # honours taskset/cgroup CPU limits
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_PROCESSES, cpus))


def map_registries(function, registries, processes=None):
    """[function(name, v2_root) for (name, v2_root) in registries], in order.

    Up to ``processes`` (default: the usable CPUs, at most MAX_PROCESSES) run at once, each in
    a fresh forked process that ends with its registry, so its memory goes back when it is
    done. One registry, one CPU, or no fork (not Linux) runs everything in this process. The
    first exception raised for a registry is raised here, after the other workers are stopped.
    """
    count = min(processes or default_processes(), len(registries))
    context = None
    if count > 1:
        try:
            context = multiprocessing.get_context("fork")
        except ValueError:
            context = None
    if context is None:
        return [function(name, v2_root) for name, v2_root in registries]
    # A child inherits unwritten output buffers and would write them again when it exits.
    sys.stdout.flush()
    sys.stderr.flush()
    results = [None] * len(registries)
    waiting = list(enumerate(registries))
    waiting.reverse()
    running = {}  # receiving end of a worker's pipe -> (index, process)
    try:
        while waiting or running:
            while waiting and len(running) < count:
                index, (name, v2_root) = waiting.pop()
                receiver, sender = context.Pipe(duplex=False)
                try:
                    process = context.Process(target=_work, args=(sender, function, name, v2_root), daemon=True)
                    process.start()
                finally:
                    sender.close()
                running[receiver] = (index, process)
            for receiver in multiprocessing.connection.wait(list(running)):
                index, process = running.pop(receiver)
                try:
                    succeeded, value = receiver.recv()
                except EOFError:
                    process.join()
                    succeeded, value = False, WorkerFailed(
                        "the scan of registry %s ended without a result (exit code %s)"
                        % (registries[index][0], process.exitcode))
                finally:
                    receiver.close()
                process.join()
                if not succeeded:
                    raise value
                results[index] = value
    finally:
        for receiver, (_index, process) in running.items():
            process.terminate()
            process.join()
            receiver.close()
    return results


def _work(sender, function, name, v2_root):
    """A worker's body: the registry's result, or its exception, back through the pipe."""
    try:
        outcome = (True, function(name, v2_root))
    except Exception as exc:
        outcome = (False, exc)
    try:
        sender.send(outcome)
    except Exception as exc:  # an exception that does not pickle: its text still gets through
        sender.send((False, WorkerFailed("registry %s: %s" % (name, exc if outcome[0] else outcome[1]))))
    finally:
        sender.close()


def merge_results(result, part):
    """Add one registry's result to the whole: lists are extended, dicts (the summary) updated."""
    for key, value in part.items():
        if isinstance(value, list):
            result[key].extend(value)
        elif isinstance(value, dict):
            result[key].update(value)
    return result
