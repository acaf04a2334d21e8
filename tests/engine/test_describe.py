"""DescribeImages' engine side (engine/describe.py) on tiny caption models of the real architectures.

A random-weights BLIP (tests/engine/caption_files.py) runs transformers' real loading, processing, beam
search and decoding; a tiny WD-style ONNX tagger runs ONNX Runtime with the wd v3 input layout; a tiny
random CTranslate2 model stands in for en→de. What they say is gibberish: the properties are what a
DescribeImages result must hold whatever the model (one text per image, in order, deterministic, each
text its own image's, bounded), and the tagger's selection rules, checked against its own scores.
"""

from __future__ import annotations

import base64
import io
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from picserve import catalog, domain_tools, errors
from picserve.engine import describe
from picserve.translate import outbound
from tests.engine.caption_files import TAGS, write_tiny_blip, write_tiny_florence2, write_tiny_tagger
from tests.translate import tiny_ct2

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def picture(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A few coloured shapes on a coloured ground, different for each seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = (int(v) for v in rng.integers(0, min(size), 2))
        r = int(rng.integers(6, 30))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def spec_of(images: list[Image.Image], code: str, language: str = "en") -> domain_tools.DescribeSpec:
    return domain_tools.DescribeSpec(
        sizes=tuple(i.size for i in images),
        model_code=code,
        language=language,
        images=tuple(b64(i) for i in images),
        images_keys=tuple(None for _ in images),
    )


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> tuple[Path, Path]:
    """(models folder, translation models folder)."""
    base = tmp_path_factory.mktemp("describe")
    folder = base / "models" / "caption"
    write_tiny_blip(folder / "tiny-blip")
    write_tiny_tagger(folder / "tiny-wd")
    write_tiny_tagger(folder / "strict-wd")
    (folder / "strict-wd.json").write_text(json.dumps({"GeneralThreshold": 0.9, "CharacterThreshold": 0.99}))
    not_captioner = folder / "a-bert"
    not_captioner.mkdir()
    (not_captioner / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    translations = base / "translate"
    tiny_ct2.build(translations / "en-de")
    return base / "models", translations


@pytest.fixture(scope="module")
def describers(roots) -> describe.Describers:
    """The caption models on the CPU, with captions cut at 24 tokens (a random BLIP never stops early,
    and the bound is what is tested, not its value)."""
    models, translations = roots
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(describe, "CAPTION_TOKENS", 24)
        yield describe.Describers(catalog.Catalog(models, ttl=0), "cpu", translation_models=translations, max_loaded=4)


# -- captioners -------------------------------------------------------------------------------------


def test_a_captioner_gives_one_deterministic_bounded_text_per_image_in_order(describers):
    captioner = describers.get("tiny-blip")
    assert isinstance(captioner, describe.Captioner) and captioner.model_type == "blip"
    assert captioner.dtype == torch.float32 and captioner.task is None and not captioner.chat
    a, b, c = picture(1), picture(2, (50, 120)), picture(3).convert("RGBA")
    alone = [captioner.describe([image])[0] for image in (a, b, c)]
    assert captioner.describe([a, b, c]) == alone  # each text is its own image's, whatever the others
    assert captioner.describe([c, a]) == [alone[2], alone[0]]
    assert captioner.describe([a]) == [alone[0]]  # the same image, the same text
    assert len(set(alone)) == 3  # it reads the image: different images, different texts
    for text in alone:
        assert isinstance(text, str) and text == text.strip() and "  " not in text and text
        assert not any(token.lower() in text.lower() for token in SPECIAL)
        assert len(text.split()) <= describe.CAPTION_TOKENS  # one word per generated token at most


def test_florence2_is_given_its_detailed_caption_task(roots):
    folder = write_tiny_florence2(roots[0] / "caption" / "tiny-florence2")
    captioner = describe.load("tiny-florence2", folder)
    assert isinstance(captioner, describe.Captioner) and captioner.model.config.model_type == "florence2"
    assert captioner.task == "<MORE_DETAILED_CAPTION>" and captioner.max_new_tokens == describe.DETAILED_TOKENS
    captioner.max_new_tokens = 12  # a random model never stops early
    prompt = captioner.processor.tokenizer.decode(captioner._inputs(picture(1))["input_ids"][0])
    assert "Describe with a paragraph what is shown in the image." in prompt
    a, b = picture(1), picture(2)
    texts = captioner.describe([a, b])
    assert texts == [captioner.describe([a])[0], captioner.describe([b])[0]]
    assert all(isinstance(t, str) and "<s>" not in t and "</s>" not in t and "<image>" not in t for t in texts)
    facts = describe.identify(folder)
    assert facts.kind == "caption" and facts.details["task"] == "<MORE_DETAILED_CAPTION>"


def test_the_pipeline_returns_texts_only_one_per_image_with_progress(describers):
    images = [picture(4), picture(5), picture(4)]
    steps: list[float] = []
    engine = types.SimpleNamespace(describers=describers)
    generated = describe.run(engine, spec_of(images, "tiny-blip"), steps.append, None)
    assert generated.images == [] and generated.seeds == [] and generated.infotexts == [] and generated.pngs() == []
    expected = describers.get("tiny-blip").describe(images)
    assert generated.texts == expected and generated.texts[0] == generated.texts[2]
    assert steps == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_cancel_stops_between_images_and_a_missing_image_or_engine_is_refused(describers, monkeypatch):
    calls = []
    captioner = describers.get("tiny-blip")
    real = captioner.describe
    monkeypatch.setattr(captioner, "describe", lambda images: calls.append(1) or real(images))

    def cancel(fraction: float) -> None:
        raise errors.TaskCanceled()

    engine = types.SimpleNamespace(describers=describers)
    with pytest.raises(errors.TaskCanceled):
        describe.run(engine, spec_of([picture(1), picture(2)], "tiny-blip"), cancel, None)
    assert len(calls) == 1
    gone = spec_of([picture(1)], "tiny-blip")
    gone = domain_tools.DescribeSpec(sizes=gone.sizes, model_code="tiny-blip", images=(None,), images_keys=("k",))
    with pytest.raises(errors.GenerationError, match=r"ImageList\[0\]"):
        describe.run(engine, gone, lambda _: None, None)
    with pytest.raises(errors.GenerationError, match="does not describe images"):
        describe.run(types.SimpleNamespace(), spec_of([picture(1)], "tiny-blip"), lambda _: None, None)


def test_what_is_no_caption_model_is_refused_naming_its_code(describers, roots):
    with pytest.raises(errors.ModelLoadError, match=r"'a-bert' is a 'bert' model, not an image-to-text model"):
        describers.get("a-bert")
    with pytest.raises(errors.ModelLoadError, match="'gone'"):
        describers.get("gone")
    empty = roots[0] / "caption" / "no-files"
    empty.mkdir(exist_ok=True)
    with pytest.raises(errors.ModelLoadError, match=r"'no-files'.*neither a captioner"):
        describe.load("no-files", empty)


# -- taggers ----------------------------------------------------------------------------------------


def expected_tags(tagger: describe.Tagger, scores: np.ndarray) -> list[tuple[str, float]]:
    general, character = np.float32(tagger.general_threshold), np.float32(tagger.character_threshold)
    kept = [
        (describe.display_name(tag.name), float(score))
        for tag, score in zip(tagger.tags, scores, strict=True)
        if (tag.category == describe.GENERAL and score >= general)
        or (tag.category == describe.CHARACTER and score >= character)
    ]
    return sorted(kept, key=lambda pair: -pair[1])


def test_a_tagger_keeps_general_and_character_tags_above_their_thresholds_by_score(describers):
    tagger = describers.get("tiny-wd")
    assert isinstance(tagger, describe.Tagger) and (tagger.side, tagger.channels_last) == (32, True)
    assert (tagger.general_threshold, tagger.character_threshold) == (0.35, 0.85)
    ratings = {name for name, category in TAGS if category == describe.RATING}
    seen_rating_scores, seen_dropped = [], []
    images = [picture(seed, (40 + 10 * seed, 60)) for seed in range(6)]
    for image in images:
        scores = tagger.scores(image)
        chosen = tagger.chosen(image)
        assert chosen == expected_tags(tagger, scores)
        assert [s for _, s in chosen] == sorted((s for _, s in chosen), reverse=True)
        assert not ratings & {name for name, _ in chosen}
        assert tagger.describe([image]) == [describe.prompt_of([name for name, _ in chosen])]
        seen_rating_scores += [s for tag, s in zip(tagger.tags, scores, strict=True) if tag.category == 9]
        seen_dropped += [s for tag, s in zip(tagger.tags, scores, strict=True) if tag.category == 0 and s < 0.35]
    assert max(seen_rating_scores) > 0.9 and seen_dropped  # the rules had something to leave out
    texts = tagger.describe(images)
    assert tagger.describe(images) == texts == [tagger.describe([i])[0] for i in images]  # deterministic, per image
    assert len(set(texts)) > 1


class FakeSession:
    """An ONNX Runtime session's surface giving fixed scores."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = np.asarray([scores], dtype=np.float32)
        self.fed: list[np.ndarray] = []

    def get_inputs(self):
        return [types.SimpleNamespace(name="input", shape=["batch", 448, 448, 3], type="tensor(float)")]

    def get_outputs(self):
        return [types.SimpleNamespace(name="output", shape=["batch", self.scores.shape[1]])]

    def run(self, names, feeds):
        self.fed.append(feeds["input"])
        return [self.scores]


def test_thresholds_are_inclusive_and_names_are_written_as_a_prompt():
    rows = [
        ("general", 9, 0.99),
        ("at_general_threshold", 0, 0.35),
        ("just_below", 0, 0.3499),
        ("^_^", 0, 0.6),
        ("o_o", 0, 0.7),
        ("hatsune_miku_(vocaloid)", 4, 0.85),
        ("below_character", 4, 0.8499),
        ("long_hair", 0, 0.95),
    ]
    session = FakeSession([score for _, _, score in rows])
    tags = [describe._Tag(name, category) for name, category, _ in rows]
    tagger = describe.Tagger("fake", session, tags)
    assert tagger.side == 448
    text = tagger.describe([Image.new("RGBA", (300, 100), (10, 20, 30, 0))])[0]
    assert text == "long hair, hatsune miku \\(vocaloid\\), o_o, ^_^, at general threshold"
    assert describe.names_in(text)[1] == "hatsune miku (vocaloid)"
    fed = session.fed[0]  # a transparent wide image: white padding and a white flattened ground, BGR floats
    assert fed.shape == (1, 448, 448, 3) and fed.dtype == np.float32
    assert fed[0, 0, 0].tolist() == [255.0, 255.0, 255.0] and fed[0, 224, 224].tolist() == [255.0, 255.0, 255.0]
    red = describe.Tagger("fake", FakeSession([0.5] * len(rows)), tags).prepare(
        Image.new("RGB", (448, 448), (200, 0, 0))
    )
    assert red[0, 10, 10].tolist() == [0.0, 0.0, 200.0]  # BGR


def test_a_sidecar_sets_the_thresholds_and_a_change_reloads(describers, roots):
    strict = describers.get("strict-wd")
    assert (strict.general_threshold, strict.character_threshold) == (0.9, 0.99)
    image = picture(2)
    assert all(score >= 0.9 for _, score in strict.chosen(image))
    assert len(strict.chosen(image)) < len(describers.get("tiny-wd").chosen(image))
    assert describers.get("strict-wd") is strict
    sidecar = roots[0] / "caption" / "strict-wd.json"
    before = sidecar.read_text()
    try:
        sidecar.write_text(json.dumps({"GeneralThreshold": 0.5}))
        loosened = describers.get("strict-wd")
        assert loosened is not strict and (loosened.general_threshold, loosened.character_threshold) == (0.5, 0.85)
    finally:
        sidecar.write_text(before)


def test_a_tagger_folder_with_its_timm_config_is_a_tagger(tmp_path):
    folder = write_tiny_tagger(tmp_path / "wd-timm", timm_config=True, side=48)
    tagger = describe.load("wd-timm", folder)
    assert isinstance(tagger, describe.Tagger) and tagger.side == 48


# -- translation ------------------------------------------------------------------------------------


def test_a_spec_in_german_gives_the_english_texts_translated(describers):
    images = [picture(7), picture(8)]
    engine = types.SimpleNamespace(describers=describers)
    english = describe.run(engine, spec_of(images, "tiny-blip"), lambda _: None, None).texts
    german = describe.run(engine, spec_of(images, "tiny-blip", "de"), lambda _: None, None).texts
    assert german == describers.translator.translate(english, "de")
    assert len(german) == 2 and all(isinstance(t, str) and t for t in german) and german != english

    tags_en = describe.run(engine, spec_of(images, "tiny-wd"), lambda _: None, None).texts
    tags_de = describe.run(engine, spec_of(images, "tiny-wd", "de"), lambda _: None, None).texts
    for en, de in zip(tags_en, tags_de, strict=True):  # tag by tag: as many tags, each the translation of its own
        names = describe.names_in(en)
        assert describe.names_in(de) == describers.translator.translate(names, "de")


def test_a_language_without_a_model_is_refused_before_describing(describers, monkeypatch):
    assert describers.languages() == ["en", "de", "pt"]
    monkeypatch.setattr(describe.Captioner, "describe", lambda *a: pytest.fail("described"))
    engine = types.SimpleNamespace(describers=describers)
    with pytest.raises(errors.GenerationError, match="no en→fr translation model"):
        describe.run(engine, spec_of([picture(1)], "tiny-blip", "fr"), lambda _: None, None)
    assert outbound.languages(describers.translator.models_dir) == describers.languages()


# -- identify ---------------------------------------------------------------------------------------


def test_identify_names_both_kinds_and_refuses_the_rest(roots, tmp_path):
    folder = roots[0] / "caption"
    blip = describe.identify(folder / "tiny-blip")
    assert blip.kind == "caption" and blip.problem is None
    loaded = describe.load("tiny-blip", folder / "tiny-blip")
    assert isinstance(loaded, describe.Captioner)
    parameters = sum(p.numel() for p in loaded.model.parameters())
    assert blip.details == {
        "architecture": "BlipForConditionalGeneration",
        "model type": "blip",
        "parameters": f"{parameters:,}",
    }

    tagger = describe.identify(write_tiny_tagger(tmp_path / "wd", timm_config=True))
    assert tagger.kind == "caption" and tagger.problem is None
    assert tagger.details["tags"] == len(TAGS) and tagger.details["input side"] == 32
    assert tagger.details["character tags"] == 3 and tagger.details["general tags"] == 13

    bert = describe.identify(folder / "a-bert")
    assert bert.kind is None and "'bert' model" in (bert.problem or "")
    mismatched = write_tiny_tagger(tmp_path / "short", tags=TAGS[:-1])
    (mismatched / "selected_tags.csv").write_text("tag_id,name,category,count\n1,solo,0,5\n")
    short = describe.identify(mismatched)
    assert short.kind is None and "scores 19 tags but selected_tags.csv lists 1" in (short.problem or "")
    assert describe.identify(tmp_path).kind is None
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    (tmp_path / "selected_tags.csv").write_text("tag_id,name,category,count\n")
    broken = describe.identify(tmp_path)
    assert broken.kind is None and "onnxruntime cannot load model.onnx" in (broken.problem or "")
