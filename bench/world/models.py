"""The model zoo: tiny decoders pretrained locally (cached by config hash) and any Hugging Face model.

Zoo models are built from a config, then pretrained for a fixed number of steps on a generated corpus
(``bench.world.synthetic.pretraining_corpus``), deterministically, and saved as an ordinary Hugging Face
model directory. Every model, zoo or not, is then loaded by ``from_pretrained`` on a name or path:
the code a real model takes is the code the tests take.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from bench.api.config import doc
from bench.api.errors import UserError
from bench.api.memo import cache_root
from bench.api.numerics import cpu_kernels
from bench.api.registry import MODELS
from bench.api.seeding import isolated_rng
from bench.api.vocabulary import JsonObject, TaskKind
from bench.world import synthetic

if TYPE_CHECKING:  # named in annotations only: transformers loads lazily
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

# 2: pretraining runs single-threaded. Version 1 builds depended on the thread count of the process
# that built them first (a 2-thread build of Table 4's 4-layer model differs by up to 0.023 per weight
# from a 1-thread build, enough to move a membership AUC by 0.035), so a cache held whichever came first.
ZOO_VERSION = 2
KERNELS_FILE = "cpu_kernels"
"""Written beside a pretrained zoo model: the CPU kernel path its weights were summed on."""
UNRECORDED = "unrecorded"


class ModelSource(abc.ABC):
    """Where a base model comes from; ``path()`` is a directory or hub name for ``from_pretrained``."""

    name: ClassVar[str]

    @dataclass(frozen=True, kw_only=True)
    class Config:
        pass

    def __init__(self, config: Any):
        self.config = config

    @abc.abstractmethod
    def path(self) -> str:
        """A directory or hub name that ``from_pretrained`` loads the base model from."""

    def metadata(self) -> JsonObject:
        return {}

    def pretraining_corpus(self) -> list[str] | None:
        """The pretraining data when it is public (what makes a model open-source tier)."""
        return None

    def architecture(self) -> PretrainedConfig | None:
        """The model's transformers config, read without its weights; None where only building the model
        would tell (zoo models, whose architectures are known decoders)."""
        return None

    def on_hub(self) -> bool:
        """True when the model is a hub name (its config is read only when a run downloads it), False for a
        local directory, a file or a zoo model, whose architecture is checked before any run."""
        return False

    def check_task(self, task_kind: str) -> str | None:
        """Why this model cannot serve a ``task_kind`` task, or None: an encoder-only model (BERT family)
        cannot generate, and loading it as a causal LM would attach an untrained LM head. Cheap (reads
        the config only), so scenario validation can call it, together with ``Method.check_model``."""
        config = self.architecture()
        if config is None or task_kind == TaskKind.CLASSIFICATION or not encoder_only(config):
            return None
        return (f"model '{self.path()}' is encoder-only ({config.model_type}); a {task_kind} task needs a causal "
                "language model (a decoder): an encoder would get an untrained LM head. Use it for a "
                "classification task, or choose a decoder model")

    def load(self, task_kind: str, num_labels: int, device: torch.device, init_seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """(model, tokenizer): a sequence-classification head for classification, else a causal LM."""
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        problem = self.check_task(task_kind)
        if problem:  # validation refuses it first; a run that gets here fails with the reason
            raise ValueError(problem)
        location = self.path()
        tokenizer = AutoTokenizer.from_pretrained(location)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        with isolated_rng(init_seed):  # a fresh classification head is initialised from the seed
            if task_kind == TaskKind.CLASSIFICATION:
                model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=num_labels,
                                                                           **self.load_kwargs())
                model.config.pad_token_id = tokenizer.pad_token_id
            else:
                model = AutoModelForCausalLM.from_pretrained(location, **self.load_kwargs())
        return model.to(device), tokenizer

    def load_kwargs(self) -> dict[str, object]:
        return {}

    def context_length(self) -> int | None:
        """Positions the model takes (None when unknown without downloading it)."""
        return None

    def check(self) -> None:
        """Raise ``UserError`` (key ``model.params.*``) for what is wrong before loading; offline and cheap."""
        return None


@MODELS.register("hf")
class HuggingFaceModel(ModelSource):
    """Any Hugging Face model by hub name or local directory (decoders for every task; encoders for classification)."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        path: str = doc("Hub name (e.g. 'Qwen/Qwen2.5-0.5B') or a local directory saved by save_pretrained "
                        "(relative to the scenario file's folder).", path="local-or-hub")
        dtype: Literal["float32", "bfloat16", "float16"] = doc("Weights dtype.", "float32")
        license: str = doc("License of the weights, for the results' metadata.", "unknown")
        openness: str = doc("Openness of the release: open-source, open-weight, gray-box or black-box.", "open-weight")

    _architecture: PretrainedConfig | None = None  # the transformers config, read once

    def path(self) -> str:
        return self.config.path

    def on_hub(self) -> bool:
        from bench.spec.scenario import looks_local

        return not looks_local(self.config.path)

    def architecture(self) -> PretrainedConfig:
        if self._architecture is None:
            from transformers import AutoConfig

            try:
                self._architecture = AutoConfig.from_pretrained(self.config.path)
            except (OSError, ValueError) as error:
                raise UserError(f"cannot read a model config at '{self.config.path}': {error}",
                                key="model.params.path") from None
        return self._architecture

    def load_kwargs(self) -> dict[str, object]:
        return {"dtype": getattr(torch, self.config.dtype)}

    def check(self) -> None:
        from bench.spec.scenario import looks_local

        path = Path(self.config.path)
        if looks_local(self.config.path) and not (path / "config.json").is_file():
            what = ("has no config.json" if path.is_dir() else "is a file, not a model directory" if path.exists()
                    else "does not exist")
            raise UserError(f"model path {self.config.path} {what}; give a hub name (org/name) or a directory "
                            f"written by save_pretrained", key="model.params.path")

    def context_length(self) -> int | None:
        config = Path(self.config.path) / "config.json"
        if not config.is_file():
            return None
        try:
            values = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # from_pretrained will say what is wrong with it
            return None
        if not isinstance(values, dict):
            return None
        known = [values[k] for k in ("max_position_embeddings", "n_positions") if isinstance(values.get(k), int)]
        return known[0] if known else None

    def metadata(self) -> JsonObject:
        return {"license": self.config.license, "openness": self.config.openness, "source": self.config.path}


def encoder_only(config: PretrainedConfig) -> bool:
    """True for a bidirectional encoder (BERT, RoBERTa, DistilBERT, ModernBERT, ...): a model type that
    transformers knows as a masked LM, with a config that is neither a decoder nor an encoder-decoder."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return (config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
            and not getattr(config, "is_encoder_decoder", False) and not getattr(config, "causal", False))


@dataclass(frozen=True, kw_only=True)
class ZooConfig:
    hidden: int = doc("Hidden width.", 128)
    layers: int = doc("Transformer blocks.", 4)
    heads: int = doc("Attention heads.", 4)
    vocab: int = doc("Byte-level BPE vocabulary size, trained on the pretraining corpus.", 2048)
    context: int = doc("Maximum positions.", 128)
    pretrain_steps: int = doc("Optimizer steps of local pretraining.", 250)
    pretrain_batch: int = doc("Sequences per pretraining step.", 32)
    pretrain_lr: float = doc("Peak AdamW learning rate of pretraining.", 3e-3)
    corpus_documents: int = doc("Documents in the generated pretraining corpus.", 3000)
    seed: int = doc("Seed of corpus, tokenizer, initialisation and batches.", 0)


class ZooModel(ModelSource):
    """A tiny decoder built from a config and pretrained here (see module docstring)."""

    Config = ZooConfig
    license: ClassVar[str] = "Apache-2.0 (TierBench zoo)"

    @abc.abstractmethod
    def hf_config(self, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
        """The transformers config of this architecture, sized to ``tokenizer``'s vocabulary."""

    def cache_key(self) -> str:
        blob = json.dumps({"zoo": ZOO_VERSION, "arch": self.name, **dataclasses.asdict(self.config)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def path(self) -> str:
        target = cache_root() / "models" / f"{self.name}-{self.cache_key()}"
        built_on = _kernels_of(target)
        if built_on != cpu_kernels():
            from tqdm import tqdm

            was = ("does not record the CPU kernel path it was pretrained on" if built_on == UNRECORDED else
                   f"was pretrained on the {built_on} CPU kernel path")
            why = ("on first use" if built_on is None else
                   f"again: the cached copy {was}, this process runs {cpu_kernels()} (bench.api.numerics)")
            tqdm.write(f"pretraining zoo model {self.name} {why} ({self.config.pretrain_steps} steps; cached "
                       f"in {target}, TIERBENCH_CACHE moves it)", file=sys.stderr)
            _build_atomically(target, self._pretrain, replace=built_on is not None)
        return str(target)

    def context_length(self) -> int | None:
        return self.config.context

    def pretraining_corpus(self) -> list[str]:
        return synthetic.pretraining_corpus(self.config.corpus_documents, torch.Generator().manual_seed(self.config.seed))

    def metadata(self) -> JsonObject:
        c = self.config
        target = Path(self.path())
        return {"license": self.license, "openness": "open-source", "source": f"zoo:{self.name}-{self.cache_key()}",
                "pretraining": f"{c.pretrain_steps} steps x {c.pretrain_batch} on {c.corpus_documents} generated documents",
                "weights": f"sha256 {_file_digest(target / 'model.safetensors')} ({_kernels_of(target)} kernels)"}

    def _pretrain(self, directory: Path) -> None:
        from bench.world.pretrain import pretrain

        corpus = self.pretraining_corpus()
        tokenizer = train_tokenizer(corpus, self.config.vocab)
        with isolated_rng(self.config.seed):
            model = self.model_class()(self.hf_config(tokenizer))
        # One thread whatever the caller runs with: a parallel reduction sums in another order, and the
        # weights (so every number measured on them) would depend on which process filled the cache.
        with torch_threads(1):
            pretrain(model, tokenizer, corpus, self.config, label=f"pretraining {self.name}")
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        (directory / KERNELS_FILE).write_text(cpu_kernels() + "\n")

    @abc.abstractmethod
    def model_class(self) -> type[PreTrainedModel]:
        """The transformers model class ``hf_config`` builds."""


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to ``threads``, then restore it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _kernels_of(target: Path) -> str | None:
    """The CPU kernel path a cached zoo model was pretrained on: None when there is no finished copy,
    ``UNRECORDED`` for a copy made before the path was recorded (session 28)."""
    if not (target / "done").exists():
        return None
    try:
        return (target / KERNELS_FILE).read_text().strip()
    except OSError:
        return UNRECORDED


def _file_digest(path: Path) -> str:
    stat = path.stat()  # in the key: a copy pretrained again in this process is a new file
    return _digest_of(path, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _digest_of(path: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _build_atomically(target: Path, build: Callable[[Path], None], *, replace: bool = False) -> None:
    """Build into a staging folder, then rename it to ``target``; with ``replace``, a finished ``target``
    that is stale is moved aside first (a reader finds the old copy, the new one or none, which it then builds
    itself; never half of one). A sweep builds its models before its workers start (``prepare_models``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    stale = staging.with_name(staging.name + "-stale")
    try:
        build(staging)
        (staging / "done").write_text("ok\n")
        if replace:
            with contextlib.suppress(OSError):  # another process moved it first
                target.rename(stale)
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its copy is identical
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)


def train_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|eos|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|eos|>", bos_token="<|eos|>", pad_token="<|pad|>")


@MODELS.register("tiny-gpt2")
class TinyGPT2(ZooModel):
    """GPT-2 architecture (learned positions, LayerNorm, tied embeddings), about 1M parameters."""

    def model_class(self) -> type[PreTrainedModel]:
        from transformers import GPT2LMHeadModel

        return GPT2LMHeadModel

    def hf_config(self, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
        from transformers import GPT2Config

        c = self.config
        return GPT2Config(vocab_size=len(tokenizer), n_embd=c.hidden, n_layer=c.layers, n_head=c.heads,
                          n_positions=c.context, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)


@MODELS.register("tiny-llama")
class TinyLlama(ZooModel):
    """Llama architecture (RoPE, RMSNorm, SwiGLU, untied embeddings), about 1.3M parameters."""

    def model_class(self) -> type[PreTrainedModel]:
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM

    def hf_config(self, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
        from transformers import LlamaConfig

        c = self.config
        return LlamaConfig(vocab_size=len(tokenizer), hidden_size=c.hidden, intermediate_size=c.hidden * 8 // 3,
                           num_hidden_layers=c.layers, num_attention_heads=c.heads, num_key_value_heads=c.heads,
                           max_position_embeddings=c.context, attention_dropout=0.0, tie_word_embeddings=False,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id)


# Sources that build their Hugging Face directory from another format (GGUF) register from their own
# module; importing it here is what puts them in the registry (the plugin loader imports this module).
from bench.world import model_sources as _model_sources  # noqa: E402,F401
