"""The hand-written HTTP/1.1 transport ``led serve`` used before it moved to gunicorn + uvicorn.

Kept only as the baseline of ``benchmarks/serving.py`` (issue 11 asks for today's
transport in the same run); ``led serve`` never uses it. A small asyncio
protocol (Content-Length bodies, keep-alive, pipelining) calling
``Service.handle`` inline, and ``serve_forked`` sharing one listening socket
between ``os.fork`` workers (a dead worker is not replaced: that, the missing
``Date``/``Allow`` headers and the lenient parsing are why it was replaced).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from typing import Any

from serving.app import Service

JSON = "application/json"
MAX_HEADER_BYTES = 16 * 1024
IDLE_TIMEOUT_SECONDS = 60.0


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


# --- transport --------------------------------------------------------------------------------------

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           411: "Length Required", 413: "Content Too Large", 422: "Unprocessable Content",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           503: "Service Unavailable"}


def _response(status: int, ctype: str, payload: bytes, keep_alive: bool) -> bytes:
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(payload)}\r\n{'' if keep_alive else 'Connection: close' + chr(13) + chr(10)}\r\n")
    return head.encode("latin-1") + payload


class HttpProtocol(asyncio.Protocol):
    """Minimal HTTP/1.1: request line + headers, Content-Length bodies, keep-alive, pipelining."""

    def __init__(self, service: Service):
        self.service = service
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent_continue = False
        self.last_active = time.monotonic()

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        asyncio.get_running_loop().call_later(IDLE_TIMEOUT_SECONDS, self._close_if_idle)

    def connection_lost(self, exc) -> None:
        self.transport = None

    def _close_if_idle(self) -> None:
        """Idle keep-alive (or half-sent) connections are closed so they cannot pile up."""
        if self.transport is None or self.transport.is_closing():
            return
        idle = time.monotonic() - self.last_active
        if idle >= IDLE_TIMEOUT_SECONDS:
            self.transport.close()
        else:
            asyncio.get_running_loop().call_later(IDLE_TIMEOUT_SECONDS - idle, self._close_if_idle)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        self.buffer += data
        while self.transport is not None and not self.transport.is_closing():
            if not self._handle_one():
                return

    def _handle_one(self) -> bool:
        """Answer one complete request from the buffer; False when more bytes are needed."""
        end = self.buffer.find(b"\r\n\r\n")
        if end > MAX_HEADER_BYTES or (end < 0 and len(self.buffer) > MAX_HEADER_BYTES):
            self._fail(431, "request headers too large")
            return False
        if end < 0:
            return False
        try:
            method, path, version, headers = _parse_head(bytes(self.buffer[:end]))
        except ValueError as exc:
            self._fail(400, str(exc))
            return False
        if "chunked" in headers.get("transfer-encoding", ""):
            self._fail(411, "chunked bodies are not supported: send Content-Length")
            return False
        try:
            length = int(headers.get("content-length", "0"))
            if length < 0:
                raise ValueError
        except ValueError:
            self._fail(400, "bad Content-Length")
            return False
        if length > self.service.limits.max_body_bytes:
            self._fail(413, f"body larger than {self.service.limits.max_body_bytes} bytes")
            return False
        total = end + 4 + length
        if len(self.buffer) < total:
            if headers.get("expect", "").lower() == "100-continue" and not self.sent_continue:
                self.sent_continue = True  # curl waits ~1 s for this before sending bodies > 1 KiB
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return False
        self.sent_continue = False
        body = bytes(self.buffer[end + 4:total])
        del self.buffer[:total]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        status, ctype, payload = self.service.handle(method, path, body)
        self.transport.write(_response(status, ctype, payload, keep_alive))
        if not keep_alive:
            self.transport.close()
        return True

    def _fail(self, status: int, message: str) -> None:
        self.service.metrics.observe("other", status, 0.0)
        self.transport.write(_response(status, JSON, _json({"error": message}), keep_alive=False))
        self.transport.close()
        self.buffer.clear()


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise ValueError("undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("malformed request line")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError("malformed header line")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


async def _serve_asyncio(service: Service, sock: socket.socket, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(service), sock=sock, backlog=1024)
    async with server:
        await stop.wait()


def run_asyncio(service: Service, sock: socket.socket) -> None:
    """Serve on ``sock`` until SIGTERM/SIGINT."""
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await _serve_asyncio(service, sock, stop)

    asyncio.run(main())


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def serve_forked(make_service, sock: socket.socket, workers: int) -> None:
    """``workers`` forked processes sharing ``sock``, each building its service after the fork."""
    if workers <= 1:
        run_asyncio(make_service(), sock)
        return
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            try:
                run_asyncio(make_service(), sock)
            finally:
                os._exit(0)
        children.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(pid, signal.SIGTERM) for pid in children])
    for pid in children:
        os.waitpid(pid, 0)
