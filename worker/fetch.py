"""Reading the bytes of an image reference safely: files only under the image roots, URLs only to
public addresses.

Files: the opened file's own path (from /proc/self/fd, or F_GETPATH on macOS) is checked against
the roots after it is open, so swapping a directory for a symlink between a check and the open
cannot make the worker read outside them; a symlink that stays inside the roots is fine.

URLs (with --allow-urls): the host is resolved once and every address it resolves to is checked;
the connection goes to that checked address (no second resolution), and each redirect is checked
the same way. Loopback, private, link-local, shared (CGNAT), reserved and multicast addresses are
refused unless --allow-private-urls; cloud metadata addresses always are. Every failure gives the
same text, so the worker cannot be used to tell a closed port from a missing page; the reason is
logged for the operator.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import http.client
import ipaddress
import logging
import os
import socket
import ssl
import stat
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pgsight.worker.fetch")

METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200",
                                              "fd00:ec2::254")}
MAX_REDIRECTS = 5


class FetchError(Exception):
    """What the user sees; ImageLoader turns it into an ImageError."""


class Refused(Exception):
    """Internal: why a fetch failed (logged, never shown to the user)."""


# -- files ---------------------------------------------------------------------------------------
def _fd_path(fd: int) -> str:
    if sys.platform == "darwin":
        import fcntl

        return fcntl.fcntl(fd, fcntl.F_GETPATH, b"\0" * 1024).rstrip(b"\0").decode()  # type: ignore[attr-defined]
    return os.readlink(f"/proc/self/fd/{fd}")


def _libc_realpath() -> Callable[[bytes, Any], Any] | None:
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name, use_errno=True).realpath if name else None
    except (OSError, AttributeError):
        return None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_char_p, ctypes.c_char_p], ctypes.c_char_p
    return fn


_REALPATH = _libc_realpath() if sys.platform.startswith("linux") else None


def realpath(path: str) -> str:
    """os.path.realpath(path), in C where the C library has it: Python's walks the path component by
    component in Python (about 50 us a file here, a third of decoding a small PNG). A path the C
    library cannot resolve (a missing file, a loop) is left to os.path.realpath, which says what it
    can."""
    if _REALPATH is not None:
        buf = ctypes.create_string_buffer(4097)  # PATH_MAX + 1
        if _REALPATH(os.fsencode(path), buf) is not None:
            return os.fsdecode(buf.value)
    return os.path.realpath(path)


def under(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def read_file(path: str, roots: list[str], max_bytes: int, ref: str) -> bytes:
    """The bytes of `path` (already checked to lie under `roots` by name), refused unless the file
    actually opened lies under `roots` (real paths)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FetchError(f"file not found: {ref}") from None
    except IsADirectoryError:
        raise FetchError(f"{ref} is a directory, not an image") from None
    except OSError as e:
        raise FetchError(f"cannot read {ref}: {e.strerror}") from None
    try:
        real = _fd_path(fd)
        if not under(real, roots):  # a directory was swapped for a symlink after the name was checked
            raise FetchError(f"path {ref!r} is outside the image roots ({', '.join(roots)})")
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FetchError(f"{ref} is a directory, not an image")
        if not stat.S_ISREG(st.st_mode):
            raise FetchError(f"{ref} is not a regular file")
        if st.st_size > max_bytes:
            raise FetchError(f"{ref} is {st.st_size} bytes, over the limit of {max_bytes}")
        # st_size + 1 bytes (read(max_bytes + 1) would allocate max_bytes for every file); more if the
        # file grew after fstat, up to one byte over the limit
        data = os.read(fd, st.st_size + 1)
        while len(data) <= st.st_size and (chunk := os.read(fd, st.st_size + 1 - len(data))):
            data += chunk  # a short read (a signal, a network file system) is not the end
        if len(data) > st.st_size:
            chunks = [data]
            while (got := sum(map(len, chunks))) <= max_bytes and (chunk := os.read(fd, max_bytes + 1 - got)):
                chunks.append(chunk)
            data = b"".join(chunks)
        if len(data) > max_bytes:
            raise FetchError(f"{ref} is over the limit of {max_bytes} bytes")
        return data
    except OSError as e:
        raise FetchError(f"cannot read {ref}: {e.strerror}") from None
    finally:
        os.close(fd)


# -- URLs ----------------------------------------------------------------------------------------
def address_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None) or getattr(ip, "sixtofour", None)
    if mapped is not None:
        ip = mapped
    if ip in METADATA or ip.is_multicast or ip.is_unspecified:
        return False
    return ip.is_global or allow_private


def _resolve(host: str, port: int, allow_private: bool) -> list[tuple]:
    """getaddrinfo once; every address must be allowed (a name that also points inside is refused)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise Refused(f"{host} resolves to nothing")
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address_allowed(ip, allow_private):
            raise Refused(f"{host} resolves to {ip}, which is not allowed")
    return infos


def _connect(infos: list[tuple], timeout: float) -> socket.socket:
    last: Exception = Refused("no address")
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(addr)
            return sock
        except OSError as e:
            sock.close()
            last = e
    raise last


def _get_once(url: str, allow_private: bool, timeout: float, deadline: float, max_bytes: int):
    """One GET to a checked address: (status, location or None, body or None)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused(f"scheme or host of {url!r} not allowed")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    sock = _connect(_resolve(host, port, allow_private), timeout)
    conn = resp = None
    try:
        if parts.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock  # the checked address: http.client never resolves the name again
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        conn.request("GET", target, headers={"Host": parts.netloc.rsplit("@", 1)[-1], "User-Agent": "pgsight"})
        resp = conn.getresponse()
        if resp.status in (301, 302, 303, 307, 308):
            return resp.status, resp.getheader("Location"), None
        if resp.status != 200:
            raise Refused(f"HTTP {resp.status}")
        chunks, size = [], 0
        while size <= max_bytes:
            if time.monotonic() > deadline:
                raise Refused("slower than the timeout")
            chunk = resp.read(min(1 << 16, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise Refused(f"larger than {max_bytes} bytes")
        return 200, None, b"".join(chunks)
    finally:
        for part in (resp, conn, sock):
            if part is not None:
                part.close()


def fetch_url(url: str, allow_private: bool, timeout: float, max_bytes: int) -> bytes:
    """The body of a 200 answer to GET `url`, following at most MAX_REDIRECTS checked redirects."""
    deadline = time.monotonic() + timeout  # for the whole download, redirects included
    current = url
    try:
        for _ in range(MAX_REDIRECTS + 1):
            if time.monotonic() > deadline:
                raise Refused("slower than the timeout")
            status, location, body = _get_once(current, allow_private, timeout, deadline, max_bytes)
            if body is not None:
                return body
            if not location:
                raise Refused(f"HTTP {status} without a Location")
            current = urllib.parse.urljoin(current, location)
        raise Refused("too many redirects")
    except Exception as e:  # noqa: BLE001 -- every failure is the same to the user
        log.info("fetch of %s failed: %s", url, e)
        raise FetchError(
            f"cannot fetch {url}: no image from that address (the worker fetches only public addresses, "
            f"answers 200 within {timeout:g}s and at most {max_bytes} bytes)") from None
