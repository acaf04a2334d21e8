"""Tasks as a tagged union of action specs, on both repositories: a task of a second kind (a test-only
one here; the image toolkit brings the first real one) is stored with its kind and version, read back
as its own spec type, counted and filtered by the model it needs (what the workers' fetch routes by),
run by the pipeline of its kind, and finished, its reference image stashed and dropped like a
generation's. A spec stored by an earlier version of its kind reads back."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from PIL import Image

from picserve import domain, domain_tools
from picserve.config import Settings
from picserve.engine import pipelines
from picserve.engine.base import Generated, GenerationEngine, PreviewCallback, StepCallback
from picserve.engine.fake import FakeEngine
from picserve.storage.memory import MemoryStore
from picserve.tasks import references
from picserve.tasks.service import TaskService
from picserve.worker import jobs, process
from tests.contract.conftest import BackendFactory

Status = domain.TaskStatus


@dataclasses.dataclass(frozen=True)
class EchoSpec:
    """A test-only task kind: an image of `side`² in `colour`, from model `model_code`. Version 1
    stored the colour as `color`; version 2 reads both."""

    colour: str
    side: int = 8
    model_code: str | None = "echo-model"
    #: a reference image, stashed in the store while queued (tasks/references.py: any `x` / `x_key` pair)
    image: str | None = None
    image_key: str | None = None

    kind: ClassVar[str] = "test-echo"
    version: ClassVar[int] = 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any], version: int = 1) -> EchoSpec:
        data = json.loads(text) if isinstance(text, str) else dict(text)
        if version == 1:
            data["colour"] = data.pop("color")
        return cls(**data)

    def needs(self) -> domain.Needs:
        return domain.Needs(self.model_code)

    def work(self) -> int:
        return self.side * self.side

    def cost(self, divisor: int) -> int:
        return self.side


def _echo(
    engine: GenerationEngine, spec: domain.ActionSpec, on_step: StepCallback, on_preview: PreviewCallback | None
) -> Generated:
    assert isinstance(spec, EchoSpec) and spec.image is not None  # the reference image is back
    on_step(1.0)
    return Generated([Image.new("RGB", (spec.side, spec.side), spec.colour)], [0], [f"echo {spec.colour}"])


if EchoSpec.kind not in domain.SPEC_TYPES:
    domain.register_spec(EchoSpec)
    pipelines.register(EchoSpec.kind, _echo)

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def test_a_second_task_kind_is_stored_fetched_routed_and_finished(backend_factory: BackendFactory, tmp_path) -> None:
    async def main() -> None:
        async with backend_factory() as backend:
            repo, store = backend.repo, MemoryStore(3600)
            account = await repo.create_key("kinds", 1_000)
            service = TaskService(repo, store, credit_divisor=1_000_000, max_queued=10)
            spec = EchoSpec("red", side=8, image=PNG_B64)
            uid = await service.submit(account, "TestEcho", spec)
            other = await service.submit(
                account, "GenerateImagesSDXL", domain.GenerationSpec(model_code="tiny", prompt="x", width=64, height=64)
            )
            # stored with its kind, its image stashed; read back as its own type
            (task,) = await repo.get_many([uid], account.public_key)
            assert isinstance(task.spec, EchoSpec) and (task.action, task.cost) == ("TestEcho", 8)
            assert task.spec.image is None and task.spec.image_key is not None
            assert references.keys(task.spec) == [task.spec.image_key] and store.get(task.spec.image_key) is not None
            # what the fetch routes by and the queue metrics count: the model each kind needs
            assert await repo.queued_by_model() == {"echo-model": 1, "tiny": 1}
            found = await repo.list_tasks([Status.QUEUING], account.public_key, "echo-model", 10)
            assert [t.task_uid for t in found] == [uid]
            # a worker takes both and runs each by its kind's pipeline
            engine = FakeEngine()
            runtime = jobs.WorkerRuntime(repo=repo, engine=engine, store=store, name="kinds-worker")
            await process.work(backend.app, runtime, Settings(data_dir=tmp_path), burst=True)
            done = {t.task_uid: t for t in await repo.get_many([uid, other], account.public_key)}
            assert done[uid].status is Status.FINISHED and done[other].status is Status.FINISHED
            assert [s.model_code for s in engine.calls] == ["tiny"]  # only the generation went to the engine
            (key,) = done[uid].result_keys
            png = store.get(key)
            assert png is not None
            with Image.open(io.BytesIO(png)) as image:
                assert (image.size, image.convert("RGB").getpixel((0, 0))) == ((8, 8), (255, 0, 0))
            assert store.get(task.spec.image_key) is None  # the reference went with the ended task
            assert (await repo.get_account(account.public_key)).used_credits == 8 + done[other].cost

    asyncio.run(main())


def test_a_spec_stored_by_an_earlier_version_of_its_kind_reads_back() -> None:
    old = domain.spec_from_json("test-echo", 1, {"color": "blue", "side": 4})
    assert old == EchoSpec("blue", side=4)
    # a generation row written before kinds existed (no kind, no version: migration 0009's defaults)
    row_spec = domain.GenerationSpec(model_code="m", prompt="p").to_dict()
    assert domain.spec_from_json("generation", 1, row_spec) == domain.GenerationSpec(model_code="m", prompt="p")


def test_an_unknown_kind_or_a_newer_version_is_named() -> None:
    with pytest.raises(ValueError, match="unknown task kind 'upscale-9000'"):
        domain.spec_from_json("upscale-9000", 1, {})
    with pytest.raises(ValueError, match="version 3 is newer than this picserve's"):
        domain.spec_from_json("test-echo", 3, {"colour": "red"})


def test_the_image_tools_kinds_round_trip_and_their_image_lists_are_stashed_and_dropped(
    backend_factory: BackendFactory,
) -> None:
    """UpscaleSpec and CutoutSpec (ResizeImage, RemoveBackground(+InBatch)) through the repository: read
    back equal, charged by output pixels, no main model to route by, each of a batch's images stashed
    while queued and dropped with the task."""

    async def main() -> None:
        async with backend_factory() as backend:
            repo, store = backend.repo, MemoryStore(3600)
            account = await repo.create_key("tools", 1_000)
            service = TaskService(repo, store, credit_divisor=1024 * 1024, max_queued=10)
            upscale = domain.UpscaleSpec(2048, 1536, 512, 384, "4x-model", 4, image=PNG_B64)
            cutout = domain.CutoutSpec(
                sizes=((1, 1), (1, 1), (1, 1)),
                model_code="birefnet",
                hair="on",
                only_mask=True,
                images=(PNG_B64, PNG_B64, PNG_B64),
                images_keys=(None, None, None),
            )
            uids = [
                await service.submit(account, "ResizeImage", upscale),
                await service.submit(account, "RemoveBackgroundsInBatch", cutout),
            ]
            stored = await repo.get_many(uids, account.public_key)
            by_uid = {t.task_uid: t for t in stored}
            up, cut = by_uid[uids[0]], by_uid[uids[1]]
            assert up.spec == dataclasses.replace(upscale, image=None, image_key=up.spec.image_key)
            assert up.cost == 3 and cut.cost == 3  # 3 MP; 1 per image at least
            assert cut.spec.images == (None, None, None) and len(set(cut.spec.images_keys)) == 3
            assert cut.spec == dataclasses.replace(cutout, images=(None,) * 3, images_keys=cut.spec.images_keys)
            assert await repo.queued_by_model() == {"upscale": 1, "cutout": 1}
            restored = references.restore(cut.spec, store)
            assert restored.images == (PNG_B64,) * 3 and restored.images_keys == (None, None, None)
            references.drop(cut.spec, store)
            assert all(store.get(key) is None for key in cut.spec.images_keys if key)

    asyncio.run(main())


def test_the_erase_kind_and_a_masked_edit_round_trip_with_their_images_stashed(
    backend_factory: BackendFactory,
) -> None:
    """EraseSpec (RemoveContents with an eraser) and a GenerationSpec of a masked edit (ModifyMaskedPixels:
    hires-free, only-masked, outpaint margins, a fill image) through the repository: read back equal,
    their image and mask (and fill image) stashed while queued and restored for the worker."""

    async def main() -> None:
        async with backend_factory() as backend:
            repo, store = backend.repo, MemoryStore(3600)
            account = await repo.create_key("edits", 1_000)
            service = TaskService(repo, store, credit_divisor=1024 * 1024, max_queued=10)
            erase = domain.EraseSpec(2048, 1024, "big-lama", invert_mask=True, mask_blur=8, image=PNG_B64, mask=PNG_B64)
            edit = domain.GenerationSpec(
                model_code="sdxl",
                prompt="a boat",
                width=1100,
                height=800,
                init_image=PNG_B64,
                mask_image=PNG_B64,
                fill_image=PNG_B64,
                mask_blur=6,
                inpaint_area="masked",
                masked_padding=16,
                masked_resolution=768,
                outpaint=(50, 0, 26, 0),
            )
            uids = [
                await service.submit(account, "RemoveContents", erase),
                await service.submit(account, "ModifyMaskedPixels", edit),
            ]
            by_uid = {t.task_uid: t for t in await repo.get_many(uids, account.public_key)}
            erased, edited = by_uid[uids[0]], by_uid[uids[1]]
            assert erased.cost == 2  # 2 MP
            assert erased.spec == dataclasses.replace(
                erase, image=None, mask=None, image_key=erased.spec.image_key, mask_key=erased.spec.mask_key
            )
            assert edited.action == "ModifyMaskedPixels" and edited.spec.fill_image is None
            restored = references.restore(edited.spec, store)
            assert restored == edit
            assert references.restore(erased.spec, store) == erase
            assert await repo.queued_by_model() == {"erase": 1, "sdxl": 1}

    asyncio.run(main())


def test_the_toolkits_kinds_round_trip_with_their_images_stashed(backend_factory: BackendFactory) -> None:
    """FaceRestoreSpec, ExtractSpec and DescribeSpec (RestoreFaces, ExtractContents, DescribeImages)
    through the repository: read back equal (points as tuples), charged, counted by kind (no main model),
    their images stashed while queued and restored for the worker."""

    async def main() -> None:
        async with backend_factory() as backend:
            repo, store = backend.repo, MemoryStore(3600)
            account = await repo.create_key("toolkit", 1_000)
            service = TaskService(repo, store, credit_divisor=1024 * 1024, max_queued=10)
            faces = domain_tools.FaceRestoreSpec(2048, 1024, "gfpgan", "yunet", strength=0.7, image=PNG_B64)
            extract = domain_tools.ExtractSpec(
                640,
                480,
                "sam-b",
                include=((1, 2), (3, 4)),
                exclude=((5, 6),),
                hair="off",
                only_mask=True,
                image=PNG_B64,
            )
            describe = domain_tools.DescribeSpec(
                ((1, 1), (1, 1)), "wd-tagger", language="ja", images=(PNG_B64, PNG_B64), images_keys=(None, None)
            )
            uids = [
                await service.submit(account, "RestoreFaces", faces),
                await service.submit(account, "ExtractContents", extract),
                await service.submit(account, "DescribeImages", describe),
            ]
            by_uid = {t.task_uid: t for t in await repo.get_many(uids, account.public_key)}
            stored = [by_uid[uid] for uid in uids]
            assert [type(t.spec) for t in stored] == [type(faces), type(extract), type(describe)]
            assert [t.cost for t in stored] == [2, 1, 2]  # 2 MP; 0.3 MP; one per image
            assert [references.restore(t.spec, store) for t in stored] == [faces, extract, describe]
            assert all(t.spec.image_key for t in stored[:2]) and all(stored[2].spec.images_keys)
            assert await repo.queued_by_model() == {"faces": 1, "extract": 1, "describe": 1}

    asyncio.run(main())
