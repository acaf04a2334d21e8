"""The RAM tier's pinned block (engine/loader.py): a model's weights packed into one block of host
memory, as many bytes as `pipeline_bytes` counts plus alignment, tied weights kept tied, values
bit-identical; released when the model leaves the tier. Pinning itself needs CUDA: here the packing runs
into a plain uint8 tensor, and the page-locking calls go to a recording stand-in for the CUDA runtime."""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import mmap
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from picserve import catalog, domain
from picserve.engine import loader, tiny
from picserve.engine.engine import Engine


class Tied(torch.nn.Module):
    """A small model with a tied weight, a second parameter viewing another's storage, mixed dtypes and
    a buffer: what packing must keep as it was."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(7, 5)
        self.head = torch.nn.Linear(5, 7, bias=False)
        self.head.weight = self.embed.weight  # tied: one Parameter in two modules
        self.proj = torch.nn.Linear(5, 3)
        # another Parameter over part of proj's storage (as a fused-and-split weight would be)
        self.part = torch.nn.Parameter(self.proj.weight.data[1:, 2:].t())
        self.fp16 = torch.nn.Linear(3, 3).to(torch.float16)
        self.register_buffer("ids", torch.arange(11, dtype=torch.int64))
        self.register_buffer("empty", torch.zeros(0))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(tokens)
        return self.head(hidden) + self.proj(hidden).sum() + self.fp16(self.proj(hidden).half()).float().sum()


def make_pipe() -> SimpleNamespace:
    torch.manual_seed(0)
    return SimpleNamespace(unet=Tied(), text_encoder=Tied(), vae=None)


def snapshot(pipe) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value.detach().contiguous().clone()
        for name in ("unet", "text_encoder")
        for key, value in [*getattr(pipe, name).named_parameters(), *getattr(pipe, name).named_buffers()]
    }


def same(before: dict[str, torch.Tensor], pipe) -> bool:
    after = snapshot(pipe)
    return before.keys() == after.keys() and all(
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
        if a.numel()
        else a.shape == b.shape
        for a, b in ((before[k], after[k]) for k in before)
    )


def test_the_layout_counts_each_storage_once_aligned():
    pipe = make_pipe()
    tensors = loader._weights(pipe)
    offsets, size = loader._block_layout(tensors)
    storages = {loader._storage_key(t): t.untyped_storage().nbytes() for t in tensors if t.untyped_storage().nbytes()}
    assert offsets.keys() == storages.keys()
    assert all(offset % loader._BLOCK_ALIGN == 0 for offset in offsets.values())
    # the block is what pipeline_bytes counts, plus less than one alignment per storage
    counted = loader.pipeline_bytes(pipe)
    assert counted == sum(storages.values())
    assert counted <= size < counted + len(storages) * loader._BLOCK_ALIGN
    # storages do not overlap
    spans = sorted((offsets[key], offsets[key] + storages[key]) for key in offsets)
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))


def test_packing_puts_every_weight_in_one_block_tied_ones_tied_values_identical():
    pipe = make_pipe()
    before = snapshot(pipe)
    tokens = torch.tensor([[1, 2, 3, 6]])
    expected = pipe.unet(tokens)
    tensors = loader._weights(pipe)
    _, size = loader._block_layout(tensors)
    block = torch.empty(size, dtype=torch.uint8)

    loader._pack(tensors, block)

    home = block.untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == home for t in tensors if t.numel())
    assert same(before, pipe)
    for model in (pipe.unet, pipe.text_encoder):
        assert model.head.weight is model.embed.weight  # still one Parameter
        assert model.part.data_ptr() == model.proj.weight[1:, 2:].data_ptr()  # still a view of proj
        assert model.part.stride() == (1, 5) and model.fp16.weight.dtype == torch.float16
        assert model.ids.dtype == torch.int64 and model.empty.shape == (0,)
    with torch.no_grad():
        pipe.unet.embed.weight[0, 0] = 42.0  # tied: the head reads it
        pipe.unet.proj.weight[2, 3] = -7.0  # and the view sees its owner's change
    assert pipe.unet.head.weight[0, 0] == 42.0 and pipe.unet.part[1, 1] == -7.0
    # the packed model computes what it did (restoring the two weights changed above)
    with torch.no_grad():
        pipe.unet.embed.weight[0, 0] = before["unet.embed.weight"][0, 0]
        pipe.unet.proj.weight[2, 3] = before["unet.proj.weight"][2, 3]
    assert torch.equal(pipe.unet(tokens), expected)


def test_the_round_trip_out_of_the_block_is_bit_identical():
    pipe = make_pipe()
    before = snapshot(pipe)
    tensors = loader._weights(pipe)
    block = torch.empty(loader._block_layout(tensors)[1], dtype=torch.uint8)
    loader._pack(tensors, block)
    again = loader._weights(pipe)  # packed once more, from the first block into a second one
    second = torch.empty(loader._block_layout(again)[1], dtype=torch.uint8)
    loader._pack(again, second)
    assert same(before, pipe)
    assert pipe.unet.head.weight is pipe.unet.embed.weight
    for model in (pipe.unet, pipe.text_encoder):  # and off it (as a move to a device does)
        model.to(torch.float64).to(torch.float32)
    assert pipe.unet.head.weight is pipe.unet.embed.weight


def test_a_block_too_small_or_of_another_dtype_is_refused():
    pipe = make_pipe()
    tensors = loader._weights(pipe)
    _, size = loader._block_layout(tensors)
    with pytest.raises(ValueError, match="1-D uint8"):
        loader._pack(tensors, torch.empty(size - 1, dtype=torch.uint8))
    with pytest.raises(ValueError, match="1-D uint8"):
        loader._pack(tensors, torch.empty(size, dtype=torch.float32))


class FakeCudart:
    """The CUDA runtime's host registration, recorded; `fail` makes cudaHostRegister return an error."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[str, int, int]] = []
        self.registered: dict[int, int] = {}

    def cudaHostRegister(self, ptr: int, size: int, flags: int) -> int:
        self.calls.append(("register", ptr, size))
        if self.fail:
            return 2  # cudaErrorMemoryAllocation
        self.registered[ptr] = size
        return 0

    def cudaHostUnregister(self, ptr: int) -> int:
        self.calls.append(("unregister", ptr, self.registered.pop(ptr)))
        return 0


@pytest.fixture
def cudart(monkeypatch):
    """CUDA "available", its runtime the recording stand-in; synchronize a no-op."""
    fake = FakeCudart()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    return fake


def test_moving_to_ram_pins_one_block_per_model_and_leaving_releases_it(cudart):
    pipe = make_pipe()
    before = snapshot(pipe)
    counted = loader.pipeline_bytes(pipe)

    loader._move(pipe, torch.device("cpu"), pin=True)

    (call,) = cudart.calls  # one block, locked once
    kind, ptr, size = call
    assert kind == "register" and ptr % mmap.PAGESIZE == 0 and size % mmap.PAGESIZE == 0
    assert counted <= size < counted + 64 * loader._BLOCK_ALIGN + mmap.PAGESIZE  # what is counted, plus padding
    assert loader._pinned_bytes(pipe) == size
    weights = [t for t in loader._weights(pipe) if t.numel()]
    assert len({t.untyped_storage().data_ptr() for t in weights}) == 1  # one storage: the block's
    assert all(ptr <= t.data_ptr() < ptr + size for t in weights)  # in its locked pages
    assert same(before, pipe) and pipe.unet.head.weight is pipe.unet.embed.weight
    storage = getattr(pipe, loader._PINNED).tensor.untyped_storage()._weak_ref()
    del weights  # the old tensors would keep it: a move to the meta device makes new Parameters

    loader._move(pipe, torch.device("meta"), pin=False)  # its weights go to a device: the block goes

    assert cudart.calls[1:] == [("unregister", ptr, size)] and not cudart.registered
    assert loader._pinned_bytes(pipe) == 0 and not hasattr(pipe, loader._PINNED)
    assert torch.UntypedStorage._expired(storage)  # freed, not cached


def test_a_model_dropped_with_its_block_unlocks_it(cudart):
    pipe = make_pipe()
    loader._move(pipe, torch.device("cpu"), pin=True)
    assert len(cudart.registered) == 1
    loader._unpin(pipe)  # what the cache does when the RAM tier drops the model
    assert not cudart.registered
    assert same(snapshot(pipe), pipe)  # a tensor still viewing the block keeps it readable (pageable)
    loader._move(pipe, torch.device("cpu"), pin=True)
    del pipe  # collected without an explicit release: unlocked all the same
    gc.collect()
    assert not cudart.registered


def test_a_block_that_cannot_be_locked_stays_pageable_with_a_warning(cudart, caplog):
    cudart.fail = True
    caplog.set_level(logging.WARNING, logger=loader.__name__)
    pipe = make_pipe()
    before = snapshot(pipe)
    loader._move(pipe, torch.device("cpu"), pin=True)
    assert same(before, pipe) and loader._pinned_bytes(pipe) == 0
    assert any("could not page-lock" in r.getMessage() and "CUDA error 2" in r.getMessage() for r in caplog.records)
    loader._move(pipe, torch.device("meta"), pin=False)
    assert [kind for kind, *_ in cudart.calls] == ["register"]  # nothing to unlock


def test_the_tiers_pin_a_model_moving_to_ram_log_the_blocks_size_and_unpin_it_when_dropped(cudart, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger=loader.__name__)
    cache = loader.PipelineCache(catalog.Catalog(tmp_path), device="meta", host_budget=2**20)
    for code in ("a", "b"):
        pipe = make_pipe()
        pipe.scheduler = SimpleNamespace(config={})
        model = loader.LoadedModel(code, pipe)
        model.nbytes = loader.pipeline_bytes(pipe)
        cache._models_by_code[code] = model
    cache.host_budget = cache._models_by_code["a"].nbytes  # room in RAM for one

    cache._evict("a")

    ((kind, ptr, size),) = cudart.calls
    assert cache.on_host == ["a"] and kind == "register"
    assert any(f"one page-locked block of {size:,} bytes" in r.getMessage() for r in caplog.records)

    cache._evict("b")  # a is dropped from RAM for b: its block is unlocked then and there

    assert cache.on_host == ["b"]
    assert cudart.calls[1] == ("unregister", ptr, size) and cudart.calls[2][0] == "register"
    assert list(cudart.registered.values()) == [size]


def test_the_block_is_locked_and_unlocked_with_its_gpu_current(cudart, monkeypatch):
    # a worker on cuda:1 must not make a CUDA context on GPU 0 by calling the runtime from there
    current: list[torch.device] = []

    @contextlib.contextmanager
    def device(which):
        current.append(which)
        yield

    monkeypatch.setattr(torch.cuda, "device", device)
    block = loader._PinnedBlock(10_000, torch.device("cuda:1"))
    assert block.pinned and block.nbytes == -(-10_000 // mmap.PAGESIZE) * mmap.PAGESIZE
    block.release()
    block.release()  # once only
    assert current == [torch.device("cuda:1")] * 2
    assert [kind for kind, *_ in cudart.calls] == ["register", "unregister"]


def test_the_tiny_sdxl_generates_the_same_from_its_block(models_dir, config_cache):
    # the real pipeline, packed into one (here pageable) block: every weight there, the same images
    engine = Engine(catalog.Catalog(models_dir), device="cpu", cache_dir=config_cache)
    spec = domain.GenerationSpec(model_code=tiny.TINY_CODE, prompt="a cat", width=64, height=64, steps=2, seed=11)
    first = engine.generate(spec)
    (model,) = engine.pipelines.models()
    counted = loader.pipeline_bytes(model.base)
    assert counted == model.nbytes

    loader._move(model.base, torch.device("cpu"), pin=True)

    block = getattr(model.base, loader._PINNED)
    weights = loader._weights(model.base)
    assert len({t.untyped_storage().data_ptr() for t in weights if t.numel()}) == 1
    assert counted <= block.nbytes < counted + len(weights) * loader._BLOCK_ALIGN + mmap.PAGESIZE
    second = engine.generate(spec)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first.images, second.images, strict=True))
