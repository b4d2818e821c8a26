"""Jobs that do not outlive their Snakemake.

Snakemake starts each job as ``bash -c "python -m vlprompt ..."``; killed with SIGKILL (or lost with its
terminal), it cannot stop them, and they would run on as orphans, writing outputs that nothing waits
for. The Snakefile puts ``<host>:<pid>`` of the snakemake process into ``$VLPROMPT_SNAKEMAKE``; a job
started with it watches that process and stops when it is gone: first as Ctrl-C would (KeyboardInterrupt
in the main thread, so temporary files are removed and checkpoints kept), then, if the main thread does
not react within ``grace_s``, at once. On a cluster each job runs under a snakemake of its own node,
which is the process watched there.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

from vlprompt.pipeline.run_registry import process_alive
from vlprompt.pipeline.workflow import PARENT_ENV

log = logging.getLogger(__name__)


def watch(pid: int, interval_s: float = 1.0, grace_s: float = 10.0) -> threading.Thread:
    """Start a daemon thread that stops this process once ``pid`` no longer exists.

    A process started in the background of a non-interactive shell (``nohup snakemake ... &`` in a script, a
    CI runner) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt: called from the main
    thread, this restores Python's handler so that the stop is still clean.
    """
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def loop():
        while process_alive(pid):
            time.sleep(interval_s)
        log.warning("snakemake (pid %d) is gone: stopping this job", pid)
        os.kill(os.getpid(), signal.SIGINT)  # a real signal also interrupts a blocking call
        time.sleep(grace_s)
        os._exit(143)

    thread = threading.Thread(target=loop, name="vlprompt-watchdog", daemon=True)
    thread.start()
    return thread


def start_from_environment() -> threading.Thread | None:
    """Watch the snakemake named in ``$VLPROMPT_SNAKEMAKE`` if it runs on this host (else do nothing)."""
    value = os.environ.get(PARENT_ENV, "")
    host, _, pid = value.rpartition(":")
    if not pid.isdigit() or host != socket.gethostname() or int(pid) == os.getpid():
        return None
    return watch(int(pid))
