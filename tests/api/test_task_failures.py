"""Failures inside a task stay inside the task: a store that fills up, a device that runs out of memory.

Each task ends `Error` with its ErrorCode and a message that says what to do, leaves no result files,
costs no credits, and the worker goes on to the next task. The real worker loop, the in-memory
repository and store; FakeEngine simulates a GPU's memory (`memory_pixels`) and runs the engine's own
out-of-memory policy (engine/memory.py).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from picserve import errors
from picserve.engine.fake import FakeEngine
from picserve.storage.disk import DiskStore

from .conftest import request


def ended(detail: dict) -> tuple:
    return detail["Status"], detail["ErrorCode"], detail["ImgList"], detail["ConsumeApiPoint"]


#: one 64×72 result: noise does not compress, so its PNG is a little over its raw RGB bytes
ONE_IMAGE = 64 * 72 * 3


def test_a_store_that_fills_up_on_the_second_image_fails_the_task_and_keeps_nothing(stack, client):
    stack.store.capacity = ONE_IMAGE * 3 // 2  # room for one result, not two
    failing = client.generate_images_sdxl(**request(BatchSize=3))
    following = client.generate_images_sdxl(**request(Seed=5))
    stack.run_worker()

    failed, finished = client.list_tasks_details([failing, following])
    assert ended(failed) == ("Error", 520, [], 0)
    assert "could not be stored (the store is full" in failed["ErrorMassage"]
    assert "the operator should free space" in failed["ErrorMassage"]
    # the worker served the next task, in the room the failed one gave back
    assert finished["Status"] == "Finished" and len(finished["ImgList"]) == 1
    assert len(stack.store) == 1
    assert client.get_credit_balance()["UsedCredits"] == finished["ConsumeApiPoint"]


def test_a_batch_that_runs_out_of_memory_is_retried_one_image_at_a_time(stack, client):
    engine = FakeEngine(max_chunk=4, memory_pixels=64 * 72)  # one image fits, three at once do not
    uid = client.generate_images_sdxl(**request(BatchSize=3))
    stack.run_worker(engine)

    detail = client.list_tasks_details([uid])[0]
    assert detail["Status"] == "Finished" and detail["SeedList"] == [1, 2, 3], detail
    assert engine.chunks == [[1, 2, 3], [1], [2], [3]]
    assert client.get_credit_balance()["UsedCredits"] == detail["ConsumeApiPoint"]

    # the same images as a run that never ran out of memory
    again = client.generate_images_sdxl(**request(BatchSize=3))
    stack.run_worker(FakeEngine())
    retried = [client.fetch(url) for url in detail["ImgList"]]
    assert retried == [client.fetch(url) for url in client.list_tasks_details([again])[0]["ImgList"]]


@pytest.mark.parametrize(
    ("batch", "chunks", "words"),
    [
        (3, [[1, 2, 3], [1]], "3 images of 64×72, even one image at a time"),
        (1, [[1]], "a 64×72 image"),
    ],
    ids=["batch", "one-image"],
)
def test_out_of_memory_even_one_image_at_a_time_fails_the_task_and_the_next_runs(stack, client, batch, chunks, words):
    engine = FakeEngine(max_chunk=4, memory_pixels=64 * 72 - 1)  # not even one 64×72 image fits
    failing = client.generate_images_sdxl(**request(BatchSize=batch))
    following = client.generate_images_sdxl(**request(Height=64, BatchSize=2))  # 64×64 images fit one at a time
    stack.run_worker(engine)

    failed, finished = client.list_tasks_details([failing, following])
    assert ended(failed) == ("Error", 502, [], 0)
    assert failed["ErrorMassage"] == (
        f"the GPU ran out of memory generating {words}; lower Width/Height or BatchSize, or retry later"
    )
    assert engine.chunks[: len(chunks)] == chunks  # retried once, one image at a time, only for a batch
    assert finished["Status"] == "Finished" and len(finished["ImgList"]) == 2
    assert len(stack.store) == 2
    assert client.get_credit_balance()["UsedCredits"] == finished["ConsumeApiPoint"]


# --- DiskStore on a disk that is full ---------------------------------------------------------------
# A file size limit (RLIMIT_FSIZE) makes the kernel refuse a write past it, as a full disk does: in a
# child process, so nothing else of the test run is limited.

_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from picserve import errors
from picserve.storage.disk import DiskStore

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of a kill
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
store = DiskStore(Path(sys.argv[1]), ttl_seconds=3600)
first = store.put(b"x" * 10_000)
try:
    store.put(b"y" * 30_000)  # written up to the limit, then refused
except errors.StorageError as exc:
    print(exc.ret_code, exc.message)
print(first)
"""


def test_disk_store_on_a_full_disk_raises_storage_error_and_leaves_no_partial_file(tmp_path):
    folder = tmp_path / "results"
    run = subprocess.run([sys.executable, "-c", _FULL_DISK, str(folder)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    error, first = run.stdout.splitlines()
    assert error == (
        f"520 the result images could not be stored (File too large); the operator should free disk space in "
        f"{folder}; then submit the task again"
    )
    assert [p.name for p in folder.iterdir()] == [first]  # the first result, and no temporary file


def test_disk_store_that_cannot_create_its_folder_says_where(tmp_path):
    (tmp_path / "data").write_text("a file where the results folder should be")
    store = DiskStore(tmp_path / "data" / "results", ttl_seconds=3600)
    with pytest.raises(errors.StorageError, match=r"could not be stored .*check .*data/results"):
        store.put(b"png")
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
