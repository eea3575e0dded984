# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scan several registries at once, one process each.

Registries share nothing on disk (each has its own blob store and repositories), so each is
scanned whole by one process and every "at most once per registry" guarantee still holds.
Threads would not help: the scans are Python between system calls, and measured with two
threads on two cores they took longer than one (the GIL changes hands at every call).
"""

import multiprocessing
import os

# More than a few processes only thrash the dentry and page caches of a registry host.
MAX_PROCESSES = 4


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
    done. One registry, one CPU or no fork (not Linux) runs everything in this process. An
    exception raised for a registry is raised here.
    """
    count = min(processes or default_processes(), len(registries))
    pool = None
    if count > 1:
        try:
            pool = multiprocessing.get_context("fork").Pool(count, maxtasksperchild=1)
        except (ValueError, OSError):
            pool = None  # no fork, or no semaphores (a container without /dev/shm): one at a time
    if pool is None:
        return [function(name, v2_root) for name, v2_root in registries]
    with pool:
        return pool.starmap(function, registries, chunksize=1)


def merge_results(result, part):
    """Add one registry's result to the whole: lists are extended, dicts (the summary) updated."""
    for key, value in part.items():
        if isinstance(value, list):
            result[key].extend(value)
        elif isinstance(value, dict):
            result[key].update(value)
    return result
