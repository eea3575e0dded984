"""Registries in parallel processes (_parallel): order, errors, and the fall-back to one process."""

import multiprocessing
import os
import threading

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils import _parallel
from ansible_collections.regwarden.registry.plugins.module_utils._storage import ScanError

REGISTRIES = [("a", "/x/a"), ("b", "/x/b"), ("c", "/x/c")]


def where(name, v2_root):
    return name, v2_root, os.getpid()


def die_on_b(name, v2_root):
    if name == "b":
        os._exit(3)
    return name


def fail_on_b(name, v2_root):
    if name == "b":
        raise ScanError("registry b: broken")
    return name


def test_results_come_back_in_registry_order_from_other_processes():
    results = _parallel.map_registries(where, REGISTRIES, processes=2)
    assert [(name, root) for name, root, _pid in results] == REGISTRIES
    assert os.getpid() not in {pid for _n, _r, pid in results}


def test_one_process_runs_everything_here():
    results = _parallel.map_registries(where, REGISTRIES, processes=1)
    assert {pid for _n, _r, pid in results} == {os.getpid()}


def test_a_registry_error_is_raised_to_the_caller():
    with pytest.raises(ScanError, match="registry b: broken"):
        _parallel.map_registries(fail_on_b, REGISTRIES, processes=2)


def test_no_fork_means_one_process_not_a_traceback(monkeypatch):
    def no_fork(method):
        raise ValueError("cannot find context for %r" % method)

    monkeypatch.setattr(multiprocessing, "get_context", no_fork)
    results = _parallel.map_registries(where, REGISTRIES, processes=2)
    assert {pid for _n, _r, pid in results} == {os.getpid()}


def test_a_worker_that_dies_is_a_clear_error():
    with pytest.raises(_parallel.WorkerFailed, match=r"registry b ended without a result \(exit code 3\)"):
        _parallel.map_registries(die_on_b, REGISTRIES, processes=2)


def test_the_calling_process_stays_single_threaded():
    # Workers are forked by the calling thread and read through pipes: no helper threads, so
    # nothing can hold a lock across a fork (Python 3.12+ warns when forking next to threads).
    before = threading.active_count()
    _parallel.map_registries(where, REGISTRIES, processes=2)
    assert threading.active_count() == before


def test_default_is_the_usable_cpus_capped(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert _parallel.default_processes() == _parallel.MAX_PROCESSES
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert _parallel.default_processes() == 1


def test_merge_extends_lists_and_updates_the_summary():
    whole = {"findings": [1], "summary": {"a": {"n": 1}}}
    _parallel.merge_results(whole, {"findings": [2, 3], "summary": {"b": {"n": 2}}})
    assert whole == {"findings": [1, 2, 3], "summary": {"a": {"n": 1}, "b": {"n": 2}}}
