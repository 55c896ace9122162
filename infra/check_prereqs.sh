#!/bin/sh
# Checks the machine prerequisites of `make setup` and says exactly what is missing.
PY="${1:-python3.11}"
fail=0
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "setup: $PY not found. Install Python 3.11 (e.g. apt-get install python3.11 python3.11-venv) or run: make PYTHON=/path/to/python3.11" >&2
  fail=1
elif ! "$PY" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "setup: $PY is $("$PY" --version 2>&1), Python 3.11 with the venv module is required (make PYTHON=...)." >&2
  fail=1
elif ! "$PY" -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
  echo "setup: the Python 3.11 headers (Python.h) are missing; Annoy builds from source against them (e.g. apt-get install python3.11-dev)." >&2
  fail=1
fi
# Annoy has no wheel for this platform: pip compiles it, which needs a C++ compiler.
if ! command -v "${CXX:-c++}" >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
  echo "setup: no C++ compiler found (c++ or g++). Annoy builds from source (e.g. apt-get install g++, or set CXX)." >&2
  fail=1
fi
if ! command -v java >/dev/null 2>&1; then
  echo "setup: java not found. Spark needs a Java 17 runtime (e.g. apt-get install openjdk-17-jre-headless)." >&2
  fail=1
else
  major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)
  if [ -z "$major" ] || [ "$major" -lt 17 ]; then
    echo "setup: Java $major found, Spark 4 needs Java 17 or newer." >&2
    fail=1
  fi
fi
exit $fail
