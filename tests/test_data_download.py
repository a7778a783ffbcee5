"""Dataset resolution and the BEIR download path, against a real loopback HTTP server."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from nestrank.data import Dataset
from nestrank.data.download import DownloadError, cache_dir, download_beir, resolve_dataset
from nestrank.errors import ConfigError


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; ``/truncated.zip`` promises more bytes than it sends."""

    requests: list[str] = []

    def do_GET(self):  # noqa: N802  (http.server's naming)
        type(self).requests.append(self.path)
        if self.path.endswith("/truncated.zip"):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"PK\x03\x04 only the start")
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server serving ``tmp_path/www``; yields ``(base_url, www_dir)``."""
    www = tmp_path / "www"
    www.mkdir()
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/beir", www
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    """NESTRANK_DATA and NESTRANK_BEIR_URL pointed at temporary places; returns the data dir."""
    data = tmp_path / "data"
    monkeypatch.setenv("NESTRANK_DATA", str(data))
    monkeypatch.setenv("NESTRANK_BEIR_URL", server[0])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return data


def make_zip(dest: Path, source: Path, prefix: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(source.rglob("*")):
            if file.is_file():
                zf.write(file, f"{prefix}{file.relative_to(source)}")


def test_existing_directory_is_returned_as_is(tiny_beir):
    assert resolve_dataset(tiny_beir) == tiny_beir
    assert resolve_dataset(str(tiny_beir)) == tiny_beir


def test_download_installs_dataset_once(env, server, tiny_beir):
    make_zip(server[1] / "beir" / "scifact.zip", tiny_beir, "scifact/")
    path = resolve_dataset("scifact")  # with the progress bar
    assert path == env / "scifact"
    assert sorted(p.name for p in env.iterdir()) == ["scifact"]  # no temp files left over
    ds = Dataset.open(path)
    assert len(ds.corpus) == 5 and ds.splits == ["test", "train"]
    assert resolve_dataset("scifact", progress=False) == path
    assert _Handler.requests == ["/beir/scifact.zip"]  # the second call used the installed copy


def test_download_goes_to_cache_dir_without_nestrank_data(env, server, tiny_beir, monkeypatch, tmp_path):
    monkeypatch.delenv("NESTRANK_DATA")
    make_zip(server[1] / "beir" / "nfcorpus.zip", tiny_beir, "")  # files at the top of the zip
    path = resolve_dataset("nfcorpus", progress=False)
    assert path == cache_dir() / "nfcorpus" == tmp_path / "cache" / "nestrank" / "datasets" / "nfcorpus"
    assert (path / "qrels" / "test.tsv").is_file()


def test_cqadupstack_sub_dataset(env, server, tiny_beir):
    make_zip(server[1] / "beir" / "cqadupstack.zip", tiny_beir, "cqadupstack/android/")
    assert resolve_dataset("cqadupstack/android", progress=False) == env / "cqadupstack" / "android"
    with pytest.raises(ConfigError, match="pick one of android"):
        resolve_dataset("cqadupstack/gaming", progress=False)


def test_corrupt_zip_leaves_nothing(env, server):
    (server[1] / "beir").mkdir()
    (server[1] / "beir" / "fiqa.zip").write_bytes(b"this is not a zip file" * 100)
    with pytest.raises(DownloadError, match="not a valid zip.*--dataset DIR"):
        resolve_dataset("fiqa", progress=False)
    assert list(env.iterdir()) == []


def test_zip_without_dataset_leaves_nothing(env, server, tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hello")
    make_zip(server[1] / "beir" / "quora.zip", tmp_path / "junk", "quora/")
    with pytest.raises(DownloadError, match="no corpus.jsonl"):
        resolve_dataset("quora", progress=False)
    assert list(env.iterdir()) == []


def test_404_leaves_nothing(env):
    with pytest.raises(DownloadError, match="HTTP 404.*--dataset DIR"):
        resolve_dataset("trec-covid", progress=False)
    assert list(env.iterdir()) == []


def test_truncated_download_leaves_nothing(env, server):
    with pytest.raises(DownloadError, match="truncated|broke off"):
        download_beir("truncated", env, base_url=server[0], progress=False)
    assert list(env.iterdir()) == []


def test_unreachable_server(env, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("NESTRANK_BEIR_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match="cannot reach.*--dataset DIR"):
        resolve_dataset("scidocs", progress=False, timeout=5)
    assert not env.exists() or list(env.iterdir()) == []


def test_unknown_name_and_missing_directory(tiny_beir):
    with pytest.raises(ConfigError, match="is a file, not a dataset directory.*--corpus"):
        resolve_dataset(tiny_beir / "corpus.jsonl")
    with pytest.raises(ConfigError, match="neither a directory nor a known BEIR dataset name.*--dataset DIR"):
        resolve_dataset("not-a-dataset")
    with pytest.raises(ConfigError, match="not found.*--dataset DIR"):
        resolve_dataset("./no/such/dir")
