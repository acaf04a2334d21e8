"""The README's code, run as a reader runs it, against a real `picserve serve` (embedded PostgreSQL, one
worker, the tiny SDXL on the CPU): the SDK example, the standalone signer and its curl lines. They cannot
rot: a change that breaks them fails here. The same server's log shows what an operator reads of it."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.processes import create_key, running, serve

README = Path(__file__).parents[2] / "README.md"


def readme_block(name: str) -> str:
    """The fenced code block right after the README's `<!-- readme-test: NAME -->` marker."""
    text = README.read_text()
    match = re.search(rf"<!-- readme-test: {name} -->\n```\w*\n(.*?)\n```", text, re.S)
    assert match, f"README.md has no code block marked readme-test: {name}"
    return match.group(1)


def shell_commands(block: str) -> list[str]:
    """The commands of a shell block (a line ending in a backslash goes on)."""
    commands, current = [], ""
    for line in block.splitlines():
        current += line.removesuffix("\\") + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(current)
            current = ""
    return commands


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir) -> Iterator[tuple[str, dict[str, str], Path]]:
    data_dir = tmp_path_factory.mktemp("readme")
    log = data_dir.parent / f"{data_dir.name}-serve.log"
    # the default log level, as an operator runs it: refusals logged, polls not
    env = {**os.environ, "PICSERVE_LOG_LEVEL": "info"}
    process = serve("--data-dir", data_dir, "--models-dir", models_dir, "--device", "cpu", log=log, env=env)
    with running(process):
        key = create_key(name="reader", data_dir=data_dir)
        yield process.base, key, log


def reader_env(base: str, key: dict[str, str], **more: str) -> dict[str, str]:
    return {
        **os.environ,
        "PICSERVE_URL": base,
        "PICSERVE_PUBLIC_KEY": key["PublicKey"],
        "PICSERVE_PRIVATE_KEY": key["PrivateKey"],
        **more,
    }


def run_python(script: str, base: str, key: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Python as a reader runs it, with the server's URL and the key in the environment: `script` (saved
    in `cwd`), or with `args`, e.g. `-m picserve …`, instead; it must succeed."""
    if script:
        (cwd / "example.py").write_text(script)
        args = ("example.py",)
    command = [sys.executable, *args]
    ran = subprocess.run(
        command, cwd=cwd, env=reader_env(base, key), capture_output=True, text=True, timeout=300, check=False
    )
    assert ran.returncode == 0, ran.stderr
    return ran


def test_the_sdk_example_runs_and_saves_its_images(server, tmp_path):
    base, key, _ = server
    ran = run_python(readme_block("sdk"), base, key, tmp_path)
    saved = re.findall(r"^(out/\S+\.png) seed (\d+)$", ran.stdout, re.M)
    assert len(saved) == 2, ran.stdout  # BatchSize 2
    for path, _ in saved:
        image = Image.open(tmp_path / path)
        assert image.size == (512, 512) and "parameters" in image.text
    # the tiny model's sidecar defaults applied: the example sends no steps
    assert "Steps: 6" in Image.open(tmp_path / saved[0][0]).text["parameters"]


def run_shell(command: str, base: str, env: dict[str, str], cwd: Path) -> dict[str, object]:
    command = command.replace("python3 ", f"{sys.executable} ").replace("http://127.0.0.1:8080/", f"{base}/")
    ran = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    reply: dict[str, object] = json.loads(ran.stdout)
    return reply


def raw_json(
    base: str, key: dict[str, str], cwd: Path
) -> tuple[Callable[[str, dict[str, object]], str], Callable[[str], dict[str, object]]]:
    """The README's signer and curl lines as two calls: `signed(action, body)` sends a signed request of
    `action` (it must be accepted) and gives its TaskUID; `finished(uid)` polls until the task ends (it
    must finish) and gives its TaskDetail."""
    (cwd / "sign.py").write_text(readme_block("signer"))
    submit, poll = shell_commands(readme_block("curl"))
    env = reader_env(base, key)
    example = """'{"MainModel": {"ModelCode": "picserve-tiny"}, "PositivePrompts": ["a red fox"]}'"""

    def signed(action: str, body: dict[str, object]) -> str:
        (cwd / "body.json").write_text(json.dumps(body))
        command = submit.replace("GenerateImagesSDXL", action).replace(example, '"$(cat body.json)"')
        submitted = run_shell(command, base, env, cwd)
        assert submitted["RetCode"] == 0, submitted
        return str(submitted["TaskUID"])

    def finished(uid: str) -> dict[str, object]:
        for _ in range(600):
            [detail] = run_shell(poll.replace("TASKUID", uid), base, env, cwd)["TaskDetailList"]  # type: ignore[misc]
            if detail["Status"] in ("Finished", "Error", "Canceled"):
                break
            time.sleep(0.5)
        assert detail["Status"] == "Finished", detail
        return detail  # type: ignore[no-any-return]

    return signed, finished


def test_the_signer_and_curl_lines_work(server, tmp_path):
    base, key, log = server
    (tmp_path / "sign.py").write_text(readme_block("signer"))
    submit, poll = shell_commands(readme_block("curl"))
    assert "-H 'Content-Type: application/json'" in submit

    # keys as pasted from a terminal, with whitespace around them
    padded = reader_env(base, key, PICSERVE_PRIVATE_KEY=f"{key['PrivateKey']}\n")
    submitted = run_shell(submit, base, padded, tmp_path)
    assert submitted["RetCode"] == 0, submitted
    task_uid = str(submitted["TaskUID"])
    polled = run_shell(poll.replace("TASKUID", task_uid), base, padded, tmp_path)
    assert polled["RetCode"] == 0, polled
    details = polled["TaskDetailList"]
    assert isinstance(details, list) and details[0]["TaskUID"] == task_uid

    # a wrong private key: the reply names the likeliest cause, and the server log has one line of it
    wrong = reader_env(base, key, PICSERVE_PRIVATE_KEY="not-" + key["PrivateKey"])
    refused = run_shell(poll.replace("TASKUID", task_uid), base, wrong, tmp_path)
    assert refused["RetCode"] == 170
    assert str(refused["Message"]).startswith("Signature does not match. Most likely the PrivateKey")
    text = log.read_text()
    lines = [line for line in text.splitlines() if "refused ListTasksDetails" in line]
    assert len(lines) == 1 and f"from key {key['PublicKey'][:8]}…: RetCode 170: Signature does not match" in lines[0]
    assert key["PrivateKey"] not in text
    # accepted requests (the submit, the polls) leave no line at info level, nor do uvicorn's access lines
    assert '"POST / HTTP/1.1"' not in text and "RetCode 0" not in text, text


def test_a_form_body_is_refused_naming_the_header(server, tmp_path):
    base, key, _ = server
    (tmp_path / "sign.py").write_text(readme_block("signer"))
    submit, _ = shell_commands(readme_block("curl"))
    without = submit.replace(" -H 'Content-Type: application/json' --data-binary", " -d")
    refused = run_shell(without, base, reader_env(base, key), tmp_path)
    assert refused["RetCode"] == 160
    assert "send the header `Content-Type: application/json`" in str(refused["Message"])


def test_the_tools_example_upscales_and_cuts_out_a_generated_image_by_task_uid(server, tmp_path):
    base, key, _ = server
    ran = run_python(readme_block("tools"), base, key, tmp_path)
    cutout = Image.open(tmp_path / ran.stdout.strip())
    assert cutout.size == (1024, 768) and cutout.mode == "RGBA"  # the 4× tiny upscaler, then Lanczos
    task_uid = Path(ran.stdout.strip()).name.removesuffix("-cutout.png")

    # the same chain as signed raw JSON (the README's signer and curl), and on the command line
    (tmp_path / "sign.py").write_text(readme_block("signer"))
    submit, poll = shell_commands(readme_block("curl"))
    upscale = submit.replace("GenerateImagesSDXL", "ResizeImage").replace(
        """'{"MainModel": {"ModelCode": "picserve-tiny"}, "PositivePrompts": ["a red fox"]}'""",
        f"""'{{"Image": "task:{task_uid}/0", "Scale": 1.5}}'""",
    )
    submitted = run_shell(upscale, base, reader_env(base, key), tmp_path)
    assert submitted["RetCode"] == 0, submitted
    cli = run_python("", base, key, tmp_path, "-m", "picserve", "remove-background", f"task:{task_uid}/0",
                     "--only-mask", "--out", "masks")  # fmt: skip
    mask = Image.open(tmp_path / cli.stdout.strip().splitlines()[-1])
    assert mask.size == (512, 384) and mask.mode == "L"
    # the CLI waited for its task, queued after the raw-JSON one: that one has finished
    polled = run_shell(poll.replace("TASKUID", str(submitted["TaskUID"])), base, reader_env(base, key), tmp_path)
    [detail] = polled["TaskDetailList"]  # type: ignore[misc]
    assert detail["Action"] == "ResizeImage" and detail["Status"] == "Finished", detail
    with httpx.Client() as http:
        assert Image.open(io.BytesIO(http.get(detail["ImgList"][0]).content)).size == (768, 576)


def test_the_controlnet_example_guides_by_canny_and_restyles_by_reference(server, tmp_path):
    base, key, _ = server
    ran = run_python(readme_block("controlnet"), base, key, tmp_path)
    canny_map, styled = (Image.open(tmp_path / line) for line in ran.stdout.split())
    assert canny_map.size == (512, 512) and styled.size == (512, 512)
    grey = canny_map.convert("L").histogram()
    assert sum(grey[1:255]) == 0 and 0 < grey[255] < 512 * 512  # a map of edges: black and white only

    # the same through signed raw JSON: ListControlNets, a canny-guided generation, ApplyReferenceStyle
    (tmp_path / "sign.py").write_text(readme_block("signer"))
    submit, poll = shell_commands(readme_block("curl"))
    env = reader_env(base, key)
    example = """'{"MainModel": {"ModelCode": "picserve-tiny"}, "PositivePrompts": ["a red fox"]}'"""

    def signed(action: str, body: dict[str, object]) -> dict[str, object]:
        command = submit.replace("GenerateImagesSDXL", action).replace(example, f"'{json.dumps(body)}'")
        return run_shell(command, base, env, tmp_path)

    listed = signed("ListControlNets", {})
    assert listed["RetCode"] == 0 and "canny" in listed["PreProcessors"], listed  # type: ignore[operator]
    assert listed["ControlModels"]["tiny-canny"]["PreProcessors"][0] == "canny"  # type: ignore[index]
    edges = Image.new("RGB", (64, 64), "black")
    edges.paste("white", (20, 0, 24, 64))
    buffer = io.BytesIO()
    edges.save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    unit = {"ImageIndex": 0, "PreProcessor": {"ModelCode": "canny"},
            "ControlModel": {"ModelCode": "tiny-canny", "InferenceParams": {"ControlWeight": 0.7}}}  # fmt: skip
    bodies = {
        "GenerateImagesSDXL": {"MainModel": {"ModelCode": "picserve-tiny"}, "PositivePrompts": ["a red fox"],
                               "Width": 64, "Height": 64, "ImageAndMaskList": [image], "ControlNetList": [unit]},
        "ApplyReferenceStyle": {"MainModel": {"ModelCode": "picserve-tiny"}, "ImageList": [image, image]},
    }  # fmt: skip
    uids = {}
    for action, body in bodies.items():
        submitted = signed(action, body)
        assert submitted["RetCode"] == 0, submitted
        uids[action] = str(submitted["TaskUID"])
    with httpx.Client() as http:
        for action, uid in uids.items():
            for _ in range(240):
                [detail] = run_shell(poll.replace("TASKUID", uid), base, env, tmp_path)["TaskDetailList"]  # type: ignore[misc]
                if detail["Status"] in ("Finished", "Error", "Canceled"):
                    break
                time.sleep(0.5)
            assert detail["Action"] == action and detail["Status"] == "Finished", detail
            result = Image.open(io.BytesIO(http.get(detail["ImgList"][0]).content))
            assert result.size == (64, 64)
            unit_text = 'ControlNet 0: "Module: canny, Model: tiny-canny, Weight: 0.7'
            if action == "GenerateImagesSDXL":
                assert unit_text in result.text["parameters"]
            else:  # the raw image by img2img, the style by the default IP-Adapter
                assert "Model: tiny-ip-adapter, Weight: 0.5" in result.text["parameters"]


def test_the_edits_example_and_the_same_chain_as_signed_raw_json(server, tmp_path):
    base, key, _ = server
    ran = run_python(readme_block("edits"), base, key, tmp_path)
    big, mended, erased = (Image.open(tmp_path / line) for line in ran.stdout.split())
    assert big.size == mended.size == erased.size == (512, 384)
    assert "Hires upscaler: Latent" in big.text["parameters"] and "First pass size: 256x192" in big.text["parameters"]
    assert "Inpaint area: Only masked" in mended.text["parameters"]
    assert "Postprocess erase: lama-tiny-random" in erased.text["parameters"]  # the installed eraser
    # every pixel outside the feathered masks is the hires image's, bit for bit
    kept = np.ones((384, 512), bool)
    kept[120 - 80 : 240 + 80, 200 - 80 : 300 + 80] = False  # the feathers' reach (the erase's: 2 × 12 + 3 × 12)
    before, after = (np.asarray(i.convert("RGB")) for i in (big, erased))
    assert np.array_equal(before[kept], after[kept]) and not np.array_equal(before, after)

    # the same chain through signed raw JSON: a hires generation, an only-masked edit of it, an erase
    signed, finished = raw_json(base, key, tmp_path)

    mask = Image.new("L", (256, 192))
    mask.paste(255, (100, 60, 160, 120))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    mask_b64 = base64.b64encode(buffer.getvalue()).decode()
    model = {"ModelCode": "picserve-tiny"}
    fix = {"Upscaler": "Lanczos", "DenoisingStrength": 0.5}
    hires = signed("GenerateImagesSDXL", {"MainModel": model, "PositivePrompts": ["a lighthouse"], "Width": 256,
                                          "Height": 192, "Seed": 4, "HiresFix": fix})  # fmt: skip
    finished(hires)
    mended = signed("ModifyMaskedPixels", {"MainModel": model, "PositivePrompts": ["a boat"],
                    "ImageAndMaskList": [f"task:{hires}/0", mask_b64],
                    "Masked": {"ImageIndex": 0, "MaskIndex": 1, "MaskBlur": 4, "InpaintArea": "OnlyMasked",
                               "OnlyMaskedResolution": 256}})  # fmt: skip
    finished(mended)
    erased = signed("RemoveContents", {"RawImage": f"task:{mended}/0", "Mask": mask_b64, "MaskBlur": 4})
    detail = finished(erased)
    assert detail["Action"] == "RemoveContents"
    with httpx.Client() as http:
        images = [Image.open(io.BytesIO(http.get(finished(uid)["ImgList"][0]).content)) for uid in (hires, erased)]  # type: ignore[index]
    assert [i.size for i in images] == [(256, 192), (256, 192)]
    kept = np.ones((192, 256), bool)
    kept[60 - 32 : 120 + 32, 100 - 32 : 160 + 32] = False
    first, last = (np.asarray(i.convert("RGB")) for i in images)
    assert np.array_equal(first[kept], last[kept])
