"""The worker's reads cannot be steered outside what it may read (issue 10, items 4 and 5):
URLs to loopback/private/metadata addresses are refused after DNS and on every redirect, every
failed fetch reads the same, and a directory swapped for a symlink never lets a read escape the roots."""
from __future__ import annotations

import http.server
import ipaddress
import os
import socket
import threading
import time

import pytest
from pgsight.worker import fetch
from pgsight.worker.images import ImageError, ImageLoader

INSIDE, SECRET = b"inside-bytes", b"SECRET-outside-the-roots"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.server.seen.append(self.path)
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.end_headers()
        elif self.path == "/ok.png":
            self.send_response(200)
            self.send_header("Content-Length", str(len(INSIDE)))
            self.end_headers()
            self.wfile.write(INSIDE)
        elif self.path == "/hang":
            time.sleep(3)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def serve(host: str):
    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    server.seen = []
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def local():
    server = serve("127.0.0.1")
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def public(monkeypatch):
    """A server on 127.0.0.2 that the tests treat as a public address, and a name for it."""
    server = serve("127.0.0.2")
    real_allowed, real_getaddrinfo = fetch.address_allowed, socket.getaddrinfo
    monkeypatch.setattr(fetch, "address_allowed",
                        lambda ip, allow: ip == ipaddress.ip_address("127.0.0.2") or real_allowed(ip, allow))
    names = {"images.example": ["127.0.0.2"], "split.example": ["127.0.0.2", "127.0.0.1"]}
    calls = []

    def getaddrinfo(host, port, *args, **kwargs):
        calls.append(host)
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in names[host]]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(fetch.socket, "getaddrinfo", getaddrinfo)
    server.calls, server.names = calls, names
    yield server
    server.shutdown()
    server.server_close()


def loader(tmp_path, private=False, timeout=2.0):
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    return ImageLoader([root], allow_urls=True, allow_private_urls=private, url_timeout=timeout)


def error(ld, ref) -> str:
    with pytest.raises(ImageError) as e:
        ld.read_bytes(ref)
    return str(e.value)


def test_loopback_is_refused_unless_private_urls_are_allowed(tmp_path, local):
    url = f"http://127.0.0.1:{local.server_port}/ok.png"
    assert "cannot fetch" in error(loader(tmp_path), url)
    assert "cannot fetch" in error(loader(tmp_path), f"http://localhost:{local.server_port}/ok.png")
    assert "cannot fetch" in error(loader(tmp_path), f"http://[::ffff:127.0.0.1]:{local.server_port}/ok.png")
    assert local.seen == []  # refused before any connection
    assert loader(tmp_path, private=True).read_bytes(url) == INSIDE


@pytest.mark.parametrize("address", ["10.0.0.1", "172.16.3.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                                     "0.0.0.0", "::1", "fe80::1", "fd00:ec2::254", "::ffff:10.0.0.1", "224.0.0.1",
                                     "2002:7f00:1::"])
def test_inside_addresses_are_refused(address):
    assert not fetch.address_allowed(ipaddress.ip_address(address), allow_private=False)


def test_metadata_is_refused_even_with_private_urls():
    for address in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"):
        assert not fetch.address_allowed(ipaddress.ip_address(address), allow_private=True)
    assert fetch.address_allowed(ipaddress.ip_address("8.8.8.8"), allow_private=False)
    assert fetch.address_allowed(ipaddress.ip_address("10.1.2.3"), allow_private=True)


def test_every_redirect_is_checked(tmp_path, local, public):
    ld = loader(tmp_path)
    base = f"http://images.example:{public.server_port}"
    assert ld.read_bytes(f"{base}/ok.png") == INSIDE  # the "public" server itself is fine
    inside = f"http://127.0.0.1:{local.server_port}/ok.png"
    assert "cannot fetch" in error(ld, f"{base}/redirect?to={inside}")
    assert "cannot fetch" in error(ld, f"{base}/redirect?to=http://169.254.169.254/latest/meta-data/")
    assert "cannot fetch" in error(ld, f"{base}/redirect?to=file:///etc/passwd")
    assert local.seen == []  # the redirect to loopback never reached it
    # a redirect to a public address is followed
    assert ld.read_bytes(f"{base}/redirect?to={base}/ok.png") == INSIDE


def test_a_name_with_any_inside_address_is_refused_and_the_checked_address_is_used(tmp_path, local, public):
    ld = loader(tmp_path)
    assert "cannot fetch" in error(ld, f"http://split.example:{public.server_port}/ok.png")
    # DNS rebinding: the name is resolved once per hop; the connection goes to the address checked
    public.calls.clear()
    public.seen.clear()
    assert ld.read_bytes(f"http://images.example:{public.server_port}/ok.png") == INSIDE
    assert public.calls == ["images.example"] and public.seen == ["/ok.png"]


def test_every_failure_to_fetch_reads_the_same(tmp_path, local, public):
    """No port-scanner oracle: closed port, refused address, 404, timeout, bad redirect: one text."""
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        closed = s.getsockname()[1]
    ld = loader(tmp_path, timeout=1.0)
    base = f"http://images.example:{public.server_port}"
    urls = [f"http://images.example:{closed}/x.png", f"{base}/missing.png", f"{base}/hang",
            f"http://127.0.0.1:{local.server_port}/ok.png", f"{base}/redirect?to=http://10.0.0.1/"]
    texts = {error(ld, url).replace(url, "URL") for url in urls}
    assert len(texts) == 1, texts


def swap_race(root, outside, stop, swaps):
    d, parked = root / "d", root / "d_real"
    while not stop.is_set():
        os.rename(d, parked)
        os.symlink(outside, d)
        time.sleep(0)
        os.unlink(d)
        os.rename(parked, d)
        swaps[0] += 1


def race(tmp_path, read, seconds=2.0):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    (root / "d" / "img.png").write_bytes(INSIDE)
    (outside / "img.png").write_bytes(SECRET)
    stop, swaps = threading.Event(), [0]
    t = threading.Thread(target=swap_race, args=(root, outside, stop, swaps))
    t.start()
    counts = {"inside": 0, "escaped": 0, "refused": 0}
    start = time.monotonic()
    try:
        # at least `seconds`, and on until the swapper has swapped 150 times (a loaded machine gives
        # it fewer turns), at most 5x as long
        while (now := time.monotonic()) < start + seconds or (swaps[0] <= 150 and now < start + 5 * seconds):
            try:
                data = read(root)
            except (ImageError, OSError):
                counts["refused"] += 1
                continue
            counts["escaped" if data == SECRET else "inside"] += 1
    finally:
        stop.set()
        t.join()
    counts["swaps"] = swaps[0]
    return counts


def test_directory_swapped_for_a_symlink_never_escapes(tmp_path, figures):
    loaders = {}

    def read(root):
        ld = loaders.setdefault(str(root), ImageLoader([root]))
        return ld.read_bytes("d/img.png")

    counts = race(tmp_path, read)
    figures.update({f"new_{k}": v for k, v in counts.items()})
    assert counts["escaped"] == 0, counts
    assert counts["inside"] > 0 and counts["refused"] > 0 and counts["swaps"] > 100, counts


def test_the_same_race_escapes_a_check_then_open_loader(tmp_path, figures):
    """The control: checking the real path and then opening it by name (what the loader did, minus
    its cache) does let reads escape under the same race, so the test above can tell."""

    def read(root):
        real = os.path.realpath(root / "d" / "img.png")
        if not real.startswith(str(os.path.realpath(root)) + os.sep):
            raise ImageError("outside")
        time.sleep(0)  # the window between check and open
        with open(root / "d" / "img.png", "rb") as f:
            return f.read()

    counts = race(tmp_path, read)
    figures.update({f"check_then_open_{k}": v for k, v in counts.items()})
    assert counts["escaped"] > 0, counts


def test_special_files_and_in_root_symlinks(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(INSIDE)
    os.symlink(root / "sub" / "a.png", root / "alias.png")  # a symlink that stays inside is fine
    os.mkfifo(root / "pipe.png")
    ld = ImageLoader([root])
    assert ld.read_bytes("alias.png") == INSIDE
    assert "not a regular file" in error(ld, "pipe.png")  # and it did not block on the FIFO
    assert "is a directory" in error(ld, "sub")
    assert "outside the image roots" in error(ld, "/etc/hostname")


def test_the_worker_command_has_the_opt_in():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pgsight.cli", "worker", "--help"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "COLUMNS": "200"}).stdout
    assert "--allow-private-urls" in out
