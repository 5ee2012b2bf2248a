"""Downloading CIFAR-10 when no data is given, against a local HTTP server serving a miniature archive."""

import hashlib
import http.server
import threading

import pytest

import skqk.data.download
from skqk.data import DataError, load_dataset


class Server:
    """Serves `content` at every path, announcing `announced_length` bytes (default: the true length)."""

    def __init__(self):
        self.content, self.announced_length, self.requests = b"", None, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                if self.path != "/cifar-10-python.tar.gz":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(server.announced_length or len(server.content)))
                self.end_headers()
                self.wfile.write(server.content)

            def log_message(self, *args):
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/cifar-10-python.tar.gz"


@pytest.fixture
def server(monkeypatch):
    served = Server()
    thread = threading.Thread(target=served.http.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setattr(skqk.data.download, "CIFAR10_URL", served.url)
    monkeypatch.setattr(skqk.data.download, "TIMEOUT_S", 5)
    monkeypatch.delenv("SKQK_DATA", raising=False)  # CI sets it; these tests are about its absence
    yield served
    served.http.shutdown()
    served.http.server_close()
    thread.join(timeout=5)


@pytest.fixture
def archive(tmp_path, cifar_batches, tar_of) -> bytes:
    cifar_batches(tmp_path / "src" / "cifar-10-batches-py")
    return tar_of(tmp_path / "src" / "cifar-10-batches-py", tmp_path / "a.tar.gz", "cifar-10-batches-py").read_bytes()


def test_missing_data_is_downloaded_verified_and_then_reused(server, archive, cache_dir, monkeypatch):
    server.content = archive
    monkeypatch.setattr(skqk.data.download, "CIFAR10_MD5", hashlib.md5(archive).hexdigest())

    dataset = load_dataset(cache_dir=cache_dir, progress=False)
    again = load_dataset(cache_dir=cache_dir, download=False, progress=False)

    assert (cache_dir / "cifar-10-python.tar.gz").read_bytes() == archive
    assert server.requests == 1
    assert (len(dataset.train), len(dataset.test), dataset.num_classes) == (20, 6, 10)
    assert again.source == dataset.source == f"CIFAR-10 python batches from {cache_dir / 'cifar-10-python.tar.gz'}"


def test_wrong_checksum_raises_and_keeps_nothing(server, archive, cache_dir, monkeypatch):
    server.content = archive
    monkeypatch.setattr(skqk.data.download, "CIFAR10_MD5", "0" * 32)

    with pytest.raises(DataError, match=r"download of http://127.0.0.1:\d+/cifar-10-python.tar.gz is corrupt"):
        load_dataset(cache_dir=cache_dir, progress=False)

    assert list(cache_dir.iterdir()) == []


def test_truncated_download_raises_and_keeps_nothing(server, archive, cache_dir, monkeypatch):
    server.content, server.announced_length = archive[: len(archive) // 2], len(archive)
    monkeypatch.setattr(skqk.data.download, "CIFAR10_MD5", hashlib.md5(archive).hexdigest())

    with pytest.raises(DataError, match=rf"is incomplete \({len(archive) // 2} of {len(archive)} bytes\)"):
        load_dataset(cache_dir=cache_dir, progress=False)

    assert list(cache_dir.iterdir()) == []


def test_unreachable_source_raises_data_error(server, cache_dir, monkeypatch):
    monkeypatch.setattr(skqk.data.download, "CIFAR10_URL", server.url + ".missing")

    with pytest.raises(DataError, match=r"could not download .*missing: HTTP Error 404"):
        load_dataset(cache_dir=cache_dir, progress=False)


def test_no_data_without_download_raises_data_error(cache_dir, monkeypatch):
    monkeypatch.delenv("SKQK_DATA", raising=False)

    with pytest.raises(DataError, match=r"no data: pass a data path or set \$SKQK_DATA"):
        load_dataset(cache_dir=cache_dir, download=False)


def test_data_environment_variable_names_the_source(tmp_path, cache_dir, image_tree, monkeypatch):
    image_tree(tmp_path / "tree")
    monkeypatch.setenv("SKQK_DATA", str(tmp_path / "tree"))

    assert load_dataset(cache_dir=cache_dir, download=False, progress=False).train.classes == ["cat", "dog", "emu"]
