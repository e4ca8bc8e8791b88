"""The real service process on a loopback port: adds, searches and deletes under concurrency,
then SIGKILL in the middle of an add (deterministically, between the segment and the manifest,
and at random during a burst of adds) and a restart: nothing acknowledged is lost, nothing
half-written is served."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import TINY
from PIL import Image

import quantrieve as qr
from quantrieve.index.live import open_live

KEY = "process-test-key"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def png(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 60, (TINY.size, TINY.size)).astype(np.uint8)
    image[seed % 10 : seed % 10 + 2] = 230
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class Server:
    """``quantrieve serve`` in a child process."""

    def __init__(self, index_dir: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "quantrieve", "serve", str(index_dir)]
        command += ["--host", HOST, "--port", str(self.port), "--max-batch", "8"]
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "QUANTRIEVE_API_KEY": KEY, **env},
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited:\n{log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.kill()
        raise AssertionError(f"the server did not start:\n{log.read_text()}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, headers={"X-API-Key": KEY})

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def serving(index_dir: Path, log: Path, **env: str) -> Iterator[Server]:
    server = Server(index_dir, log, **env)
    try:
        yield server
    finally:
        server.kill()


def add(client: httpx.Client, seed: int) -> int:
    response = client.post("/items", files=[("images", (f"{seed}.png", png(seed), "image/png"))])
    assert response.status_code == 201, response.text
    return int(response.json()["added"][0]["item"])


def check_served(client: httpx.Client, acked: set[int], deleted: set[int]) -> None:
    for key in acked:
        assert client.get(f"/items/{key}").status_code == 200, key
        assert client.get(f"/items/{key}/image").status_code == 200, key
    for key in deleted:
        assert client.get(f"/items/{key}").status_code == 404, key


@pytest.mark.slow
def test_kill_during_add_loses_nothing_acknowledged(tiny_index: Path, tmp_path: Path) -> None:
    index_dir = Path(shutil.copytree(tiny_index, tmp_path / "index"))
    log = tmp_path / "server.log"
    acked: set[int] = set()
    deleted: set[int] = set()
    errors: list[str] = []

    # 1. Adds, searches and deletes, with searches running while adds go on.
    with serving(index_dir, log) as server, server.client() as client:
        acked.add(add(client, 1))
        hits = client.post("/search", json={"items": [sorted(acked)[0]], "k": 5}).json()
        assert len(hits["queries"][0]["hits"]) == 5
        assert client.delete("/items/4").json()["deleted"] == 4
        deleted.add(4)

        def searcher() -> None:
            with server.client() as own:
                for i in range(15):
                    response = own.post(
                        "/search", files=[("images", ("q.png", png(100 + i), "image/png"))]
                    )
                    if response.status_code != 200:
                        errors.append(response.text)
                    versions = response.json()["index_version"]
                    assert isinstance(versions, int)

        def adder(first: int) -> None:
            with server.client() as own:
                for seed in range(first, first + 4):
                    acked.add(add(own, seed))

        threads = [threading.Thread(target=searcher) for _ in range(3)]
        threads += [threading.Thread(target=adder, args=(10 * (i + 1),)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors and len(acked) == 9
        stats = client.get("/stats").json()
        assert stats["items"] == TINY.train - 1 + 9 and stats["index_version"] == 10
        check_served(client, acked, deleted)
        server.kill()  # SIGKILL with nothing in flight

    # 2. SIGKILL between an add's segment file and its manifest (a 30 s pause there).
    with serving(index_dir, log, QUANTRIEVE_TEST_COMMIT_DELAY="30") as server:
        manifest = index_dir / "segments" / "manifest.json"
        before = manifest.read_bytes()
        outcome: list[object] = []

        def hanging_add() -> None:
            try:
                with server.client() as own:
                    outcome.append(
                        own.post("/items", files=[("images", ("x.png", png(7), "image/png"))])
                    )
            except httpx.HTTPError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=hanging_add)
        thread.start()
        orphan = index_dir / "segments" / "seg-000011.npz"
        deadline = time.monotonic() + 60
        while not orphan.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert orphan.exists(), log.read_text()
        server.kill()
        thread.join(timeout=30)
        assert len(outcome) == 1 and isinstance(outcome[0], httpx.HTTPError)  # never acked
        assert manifest.read_bytes() == before

    # 3. Restart: the previous complete version, then the same item number is given again.
    with serving(index_dir, log) as server, server.client() as client:
        stats = client.get("/stats").json()
        assert stats["items"] == 328 and stats["index_version"] == 10
        check_served(client, acked, deleted)
        assert client.get("/items/329").status_code == 404  # the unacknowledged add
        again = add(client, 8)
        assert again == 329 and client.get(f"/items/{again}/image").status_code == 200
        acked.add(again)

        # 4. SIGKILL at an arbitrary moment of a burst of adds from four clients.
        stop = threading.Event()

        def burst(first: int) -> None:
            with server.client() as own:
                seed = first
                while not stop.is_set():
                    try:
                        acked.add(add(own, seed))
                    except (httpx.HTTPError, AssertionError):
                        return
                    seed += 1

        threads = [threading.Thread(target=burst, args=(1000 * (i + 1),)) for i in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        server.kill()
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    # 5. Every acknowledged add is there, the directory loads with every checksum verified.
    live = open_live(index_dir)
    assert set(acked) <= set(live.keys.tolist()) and not deleted & set(live.keys.tolist())
    assert len(qr.PQIndex.load(index_dir)) == len(live)
    with serving(index_dir, log) as server, server.client() as client:
        check_served(client, acked, deleted)
        assert client.get("/stats").json()["items"] == len(live)
        server.stop()
    assert "serving" in log.read_text()
