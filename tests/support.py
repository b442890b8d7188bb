"""Helpers shared by tests: free ports, waiting for conditions, real service processes."""

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

DCMTK = "/usr/bin"  # DCMTK's tools; pynetdicom installs Python scripts of the same names


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll `condition` until true; fail the test with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def wait_until_listening(port: int, process: subprocess.Popen[bytes], *, timeout_s: float) -> None:
    """Wait until `process` accepts TCP connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{process.args!r} did not listen on port {port} within {timeout_s} s")


@contextmanager
def serving(command: list[str], *, port: int, timeout_s: float = 30) -> Iterator[None]:
    """Run a server process for the duration of the block; it must listen on `port`."""
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until_listening(port, process, timeout_s=timeout_s)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
