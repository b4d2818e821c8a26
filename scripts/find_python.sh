#!/bin/sh
# Print the path of the newest Python among python3.13, python3.12, python3.11 and python3 whose version is
# one the pinned dependencies ship wheels for (the versions given as arguments); print nothing if none is.
for p in python3.13 python3.12 python3.11 python3; do
  v=$("$p" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
  for ok in "$@"; do
    if [ "$v" = "$ok" ]; then command -v "$p"; exit 0; fi
  done
done
