"""Encoding in chunks into a job folder: the same codes as in memory, resumable after a kill,
in shards, refused for other images or another model, and through the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from typer.testing import CliRunner

import quantrieve as qr
from quantrieve.api.encode_job import EncodeJob, EncodeJobError
from quantrieve.cli import app
from quantrieve.index.format import image_fingerprints


@pytest.fixture(scope="module")
def run(tiny_run: Path) -> Path:
    """The shared tiny training run (read only: jobs and indexes go to tmp_path)."""
    return tiny_run


@pytest.fixture(scope="module")
def database(tiny_fashion: Path) -> qr.ImageSet:
    return qr.read_dataset("fashion-mnist", tiny_fashion)["train"]


def test_chunks_give_the_codes_of_one_pass(run: Path, database: qr.ImageSet, tmp_path: Path):
    retriever = qr.Retriever.load(run, device="cpu")
    expected = retriever.encode(database, chunk=len(database))
    job = EncodeJob(retriever, database, tmp_path / "job", chunk=50)
    chunks = math.ceil(TINY.train / 50)
    assert job.num_chunks == chunks and job.run() == chunks and job.finished()
    codes, content = job.codes()
    np.testing.assert_array_equal(codes, expected)
    np.testing.assert_array_equal(content, image_fingerprints(database.images))
    job.remove()
    assert not (tmp_path / "job").exists()


def test_a_killed_job_resumes_and_shards_share_the_work(
    run: Path, database: qr.ImageSet, tmp_path: Path
) -> None:
    retriever = qr.Retriever.load(run, device="cpu")
    expected = retriever.encode(database)

    def killed_after_two_chunks(done: int, total: int) -> None:
        if done >= 100:
            raise KeyboardInterrupt

    job = EncodeJob(retriever, database, tmp_path / "job", chunk=50)
    with pytest.raises(KeyboardInterrupt):
        job.run(progress=killed_after_two_chunks)
    assert job.done_chunks() == {0, 1}
    again = EncodeJob(retriever, database, tmp_path / "job", chunk=50)
    assert again.run(shard=(1, 2)) == 2  # chunks 1, 3, 5: 1 was done
    assert not again.finished()
    with pytest.raises(EncodeJobError, match="chunks are not encoded yet"):
        again.codes()
    assert again.run(shard=(0, 2)) == 3  # 0, 2, 4, 6: 0 was done
    np.testing.assert_array_equal(again.codes()[0], expected)


def test_a_job_of_other_images_is_refused(run: Path, database: qr.ImageSet, tmp_path: Path) -> None:
    retriever = qr.Retriever.load(run, device="cpu")
    EncodeJob(retriever, database, tmp_path / "job", chunk=50)
    with pytest.raises(EncodeJobError, match="ids_sha256"):
        EncodeJob(retriever, database.subset(np.arange(100)), tmp_path / "job", chunk=50)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(qr.QuantrieveError, match="is not empty and is not a encode job"):
        EncodeJob(retriever, database, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_cli_shards_then_builds_the_index(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    for shard in ("0/2", "1/2"):
        result = CliRunner().invoke(
            app, ["encode", str(run), "--out", str(out), "--chunk", "64", "--shard", shard]
        )
        assert result.exit_code == 0, result.output
    whole = tmp_path / "whole"
    result = CliRunner().invoke(app, ["encode", str(run), "--out", str(whole)])
    assert result.exit_code == 0, result.output
    a, b = qr.PQIndex.load(out), qr.PQIndex.load(whole)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.ids == b.ids and json.loads((out / "index.json").read_text())["has_content"]
    assert not (tmp_path / "index.encoding").exists()
