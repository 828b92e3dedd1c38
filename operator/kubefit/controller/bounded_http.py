"""An HTTP server for ports any pod may reach (the checkpoint API, the admission webhook): a thread per
connection, as http.server's ThreadingHTTPServer, but with a cap on the connections served at once and a
deadline on each request.

A socket timeout alone bounds only each read: a client that sends one byte every few seconds, or many
clients at once, would hold threads and memory without end. Past the cap a new connection waits to be
served until one ends; a request still unanswered at its deadline has its connection shut down. A
kept-alive connection is closed (`Connection: close` on its answer) once it is CONNECTION_LIFETIME_SECONDS
old: workers that poll every few seconds over one connection (Go's net/http, requests.Session) would
otherwise hold their slots for good, and past the cap every other client would wait for ever.

Two more bounds for a port tenants' pods reach (the checkpoint API): a server may cap the connections one
client address holds at once (past it, a new one is closed at once: an unauthenticated client that opened
128 slow connections stalled every job's handshake), and give the request line and headers a deadline of
their own, shorter than the request's (a slot held by a client that sends one byte every few seconds frees
in seconds, not at the request deadline).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SOCKET_TIMEOUT_SECONDS = 10.0  # a client that stops sending mid-request frees its thread after this
MAX_CONNECTIONS = 128
LISTEN_BACKLOG = 128  # socketserver's default, 5, drops a burst of polls from a large job's workers
REQUEST_DEADLINE_SECONDS = 30.0
CONNECTION_LIFETIME_SECONDS = 30.0
_REAP_EVERY_SECONDS = 0.5


class _Deadlines:
    """Connections and the moment each must be answered by; one thread shuts down the late ones, and only
    while there are any to watch."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._due: dict[int, tuple[float, socket.socket]] = {}
        self._watching = False

    def arm(self, connection: socket.socket, seconds: float | None = None) -> None:
        with self._lock:
            due = time.monotonic() + (self.seconds if seconds is None else seconds)
            self._due[id(connection)] = (due, connection)
            if not self._watching:
                watcher = threading.Thread(target=self._watch, name="kubefit-http-deadlines", daemon=True)
                watcher.start()  # if it cannot start (no threads left), the next arm tries again
                self._watching = True

    def disarm(self, connection: socket.socket) -> None:
        with self._lock:
            self._due.pop(id(connection), None)

    def _watch(self) -> None:
        watching = True
        while watching:
            time.sleep(_REAP_EVERY_SECONDS)
            now = time.monotonic()
            with self._lock:
                late = [key for key, (due, _) in self._due.items() if due <= now]
                connections = [self._due.pop(key)[1] for key in late]
                watching = self._watching = bool(self._due)
            for connection in connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)  # its blocked read returns; its thread finishes
                except OSError:
                    pass


def address_family(host: str) -> socket.AddressFamily:
    """IPv6 for an address with a colon (`::`, `fd00::1`), else IPv4: socketserver binds IPv4 only."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def url_host(host: str) -> str:
    """`host` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class BoundedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    max_connections = MAX_CONNECTIONS
    request_deadline_seconds = REQUEST_DEADLINE_SECONDS
    connection_lifetime_seconds = CONNECTION_LIFETIME_SECONDS
    max_connections_per_client: int | None = None  # None: no cap per client address
    header_deadline_seconds: float | None = None  # None: the request line and headers have the request's
    name = "http"  # the log's: logger kubefit.<name>, lines "<name> connection from ..."

    def __init__(self, server_address: Any, *args: Any, **kwargs: Any) -> None:
        self.address_family = address_family(str(server_address[0]))
        super().__init__(server_address, *args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self.deadlines = _Deadlines(self.request_deadline_seconds)
        self._log = logging.getLogger(f"kubefit.{self.name}")
        self._clients_lock = threading.Lock()
        self._per_client: dict[str, int] = {}

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._client_admitted(client_address):
            self._log.debug("%s: %s holds %d connections already, closing a new one", self.name,
                            client_address[0], self.max_connections_per_client)  # fmt: skip
            self.shutdown_request(request)
            return
        # Past the cap, accepting waits for a slot (the kernel queues new connections meanwhile); one frees
        # within the deadline at the latest, since every served request is cut there. Giving up only after
        # twice that leaves a stalled machine time to finish the cut.
        if not self._slots.acquire(timeout=2 * self.request_deadline_seconds):
            self._log.warning("%s: %d connections open for %.0f s, closing one from %s", self.name,
                              self.max_connections, 2 * self.request_deadline_seconds, client_address)  # fmt: skip
            self._client_left(client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            self._client_left(client_address)
            raise

    def _client_admitted(self, client_address: Any) -> bool:
        """Counts a connection of its client address, unless that address holds the cap already."""
        if self.max_connections_per_client is None:
            return True
        with self._clients_lock:
            held = self._per_client.get(client_address[0], 0)
            if held >= self.max_connections_per_client:
                return False
            self._per_client[client_address[0]] = held + 1
            return True

    def _client_left(self, client_address: Any) -> None:
        if self.max_connections_per_client is None:
            return
        with self._clients_lock:
            held = self._per_client.pop(client_address[0], 0) - 1
            if held > 0:
                self._per_client[client_address[0]] = held

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            try:
                self.deadlines.arm(request)  # covers a TLS handshake and the first request
            except RuntimeError:  # no thread for the watcher: this connection cannot be bounded, so it goes
                self.shutdown_request(request)
                return
            super().process_request_thread(request, client_address)
        finally:
            self.deadlines.disarm(request)
            self._slots.release()
            self._client_left(client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away, stalled or spoke no TLS: one debug line, not socketserver's traceback
        on stderr (a port scan or a TCP probe would fill the log)."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # ssl.SSLError and timeouts are OSErrors
            self._log.debug("%s connection from %s: %s", self.name, client_address, error)
        else:
            self._log.exception("%s connection from %s failed", self.name, client_address)


class DeadlineRequestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with kept-alive connections, each request with its own deadline; a read waits at most
    SOCKET_TIMEOUT_SECONDS; the Server header names no Python version."""

    server: BoundedHTTPServer
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_SECONDS
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self._opened = time.monotonic()

    def end_headers(self) -> None:
        if time.monotonic() - self._opened >= self.server.connection_lifetime_seconds:
            self.send_header("Connection", "close")  # sets close_connection: the socket closes after this
        super().end_headers()

    def handle_one_request(self) -> None:
        # The request line and headers first, by their own deadline where the server has one; then the rest.
        self.server.deadlines.arm(self.connection, self.server.header_deadline_seconds)
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if parsed and self.server.header_deadline_seconds is not None:
            self.server.deadlines.arm(self.connection)
        return parsed
