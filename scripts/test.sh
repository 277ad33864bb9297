#!/usr/bin/env bash
# Creates .venv if absent, installs the project with [dev], and runs the test suite.
# Extra arguments go to pytest, e.g.  scripts/test.sh -k eval -x
. "$(dirname "$0")/_env.sh"
exec python -m pytest -q -ra "$@"
