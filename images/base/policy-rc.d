#!/bin/sh
# Package scripts must not start services inside image builds: no init runs there.
exit 101
