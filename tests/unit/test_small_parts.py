import json
import re
import subprocess
import sys
import time

import pytest

from picserve import catalog, domain, errors
from picserve.config import Settings
from picserve.protocol.envelope import Envelope, error_reply, ok_reply
from picserve.tasks import xid


def test_xid_format_and_order():
    ids = [xid.new_xid() for _ in range(100)]
    assert all(re.fullmatch(r"[0-9a-v]{20}", i) for i in ids)
    assert len(set(ids)) == 100
    assert ids == sorted(ids)  # same second, increasing counter


def test_settings_precedence(tmp_path):
    env = {"PICSERVE_PORT": "9000", "PICSERVE_DATA_DIR": str(tmp_path), "PICSERVE_PROGRESS_INTERVAL": "0.25"}
    settings = Settings.load(env, port=None, workers=3)
    assert (settings.port, settings.workers, settings.progress_interval) == (9000, 3, 0.25)
    assert settings.data_dir == tmp_path
    assert Settings.load(env, port=7000).port == 7000
    assert Settings.load(settings.to_env()) == settings


def test_envelope_parsing():
    env = Envelope.parse({"Action": "ListModels", "PublicKey": "p", "Signature": "s", "request_uuid": "u", "X": 1})
    assert env.params == {"X": 1}
    with pytest.raises(errors.ParamError, match="body must be a JSON object"):
        Envelope.parse([1])
    with pytest.raises(errors.ParamError, match="Action: missing"):
        Envelope.parse({"PublicKey": "p", "Signature": "s"})
    with pytest.raises(errors.AuthError, match="Signature: missing"):
        Envelope.parse({"Action": "A", "PublicKey": "p"})
    assert ok_reply("A", "u", {"X": 1}) == {"Action": "A", "RetCode": 0, "Message": "", "request_uuid": "u", "X": 1}
    assert error_reply("A", None, errors.TaskNotFound())["RetCode"] == 230


def test_ret_codes_are_distinct_and_round_trip():
    codes = [cls.ret_code for cls in errors.ALL if cls is not errors.ClientError]
    assert len(codes) == len(set(codes))
    for cls in errors.ALL:
        if cls is not errors.ClientError:
            assert type(errors.from_ret_code(cls.ret_code, "m")) is cls


def test_sampler_names_are_case_insensitive():
    assert domain.canonical_sampler("dpm++ 2m  karras") == "DPM++ 2M Karras"
    assert domain.canonical_sampler("euler A") == "Euler a"
    assert domain.canonical_sampler("Euler b") is None


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


def test_disk_store_expiry(tmp_path):
    from picserve.storage.disk import DiskStore

    store = DiskStore(tmp_path, ttl_seconds=60)
    key = store.put(b"png")
    assert store.path(key).read_bytes() == b"png"
    assert store.path("../etc/passwd") is None and store.path("short.png") is None
    old = time.time() - 120
    import os

    os.utime(store.path(key), (old, old))
    assert store.path(key) is None
    assert store.expire() == 1 and not any(tmp_path.glob("*.png"))


def test_api_and_sdk_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['diffusers'] = None; "
        "import picserve.api.app, picserve.sdk, picserve.cli, picserve.protocol.messages; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


def test_engine_imports_nothing_of_http_sql_or_storage():
    code = (
        "import sys; import picserve.engine.engine, picserve.engine.tiny; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('fastapi', 'psycopg', 'procrastinate', 'httpx') "
        "or m.startswith(('picserve.api', 'picserve.tasks', 'picserve.storage', 'picserve.protocol'))]; "
        "print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_model_inspection_without_torch(tmp_path):
    import json as _json
    import struct
    import zipfile

    from picserve import modelinfo

    def safetensors(name, shapes, metadata=None):
        header = {k: {"dtype": "F32", "shape": list(v), "data_offsets": [0, 0]} for k, v in shapes.items()}
        if metadata:
            header["__metadata__"] = metadata
        raw = _json.dumps(header).encode()
        path = tmp_path / name
        path.write_bytes(struct.pack("<Q", len(raw)) + raw)
        return path

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
