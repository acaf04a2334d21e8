"""SubModelList through the HTTP API: listing, resolution, compatibility, weights, trigger words, embeddings."""

import numpy as np
import pytest

from picserve import errors

from .conftest import tiny_request


def test_list_models_reports_sub_models_and_their_fit(make_client):
    models = make_client().list_models()
    kohya, sd15 = models["LoraModels"]["kohya-0"], models["LoraModels"]["sd15-style"]
    assert kohya["ModelCode"] == "kohya-0" and kohya["InferenceParams"] == {"LoraWeight": 1}
    assert "picserve-tiny" in kohya["CompatibleMainModels"]
    assert (sd15["BaseModel"], sd15["CompatibleMainModels"]) == ("SD1", [])
    assert models["LoraModels"]["kohya-trigger"]["TriggerWordList"] == ["inkstyle"]  # from kohya metadata
    sidecar = models["LoraModels"]["kohya-1"]
    assert (sidecar["Name"], sidecar["TriggerWordList"], sidecar["InferenceParams"]["LoraWeight"]) == (
        "Kohya one",
        ["sidecarword"],
        0.5,
    )
    assert models["EmbeddingModels"]["emb-a"]["CompatibleMainModels"]
    assert models["HypernetworkModels"]["hyper-a"]["InferenceParams"] == {"LoraWeight": 1}
    # every tiny sub-model fits both tiny mains (by every width, with both text encoders), but the SD 1.5 LoRA
    for field in ("LoraModels", "EmbeddingModels", "HypernetworkModels"):
        for code, model in models[field].items():
            fits = {"picserve-tiny", "picserve-tiny-diffusers"} <= set(model["CompatibleMainModels"])
            assert fits == (code != "sd15-style"), (code, model["CompatibleMainModels"])


def test_loras_hypernetworks_and_weights(generate):
    (base,) = generate().images
    (zero,) = generate(SubModelList=[{"ModelCode": "kohya-0", "InferenceParams": {"LoraWeight": 0}}]).images
    assert np.array_equal(zero, base)
    result = generate(
        SubModelList=[
            {"ModelCode": "kohya-0", "InferenceParams": {"LoraWeight": 0.7}},
            {"ModelCode": "peft-0", "InferenceParams": {"LoraWeight": -0.3}},
            {"ModelCode": "hyper-a", "InferenceParams": {"LoraWeight": 0.5}},
        ]
    )
    (mixed,), (text,) = result.images, result.texts
    assert np.abs(mixed - base).max() > 0
    assert "LoRA: kohya-0:0.7, peft-0:-0.3" in text and "Hypernetwork: hyper-a:0.5" in text
    (again,) = generate().images
    assert np.array_equal(again, base)


def test_trigger_words_are_not_appended_and_sidecar_defaults_apply(generate):
    (text,) = generate(PositivePrompts=["a cat"], SubModelList=[{"ModelCode": "kohya-trigger"}]).texts
    assert text.splitlines()[0] == "a cat"  # PICSERVE_APPEND_TRIGGER_WORDS is off by default
    (text,) = generate(PositivePrompts=["a cat"], SubModelList=[{"ModelCode": "kohya-1"}]).texts
    assert text.splitlines()[0] == "a cat" and "LoRA: kohya-1:0.5" in text


def test_a_lora_at_weight_zero_gives_the_base_image_exactly(generate):
    base = generate(PositivePrompts=["a cat"])
    for code in ("kohya-trigger", "kohya-0", "peft-0"):
        zero = generate(
            PositivePrompts=["a cat"], SubModelList=[{"ModelCode": code, "InferenceParams": {"LoraWeight": 0}}]
        )
        assert np.array_equal(zero.images[0], base.images[0]), code
        assert zero.texts[0].splitlines()[0] == "a cat"


def test_embeddings_load_from_the_list_or_the_prompt(generate):
    (named,) = generate(PositivePrompts=["a cat"], SubModelList=[{"ModelCode": "emb-b"}]).texts
    assert "Embeddings: emb-b" in named
    (found,) = generate(PositivePrompts=["emb-a, a cat"], NegativePrompts=["emb-b"]).texts
    assert "Embeddings: emb-a, emb-b" in found
    (not_a_word,) = generate(PositivePrompts=["xemb-a, a cat"]).texts
    assert "Embeddings" not in not_a_word


@pytest.mark.parametrize(
    ("sub", "code", "message"),
    [
        (
            {"ModelCode": "sd15-style"},
            232,
            "SubModelList[0].ModelCode 'sd15-style' is a SD1 lora and does not fit main model 'picserve-tiny' "
            "(custom (cross-attention 96)): its UNet cross-attention width is 768, the main model's is 96",
        ),
        ({"ModelCode": "nope"}, 231, "SubModelList[0].ModelCode 'nope' is not a LoRA, embedding or hypernetwork"),
        (
            {"ModelCode": "kohya-0", "InferenceParams": {"LoraWeight": 2.5}},
            160,
            "SubModelList[0].InferenceParams.LoraWeight: must be between -1 and 2 (got 2.5)",
        ),
    ],
)
def test_bad_sub_models_are_refused_by_name(make_client, sub, code, message):
    client = make_client()
    with pytest.raises(errors.PicserveError) as info:
        client.generate_images_sdxl(**tiny_request(SubModelList=[sub]))
    assert info.value.ret_code == code and info.value.message.startswith(message), info.value.message


def test_a_sub_model_listed_twice_is_refused(make_client):
    with pytest.raises(errors.ParamError, match="listed twice"):
        make_client().generate_images_sdxl(**tiny_request(SubModelList=[{"ModelCode": "kohya-0"}] * 2))
