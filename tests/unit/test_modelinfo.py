from tests.headers import write_header


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
