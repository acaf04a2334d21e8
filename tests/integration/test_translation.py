"""TranslatePrompts end to end: a Portuguese prompt reaches the model in English, and the task says so."""

import io

from PIL import Image

from .conftest import tiny_request


def test_portuguese_prompt_is_translated_and_recorded(make_client, run_worker):
    client = make_client()
    original = "Um cachorro pequeno brincando no jardim"
    uid = client.generate_images_sdxl(
        **tiny_request(PositivePrompts=[original, "masterpiece"], NegativePrompts=["desfocado, baixa qualidade"])
    )
    run_worker()
    detail = client.list_tasks_details([uid])[0]
    assert detail["Status"] == "Finished"
    assert detail["OriginalPrompt"] == f"{original}, masterpiece"
    assert "dog" in detail["Prompt"].lower() and "garden" in detail["Prompt"].lower()
    assert detail["Prompt"].endswith(", masterpiece")
    assert detail["OriginalNegativePrompt"] == "desfocado, baixa qualidade" != detail["NegativePrompt"]
    assert detail["Warnings"] == []
    text = Image.open(io.BytesIO(client.fetch(detail["ImgList"][0]))).text["parameters"]
    assert text.splitlines()[0] == detail["Prompt"] and f"Original prompt: '{original}, masterpiece'" in text


def test_translation_off_or_no_model(make_client):
    client = make_client()
    kept = client.generate_images_sdxl(
        **tiny_request(PositivePrompts=["Um cachorro pequeno brincando no jardim"], TranslatePrompts=False)
    )
    detail = client.list_tasks_details([kept])[0]
    assert detail["Prompt"] == detail["OriginalPrompt"] == "Um cachorro pequeno brincando no jardim"
    chinese = client.generate_images_sdxl(**tiny_request(PositivePrompts=["赛博朋克城市, masterpiece"]))
    detail = client.list_tasks_details([chinese])[0]
    assert detail["Prompt"] == "赛博朋克城市, masterpiece"
    assert detail["Warnings"] == [
        "TranslatePrompts: no zh→en translation model is installed "
        "(`picserve models pull-translation zh`); that part of the prompt was used as given"
    ]
