#!/bin/sh
# Same dispatch as the official registry image: a config path alone means `registry serve CONFIG`,
# a registry sub-command alone is run by `registry`, anything else is run as given.
set -e

case "$1" in
    *.yaml|*.yml) set -- registry serve "$@" ;;
    serve|garbage-collect|help|-*) set -- registry "$@" ;;
esac

exec "$@"
