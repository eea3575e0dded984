"""Test helpers that drive a real CNCF distribution registry (Debian's ``docker-registry``).

Modules:

- :mod:`tests.support.registry`: start/stop/restart ``docker-registry serve`` on 127.0.0.1 with a
  temp root, run its ``garbage-collect``.
- :mod:`tests.support.oci`: build OCI/Docker images, indexes and manifest lists; push and pull
  them over the registry HTTP API.
- :mod:`tests.support.storage`: read the on-disk layout (repos, links, tags, file snapshots).
- :mod:`tests.support.damage`: break a registry the way the field does (tag rmtree, DELETE,
  ``garbage-collect --delete-untagged``, blob removal, garbage links, zero-byte data).
- :mod:`tests.support.truth`: what an HTTP client actually gets for every tag, manifest and blob.
- :mod:`tests.support.ansible_run`: run a module through the ``ansible`` CLI and parse its result.
- :mod:`tests.support.scenario`: a private registry and a pull-through cache, filled and broken in
  every way above (the integration suite's shared tree).

Import with the repository root on ``sys.path``: ``from tests.support.oci import RegistryClient``.
"""
