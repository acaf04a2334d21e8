"""Failures inside a generation stay inside it, on the tiny SDXL: a model file removed or damaged after
it was listed, a sub-model that cannot be loaded, a device that runs out of memory.

Each is a picserve error that says what to do (ModelLoadError 503, OutOfMemory 502), and the engine is
left as it was: no half-loaded model in its cache, no half-applied sub-model (the next image equals the
base model's bit for bit), memory freed. Damaged files are copies in a models folder of this module's
own; the session's models folder is only linked in, never written. Out of memory is injected at torch's
layer (a forward pre-hook of the UNet or the VAE decoder, `nn.Module.to` while loading), as an allocator
raises it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from picserve import catalog, domain, errors
from picserve.domain import SubModel
from picserve.engine import tiny
from picserve.engine.engine import Engine
from tests.engine.dtypes import pixel_tolerance

SMALL = {"model_code": tiny.TINY_CODE, "prompt": "a photo of a cat", "width": 64, "height": 64, "steps": 2, "seed": 3}

#: what the two allocators and Python raise when memory runs out
OUT_OF_MEMORY = {
    "cuda": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "cpu-allocator": RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)"
    ),
    "python": MemoryError(),
}

_SUB_FILES = {"lora": "kohya-0.safetensors", "embedding": "emb-a.safetensors", "hypernetwork": "hyper-a.pt"}
_KIND_NAMES = {"lora": "LoRA", "embedding": "embedding", "hypernetwork": "hypernetwork"}


def spec(**fields: object) -> domain.GenerationSpec:
    return domain.GenerationSpec(**{**SMALL, **fields})


def pixels(generated, i: int = 0) -> np.ndarray:
    return np.asarray(generated.images[i], dtype=np.int16)


# --- ways to damage a file ----------------------------------------------------------------------------


def _deleted(path: Path) -> None:
    path.unlink()


def _garbage(path: Path) -> None:
    path.write_bytes(b"\xff" * 8 + b"not a safetensors header, not a pickle" * 4)


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header is whole, the tensors after it are not


def _folder_missing_unet_weights(path: Path) -> None:
    (path / "unet" / "diffusion_pytorch_model.safetensors").unlink()


def _folder_with_truncated_vae(path: Path) -> None:
    _truncated(path / "vae" / "diffusion_pytorch_model.safetensors")


#: main model copies: code → (a single file?, damage, words of the reason)
MAIN_DAMAGES = {
    "garbage-header": (True, _garbage, "header too large"),
    "truncated": (True, _truncated, "file not fully covered"),
    "folder-missing-unet": (False, _folder_missing_unet_weights, "models/main/doomed-folder-missing-unet/unet"),
    "folder-truncated-vae": (False, _folder_with_truncated_vae, "doomed-folder-truncated-vae/vae/diffusion_pytorch"),
}
SUB_DAMAGES = {"deleted": _deleted, "garbage": _garbage, "truncated": _truncated}


def _add_main_copy(root: Path, models_dir: Path, code: str, single_file: bool = True) -> Path:
    """A copy of the tiny SDXL as the main model `code` (a single file with its sidecar, or a folder)."""
    if single_file:
        shutil.copy(models_dir / "main" / f"{tiny.TINY_CODE}.safetensors", root / "main" / f"{code}.safetensors")
        shutil.copy(models_dir / "main" / f"{tiny.TINY_CODE}.json", root / "main" / f"{code}.json")
        return root / "main" / f"{code}.safetensors"
    shutil.copytree(models_dir / "main" / f"{tiny.TINY_CODE}-diffusers", root / "main" / code)
    return root / "main" / code


def _models_folder(root: Path, models_dir: Path) -> Path:
    """The tiny SDXL and the good sub-models linked in (read only)."""
    for kind in ("main", *_SUB_FILES):
        (root / kind).mkdir(parents=True)
    for name in (f"{tiny.TINY_CODE}.safetensors", f"{tiny.TINY_CODE}.json", f"{tiny.TINY_CODE}-diffusers"):
        (root / "main" / name).symlink_to(models_dir / "main" / name)
    for kind, name in _SUB_FILES.items():
        (root / kind / name).symlink_to(models_dir / kind / name)
    return root


@dataclass
class Shared:
    root: Path
    engine: Engine


@pytest.fixture(scope="module")
def shared(tmp_path_factory, models_dir, config_cache) -> Shared:
    """One engine for the module (the tiny SDXL loads once), on a models folder holding a copy, free to
    damage, for every test that damages one: `doomed-<damage>` main models, `doomed-<kind>-<damage>`
    sub-models, the LoRA `doomed-worker`. Its catalog scans once: the copies stay listed after they are
    damaged or removed."""
    root = _models_folder(tmp_path_factory.mktemp("failures") / "models", models_dir)
    _add_main_copy(root, models_dir, "doomed-deleted")
    for code, (single_file, _, _) in MAIN_DAMAGES.items():
        _add_main_copy(root, models_dir, f"doomed-{code}", single_file)
    for kind, name in _SUB_FILES.items():
        for damage in SUB_DAMAGES:
            shutil.copy(models_dir / kind / name, root / kind / f"doomed-{kind}-{damage}{Path(name).suffix}")
    shutil.copy(models_dir / "lora" / _SUB_FILES["lora"], root / "lora" / "doomed-worker.safetensors")
    save_file(
        {"foo.lora_down.weight": torch.zeros(4, 8), "foo.lora_up.weight": torch.zeros(8, 4)},
        str(root / "lora" / "nothing.safetensors"),
    )
    engine = Engine(catalog.Catalog(root, ttl=3600), device="cpu", cache_dir=config_cache, max_loaded=2, max_chunk=4)
    engine.generate(spec())  # scans the folder and loads the tiny SDXL
    return Shared(root, engine)


@pytest.fixture(scope="module")
def engine(shared, dtype, config_cache) -> Engine:
    """The module's engine; in the fp16 tier (tests marked `dtypes`) one in that dtype on the same folder."""
    if dtype == "float32":
        return shared.engine
    return Engine(
        catalog.Catalog(shared.root, ttl=3600),
        device="cpu",
        cache_dir=config_cache,
        max_loaded=2,
        max_chunk=4,
        dtype=dtype,
    )


# --- main models ------------------------------------------------------------------------------------


def test_a_main_model_deleted_after_it_was_listed(shared, engine):
    (shared.root / "main" / "doomed-deleted.safetensors").unlink()
    with pytest.raises(errors.ModelLoadError) as failed:
        engine.generate(spec(model_code="doomed-deleted"))
    assert failed.value.ret_code == 503
    assert failed.value.message == (
        "MainModel 'doomed-deleted': the file models/main/doomed-deleted.safetensors could not be read "
        "(it is missing); the operator should restore or replace it; ListModels shows what is installed"
    )
    assert engine.pipelines.loaded == [tiny.TINY_CODE]
    assert engine.generate(spec()).images  # the next task runs


def test_a_main_model_deleted_and_no_longer_listed(tmp_path, models_dir, config_cache):
    root = _models_folder(tmp_path / "models", models_dir)
    _add_main_copy(root, models_dir, "doomed")
    engine = Engine(catalog.Catalog(root, ttl=0), device="cpu", cache_dir=config_cache)
    assert "doomed" in engine.pipelines.catalog.entries("main")
    (root / "main" / "doomed.safetensors").unlink()
    with pytest.raises(errors.ModelLoadError, match=r"MainModel 'doomed' is no longer in the models folder .*restore"):
        engine.generate(spec(model_code="doomed"))
    assert engine.pipelines.loaded == []


@pytest.mark.parametrize("code", list(MAIN_DAMAGES))
def test_a_damaged_main_model_is_a_load_error_and_is_not_kept(shared, engine, code):
    single_file, damage, words = MAIN_DAMAGES[code]
    before = pixels(engine.generate(spec()))
    damage(shared.root / "main" / (f"doomed-{code}.safetensors" if single_file else f"doomed-{code}"))

    for _ in range(2):  # the second try fails the same way: nothing half-loaded was kept
        with pytest.raises(errors.ModelLoadError) as failed:
            engine.generate(spec(model_code=f"doomed-{code}"))
        message = failed.value.message
        where = f"file models/main/doomed-{code}.safetensors" if single_file else f"folder models/main/doomed-{code}"
        assert message.startswith(f"MainModel 'doomed-{code}': the {where} could not be read (")
        assert words in message and message.endswith(
            "; the operator should restore or replace it; ListModels shows what is installed"
        )
        assert str(shared.root) not in message  # paths as the operator knows them, not the server's layout
        assert engine.pipelines.loaded == [tiny.TINY_CODE]
    assert np.array_equal(pixels(engine.generate(spec())), before)


# --- sub-models -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(_SUB_FILES))
@pytest.mark.parametrize("damage", list(SUB_DAMAGES))
def test_a_sub_model_that_fails_to_load_leaves_the_main_model_as_before(shared, engine, kind, damage):
    code, suffix = f"doomed-{kind}-{damage}", Path(_SUB_FILES[kind]).suffix
    prompt = f"{code}, a photo of a cat"  # holds the embedding's token
    plain = pixels(engine.generate(spec(prompt=prompt)))
    request = spec(prompt=prompt, sub_models=(SubModel(kind, code, 0.8),))
    assert np.abs(pixels(engine.generate(request)) - plain).max() > 0  # it worked, and is loaded now

    SUB_DAMAGES[damage](shared.root / kind / f"{code}{suffix}")
    with pytest.raises(errors.ModelLoadError) as failed:
        engine.generate(request)
    message = failed.value.message
    assert failed.value.ret_code == 503
    assert message.startswith(f"{_KIND_NAMES[kind]} '{code}' could not be read (")
    assert ("[Errno 2] No such file" in message) == (damage == "deleted")
    assert message.endswith(
        "; the main model was left unchanged. Submit the task without it, or ask the operator to restore or "
        f"replace models/{kind}/{code}{suffix} (ListModels shows what is installed)"
    )
    assert np.array_equal(pixels(engine.generate(spec(prompt=prompt))), plain)  # the base model, bit for bit
    # A damaged LoRA's adapter was unloaded before its new version failed; a deleted one's stays loaded
    # (disabled, as the base image shows) until evicted, as any LoRA no longer asked for.
    if kind == "lora":
        assert (f"lora_doomed_lora_{damage}" in engine.holdings()["lora"]) == (damage == "deleted")


def test_a_lora_whose_keys_match_nothing_is_refused(engine):
    base = pixels(engine.generate(spec()))
    for _ in range(2):  # the second try is refused the same way, not taken for loaded
        with pytest.raises(errors.ModelLoadError, match="LoRA 'nothing' could not be applied: none of its 2 keys"):
            engine.generate(spec(sub_models=(SubModel("lora", "nothing", 1.0),)))
    assert "lora_nothing" not in engine.holdings()["lora"]
    assert np.array_equal(pixels(engine.generate(spec())), base)


# --- out of memory ----------------------------------------------------------------------------------


@contextlib.contextmanager
def out_of_memory(module: torch.nn.Module, when: Callable[[int], bool], error: BaseException) -> Iterator[list[int]]:
    """`module`'s forward raises `error` whenever `when(batch)`; yields the batch size of every call."""
    calls: list[int] = []

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        batch = (args[0] if args else next(iter(kwargs.values()))).shape[0]
        calls.append(batch)
        if when(batch):
            raise error

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def uninterrupted(engine) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The three images of `spec(batch_size=3)` denoised together, and one at a time, with no failure."""
    batched = engine.generate(spec(batch_size=3))
    chunk, engine.max_chunk = engine.max_chunk, 1
    try:
        singles = engine.generate(spec(batch_size=3))
    finally:
        engine.max_chunk = chunk
    return [pixels(batched, i) for i in range(3)], [pixels(singles, i) for i in range(3)]


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier: the VAE decode runs upcast to fp32 there
@pytest.mark.parametrize(
    ("where", "error"),
    [("unet", OUT_OF_MEMORY[name]) for name in OUT_OF_MEMORY] + [("vae-decoder", OUT_OF_MEMORY["cuda"])],
    ids=[f"unet-{name}" for name in OUT_OF_MEMORY] + ["vae-decoder-cuda"],
)
def test_a_batch_that_runs_out_of_memory_is_retried_one_image_at_a_time(engine, uninterrupted, where, error):
    batched, singles = uninterrupted
    pipe = engine.pipelines.get(tiny.TINY_CODE).base
    # The UNet sees each image twice (classifier-free guidance), the VAE decoder once.
    module, per_image = (pipe.unet, 2) if where == "unet" else (pipe.vae.decoder, 1)

    progress: list[float] = []
    with out_of_memory(module, lambda batch: batch > per_image, error) as calls:
        retried = engine.generate(spec(batch_size=3), progress.append)

    assert calls[0] == 3 * per_image and set(calls[1:]) == {per_image}  # failed at 3, then one at a time
    assert retried.seeds == [3, 4, 5]
    for i in range(3):  # same seeds: the images of a run that went one at a time from the start
        assert np.array_equal(pixels(retried, i), singles[i])
        assert np.abs(pixels(retried, i) - batched[i]).max() <= 1  # batched math differs by ~1e-6 (fp16: ~1e-3)
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)  # it never goes back


@pytest.mark.dtypes("float32", "float16")  # the fp16 tier
@pytest.mark.parametrize(
    ("batch", "calls", "words"),
    [(3, [6, 2], "3 images of 64×64, even one image at a time"), (1, [2], "a 64×64 image")],
    ids=["batch", "one-image"],
)
def test_out_of_memory_even_one_image_at_a_time_is_an_error_and_the_engine_recovers(engine, batch, calls, words):
    base = pixels(engine.generate(spec()))
    pipe = engine.pipelines.get(tiny.TINY_CODE).base
    processors = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
    vocabulary = len(pipe.tokenizer)
    subs = (SubModel("lora", "kohya-0", 0.8), SubModel("embedding", "emb-a"), SubModel("hypernetwork", "hyper-a"))

    with out_of_memory(pipe.unet, lambda batch: True, OUT_OF_MEMORY["cuda"]) as seen:
        with pytest.raises(errors.OutOfMemory) as failed:
            engine.generate(spec(prompt="emb-a, a photo of a cat", batch_size=batch, sub_models=subs))
    assert seen == calls  # a batch is retried once, one image at a time; a single image is not
    assert failed.value.ret_code == 502
    assert failed.value.message == (
        f"the server ran out of memory generating {words}; lower Width/Height or BatchSize, or retry later"
    )
    # every sub-model came off; the next generation runs and gives the base image
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == processors
    assert len(pipe.tokenizer) == vocabulary
    # bit for bit in fp32; in fp16 the LoRA stays loaded, disabled, which may round one level apart
    assert np.abs(pixels(engine.generate(spec())) - base).max() <= pixel_tolerance(engine)


@pytest.mark.parametrize("code", [tiny.TINY_CODE, f"{tiny.TINY_CODE}-diffusers"], ids=["single-file", "folder"])
def test_out_of_memory_while_loading_unloads_the_other_models_or_gives_up(models_dir, config_cache, monkeypatch, code):
    engine = Engine(catalog.Catalog(models_dir), device="cpu", cache_dir=config_cache, max_loaded=2)
    other = f"{tiny.TINY_INPAINT_CODE}-diffusers"
    engine.pipelines.get(other)
    to = torch.nn.Module.to
    failures = [1]

    def allocating(module: torch.nn.Module, *args: object, **kwargs: object) -> torch.nn.Module:
        if failures[0] > 0:
            failures[0] -= 1
            raise OUT_OF_MEMORY["cuda"]
        return to(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", allocating)
    assert engine.generate(spec(model_code=code)).images  # the second try, with the other model unloaded
    assert engine.pipelines.loaded == [code]

    engine.pipelines.unload_all()
    failures[0] = 10**6  # never enough memory, and no other model left to unload
    with pytest.raises(errors.OutOfMemory) as failed:
        engine.generate(spec(model_code=code))
    assert failed.value.message.startswith(f"the server ran out of memory loading MainModel '{code}'; retry later")
    assert engine.pipelines.loaded == []  # nothing half-loaded was kept
    monkeypatch.undo()
    assert engine.generate(spec(model_code=code)).images


# --- through the real worker loop -----------------------------------------------------------------------


def test_a_failed_task_then_the_next_on_the_same_engine_through_the_worker(shared, engine, tmp_path):
    from fastapi.testclient import TestClient

    from picserve.api.app import create_app
    from picserve.config import Settings
    from picserve.sdk import Client
    from picserve.services import Services
    from picserve.storage.memory import MemoryStore
    from picserve.tasks.memory import InMemoryRepository, in_memory_app
    from picserve.worker import jobs, process

    settings = Settings(data_dir=tmp_path / "data", models_dir=shared.root, progress_interval=0.0, device="cpu")
    repo, store = InMemoryRepository(in_memory_app()), MemoryStore(settings.result_ttl_seconds)
    runtime = jobs.WorkerRuntime(repo=repo, engine=engine, store=store, name="engine-worker")
    body = {
        "MainModel": {"ModelCode": tiny.TINY_CODE},
        "PositivePrompts": ["a photo of a cat"],
        "Width": 64,
        "Height": 64,
        "Seed": 3,
        "TranslatePrompts": False,
    }
    try:
        with TestClient(create_app(settings, Services.build(settings, repo=repo, store=store))) as api:
            api.portal.call(repo.app.open_async)
            account = api.portal.call(repo.create_key, "test", 100_000)
            client = Client("http://testserver", account.public_key, account.private_key, http=api)
            failing = client.generate_images_sdxl(**body, SubModelList=[{"ModelCode": "doomed-worker"}])
            following = client.generate_images_sdxl(**body)
            _garbage(shared.root / "lora" / "doomed-worker.safetensors")  # damaged after the task was accepted
            api.portal.call(process.work, repo.app, runtime, settings, True)
            failed, finished = client.list_tasks_details([failing, following])
            used = client.get_credit_balance()["UsedCredits"]
    finally:
        runtime.engine_thread.close()

    assert (failed["Status"], failed["ErrorCode"], failed["ImgList"]) == ("Error", 503, [])
    assert failed["ErrorMassage"].startswith("LoRA 'doomed-worker' could not be read (")
    assert "restore or replace models/lora/doomed-worker.safetensors" in failed["ErrorMassage"]
    assert (finished["Status"], len(finished["ImgList"])) == ("Finished", 1)
    assert len(store) == 1 and used == finished["ConsumeApiPoint"]
