"""Helpers for tests that run a script as a real process: kill it at a checkpoint, find a rendezvous port."""
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def kill_after_first_checkpoint(command, out, *, env=None, timeout_s=180, last="last.pt"):
    """Start `command` in the repo root, SIGKILL it as soon as out/`last` exists; the run must not have finished
    by then. `env` None inherits this process's environment (thread counts included, so results stay comparable)."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + timeout_s
    while not (out / last).is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (out / last).is_file(), process.stderr.read().decode()[-2000:]
    assert not (out / "metrics.json").is_file(), "the run finished before the kill; give it more epochs"


def free_port():
    """A free local TCP port for torch.distributed's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
