"""A tiny random CTranslate2 translation model with a trained SentencePiece vocabulary.

Its output is gibberish by design: it exercises the real loading, tokenizing and decoding path.
Written in both layouts the CT2 backend reads: OPUS-MT (model.bin + source.spm/target.spm) and an
Argos package (model/ + sentencepiece.model), which is also zipped as a `.argosmodel`.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np

CORPUS = [
    "a red cat sitting in the snow",
    "一只猫坐在雪地里",
    "夕暮れの東京",
    "un chat rouge dans la neige",
    "a futuristic city at night",
    "une ville futuriste la nuit",
    "赛博朋克城市",
]


def _spec_shape(name: str, vocab: int, d: int, ffn: int):
    if name.endswith("layer_norm/gamma"):
        return (d,), np.ones
    if name.endswith("layer_norm/beta"):
        return (d,), np.zeros
    if re.search(r"embeddings(_\d+)?/weight$", name) or name.endswith("projection/weight"):
        return (vocab, d), None
    if name.endswith("projection/bias"):
        return (vocab,), np.zeros
    if "self_attention/linear_0/weight" in name:
        return (3 * d, d), None
    if "attention/linear_0/weight" in name:  # encoder-decoder attention: query
        return (d, d), None
    if "attention/linear_1/weight" in name and "self_attention" not in name:  # keys + values
        return (2 * d, d), None
    if "ffn/linear_0/weight" in name:
        return (ffn, d), None
    if "ffn/linear_1/weight" in name:
        return (d, ffn), None
    if name.endswith("weight"):
        return (d, d), None
    if name.endswith("bias"):
        return None, None
    return None, None


def _set(spec, name: str, value) -> None:
    obj = spec
    *path, last = name.split("/")
    for part in path:
        if hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            base, index = part.rsplit("_", 1)
            obj = getattr(obj, base)[int(index)]
    if hasattr(obj, last):
        setattr(obj, last, value)
    else:
        base, index = last.rsplit("_", 1)
        getattr(obj, base)[int(index)] = value


def build(folder: Path, layout: str = "opus", d: int = 16, ffn: int = 32) -> Path:
    import ctranslate2  # noqa: F401
    import sentencepiece as spm
    from ctranslate2.specs import transformer_spec

    folder.mkdir(parents=True, exist_ok=True)
    work = folder.parent / f".{folder.name}-work"
    work.mkdir(exist_ok=True)
    (work / "corpus.txt").write_text("\n".join(f"{line} {i}" for i in range(50) for line in CORPUS))
    spm.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"),
        model_prefix=str(work / "sp"),
        vocab_size=60,
        character_coverage=1.0,
        model_type="unigram",
        bos_id=-1,
        eos_id=2,
        unk_id=0,
        pad_id=1,
        pad_piece="<blank>",
        eos_piece="</s>",
        unk_piece="<unk>",
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(work / "sp.model"))
    special = {"<unk>", "<s>", "</s>", "<blank>"}
    vocab = ["<unk>", "<s>", "</s>"] + [
        sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.id_to_piece(i) not in special
    ]
    spec = transformer_spec.TransformerSpec.from_config(num_layers=1, num_heads=2)
    rng = np.random.default_rng(0)
    for name, value in spec.variables().items():
        if value is not None:
            continue
        shape, init = _spec_shape(name, len(vocab), d, ffn)
        if shape:
            array = init(shape) if init else rng.standard_normal(shape) * 0.1
            _set(spec, name, array.astype(np.float32))
    spec.register_source_vocabulary(vocab)
    spec.register_target_vocabulary(vocab)
    spec.validate()
    spec.optimize(quantization="int8")
    model_dir = folder / "model" if layout == "argos" else folder
    model_dir.mkdir(parents=True, exist_ok=True)
    spec.save(str(model_dir))
    if layout == "argos":
        shutil.copy(work / "sp.model", folder / "sentencepiece.model")
        (folder / "metadata.json").write_text(
            json.dumps({"package_version": "1.0", "from_code": "xx", "to_code": "en"})
        )
    else:
        shutil.copy(work / "sp.model", folder / "source.spm")
        shutil.copy(work / "sp.model", folder / "target.spm")
    shutil.rmtree(work)
    return folder


def argos_package(path: Path) -> Path:
    """The tiny model as a `.argosmodel` zip, as the Argos package index serves them."""
    folder = build(path.parent / "pkg-src" / "translate-xx_en-1_0", layout="argos")
    with zipfile.ZipFile(path, "w") as archive:
        for file in folder.rglob("*"):
            archive.write(file, file.relative_to(folder.parent))
    return path
