"""Child processes for the tf.distribute tests: the scripts, their environment, a cluster.

Every strategy test runs in subprocesses: splitting the CPU into logical devices and
MultiWorkerMirroredStrategy's collectives must be set up before TensorFlow starts, and
a fresh process is the honest place to reload a saved model. Multi-worker tests start
two worker processes on 127.0.0.1 with their own TF_CONFIG and free ports, bounded by
timeouts, and always kill them at the end (the ``cluster`` fixture, in conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalpnet.files import FAULT_ENV

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tests" / "distributed_scripts.py"
# oneDNN's multi-threaded kernels are not bit-repeatable on a busy machine (two runs of
# the same training differed by 1.1e-3 relative in val_loss, FACTS.md). Processes whose
# numbers are compared run with oneDNN off and one thread per op (Eigen's kernels are then
# repeatable); the replicas still run side by side on TensorFlow's inter-op threads.
REPEATABLE = {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTRAOP_THREADS": "1", "OMP_NUM_THREADS": "1"}


def child_env(**extra: str) -> dict[str, str]:
    """``os.environ`` for a child: quiet TensorFlow, no TF_CONFIG or fault, plus ``extra``."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    env.pop("TF_CONFIG", None)
    env.pop(FAULT_ENV, None)
    env.update(extra)
    return env


def run_child(args: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess:
    """Run ``python *args`` in the repository; fail the test with its output unless it succeeds."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Cluster:
    """Worker processes on 127.0.0.1, one TF_CONFIG each; ``stop()`` always kills them."""

    def __init__(self, tmp: Path, n: int = 2):
        self.tmp = tmp
        self.hosts = [f"127.0.0.1:{p}" for p in _free_ports(n)]
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def worker_tmp(self, index: int) -> Path:
        """The TMPDIR of worker ``index`` (where a non-chief keeps its run copy)."""
        return self.tmp / f"tmp-worker{index}"

    def start(
        self, args: list[str], tag: str, env: dict[int, dict[str, str]] | None = None
    ) -> None:
        """Start every worker; ``env``: extra variables by worker index."""
        self.procs, self.logs = [], []
        for index in range(len(self.hosts)):
            tf_config = {
                "cluster": {"worker": self.hosts},
                "task": {"type": "worker", "index": index},
            }
            self.worker_tmp(index).mkdir(parents=True, exist_ok=True)
            log = self.tmp / f"{tag}-worker{index}.log"
            self.logs.append(log)
            with log.open("w") as out:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, *args],
                        cwd=REPO,
                        env=child_env(
                            TF_CONFIG=json.dumps(tf_config),
                            TMPDIR=str(self.worker_tmp(index)),
                            **(env or {}).get(index, {}),
                        ),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def wait(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.stop()
                pytest.fail(f"workers still running after {timeout} s:\n{self.tail()}")
        return codes

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    def tail(self, chars: int = 2500) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-chars:]}" for log in self.logs)
