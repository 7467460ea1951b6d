"""Several processes, one job: JAX's multi-host runtime (``jax.distributed``) for sweeps.

A sweep's architectures are independent tasks, so the processes need only three things
from the runtime: who they are (``jax.process_index()`` of ``jax.process_count()``), a
barrier, and a coordinator that stops every process when one dies. ``jax.distributed``
gives all three and is the runtime the engine already runs on; on each host the engine
still shards its work over every local device.

* :func:`initialize` -- join a job (each process, before any JAX computation).
* :func:`barrier` -- wait until every process of the job reaches the same point.
* :func:`launch_local` -- start ``n`` worker processes on this machine and wait for them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence

from rfjax.errors import RFError, cause

BARRIER_TIMEOUT_S = 7 * 24 * 3600  # the fastest process may wait this long for the slowest


def _check(num_processes: int, process_id: int) -> None:
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise RFError(f"num_processes={num_processes!r} must be a positive int.")
    if isinstance(process_id, bool) or not isinstance(process_id, int) or not 0 <= process_id < num_processes:
        raise RFError(
            f"process_id={process_id!r} must be between 0 and {num_processes - 1} (num_processes - 1)."
        )


def initialize(coordinator: str, num_processes: int, process_id: int, *, timeout_s: int = 300) -> None:
    """Join a ``jax.distributed`` job; call it in every process before any JAX computation.

    Args:
      coordinator: ``"host:port"`` of process 0, reachable from every process.
      num_processes: how many processes the job has.
      process_id: this process, ``0 .. num_processes - 1``; process 0 hosts the coordinator.
      timeout_s: how long to wait for the others to join.
    """
    import jax

    _check(num_processes, process_id)
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise RFError(f"coordinator={coordinator!r} must look like host:port, e.g. node0:12345.")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout_s,
        )
    except RuntimeError as e:
        raise RFError(
            f"process {process_id} of {num_processes} could not join the job at {coordinator} ({cause(e)}); "
            "start every process with the same coordinator and num_processes, before any JAX computation."
        ) from e


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Wait until every process of the job has called ``barrier(name)``; no-op for one process.

    The wait happens in the coordination service of ``jax.distributed`` (the one JAX's
    own checkpointing uses), not in a device collective, so a process that finishes
    hours before the others holds no accelerator while it waits.
    """
    import jax

    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the runtime's client; no public barrier with a timeout

    try:
        client = distributed.global_state.client
        if client is None:
            raise RuntimeError("jax.distributed is not initialised")
        client.wait_at_barrier(name, int(timeout_s * 1000))
    except Exception as e:  # the runtime raises its own error types
        raise RFError(
            f"process {jax.process_index()} gave up waiting at barrier {name!r} ({cause(e)})."
        ) from e


def free_port() -> int:
    """A TCP port on this machine that nothing listens on (for a local coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch_local(
    command: Callable[[int, str], Sequence[str]],
    n: int,
    *,
    env: dict[str, str] | None = None,
    poll_s: float = 0.2,
) -> int:
    """Run ``n`` processes of one ``jax.distributed`` job on this machine and wait for them.

    Args:
      command: ``(process_id, coordinator) -> argv`` of worker ``process_id``; every
        worker must call :func:`initialize` with that coordinator, ``n`` and its id.
      n: how many workers.
      env: extra environment variables of the workers.

    Returns:
      0 when every worker succeeded, else the exit code of the first that failed (the
      others are then stopped, so none waits at a barrier for a worker that is gone).
    """
    _check(n, 0)
    coordinator = f"localhost:{free_port()}"
    worker_env = {
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        **os.environ,
        **(env or {}),
    }  # workers may share a GPU
    procs = [subprocess.Popen(list(command(k, coordinator)), env=worker_env) for k in range(n)]
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_s)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
