"""`picserve models add` / `models info`: download with resume, checks, kind by tensor names, filing.

Files are small fakes with the right tensor names and shapes (numpy safetensors, hand-made torch-zip
pickles); downloads come from a loopback HTTP server that can ignore Range or cut a connection.
"""

from __future__ import annotations

import collections
import hashlib
import http.server
import io
import json
import pickle
import re
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from picserve import cli, download, modelfiles

runner = CliRunner()

# --- fake model files ------------------------------------------------------------------------------
SDXL_MAIN = {
    "model.diffusion_model.input_blocks.0.0.weight": (2, 4, 3, 3),
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (2, 2048),
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (2, 768),
    "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": (2, 768),
    "conditioner.embedders.1.model.token_embedding.weight": (2, 1280),
    "first_stage_model.decoder.conv_in.weight": (2, 4, 3, 3),
}
SD1_MAIN = {
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (2, 768),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (2, 768),
}
_ATTN2 = "input_blocks_4_1_transformer_blocks_0_attn2_to_k"
KOHYA_LORA = {
    f"lora_unet_{_ATTN2}.lora_down.weight": (4, 2048),
    f"lora_unet_{_ATTN2}.lora_up.weight": (640, 4),
    f"lora_unet_{_ATTN2}.alpha": (),
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
    "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1280),
}
PEFT_LORA = {
    "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (8, 2048),
    "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (640, 8),
}
LOHA = {
    f"lora_unet_{_ATTN2}.hada_w1_a": (640, 6),
    f"lora_unet_{_ATTN2}.hada_w1_b": (6, 2048),
    f"lora_unet_{_ATTN2}.hada_w2_a": (640, 6),
    f"lora_unet_{_ATTN2}.hada_w2_b": (6, 2048),
    f"lora_unet_{_ATTN2}.alpha": (),
}
LOKR = {
    f"lora_unet_{_ATTN2}.lokr_w1": (8, 8),
    f"lora_unet_{_ATTN2}.lokr_w2_a": (80, 2),
    f"lora_unet_{_ATTN2}.lokr_w2_b": (2, 256),
}
LOCON = {
    **KOHYA_LORA,
    "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight": (4, 320, 3, 3),
    "lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight": (320, 4, 1, 1),
    f"lora_unet_{_ATTN2}.dora_scale": (1, 2048),
}
SDXL_EMBEDDING = {"clip_l": (3, 768), "clip_g": (3, 1280)}
VAE = {
    "encoder.conv_in.weight": (2, 3, 3, 3),
    "decoder.conv_in.weight": (2, 4, 3, 3),
    "quant_conv.weight": (8, 8, 1, 1),
    "post_quant_conv.weight": (4, 4, 1, 1),
}
TRIGGER_METADATA = {"ss_tag_frequency": json.dumps({"10_zxc style": {"zxc style": 3, "cat": 1}})}
#: an SDXL ControlNet in diffusers' layout: the hint embedding and one cross-attention projection (its width)
CONTROLNET = {
    "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
}


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.zeros(s, np.float16) for k, s in shapes.items()}, str(path), metadata=metadata)
    return path


class _Global:
    """A name a pickle refers to (module, name), written as a GLOBAL opcode without importing it."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # pickle wants a callable to reduce with; it is never called
        raise AssertionError("never called")


class _Tensor:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def __reduce__(self) -> Any:
        stride = tuple(int(np.prod(self.shape[i + 1 :])) for i in range(len(self.shape)))
        storage = _Storage(int(np.prod(self.shape)))
        rebuild = _Global("torch._utils", "_rebuild_tensor_v2")
        return rebuild, (storage, 0, self.shape, stride, False, collections.OrderedDict())


class _Storage:
    def __init__(self, numel: int) -> None:
        self.numel = numel


class _TorchPickler(pickle._Pickler):  # type: ignore[misc,name-defined]  # the Python pickler: save_global overridable
    """Writes what torch.save writes for tensors, without torch: `_Global`s as GLOBAL, storages as persistent ids."""

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", "HalfStorage"), "0", "cpu", obj.numel)
        return None

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)


def write_torch_zip(path: Path, obj: Any) -> Path:
    buffer = io.BytesIO()
    _TorchPickler(buffer, protocol=2).dump(obj)
    return write_zip(path, buffer.getvalue())


def write_zip(path: Path, data_pkl: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/version", "3\n")
    return path


def hypernetwork() -> dict[Any, Any]:
    layers = collections.OrderedDict(
        [("linear.0.weight", _Tensor((4, 2))), ("linear.0.bias", _Tensor((4,))), ("linear.1.weight", _Tensor((2, 4)))]
    )
    return {768: [layers, layers], 2048: [layers, layers], "name": "hn", "layer_structure": [1.0, 2.0, 1.0]}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- a loopback server ------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server
        state.requests.append(dict(self.headers))
        body = state.files.get(self.path.split("?")[0])
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, status = 0, 200
        asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if asked and not state.ignore_range and self.headers.get("If-Range", '"v1"') == '"v1"':
            start, status = int(asked.group(1)), 206
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        sent_start = state.wrong_start if status == 206 and state.wrong_start is not None else start
        self.send_response(status)
        self.send_header("ETag", '"v1"')
        self.send_header("Content-Length", str(len(body) - sent_start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {sent_start}-{len(body) - 1}/{len(body)}")
        if state.disposition:
            self.send_header("Content-Disposition", state.disposition)
        self.end_headers()
        payload = body[sent_start:]
        if state.cuts:
            payload = payload[: state.cuts.pop(0)]
            self.close_connection = True
        self.wfile.write(payload)
        self.wfile.flush()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    files: ClassVar[dict[str, bytes]]

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = {}
        self.requests: list[dict[str, str]] = []
        #: bytes of the body each next answer sends before the connection is cut
        self.cuts: list[int] = []
        self.ignore_range = False
        #: answer a range with a Content-Range starting here instead
        self.wrong_start: int | None = None
        self.disposition: str | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def ranges(self) -> list[str | None]:
        return [r.get("Range") for r in self.requests]


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def big_lora(tmp_path: Path) -> bytes:
    """A LoRA of ~400 kB, big enough to cut a download in the middle of."""
    shapes = {**KOHYA_LORA, **{f"lora_unet_extra_{i}.lora_down.weight": (4, 2048) for i in range(24)}}
    return write_safetensors(tmp_path / "src" / "big.safetensors", shapes, TRIGGER_METADATA).read_bytes()


def add(models: Path, *args: str) -> Any:
    return runner.invoke(cli.app, ["models", "add", *args, "--models-dir", str(models)])


def leftovers(models: Path) -> list[str]:
    """What stays in the staging folder (a download's `.part`, a copy's temporary file)."""
    return sorted(p.name for p in (models / ".downloads").glob("*") if p.is_file())


# --- downloads --------------------------------------------------------------------------------------
def test_a_full_download_is_filed_with_its_sidecar(tmp_path, server, big_lora):
    server.files["/files/zxc-style.safetensors"] = big_lora
    models = tmp_path / "models"
    result = add(models, server.url("/files/zxc-style.safetensors?token=secret"))
    assert result.exit_code == 0, result.output
    filed = models / "lora" / "zxc-style.safetensors"
    assert filed.read_bytes() == big_lora
    sidecar = json.loads((models / "lora" / "zxc-style.json").read_text())
    assert sidecar == {
        "Source": server.url("/files/zxc-style.safetensors"),  # the token is not kept
        "Sha256": hashlib.sha256(big_lora).hexdigest(),
        "TriggerWordList": ["zxc style"],
    }
    assert leftovers(models) == []
    assert str(filed) in result.stdout


def test_a_dropped_connection_is_resumed_with_range(tmp_path, server, big_lora):
    server.files["/m.safetensors"] = big_lora
    server.cuts = [100_000]
    models = tmp_path / "models"
    result = add(models, server.url("/m.safetensors"))
    assert result.exit_code == 0, result.output
    assert server.ranges() == [None, "bytes=100000-"]
    assert server.requests[1].get("If-Range") == '"v1"'
    assert sha256(models / "lora" / "m.safetensors") == hashlib.sha256(big_lora).hexdigest()


def test_an_interrupted_download_keeps_its_part_and_the_next_run_resumes(tmp_path, server, big_lora):
    server.files["/m.safetensors"] = big_lora
    server.cuts = [150_000]
    models = tmp_path / "models"
    first = add(models, server.url("/m.safetensors"), "--retries", "0")
    assert first.exit_code != 0 and "run the same command again to resume" in first.output
    part = download.part_path(models / ".downloads", server.url("/m.safetensors"))
    assert part.stat().st_size == 150_000 and not (models / "lora").exists()
    second = add(models, server.url("/m.safetensors"))
    assert second.exit_code == 0, second.output
    assert server.ranges() == [None, "bytes=150000-"]
    assert (models / "lora" / "m.safetensors").read_bytes() == big_lora
    assert not part.exists() and leftovers(models) == []


def test_a_server_ignoring_range_starts_over(tmp_path, server, big_lora):
    server.files["/m.safetensors"] = big_lora
    server.cuts = [120_000]
    server.ignore_range = True
    models = tmp_path / "models"
    result = add(models, server.url("/m.safetensors"))
    assert result.exit_code == 0, result.output
    assert server.ranges() == [None, "bytes=120000-"]  # asked, answered 200 with the whole file
    assert (models / "lora" / "m.safetensors").read_bytes() == big_lora


def test_a_mismatched_content_range_or_a_416_starts_over(tmp_path, server, big_lora):
    server.files["/m.safetensors"] = big_lora
    models = tmp_path / "models"
    url = server.url("/m.safetensors")
    part = download.part_path(models / ".downloads", url)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * (len(big_lora) + 10))  # a stale .part longer than the file: 416
    assert add(models, url, "--name", "a").exit_code == 0
    assert (models / "lora" / "a.safetensors").read_bytes() == big_lora
    server.requests.clear()
    server.wrong_start = 0  # answers bytes 0-… to a request for bytes 1000-
    part.write_bytes(big_lora[:1000])
    assert add(models, url, "--name", "b").exit_code == 0
    assert server.ranges() == ["bytes=1000-", None]
    assert (models / "lora" / "b.safetensors").read_bytes() == big_lora


def test_content_disposition_names_the_model(tmp_path, server, big_lora):
    server.files["/api/download/123"] = big_lora
    server.disposition = "attachment; filename*=UTF-8''caf%C3%A9%20style.safetensors"
    models = tmp_path / "models"
    assert add(models, server.url("/api/download/123")).exit_code == 0
    assert (models / "lora" / "café style.safetensors").exists()


def test_a_wrong_sha256_is_refused_and_nothing_is_filed(tmp_path, server, big_lora):
    server.files["/m.safetensors"] = big_lora
    models = tmp_path / "models"
    result = add(models, server.url("/m.safetensors"), "--sha256", "0" * 64)
    assert result.exit_code != 0
    assert "sha256 mismatch" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (models / "lora").exists() and leftovers(models) == []
    good = add(models, server.url("/m.safetensors"), "--sha256", hashlib.sha256(big_lora).hexdigest().upper())
    assert good.exit_code == 0, good.output


def test_an_http_error_is_one_line(tmp_path, server):
    result = add(tmp_path / "models", server.url("/missing.safetensors"))
    assert result.exit_code != 0 and "HTTP 404" in result.output
    assert len(result.output.strip().splitlines()) == 1


# --- checks -------------------------------------------------------------------------------------------
def test_a_truncated_safetensors_is_refused(tmp_path, server, big_lora):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(big_lora[:-100])
    models = tmp_path / "models"
    result = add(models, str(cut))
    assert result.exit_code != 0 and "truncated" in result.output, result.output
    assert not (models / "lora").exists() and leftovers(models) == []
    server.files["/cut.safetensors"] = big_lora[:-100]  # served complete, but the file itself is cut
    result = add(models, server.url("/cut.safetensors"))
    assert result.exit_code != 0 and "truncated" in result.output
    assert leftovers(models) == []


def test_a_header_that_is_not_json_is_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\x00" * 8)
    found = modelfiles.inspect_file(bad)
    assert found.problem and "not JSON" in found.problem


@pytest.mark.parametrize(
    ("shapes", "kind", "base", "layout", "ranks"),
    [
        (SDXL_MAIN, "main", "SDXL", (), ()),
        (KOHYA_LORA, "lora", "SDXL", ("kohya",), (4,)),
        (PEFT_LORA, "lora", "SDXL", ("peft",), (8,)),
        (LOHA, "lora", "SDXL", ("LyCORIS LoHa",), (6,)),
        (LOKR, "lora", "SDXL", ("LyCORIS LoKr",), (2,)),
        (LOCON, "lora", "SDXL", ("kohya", "DoRA", "LyCORIS LoCon"), (4,)),
        (SDXL_EMBEDDING, "embedding", "SDXL", (), ()),
        ({"emb_params": (2, 768)}, "embedding", "SD1", (), ()),
        (VAE, "vae", "unknown", (), ()),
        (CONTROLNET, "controlnet", "SDXL", (), ()),
        ({**CONTROLNET, "task_embedding": (8, 320)}, "controlnet", "SDXL", (), ()),
    ],
)
def test_each_kind_is_told_by_its_tensors_and_filed_in_its_folder(tmp_path, shapes, kind, base, layout, ranks):
    source = write_safetensors(tmp_path / "src" / "thing.safetensors", shapes)
    found = modelfiles.inspect_file(source)
    assert (found.kind, found.base, found.problem) == (kind, base, None)
    assert set(found.layout) == set(layout) and found.ranks == ranks
    assert found.dtypes == ("F16",) and found.tensors == len(shapes)
    models = tmp_path / "models"
    result = add(models, str(source), "--name", f"my-{kind}")
    assert result.exit_code == 0, result.output
    filed = models / kind / f"my-{kind}.safetensors"
    assert filed.read_bytes() == source.read_bytes()
    sidecar = json.loads((models / kind / f"my-{kind}.json").read_text())
    assert sidecar["Source"] == str(source.resolve()) and sidecar["Sha256"] == sha256(source)
    assert source.exists()  # a local file is copied or linked, never moved


def test_control_models_say_their_type_and_base(tmp_path):
    union = modelfiles.inspect_file(
        write_safetensors(tmp_path / "u.safetensors", {**CONTROLNET, "task_embedding": (8, 320)})
    )
    assert union.details == {"type": "ControlNet-Union"}
    sd1 = {
        "control_model.input_hint_block.0.weight": (16, 3, 3, 3),
        "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    }
    found = modelfiles.inspect_file(write_safetensors(tmp_path / "sd1.safetensors", sd1))
    assert (found.kind, found.base, found.details) == ("controlnet", "SD1", {"type": "ControlNet"})
    lora = {"input_hint_block.0.weight": (16, 3, 3, 3), "input_blocks.1.0.in_layers.2.up": (320, 128)}
    control_lora = modelfiles.inspect_file(write_safetensors(tmp_path / "cl.safetensors", lora))
    assert control_lora.kind == "controlnet" and "control-LoRA" in control_lora.details["problem"]


def test_an_ip_adapter_is_told_by_its_keys_and_filed_with_what_encoder_it_needs(tmp_path):
    shapes = {
        "image_proj.proj.weight": (4 * 2048, 1024),
        "image_proj.proj.bias": (4 * 2048,),
        "image_proj.norm.weight": (2048,),
        "image_proj.norm.bias": (2048,),
        **{f"ip_adapter.{n}.to_{kv}_ip.weight": (640, 2048) for n in range(1, 140, 2) for kv in "kv"},
    }
    source = write_safetensors(tmp_path / "ip-adapter_sdxl_vit-h.safetensors", shapes)
    found = modelfiles.inspect_file(source)
    assert (found.kind, found.base) == ("ipadapter", "SDXL")
    assert found.details == {"type": "plain", "encoder": "ViT-H", "tokens": 4}
    result = add(tmp_path / "models", str(source))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models" / "ipadapter" / "ip-adapter_sdxl_vit-h.safetensors").exists()


def test_main_model_details_and_v_prediction(tmp_path):
    found = modelfiles.inspect_file(write_safetensors(tmp_path / "v.safetensors", {**SDXL_MAIN, "v_pred": (0,)}))
    assert found.v_prediction and found.details == {"inpainting": False, "text_encoder_layers": 1}
    assert not modelfiles.inspect_file(write_safetensors(tmp_path / "e.safetensors", SDXL_MAIN)).v_prediction


def test_an_sd1_main_model_is_refused(tmp_path):
    source = write_safetensors(tmp_path / "sd15.safetensors", SD1_MAIN)
    models = tmp_path / "models"
    result = add(models, str(source))
    assert result.exit_code != 0 and "SD1 checkpoint" in result.output and "SDXL" in result.output
    assert not (models / "main").exists() and leftovers(models) == []


def test_a_hypernetwork_pickle_is_read_without_running_it_and_filed(tmp_path):
    source = write_torch_zip(tmp_path / "src" / "hn.pt", hypernetwork())
    found = modelfiles.inspect_file(source)
    assert (found.kind, found.format, found.base, found.problem) == ("hypernetwork", "pickle", "SDXL", None)
    assert found.details == {"context_widths": [768, 2048]} and found.dtypes == ("F16",) and found.tensors == 12
    models = tmp_path / "models"
    result = add(models, str(source))
    assert result.exit_code == 0, result.output
    assert (models / "hypernetwork" / "hn.pt").exists() and (models / "hypernetwork" / "hn.json").exists()


def test_a_lora_pickle_is_refused_as_the_catalog_reads_loras_from_safetensors_only(tmp_path):
    source = write_torch_zip(tmp_path / "l.bin", {k: _Tensor(s or (1,)) for k, s in PEFT_LORA.items()})
    assert modelfiles.inspect_file(source).kind == "lora"
    result = add(tmp_path / "models", str(source))
    assert result.exit_code != 0 and "convert it to .safetensors" in result.output


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return eval, (f"open({str(self.marker)!r}, 'w')",)


@pytest.mark.parametrize("how", ["GLOBAL os.system in a torch zip", "STACK_GLOBAL with memo", "plain pickle"])
def test_a_pickle_that_needs_code_is_refused_naming_it_and_never_run(tmp_path, how):
    marker = tmp_path / "pwned"
    if how.startswith("GLOBAL"):  # written by hand: os.system("touch …")
        source = write_zip(tmp_path / "evil.pt", f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
        named = "os.system"
    elif how.startswith("STACK"):  # protocol 4: module and name pushed as memoized strings
        data = pickle.dumps({"w": _RunsCode(marker)}, protocol=4)
        source = write_zip(tmp_path / "evil.ckpt", data)
        named = "builtins.eval"
    else:
        (source := tmp_path / "evil.bin").write_bytes(pickle.dumps([_RunsCode(marker)], protocol=2, fix_imports=False))
        named = "builtins.eval"
    found = modelfiles.inspect_file(source)
    assert found.problem and named in found.problem and "could run code" in found.problem
    models = tmp_path / "models"
    result = add(models, str(source), "--kind", "embedding")
    assert result.exit_code != 0 and named in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not marker.exists() and not (models / "embedding").exists() and leftovers(models) == []
    info = runner.invoke(cli.app, ["models", "info", str(source)])
    assert info.exit_code != 0 and named in info.output and not marker.exists()


def test_an_unknown_file_needs_kind(tmp_path):
    source = write_safetensors(tmp_path / "odd.safetensors", {"some.weight": (2, 2)})
    models = tmp_path / "models"
    refused = add(models, str(source))
    assert refused.exit_code != 0 and "--kind" in refused.output
    filed = add(models, str(source), "--kind", "embedding")
    assert filed.exit_code == 0 and (models / "embedding" / "odd.safetensors").exists()


# --- filing -------------------------------------------------------------------------------------------
def test_a_name_collision_is_refused_without_force(tmp_path):
    models = tmp_path / "models"
    first = write_safetensors(tmp_path / "a" / "style.safetensors", KOHYA_LORA, TRIGGER_METADATA)
    second = write_safetensors(tmp_path / "b" / "style.safetensors", PEFT_LORA)
    assert add(models, str(first)).exit_code == 0
    sidecar = models / "lora" / "style.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "Name": "Mine", "TriggerWordList": ["x"]}))
    refused = add(models, str(second))
    assert refused.exit_code != 0 and "--force" in refused.output
    assert sha256(models / "lora" / "style.safetensors") == sha256(first) and leftovers(models) == []
    forced = add(models, str(second), "--force")
    assert forced.exit_code == 0, forced.output
    assert sha256(models / "lora" / "style.safetensors") == sha256(second)
    meta = json.loads(sidecar.read_text())
    assert (meta["Name"], meta["TriggerWordList"], meta["Sha256"]) == ("Mine", ["x"], sha256(second))
    emb = write_safetensors(tmp_path / "c" / "style.safetensors", SDXL_EMBEDDING)
    clash = add(models, str(emb))  # the same code in another sub-model folder would be ambiguous
    assert clash.exit_code != 0 and "unique" in clash.output


def test_bad_options_are_refused_before_any_download(tmp_path, server):
    models = tmp_path / "models"
    for args, said in [
        (["--name", "../x"], "--name"),
        (["--kind", "checkpoint"], "--kind"),
        (["--sha256", "abc"], "--sha256"),
    ]:
        result = add(models, server.url("/m.safetensors"), *args)
        assert result.exit_code != 0 and said in result.output
    assert server.requests == []


def test_models_info_json(tmp_path):
    source = write_safetensors(tmp_path / "style.safetensors", LOCON, TRIGGER_METADATA)
    result = runner.invoke(cli.app, ["models", "info", str(source), "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["kind"] == "lora" and found["base"] == "SDXL" and found["refused"] is None
    assert set(found["layout"]) == {"kohya", "LyCORIS LoCon", "DoRA"} and found["ranks"] == [4]
    assert found["dtypes"] == ["F16"] and found["tensors"] == len(LOCON)
    assert found["trigger_words"] == ["zxc style"] and found["sha256"] == sha256(source)
    human = runner.invoke(cli.app, ["models", "info", str(source)])
    assert human.exit_code == 0 and "LyCORIS LoCon" in human.stdout and "zxc style" in human.stdout


# --- what cannot load, and who can read the sidecar ---------------------------------------------------
#: a main model whose UNet widths are not SDXL base's: it loads only with a Config folder named in its sidecar
CUSTOM_MAIN = {**SDXL_MAIN, "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (2, 1536)}


def test_a_main_model_that_cannot_load_is_refused_unless_forced(tmp_path):
    source = write_safetensors(tmp_path / "odd.safetensors", CUSTOM_MAIN)
    models = tmp_path / "models"
    refused = add(models, str(source))
    assert refused.exit_code == 1, refused.output
    assert "refused: its widths are not SDXL base's (custom" in refused.output and "--force" in refused.output
    assert not (models / "main" / "odd.safetensors").exists() and leftovers(models) == []

    forced = add(models, str(source), "--force")
    assert forced.exit_code == 0, forced.output
    assert "warning: filed as asked (--force), but it WILL NOT LOAD as it is" in forced.output
    assert (models / "main" / "odd.safetensors").exists()

    # once its sidecar names a Config folder, it loads: filed again without --force's warning
    sidecar = models / "main" / "odd.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "Config": "odd-config"}))
    again = add(models, str(source), "--force")  # --force: the name is taken
    assert again.exit_code == 0 and "WILL NOT LOAD" not in again.output, again.output


def test_the_sidecar_is_readable_by_the_group(tmp_path):
    import os
    import stat

    old = os.umask(0o077)  # the strictest usual umask: the sidecar is still readable by the service's group
    try:
        result = add(tmp_path / "models", str(write_safetensors(tmp_path / "style.safetensors", KOHYA_LORA)))
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    mode = stat.S_IMODE((tmp_path / "models" / "lora" / "style.json").stat().st_mode)
    assert mode & 0o040 and mode == modelfiles.SIDECAR_MODE, oct(mode)
