"""Refuse (and count) any outbound connection or name lookup that is not loopback.

Imported first by the benchmark and by the servers it starts, before CodeCarbon
is, so that nothing measured can reach the network. Installing is idempotent.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any


class NetworkGuard:
    """Refuse (and count) any connection or name lookup that is not loopback."""

    def __init__(self) -> None:
        self.blocked: list[str] = []
        self.installed = False

    @staticmethod
    def _loopback(host: Any) -> bool:
        if host is None:
            return True
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        host = str(host)
        if host in ("localhost", "localhost.localdomain", ""):
            return True
        try:
            return ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            return False

    def _refuse(self, what: str) -> None:
        self.blocked.append(what)

    def install(self) -> None:
        if self.installed:
            return
        self.installed = True
        guard = self
        real_connect = socket.socket.connect
        real_connect_ex = socket.socket.connect_ex
        real_getaddrinfo = socket.getaddrinfo

        def check(sock: socket.socket, address: Any) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                host = address[0] if isinstance(address, tuple) else address
                if not guard._loopback(host):
                    guard._refuse(f"connect {address!r}")
                    raise OSError(errno.ENETUNREACH, "network blocked by benchmark")

        def connect(sock: socket.socket, address: Any) -> None:
            check(sock, address)
            real_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            check(sock, address)
            return real_connect_ex(sock, address)

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if not guard._loopback(host):
                guard._refuse(f"getaddrinfo {host!r}")
                raise socket.gaierror(socket.EAI_NONAME, "lookup blocked by benchmark")
            return real_getaddrinfo(host, *args, **kwargs)

        socket.socket.connect = connect  # type: ignore[method-assign]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = getaddrinfo


NETWORK = NetworkGuard()
NETWORK.install()
