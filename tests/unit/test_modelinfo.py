import pytest

from tests.headers import (
    SD1_EMBEDDING,
    SD1_LORA,
    SD1_LORA_TEXT_ONLY,
    SDXL_LORA,
    SDXL_LORA_UNET_ONLY,
    SDXL_MAIN,
    sdxl_main,
    write_header,
)


def test_model_inspection_without_torch(tmp_path):
    import json as _json
    import zipfile

    from picserve import modelinfo

    def safetensors(name, shapes, metadata=None):
        return write_header(tmp_path / name, shapes, metadata)

    sdxl = safetensors(
        "xl.safetensors",
        {
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048),
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1280),
        },
        {"ss_tag_frequency": _json.dumps({"5_zxc style": {"zxc style": 4}, "img": {"a": 1}})},
    )
    info = modelinfo.inspect("lora", sdxl)
    assert (info.base, info.trigger_words) == ("SDXL", ("zxc style",))
    sd1 = modelinfo.inspect(
        "lora",
        safetensors(
            "sd1.safetensors",
            {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768)},
        ),
    )
    main = modelinfo.Info(base="SDXL", dims={"cross": 2048, "te1": 768, "te2": 1280})
    assert (
        sd1.base == "SD1" and not modelinfo.compatible(main, sd1, "lora") and modelinfo.compatible(main, info, "lora")
    )
    emb = modelinfo.inspect("embedding", safetensors("e.safetensors", {"clip_l": (2, 768), "clip_g": (2, 1280)}))
    assert emb.base == "SDXL" and modelinfo.compatible(main, emb, "embedding")
    assert modelinfo.inspect("lora", tmp_path / "missing.safetensors").problem
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert modelinfo.inspect("lora", tmp_path / "empty.safetensors").problem
    # A pickle that would run code is refused, not executed.
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.")
    assert "not allowed" in modelinfo.inspect("hypernetwork", evil).problem


def _sdxl_main():
    from picserve import modelinfo

    return modelinfo.Info(base="SDXL", dims={"cross": (2048,), "te1": (768,), "te2": (1280,)})


def test_an_sd1_embedding_does_not_fit_sdxl(tmp_path):
    from picserve import modelinfo

    emb = modelinfo.inspect("embedding", write_header(tmp_path / "sd1.safetensors", SD1_EMBEDDING))
    assert emb.base == "SD1" and emb.dims == {"te1": (768,)}
    reason = modelinfo.misfit(_sdxl_main(), emb, "embedding")
    assert reason is not None and "no clip_g vectors" in reason and "1280 wide" in reason
    assert not modelinfo.compatible(_sdxl_main(), emb, "embedding")


@pytest.mark.parametrize(
    ("shapes", "fits", "words"),
    [
        ({"clip_l": (2, 768), "clip_g": (2, 1280)}, True, None),
        ({"clip_l": (2, 768)}, False, "no clip_g vectors"),
        ({"clip_g": (2, 1280)}, False, "no clip_l vectors"),
        (
            {"clip_l": (2, 768), "clip_g": (2, 1288)},
            False,
            "second text encoder width is 1288, the main model's is 1280",
        ),
    ],
)
def test_an_sdxl_embedding_needs_both_text_encoders_at_their_widths(tmp_path, shapes, fits, words):
    from picserve import modelinfo

    emb = modelinfo.inspect("embedding", write_header(tmp_path / "e.safetensors", shapes))
    reason = modelinfo.misfit(_sdxl_main(), emb, "embedding")
    assert (reason is None) == fits and modelinfo.compatible(_sdxl_main(), emb, "embedding") == fits
    assert words is None or words in reason


@pytest.mark.parametrize(
    ("shapes", "words"),
    [
        (SDXL_LORA, None),
        (SDXL_LORA_UNET_ONLY, None),  # UNet-only SDXL LoRAs are common and fine
        (SD1_LORA, "UNet cross-attention width is 768, the main model's is 2048"),
        (SD1_LORA_TEXT_ONLY, "none for the second text encoder (OpenCLIP-G, 1280 wide)"),
        # every width counts, not the first found: one SD1-wide to_v among SDXL ones does not fit
        (
            {
                **SDXL_LORA,
                "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_v.lora_down.weight": (4, 768),
            },
            "UNet cross-attention widths are 768 and 2048",
        ),
        (
            {**SDXL_LORA, "lora_te2_text_model_encoder_layers_3_self_attn_out_proj.lora_down.weight": (4, 1024)},
            "second text encoder widths are 1024 and 1280",
        ),
    ],
)
def test_a_lora_fits_by_every_width_and_every_text_encoder(tmp_path, shapes, words):
    from picserve import modelinfo

    lora = modelinfo.inspect("lora", write_header(tmp_path / "l.safetensors", shapes))
    reason = modelinfo.misfit(_sdxl_main(), lora, "lora")
    if words is None:
        assert reason is None, reason
    else:
        assert reason is not None and words in reason, reason


def test_the_tiny_models_widths_fit_their_sub_models(tmp_path):
    """The tiny SDXL of the models tier (cross 96, text encoders 32 and 64), as header-only files."""
    import json

    from picserve import modelinfo

    folder = tmp_path / "tiny"
    for sub, config in {
        "unet": {"cross_attention_dim": 96, "in_channels": 4},
        "text_encoder": {"hidden_size": 32, "num_hidden_layers": 4},
        "text_encoder_2": {"hidden_size": 64, "num_hidden_layers": 10},
    }.items():
        (folder / sub).mkdir(parents=True)
        (folder / sub / "config.json").write_text(json.dumps(config))
    main = modelinfo.inspect("main", folder)
    assert (main.dims, main.text_encoder_layers, main.unet_in_channels) == (
        {"cross": (96,), "te1": (32,), "te2": (64,)},
        4,
        4,
    )
    kohya = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 96),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 32),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 64),
    }
    peft = {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 96),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 32),
        "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 64),
    }
    for name, shapes in (("kohya", kohya), ("peft", peft)):
        assert (
            modelinfo.misfit(
                main, modelinfo.inspect("lora", write_header(tmp_path / f"{name}.safetensors", shapes)), "lora"
            )
            is None
        )
    emb = modelinfo.inspect(
        "embedding", write_header(tmp_path / "e.safetensors", {"clip_l": (2, 32), "clip_g": (2, 64)})
    )
    assert modelinfo.compatible(main, emb, "embedding")
    sd15 = modelinfo.inspect("lora", write_header(tmp_path / "sd15.safetensors", {**SD1_LORA, **SD1_LORA_TEXT_ONLY}))
    assert not modelinfo.compatible(main, sd15, "lora")


@pytest.mark.parametrize(("layers", "channels"), [(12, 4), (6, 9)])
def test_main_model_clip_depth_and_unet_channels_from_the_header(tmp_path, layers, channels):
    from picserve import modelinfo

    info = modelinfo.inspect("main", write_header(tmp_path / "m.safetensors", sdxl_main(layers, channels)))
    assert (info.base, info.text_encoder_layers, info.unet_in_channels) == ("SDXL", layers, channels)
    bare = modelinfo.inspect("main", write_header(tmp_path / "bare.safetensors", SDXL_MAIN))
    assert (bare.text_encoder_layers, bare.unet_in_channels) == (None, None)  # not known: not checked


@pytest.mark.parametrize(
    ("shapes", "base"),
    [
        # LoHa: hada_w?_b is (rank, input width)
        ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.hada_w1_b": (4, 768)}, "SD1"),
        ({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_v.hada_w2_b": (4, 2048)}, "SDXL"),
        # LoKr: ΔW = w1 ⊗ w2, input width = product of the factors' (whole or `_b` half)
        (
            {
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lokr_w1": (4, 8),
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lokr_w2_b": (4, 96),
            },
            "SD1",
        ),
        (
            {
                "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lokr_w1_b": (4, 16),
                "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lokr_w2": (40, 128),
            },
            "SDXL",
        ),
        # full: diff is the weight's shape
        ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.diff": (320, 1024)}, "SD2"),
        # PEFT DoRA: lora_A like any PEFT LoRA
        ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 2048)}, "SDXL"),
    ],
)
def test_lycoris_files_tell_their_base_model_and_an_sd1_one_does_not_fit_sdxl(tmp_path, shapes, base):
    from picserve import modelinfo

    info = modelinfo.inspect("lora", write_header(tmp_path / "x.safetensors", shapes))
    main = modelinfo.inspect("main", write_header(tmp_path / "main.safetensors", SDXL_MAIN))
    assert info.base == base
    assert modelinfo.compatible(main, info, "lora") == (base == "SDXL")


def test_a_truncated_file_or_an_unknown_layout_is_a_problem_listed_before_any_worker_loads_it(tmp_path):
    from picserve import modelinfo

    whole = write_header(tmp_path / "whole.safetensors", SDXL_LORA)
    assert modelinfo.inspect("lora", whole).problem is None
    header = b'{"lora_te1_x.lora_down.weight": {"dtype": "F32", "shape": [4, 768], "data_offsets": [0, 12288]}}'
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 1000)  # 1,000 of 12,288 bytes
    assert modelinfo.inspect("lora", cut).problem == (
        "unreadable .safetensors file: truncated: its tensors need 12288 bytes of data, the file holds 1000"
    )
    odd = modelinfo.inspect("lora", write_header(tmp_path / "odd.safetensors", {"w.weight": (4, 4), "b.bias": (4,)}))
    assert odd.problem == "none of its 2 tensors is of a LoRA layout picserve knows (b.bias, w.weight)"
    oft = modelinfo.inspect("lora", write_header(tmp_path / "oft.safetensors", {"lora_unet_x.oft_blocks": (4, 8, 8)}))
    assert oft.problem is not None and "OFT/BOFT" in oft.problem
