"""Several receiver processes behind the DICOM ports (`dicom_workers`): this process accepts
every connection and hands it to the worker serving the fewest, over a Unix socket pair
(SCM_RIGHTS); the worker reports back when the connection ended.

With SO_REUSEPORT instead, the kernel picks a worker by a hash of the peer's address: four
senders landed 4/0 or 3/1 on two workers in 5 of 8 runs, one worker serving everything while
the other sat idle. On the 2-core bench machine, where the broker and the senders share the
cores, the even spread did not change throughput measurably (4 senders, medians of 6
interleaved runs: 10 kB images 477 against 502 inst/s, 526 kB CT 271 against 267); it counts
where one worker, not the machine, is the limit. The ports are bound only once every worker
is ready, so a sender never waits on a worker's start.
"""

import ctypes
import multiprocessing
import os
import selectors
import signal
import socket
from dataclasses import dataclass

import structlog

from ingest.scp import HANDOFF_PLAIN, HANDOFF_READY, HANDOFF_TLS
from ingest.service import run_until_signalled
from ingest.settings import IngestSettings

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_BACKLOG = 128


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    channel: socket.socket  # our end of the hand-off socket pair
    ready: bool = False
    connections: int = 0  # handed over and not yet reported ended


def run_workers(settings: IngestSettings) -> int:
    """Serve through `dicom_workers` processes until SIGINT or SIGTERM, or until one worker
    stops; the ports are bound once every worker is ready. The exit code is 0 only if every
    worker stopped cleanly."""
    stopping: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, _frame: stopping.append(signum))
    workers = [_start_worker(settings.for_worker(n), n) for n in range(settings.dicom_workers)]
    selector = selectors.DefaultSelector()
    for worker in workers:
        selector.register(worker.channel, selectors.EVENT_READ, worker)
    listeners: dict[bytes, socket.socket] = {}
    turn = 0
    cannot_listen = False
    while not stopping and all(worker.process.exitcode is None for worker in workers):
        if not listeners and all(worker.ready for worker in workers):
            try:
                listeners = _listen(settings)
            except OSError as error:
                log.error("cannot listen on the DICOM ports", error=str(error))
                cannot_listen = True
                break
            for kind, listener in listeners.items():
                selector.register(listener, selectors.EVENT_READ, kind)
            log.info("DICOM receiver listening", ae_title=settings.ae_title, workers=len(workers))
        for key, _events in selector.select(timeout=0.5):
            if isinstance(key.data, _Worker):
                _read_reports(key.data, selector)
                continue
            try:
                connection, _address = listeners[key.data].accept()
            except BlockingIOError:
                continue  # the peer gave up before we got to it
            with connection:
                turn = (turn + 1) % len(workers)
                _hand_over(connection, key.data, _least_busy(workers, turn))
    if not stopping and not cannot_listen:
        log.error("a receiver worker stopped; stopping the others")
    for listener in listeners.values():
        listener.close()
    for worker in workers:
        if worker.process.exitcode is None and worker.process.pid is not None:
            os.kill(worker.process.pid, signal.SIGTERM)
    for worker in workers:
        worker.process.join()
        worker.channel.close()
    clean = all(worker.process.exitcode == 0 for worker in workers)
    return 0 if clean and not cannot_listen else 1


def _listen(settings: IngestSettings) -> dict[bytes, socket.socket]:
    """The listening sockets, by the hand-off kind of their connections."""
    ports = {HANDOFF_PLAIN: settings.dicom_port}
    if settings.tls_port is not None:
        ports[HANDOFF_TLS] = settings.tls_port
    listeners = {}
    for kind, port in ports.items():
        listeners[kind] = socket.create_server((settings.dicom_bind, port), backlog=_BACKLOG)
        listeners[kind].setblocking(False)
    return listeners


def _start_worker(settings: IngestSettings, number: int) -> _Worker:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    process = multiprocessing.get_context("spawn").Process(
        target=_serve_worker, args=(settings, os.getpid(), theirs), name=f"receiver-{number}"
    )
    process.start()
    theirs.close()
    ours.setblocking(False)
    return _Worker(process=process, channel=ours)


def _least_busy(workers: list[_Worker], turn: int) -> _Worker:
    """The worker with the fewest connections; ties go round in turn, so that short
    associations one after another spread as well."""
    rotated = workers[turn:] + workers[:turn]
    return min(rotated, key=lambda worker: worker.connections)


def _hand_over(connection: socket.socket, kind: bytes, worker: _Worker) -> None:
    try:
        socket.send_fds(worker.channel, [kind], [connection.fileno()])
    except OSError as error:  # the worker is gone: the main loop notices and stops
        log.error("connection not handed over", worker=worker.process.name, error=str(error))
        return
    worker.connections += 1


def _read_reports(worker: _Worker, selector: selectors.BaseSelector) -> None:
    while True:  # one message per report
        try:
            report = worker.channel.recv(1)
        except BlockingIOError:
            return
        if not report:  # the worker is gone: the main loop notices and stops
            selector.unregister(worker.channel)
            return
        if report == HANDOFF_READY:
            worker.ready = True
        else:
            worker.connections -= 1


def _serve_worker(settings: IngestSettings, parent_pid: int, handoffs: socket.socket) -> None:
    # A worker must not outlive a parent killed with SIGKILL.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        return  # the parent died before the request took effect
    run_until_signalled(settings, handoffs=handoffs)
