"""Plan a TheWorld setting at real scale: world tokens, sequence length, attention reach, parameters, memory, sizes.

`plan` answers, without weights and without the network, what a setting costs on the real bases
(``google/gemma-3-4b-it`` + ``nvidia/Cosmos-Predict2-2B-Video2World`` by default). ``theworld plan`` is its command
line.

Bases
-----
Each base is resolved offline, in this order: a local folder's ``config.json`` (Cosmos: ``vae/config.json``, plus
``transformer/`` and ``scheduler/`` for rollout); else the hub cache (``local_files_only``: nothing is downloaded);
else the configs shipped in `theworld.real_configs` for the two default repo ids; else `BaseNotFoundError`.

Parameters
----------
`TheWorldForConditionalGeneration` is built from a `TheWorldConfig` assembled from the base configs (as a fresh build
assembles it) on the meta device, in ``dtype`` with transformers' keep-in-fp32 plan applied (the world projector and
learned world embeddings always, the world encoder when ``world_encoder_dtype="float32"``), and with the freeze flags
applied. Parameters are counted once (``lm_head`` is tied to the embeddings).

Sequence and reach
------------------
The sequence is the processor's layout of one chat turn with one image and a question of ``prompt_tokens`` text
tokens, with the generation prompt: ``<bos>``, the turn header, Gemma's image block (``\\n\\n<start_of_image>`` + 256
``<image_soft_token>`` + ``<end_of_image>\\n\\n``), the world block (``<start_of_world>`` + N + ``<end_of_world>``, after
the image or after ``<bos>``), the question, ``<end_of_turn>\\n<start_of_turn>model\\n``. For a Gemma folder (or hub
cache) with processor files the layout is measured with `TheWorldProcessor`; otherwise it comes from the shipped
Gemma 3 chat-template facts. ``world_tokens_outside_window`` counts the world tokens the last prompt position (the
query that predicts the first answer token) cannot see in a sliding-window layer: Gemma 3 attends ``0 <= q - kv <
sliding_window`` there, so a world token at distance ``q - kv >= sliding_window`` reaches the answer only through the
global layers (1 in 6).

Memory estimate (training, per sample)
--------------------------------------
An estimate, not a measurement. Activations are what autograd saves for the backward pass, at batch 1 per sample,
gradient checkpointing off, activations in ``dtype`` (element size ``a``; Gemma's RMS norms upcast to float32, ``f =
4``) and SDPA attention (memory-efficient kernels that keep no ``L x L`` matrix). A frozen language model still saves
activations: the gradient must flow back through every layer to the world tokens (the projector is trained). Per token
and decoder layer, with ``h`` hidden, ``I`` intermediate, ``q = heads * head_dim``, ``kv = kv_heads * head_dim``:

* frozen layer (input gradients only): ``4h*f`` (fp32 inputs of the four RMS norms) + ``(q + kv)*f`` (fp32 inputs of
  the q/k norms) + ``2(q + kv)*a`` (q, k, v and the attention output kept by SDPA) + ``3I*a`` (gate pre-activation,
  its GELU and the up projection): 126,976 bytes for Gemma 3 4B in bf16;
* trainable layer adds the weight-gradient inputs: ``4h*f + (q + kv)*f`` (normalised outputs of the norms) + ``2h*a +
  I*a`` (inputs of the q/k/v, gate/up and down projections; o_proj's input is SDPA's output): 210,944 bytes.

These per-layer formulas match autograd's saved tensors measured on a real-width Gemma 3 layer to within 1 %
(``tests/test_real_scale.py``). Added per token: the final norm (``h*f``, twice when trainable), RoPE tables, and the
logits and loss, ``V*(a + 8)`` bytes (the logits held by the output, the float32 log-softmax kept by the loss and the
float32 logits gradient of the backward pass): 2.6 MB a token for Gemma's 262,208 rows, against 4.3 MB for all 34
frozen layers. Per sample: the two ``L x L`` boolean masks. ``attn_implementation="eager"`` adds ``heads * L^2 * (4 +
a)`` per layer (the float32 softmax and the probabilities). A trainable SigLIP adds ``8h_v*a + 2I_v*a`` per patch and
layer, a trainable world encoder what autograd saves in its forward (counted by running it on the meta device).
Frozen encoders (SigLIP, the world encoder, the rollout DiT) keep nothing for backward: their transient forward memory
is not added (it comes and goes before the language model's activations build up).

Fixed: the weights (each parameter in its own dtype), their gradients and AdamW's two states for the trainable
parameters (PyTorch keeps them in the parameter's dtype: float32 for the world projector). Not counted: the CUDA
context, allocator fragmentation and the optimizer's temporaries. ``train_memory_total_gb = fixed + batch_size *
per_sample``; GB here are GiB (2**30 bytes), the unit of ``torch.cuda`` memory reports.

Compared with the earlier research code's profile (batch 2, one A100-class GPU; see ``shared/ORIGINAL.md``): its
TheWorld (projection only, 4096 world tokens after ``<bos>``, ~5,076 tokens) used 90 GB, Gemma 3 4B full fine-tuning
47 GB. This model gives 74 GB for the first (88 GB with the unused DiT and T5-11B encoder in bf16 on the device, as the
earlier code loaded the whole pipeline) and 57 GB for the second at ~980 tokens (48 GB with SigLIP frozen; AdamW
states in bf16); the defaults (256 world tokens next to the question, 590 tokens) need 16 GB at batch 2.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from .configuration_theworld import (
    DEFAULT_COSMOS,
    DEFAULT_GEMMA,
    THEWORLD_VERSION,
    TheWorldConfig,
    TheWorldEncoderConfig,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BaseNotFoundError",
    "DEFAULT_PROMPT_TOKENS",
    "ResolvedBase",
    "SequenceLayout",
    "apply_dtype_plan",
    "build_meta_model",
    "estimate_train_memory",
    "plan",
    "resolve_cosmos",
    "resolve_gemma",
    "sequence_layout",
    "theworld_config",
    "world_tokens_outside_window",
]

#: Question length assumed when none is given: a short VQA/VSR question with its instructions.
DEFAULT_PROMPT_TOKENS = 64
GIB = 2**30
#: A question the layout is measured with (its own token count is subtracted again).
_PROBE_QUESTION = "Is the red circle left of the blue square?"
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
#: Parts of the model reported separately (``model.<part>``; ``lm_head`` is tied to the embeddings).
PARTS = (
    "vision_tower",
    "multi_modal_projector",
    "language_model",
    "world_encoder",
    "world_projector",
    "world_boundary_embeddings",
    "world_step_embeddings",
    "world_rollout",
)


class BaseNotFoundError(FileNotFoundError):
    """A base model's config could be found neither locally, nor in the hub cache, nor among the shipped configs."""


# ======================================================================================================================
# Resolving the bases (offline)
# ======================================================================================================================
@dataclass(frozen=True)
class ResolvedBase:
    """A base model's configs and where they came from.

    ``kind`` is ``"local folder"``, ``"hub cache"`` or ``"shipped config"``; ``files`` maps a path inside the repo
    (``"config.json"``, ``"vae/config.json"`` ...) to its parsed JSON; ``location`` is the folder (or snapshot) read,
    ``None`` for shipped configs.
    """

    name: str
    kind: str
    files: dict[str, dict] = field(default_factory=dict)
    location: str | None = None


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _resolve(source: str, wanted: list[str], required: list[str], what: str, hub: dict) -> ResolvedBase:
    """Find ``wanted`` files (paths inside the repo) of ``source``; those in ``required`` must exist."""
    from . import real_configs

    source = os.fspath(source)
    if os.path.isdir(source):
        files = {}
        for name in wanted:
            path = os.path.join(source, *name.split("/"))
            if os.path.isfile(path):
                files[name] = _read_json(path)
        missing = [name for name in required if name not in files]
        if missing:
            raise BaseNotFoundError(
                f"The {what} folder {source} has no {', '.join(missing)}; pass the folder of a {what} model (as "
                "downloaded from the hub)."
            )
        return ResolvedBase(source, "local folder", files, os.path.abspath(source))

    from .checkpoint_theworld import resolve_file

    kw = {"local_files_only": True, **{k: v for k, v in hub.items() if v is not None}}
    files, location = {}, None
    for name in wanted:
        subfolder, _, filename = name.rpartition("/")
        try:
            path = resolve_file(source, filename, subfolder, **kw)
        except (OSError, ValueError):
            path = None
        if path:
            files[name] = _read_json(path)
            location = location or path[: -len(name)].rstrip("/" + os.sep)
    if all(name in files for name in required):
        return ResolvedBase(source, "hub cache", files, location)
    if files:
        missing = [name for name in required if name not in files]
        raise BaseNotFoundError(
            f"The hub cache holds only part of {source!r}: {', '.join(missing)} missing. Download them (e.g. `hf "
            f"download {source} {' '.join(missing)}`) or pass a local folder."
        )
    if real_configs.has_real_config(source):
        shipped = set(real_configs.real_config_files(source))
        files = {}
        for name in wanted:
            if name in shipped:
                subfolder, _, filename = name.rpartition("/")
                files[name] = real_configs.load_real_config(source, filename, subfolder)
        return ResolvedBase(source, "shipped config", files, None)
    raise BaseNotFoundError(
        f"Cannot find the {what} config of {source!r}: it is not a local folder, the hub cache has no copy (plan never "
        f"downloads), and the package ships configs only for {', '.join(real_configs.KNOWN_REPOS)}. Pass a local "
        f"folder, or download the configs first (`hf download {source} {' '.join(required)}`)."
    )


def resolve_gemma(source: str = DEFAULT_GEMMA, revision: str | None = None, cache_dir: str | None = None) -> ResolvedBase:
    """The Gemma 3 base's ``config.json`` (and ``processor_config.json`` when present), resolved offline.

    Raises:
        BaseNotFoundError: not found anywhere (see the module docstring for the order).
        ValueError: the config is not a Gemma 3 vision-language model (``model_type`` ``"gemma3"``).
    """
    base = _resolve(
        source,
        ["config.json", "processor_config.json"],
        ["config.json"],
        "Gemma 3",
        {"revision": revision, "cache_dir": cache_dir},
    )
    model_type = base.files["config.json"].get("model_type")
    if model_type != "gemma3":
        raise ValueError(
            f"{source} has model_type {model_type!r}; plan takes a Gemma 3 vision-language model (model_type "
            "'gemma3', e.g. google/gemma-3-4b-it) as --gemma."
        )
    return base


def resolve_cosmos(
    source: str = DEFAULT_COSMOS, rollout: bool = False, revision: str | None = None, cache_dir: str | None = None
) -> ResolvedBase:
    """The Cosmos-Predict2 base's ``vae/config.json`` (and, with ``rollout``, ``transformer/config.json`` and
    ``scheduler/scheduler_config.json``), resolved offline.

    Raises:
        BaseNotFoundError: not found anywhere, or rollout files missing.
    """
    wanted = ["vae/config.json"]
    if rollout:
        wanted += ["transformer/config.json", "scheduler/scheduler_config.json"]
    return _resolve(source, wanted, wanted, "Cosmos-Predict2", {"revision": revision, "cache_dir": cache_dir})


# ======================================================================================================================
# Config and meta-device model
# ======================================================================================================================
_GEMMA_FIELDS = ("text_config", "vision_config", "mm_tokens_per_image", "boi_token_index", "eoi_token_index",
                 "image_token_index", "initializer_range", "tie_word_embeddings")  # fmt: skip


def theworld_config(gemma: ResolvedBase, cosmos: ResolvedBase | None, **settings) -> TheWorldConfig:
    """The `TheWorldConfig` of a fresh build around these bases (as ``checkpoint_theworld.fresh_config`` assembles it
    from the same files): Gemma's architecture, the Cosmos encoder (and DiT) geometry, the world ``settings``
    (`TheWorldConfig` fields such as ``world_image_size``, ``world_pooling``, ``num_world_steps``, freeze flags)."""
    raw = gemma.files["config.json"]
    fields = {key: copy.deepcopy(raw[key]) for key in _GEMMA_FIELDS if key in raw}
    settings = dict(settings)
    enable_world = settings.get("enable_world", True)
    if enable_world and cosmos is not None:
        settings["world_config"] = TheWorldEncoderConfig.from_vae_config(cosmos.files["vae/config.json"]).to_dict()
        if "transformer/config.json" in cosmos.files:
            strip = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
            settings["rollout_transformer_config"] = strip(cosmos.files["transformer/config.json"])
            settings["rollout_scheduler_config"] = strip(cosmos.files["scheduler/scheduler_config.json"])
    config = TheWorldConfig(**fields, **settings)
    config.gemma_model_name = gemma.name
    config.cosmos_model_name = cosmos.name if cosmos is not None else DEFAULT_COSMOS
    return config


def apply_dtype_plan(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the parameters and persistent buffers that transformers' loader keeps in float32 (``model._get_dtype_plan``:
    ``_keep_in_fp32_modules_strict``, matched against the names as the loader matches them) to float32.

    A model built with ``_from_config(config, dtype=...)`` does not get this plan; `from_pretrained` does. Works on the
    meta device.
    """
    plan = model._get_dtype_plan(dtype)
    if not plan:
        return
    try:
        from transformers.core_model_loading import build_glob_alternation

        pattern, groups, _ = build_glob_alternation(list(plan))

        def target(name: str):
            match = pattern.search(name)
            return plan[groups[match.lastgroup]] if match else None

    except ImportError:  # older transformers: the plan's entries are plain module names

        def target(name: str):
            return next((plan[key] for key in plan if key in name), None)

    persistent = set(model.state_dict(keep_vars=True))
    with torch.no_grad():
        for name, param in model.named_parameters():
            wanted = target(name)
            if wanted is not None and param.dtype != wanted:
                param.data = param.data.to(wanted)
        for module_name, module in model.named_modules():
            for buffer_name, buffer in list(module.named_buffers(recurse=False)):
                full = f"{module_name}.{buffer_name}" if module_name else buffer_name
                wanted = target(full)
                if full in persistent and wanted is not None and buffer.is_floating_point() and buffer.dtype != wanted:
                    setattr(module, buffer_name, buffer.to(wanted))


def build_meta_model(config: TheWorldConfig, dtype: torch.dtype = torch.bfloat16):
    """`TheWorldForConditionalGeneration` of ``config`` on the meta device (no memory, no weights), in ``dtype`` with
    the loader's float32 plan and the config's freeze flags applied."""
    from .checkpoint_theworld import apply_freeze_flags
    from .modeling_theworld import TheWorldForConditionalGeneration

    config = copy.deepcopy(config)
    with torch.device("meta"):
        model = TheWorldForConditionalGeneration._from_config(config, dtype=dtype)
    apply_dtype_plan(model, dtype)
    apply_freeze_flags(model)
    return model


# ======================================================================================================================
# Sequence layout and reach
# ======================================================================================================================
@dataclass(frozen=True)
class SequenceLayout:
    """Token counts around the world block of a one-image chat turn (question excluded).

    ``sequence_length = before_world + (world_tokens + 2) + after_world + prompt_tokens`` (world block present);
    ``source`` says how it was obtained.
    """

    before_world: int
    after_world: int
    source: str
    #: ``(<start_of_world>, <end_of_world>, <world_soft_token>)`` ids the processor gives the world tokens.
    world_token_ids: tuple[int, int, int] | None = None

    def sequence_length(self, world_tokens: int, prompt_tokens: int, enable_world: bool = True) -> int:
        block = world_tokens + 2 if enable_world else 0
        return self.before_world + block + self.after_world + prompt_tokens


def world_tokens_outside_window(
    layout: SequenceLayout, world_tokens: int, prompt_tokens: int, sliding_window: int | None
) -> int:
    """World tokens the last prompt position cannot attend to in a sliding-window layer.

    World token ``j`` (0-based) of a block of ``N`` lies ``N - j + after_world + prompt_tokens`` positions before the
    last position; it is out of reach when that distance is ``>= sliding_window``. ``None`` (no sliding layers): 0.
    """
    if not sliding_window or world_tokens <= 0:
        return 0
    tail = layout.after_world + prompt_tokens
    return max(0, min(world_tokens, world_tokens + tail - sliding_window + 1))


def _facts_layout(image_seq_length: int, placement: str) -> SequenceLayout:
    from . import real_configs

    facts = real_configs.gemma_processor_facts()
    chat = facts["chat_layout"]
    ids = tuple(facts["world_token_ids"][t] for t in ("<start_of_world>", "<end_of_world>", "<world_soft_token>"))
    image_block = len(chat["image_open"]) + image_seq_length + len(chat["image_close"])
    source = "Gemma 3 chat template (shipped facts)"
    if placement == "after_bos":
        after = len(chat["before_image"]) - 1 + image_block + len(chat["after_image"]) + len(chat["after_prompt"])
        return SequenceLayout(1, after, source, ids)
    before = len(chat["before_image"]) + image_block
    return SequenceLayout(before, len(chat["after_image"]) + len(chat["after_prompt"]), source, ids)


def sequence_layout(gemma: ResolvedBase, config: TheWorldConfig, revision: str | None = None,
                    cache_dir: str | None = None) -> SequenceLayout:  # fmt: skip
    """The layout of ``config.world_placement``: measured with `TheWorldProcessor` when the Gemma base has processor
    files (a local folder or hub cache), else from the shipped Gemma 3 chat-template facts."""
    if gemma.kind != "shipped config":
        try:
            return _measured_layout(gemma.name, config, revision, cache_dir)
        except Exception as error:  # no tokenizer or chat template: fall back to the facts
            logger.info("Could not measure the layout with the processor of %s (%s); using the shipped facts.",
                        gemma.name, error)  # fmt: skip
    return _facts_layout(config.mm_tokens_per_image, config.world_placement)


def _measured_layout(source: str, config: TheWorldConfig, revision: str | None, cache_dir: str | None) -> SequenceLayout:
    from PIL import Image

    from .processing_theworld import TheWorldProcessor

    hub = {"local_files_only": True}
    if revision:
        hub["revision"] = revision
    if cache_dir:
        hub["cache_dir"] = cache_dir
    processor = TheWorldProcessor.from_gemma(
        source,
        num_world_tokens=1,
        world_placement=config.world_placement,
        world_image_size=64,
        start_of_world_token=config.start_of_world_token,
        end_of_world_token=config.end_of_world_token,
        world_token=config.world_token,
        **hub,
    )
    if not processor.chat_template:
        raise ValueError("no chat template")
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    conversation = [[{"role": "user", "content": [{"type": "image", "image": image},
                                                   {"type": "text", "text": _PROBE_QUESTION}]}]]  # fmt: skip
    ids = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = list(ids["input_ids"][0])
    question = len(processor.tokenizer(_PROBE_QUESTION, add_special_tokens=False)["input_ids"])
    start, end = ids.index(processor.start_of_world_token_id), ids.index(processor.end_of_world_token_id)
    world_ids = (processor.start_of_world_token_id, processor.end_of_world_token_id, processor.world_token_id)
    return SequenceLayout(start, len(ids) - end - 1 - question, f"measured with the processor of {source}", world_ids)


# ======================================================================================================================
# Memory
# ======================================================================================================================
def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def gemma_layer_activation_bytes(text_config, activation_dtype: torch.dtype, trainable: bool) -> int:
    """Bytes autograd saves per token in one Gemma 3 decoder layer (see the module docstring)."""
    a, f = _element_size(activation_dtype), 4
    h, i = text_config.hidden_size, text_config.intermediate_size
    q = text_config.num_attention_heads * text_config.head_dim
    kv = text_config.num_key_value_heads * text_config.head_dim
    frozen = 4 * h * f + (q + kv) * f + 2 * (q + kv) * a + 3 * i * a
    if not trainable:
        return frozen
    return frozen + 4 * h * f + (q + kv) * f + 2 * h * a + i * a


def siglip_layer_activation_bytes(vision_config, activation_dtype: torch.dtype) -> int:
    """Bytes autograd saves per patch in one trainable SigLIP encoder layer: the inputs of the two layer norms, of the
    q/k/v, fc1 and fc2 projections, SDPA's q, k, v and output, and the GELU input: ``8h*a + 2I*a``."""
    a = _element_size(activation_dtype)
    return 8 * vision_config.hidden_size * a + 2 * vision_config.intermediate_size * a


def _saved_bytes_on_meta(module: torch.nn.Module, inputs: torch.Tensor) -> int:
    """What autograd saves (parameters excluded) when ``module`` runs on ``inputs`` on the meta device."""
    params = {id(p) for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in params and id(tensor) not in params:
            seen[id(base)] = base.numel() * base.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module(inputs)
    return sum(seen.values())


def estimate_train_memory(
    model,
    sequence_length: int,
    batch_size: int = 1,
    activation_dtype: torch.dtype = torch.bfloat16,
    attn_implementation: str = "sdpa",
    num_images: int = 1,
) -> dict[str, Any]:
    """Training memory of ``model`` (a `build_meta_model`, freeze flags applied) per the model in the module docstring.

    Returns:
        ``{"per_sample_bytes": {part: bytes}, "fixed_bytes": {part: bytes}, "per_sample_gb", "fixed_gb", "total_gb"}``
        (GiB), ``total = fixed + batch_size * per_sample``.
    """
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}.")
    cfg = model.config
    text = cfg.text_config
    length = int(sequence_length)
    a = _element_size(activation_dtype)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    has = lambda prefix: any(n.startswith(prefix) for n in trainable)  # noqa: E731
    lm_trainable = has("model.language_model.")
    backward = bool(trainable)

    per_sample: dict[str, int] = {}
    if backward:
        per_layer = gemma_layer_activation_bytes(text, activation_dtype, lm_trainable)
        layers = text.num_hidden_layers * per_layer * length
        if attn_implementation == "eager":
            layers += text.num_hidden_layers * text.num_attention_heads * length * length * (4 + a)
        per_sample["language_model_layers"] = layers
        layer_types = set(getattr(text, "layer_types", None) or ["full_attention"])
        other = text.hidden_size * 4 * (2 if lm_trainable else 1) + len(layer_types) * 2 * text.head_dim * 4
        if lm_trainable:
            other += text.hidden_size * a  # lm_head's input
        per_sample["language_model_other"] = other * length + len(layer_types) * length * length
        per_sample["logits_and_loss"] = length * text.vocab_size * (a + 8)
        if has("model.vision_tower."):
            vision = cfg.vision_config
            patches = (vision.image_size // vision.patch_size) ** 2
            per_patch = siglip_layer_activation_bytes(vision, activation_dtype) * vision.num_hidden_layers
            per_sample["vision_tower"] = num_images * patches * per_patch
        if cfg.enable_world:
            hidden = text.hidden_size
            per_sample["world_projector"] = num_images * cfg.num_world_tokens * 4 * (cfg.world_token_dim + 3 * hidden)
            if has("model.world_encoder."):
                encoder = model.model.world_encoder
                dtype = next(encoder.parameters()).dtype
                size = cfg.world_image_size
                pixels = torch.empty(1, 3, size, size, device="meta", dtype=dtype, requires_grad=True)
                per_sample["world_encoder"] = num_images * _saved_bytes_on_meta(encoder, pixels)

    seen: set[int] = set()
    weights = grads = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        size = param.numel() * param.element_size()
        weights += size
        if param.requires_grad:
            grads += size
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    fixed = {"weights": weights + buffers, "gradients": grads, "optimizer_adamw": 2 * grads}
    per_sample_total = sum(per_sample.values())
    fixed_total = sum(fixed.values())
    return {
        "per_sample_bytes": per_sample,
        "fixed_bytes": fixed,
        "per_sample_gb": per_sample_total / GIB,
        "fixed_gb": fixed_total / GIB,
        "total_gb": (fixed_total + batch_size * per_sample_total) / GIB,
    }


# ======================================================================================================================
# Sizes
# ======================================================================================================================
_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip
#: safetensors orders a file's tensors by dtype (this order, reversed) and then by name.
_SAFETENSORS_ORDER = ("BOOL", "U8", "I8", "I16", "F16", "BF16", "I32", "F32", "F64", "I64")


def partial_checkpoint_bytes(model) -> int:
    """Size of the ``model.safetensors`` a partial save of ``model`` writes: the trainable tensors (and the rollout
    prompt buffers) at their dtypes, plus the safetensors header with TheWorld's metadata (8-byte aligned)."""
    from .checkpoint_theworld import DIGEST_KEY, trainable_state_dict

    state = trainable_state_dict(model)
    entries = sorted(
        ((name, _SAFETENSORS_DTYPES[t.dtype], list(t.shape), t.numel() * t.element_size()) for name, t in state.items()),
        key=lambda e: (-_SAFETENSORS_ORDER.index(e[1]) if e[1] in _SAFETENSORS_ORDER else 0, e[0]),
    )
    header: dict[str, Any] = {
        "__metadata__": {
            "format": "pt",
            "checkpoint_kind": "partial",
            "theworld_version": model.config.theworld_version or THEWORLD_VERSION,
            DIGEST_KEY: "0" * 64,
        }
    }
    offset = 0
    for name, dtype, shape, size in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"))
    length = len(text.encode("utf-8"))
    length += (8 - length % 8) % 8
    return 8 + length + offset


def parameter_breakdown(model) -> tuple[dict[str, int], dict[str, str]]:
    """``({part: parameters}, {part: dtype})`` for the parts in `PARTS` the model has (tied weights counted once)."""
    counts: dict[str, int] = {}
    dtypes: dict[str, set] = {}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        part = name.split(".")[1] if name.startswith("model.") else name.split(".")[0]
        counts[part] = counts.get(part, 0) + param.numel()
        dtypes.setdefault(part, set()).add(str(param.dtype).removeprefix("torch."))
    ordered = [p for p in PARTS if p in counts] + [p for p in counts if p not in PARTS]
    return {p: counts[p] for p in ordered}, {p: "/".join(sorted(dtypes[p])) for p in ordered}


# ======================================================================================================================
# The plan
# ======================================================================================================================
def plan(
    gemma: str = DEFAULT_GEMMA,
    cosmos: str = DEFAULT_COSMOS,
    *,
    world_image_size: int = 512,
    world_pooling: int = 4,
    world_projection_mode: str = "spatial",
    projection_architecture: str = "mlp",
    world_placement: str = "after_image",
    num_world_steps: int = 0,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    batch_size: int = 1,
    dtype: str = "bfloat16",
    world_encoder_dtype: str | None = "float32",
    freeze_gemma_vision: bool = True,
    freeze_gemma_language: bool = True,
    freeze_cosmos_vae: bool = True,
    enable_world: bool = True,
    attn_implementation: str = "sdpa",
    gemma_revision: str | None = None,
    cosmos_revision: str | None = None,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Plan one TheWorld setting on the given bases (offline; see the module docstring).

    Args:
        gemma: Gemma 3 base: a local folder, a repo in the hub cache, or a shipped repo id.
        cosmos: Cosmos-Predict2 base, likewise.
        world_image_size, world_pooling, world_projection_mode, projection_architecture, world_placement,
            num_world_steps, world_encoder_dtype, freeze_gemma_vision, freeze_gemma_language, freeze_cosmos_vae,
            enable_world: the `TheWorldConfig` fields of the setting.
        prompt_tokens: text tokens of the question.
        batch_size: samples per training step (for ``train_memory_total_gb``).
        dtype: the model's dtype (``"bfloat16"``, ``"float16"``, ``"float32"``), also the activations'.
        attn_implementation: ``"sdpa"`` (default) or ``"eager"`` (adds the attention matrices to the estimate).
        gemma_revision, cosmos_revision, cache_dir: which hub-cache snapshot to read.

    Returns:
        A JSON-serialisable dict. Keys: ``gemma``, ``cosmos`` (``{"name", "resolved_from", "location"}``),
        ``settings``, ``world_tokens`` (per image: ``world_tokens_per_frame * num_world_frames``),
        ``world_tokens_per_frame``, ``num_world_frames``, ``prompt_tokens``, ``sequence_length``, ``layout``,
        ``sliding_window``, ``layer_types`` (counts), ``world_tokens_outside_window``,
        ``farthest_world_token_distance``, ``max_prompt_tokens_in_window``, ``world_token_ids``,
        ``world_token_ids_in_embedding``, ``trainable_parameters``, ``total_parameters``, ``parameters_by_part``,
        ``parameter_dtypes``, ``partial_checkpoint_bytes``, ``train_memory_per_sample_gb``,
        ``train_memory_fixed_gb``, ``train_memory_total_gb``, ``batch_size``, ``memory_breakdown_bytes``,
        ``memory_model``.

    Raises:
        BaseNotFoundError: a base cannot be found offline.
        ValueError: an invalid setting (the message names the field).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {tuple(_DTYPES)}, got {dtype!r}.")
    for name, value, minimum in (("prompt_tokens", prompt_tokens, 0), ("batch_size", batch_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    torch_dtype = _DTYPES[dtype]
    gemma_base = resolve_gemma(gemma, gemma_revision, cache_dir)
    rollout = enable_world and num_world_steps > 0
    cosmos_base = resolve_cosmos(cosmos, rollout, cosmos_revision, cache_dir) if enable_world else None
    settings = {
        "enable_world": enable_world,
        "world_image_size": world_image_size,
        "world_pooling": world_pooling,
        "world_projection_mode": world_projection_mode,
        "projection_architecture": projection_architecture,
        "world_placement": world_placement,
        "num_world_steps": num_world_steps,
        "world_encoder_dtype": world_encoder_dtype,
        "freeze_gemma_vision": freeze_gemma_vision,
        "freeze_gemma_language": freeze_gemma_language,
        "freeze_cosmos_vae": freeze_cosmos_vae,
    }
    config = theworld_config(gemma_base, cosmos_base, **settings)
    layout = sequence_layout(gemma_base, config, gemma_revision, cache_dir)
    if enable_world and layout.world_token_ids is not None:  # the ids a fresh build takes from the processor
        config.start_of_world_token_id, config.end_of_world_token_id, config.world_token_id = layout.world_token_ids
    model = build_meta_model(config, torch_dtype)
    config = model.config

    from .checkpoint_theworld import parameter_counts

    text = config.text_config
    world_tokens = config.num_world_tokens
    length = layout.sequence_length(world_tokens, prompt_tokens, enable_world)
    layer_types = list(getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers)
    window = text.sliding_window if "sliding_attention" in layer_types else None
    outside = world_tokens_outside_window(layout, world_tokens, prompt_tokens, window) if enable_world else 0
    farthest = world_tokens + layout.after_world + prompt_tokens if enable_world and world_tokens else None
    max_prompt = None
    if window and enable_world and world_tokens:
        limit = window - 1 - world_tokens - layout.after_world
        max_prompt = limit if limit >= 0 else None
    trainable, total = parameter_counts(model)
    by_part, part_dtypes = parameter_breakdown(model)
    memory = estimate_train_memory(model, length, batch_size, torch_dtype, attn_implementation)
    ids = list(config.world_token_ids) if enable_world else []
    return {
        "gemma": {"name": gemma_base.name, "resolved_from": gemma_base.kind, "location": gemma_base.location},
        "cosmos": (
            {"name": cosmos_base.name, "resolved_from": cosmos_base.kind, "location": cosmos_base.location}
            if cosmos_base is not None
            else None
        ),
        "settings": {**settings, "dtype": dtype, "attn_implementation": attn_implementation},
        "world_tokens": world_tokens,
        "world_tokens_per_frame": config.world_tokens_per_frame if enable_world else 0,
        "num_world_frames": config.num_world_frames if enable_world else 0,
        "prompt_tokens": prompt_tokens,
        "sequence_length": length,
        "layout": {"before_world": layout.before_world, "after_world": layout.after_world, "source": layout.source},
        "sliding_window": window,
        "layer_types": {kind: layer_types.count(kind) for kind in dict.fromkeys(layer_types)},
        "world_tokens_outside_window": outside,
        "farthest_world_token_distance": farthest,
        "max_prompt_tokens_in_window": max_prompt,
        "world_token_ids": ids,
        "world_token_ids_in_embedding": all(i < text.vocab_size for i in ids) if ids else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "parameters_by_part": by_part,
        "parameter_dtypes": part_dtypes,
        "partial_checkpoint_bytes": partial_checkpoint_bytes(model),
        "batch_size": batch_size,
        "train_memory_per_sample_gb": round(memory["per_sample_gb"], 3),
        "train_memory_fixed_gb": round(memory["fixed_gb"], 3),
        "train_memory_total_gb": round(memory["total_gb"], 3),
        "memory_breakdown_bytes": {"per_sample": memory["per_sample_bytes"], "fixed": memory["fixed_bytes"]},
        "memory_model": (
            "estimate: autograd-saved activations per sample (no gradient checkpointing, activations in "
            f"{dtype}, {attn_implementation} attention) + weights, gradients and AdamW states; see theworld.planning"
        ),
    }


def _format_count(n: int) -> str:
    return f"{n:,}" + (f" ({n / 1e9:.3f} B)" if n >= 1e8 else "")


def format_plan(result: dict[str, Any]) -> str:
    """A readable table of a `plan` result."""
    rows: list[tuple[str, str]] = []
    cosmos = result["cosmos"]
    rows.append(("Gemma base", f"{result['gemma']['name']} ({result['gemma']['resolved_from']})"))
    rows.append(("Cosmos base", f"{cosmos['name']} ({cosmos['resolved_from']})" if cosmos else "- (world disabled)"))
    s = result["settings"]
    rows.append((
        "world setting",
        f"{s['world_image_size']} px, pooling {s['world_pooling']}, {s['world_projection_mode']}, "
        f"{s['world_placement']}, {s['num_world_steps']} rollout steps, {s['dtype']}",
    ))  # fmt: skip
    rows.append(("world tokens", f"{result['world_tokens']} ({result['world_tokens_per_frame']} x "
                                 f"{result['num_world_frames']} frame(s))"))  # fmt: skip
    rows.append(("prompt tokens", str(result["prompt_tokens"])))
    rows.append(("sequence length", f"{result['sequence_length']} ({result['layout']['source']})"))
    layers = ", ".join(f"{n} {kind}" for kind, n in result["layer_types"].items())
    rows.append(("attention layers", f"{layers}; sliding window {result['sliding_window']}"))
    reach = f"{result['world_tokens_outside_window']} of {result['world_tokens']}"
    if result["farthest_world_token_distance"] is not None:
        reach += f" (farthest at distance {result['farthest_world_token_distance']}"
        if result["max_prompt_tokens_in_window"] is not None:
            reach += f"; all in reach for prompts up to {result['max_prompt_tokens_in_window']} tokens"
        reach += ")"
    rows.append(("world tokens outside window", reach))
    rows.append(("trainable parameters", _format_count(result["trainable_parameters"])))
    rows.append(("total parameters", _format_count(result["total_parameters"])))
    for part, n in result["parameters_by_part"].items():
        rows.append((f"  {part}", f"{_format_count(n)} [{result['parameter_dtypes'][part]}]"))
    rows.append(("partial checkpoint", f"{result['partial_checkpoint_bytes']:,} bytes "
                                       f"({result['partial_checkpoint_bytes'] / 2**20:.1f} MiB)"))  # fmt: skip
    rows.append(("train memory per sample", f"{result['train_memory_per_sample_gb']:.2f} GB (estimate)"))
    rows.append(("train memory fixed", f"{result['train_memory_fixed_gb']:.2f} GB (weights, gradients, AdamW)"))
    rows.append((f"train memory at batch {result['batch_size']}", f"{result['train_memory_total_gb']:.2f} GB "
                                                                   "(estimate)"))  # fmt: skip
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)

