import json

from picserve import catalog


def test_catalog_reads_sidecars(tmp_path):
    main = tmp_path / "main"
    (main / "folder-model").mkdir(parents=True)
    (main / "folder-model" / "model_index.json").write_text("{}")
    (main / "not-a-model").mkdir()
    (main / "single.safetensors").write_bytes(b"")
    (main / "single.json").write_text(
        json.dumps({"Name": "Single", "IsOfficial": True, "InferenceParams": {"Steps": 30}, "Config": "folder-model"})
    )
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "style.safetensors").write_bytes(b"")
    (tmp_path / "lora" / "style.json").write_text(json.dumps({"TriggerWordList": ["inky"]}))
    cat = catalog.Catalog(tmp_path, ttl=0)
    assert sorted(cat.entries("main")) == ["folder-model", "single"]
    single = cat.get("main", "single")
    assert single.name == "Single" and single.is_official and single.inference_params == {"Steps": 30}
    assert single.config == main / "folder-model" and single.is_single_file
    assert cat.get("lora", "style").trigger_words == ("inky",)
    (tmp_path / "lora" / "new.safetensors").write_bytes(b"")
    assert "new" in cat.entries("lora")  # new files appear without a restart
