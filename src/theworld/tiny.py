"""Tiny, seeded-random stand-ins for the two base models TheWorld is built from.

`build_tiny_bases` writes two local folders laid out exactly like the Hugging Face hub repos

* ``google/gemma-3-4b-it`` (``out_dir/gemma``): ``config.json``, ``model.safetensors``, ``generation_config.json``,
  ``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``, ``preprocessor_config.json`` and
  ``processor_config.json``, so that ``Gemma3ForConditionalGeneration.from_pretrained``,
  ``AutoTokenizer.from_pretrained`` and ``AutoProcessor.from_pretrained`` work on the folder (the hub repo also has a
  SentencePiece ``tokenizer.model``, which transformers 5.x does not need and which is not built here);
* ``nvidia/Cosmos-Predict2-2B-Video2World`` (``out_dir/cosmos``): ``model_index.json`` plus the ``vae/``,
  ``transformer/``, ``scheduler/``, ``text_encoder/`` and ``tokenizer/`` subfolders, so that each component loads with
  ``<Class>.from_pretrained(out_dir / "cosmos", subfolder=...)``.

The architectures are the real ones (Gemma 3 + SigLIP, Wan 2.1 VAE, Cosmos DiT, T5 encoder) with tiny dimensions and
every floating tensor set from a seeded ``torch.Generator``, so the same ``seed`` and ``size`` give byte-identical
safetensors files. Nothing is downloaded.

Size presets (parameters, with the current tokenizers):

* ``"tiny"``: Gemma 0.16M (text 64 wide x 2 layers, SigLIP 32 x 2, 64 px images, 16 tokens per image), Wan VAE 2.6M
  (base_dim 16), Cosmos DiT 55K (2 heads x 16, 2 layers), T5 encoder 27K (d_model 32, 1 layer);
* ``"small"``: Gemma 4.3M (256 x 4, SigLIP 64 x 2, 64 px), VAE 2.6M, DiT 0.69M (4 x 32, 2 layers), T5 0.14M;
* ``"tiny-real"``: ``"tiny"`` with Gemma 3 4B's structure: 6 layers, 5 sliding-window layers (window 32, shorter than
  the test prompts) per global layer, and the hub checkpoint's key layout (``language_model.model.*``);
* ``"base100m"``: Gemma 116M (768 x 12, intermediate 3072, vocab padded to 8192, SigLIP 256 x 4, 224 px / patch 14,
  64 tokens per image), VAE 14M (base_dim 32, 2 res blocks), DiT 18M (8 x 64, 4 layers), T5 0.47M.

Note: ``CosmosTransformer3DModel.forward`` with ``concat_padding_mask=True`` (the real config) resizes the padding
mask with ``torchvision``; without torchvision installed the transformer loads but its forward raises ``NameError``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["SIZES", "TinyBases", "build_tiny_bases", "GEMMA_SPECIAL_TOKENS", "GEMMA_CHAT_TEMPLATE"]

# Bump when the layout or the weight recipe changes, so that stale caches are rebuilt.
_FORMAT_VERSION = 2
#: Embedding rows past the tokenizer that every preset keeps free. Gemma 3 4B has 63 (262,208 rows for 262,145 tokens),
#: so the three world tokens TheWorld adds get real rows, as they do there.
SPARE_EMBEDDING_ROWS = 3
_MARKER = ".tiny_bases.json"


@dataclass(frozen=True)
class TinyBases:
    """Absolute paths of the two built folders."""

    gemma: str
    cosmos: str


@dataclass(frozen=True)
class _Preset:
    # Gemma 3 text model
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab_multiple: int  # vocab_size = len(tokenizer) rounded up to this (real Gemma pads its vocab too)
    min_vocab: int
    # SigLIP vision tower
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    image_size: int
    patch_size: int
    mm_tokens_per_image: int
    # Wan 2.1 VAE
    vae_base_dim: int
    vae_res_blocks: int
    # T5 encoder
    t5_d_model: int
    t5_layers: int
    t5_heads: int
    t5_d_kv: int
    t5_d_ff: int
    # Cosmos DiT
    dit_heads: int
    dit_head_dim: int
    dit_layers: int
    dit_adaln_lora_dim: int
    # Gemma 3's attention layout: every ``sliding_pattern``-th layer is global, the others slide over
    # ``sliding_window`` tokens (0: every layer global).
    sliding_window: int = 2048
    sliding_pattern: int = 0
    # Save Gemma's weights with the key layout of the hub checkpoint (``language_model.model.*``, ``vision_tower.*``),
    # which transformers renames on load, instead of transformers 5.x's own (``model.language_model.*``).
    hub_key_layout: bool = False


_PRESETS: dict[str, _Preset] = {
    "tiny": _Preset(
        hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128, vocab_multiple=64, min_vocab=0,
        vision_hidden=32, vision_layers=2, vision_heads=2, vision_intermediate=64, image_size=64, patch_size=8,
        mm_tokens_per_image=16,
        vae_base_dim=16, vae_res_blocks=1,
        t5_d_model=32, t5_layers=1, t5_heads=4, t5_d_kv=8, t5_d_ff=64,
        dit_heads=2, dit_head_dim=16, dit_layers=2, dit_adaln_lora_dim=16,
    ),
    "small": _Preset(
        hidden=256, layers=4, heads=4, kv_heads=2, head_dim=64, intermediate=1024, vocab_multiple=64, min_vocab=0,
        vision_hidden=64, vision_layers=2, vision_heads=2, vision_intermediate=256, image_size=64, patch_size=8,
        mm_tokens_per_image=16,
        vae_base_dim=16, vae_res_blocks=1,
        t5_d_model=64, t5_layers=2, t5_heads=4, t5_d_kv=16, t5_d_ff=256,
        dit_heads=4, dit_head_dim=32, dit_layers=2, dit_adaln_lora_dim=32,
    ),
    "base100m": _Preset(
        hidden=768, layers=12, heads=12, kv_heads=6, head_dim=64, intermediate=3072, vocab_multiple=64,
        min_vocab=8192,
        vision_hidden=256, vision_layers=4, vision_heads=4, vision_intermediate=1024, image_size=224, patch_size=14,
        mm_tokens_per_image=64,
        vae_base_dim=32, vae_res_blocks=2,
        t5_d_model=128, t5_layers=2, t5_heads=4, t5_d_kv=32, t5_d_ff=512,
        dit_heads=8, dit_head_dim=64, dit_layers=4, dit_adaln_lora_dim=64,
    ),
}

# The real structure of Gemma 3 4B at tiny size: 5 sliding-window layers per global layer, a window (32) shorter than
# the prompts of the tests, spare embedding rows after <image_soft_token>, and the hub's checkpoint key layout. Every
# other size is the "tiny" preset's.
_PRESETS["tiny-real"] = replace(_PRESETS["tiny"], layers=6, sliding_window=32, sliding_pattern=6, hub_key_layout=True)

SIZES: tuple[str, ...] = tuple(_PRESETS)

# ----------------------------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------------------------

#: Gemma 3's special tokens, in id order (the tiny tokenizer gives the first nine ids 0..8 and <image_soft_token> the
#: last id, after its trained vocabulary; the real one: pad 0, eos 1, bos 2, unk 3, mask 4, start_of_turn 105,
#: end_of_turn 106, start_of_image 255999, end_of_image 256000, image_soft_token 262144 = its last id).
GEMMA_SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)

#: Gemma 3 instruction-tuned chat format: ``<bos>`` first, a system message folded into the first user turn, the
#: assistant role rendered as ``model``, images as ``<start_of_image>`` (the processor expands it), and
#: ``add_generation_prompt`` opening a model turn.
GEMMA_CHAT_TEMPLATE = (
    "{{- bos_token -}}\n"
    "{%- set ns = namespace(prefix='', msgs=messages) -%}\n"
    "{%- if messages and messages[0]['role'] == 'system' -%}\n"
    "  {%- set sys = messages[0]['content'] -%}\n"
    "  {%- if sys is not string -%}{%- set sys = sys | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') -%}{%- endif -%}\n"
    "  {%- set ns.prefix = sys ~ '\\n\\n' -%}\n"
    "  {%- set ns.msgs = messages[1:] -%}\n"
    "{%- endif -%}\n"
    "{%- for message in ns.msgs -%}\n"
    "  {%- set is_user = message['role'] == 'user' -%}\n"
    "  {%- if is_user != (loop.index0 % 2 == 0) -%}\n"
    "    {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}\n"
    "  {%- endif -%}\n"
    "  {{- '<start_of_turn>' ~ ('model' if message['role'] == 'assistant' else message['role']) ~ '\\n' -}}\n"
    "  {%- if loop.first -%}{{- ns.prefix -}}{%- endif -%}\n"
    "  {%- if message['content'] is string -%}\n"
    "    {{- message['content'] | trim -}}\n"
    "  {%- else -%}\n"
    "    {%- for part in message['content'] -%}\n"
    "      {%- if part['type'] == 'image' -%}{{- '<start_of_image>' -}}\n"
    "      {%- elif part['type'] == 'text' -%}{{- part['text'] | trim -}}\n"
    "      {%- endif -%}\n"
    "    {%- endfor -%}\n"
    "  {%- endif -%}\n"
    "  {{- '<end_of_turn>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}\n"
)

_COLORS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple", "gray", "brown", "pink")
_SHAPES = ("circle", "square", "triangle", "cube", "sphere", "box", "ball", "star", "cylinder", "block")
_RELATIONS = (
    "left of", "right of", "above", "below", "near", "far from", "next to", "behind", "in front of", "on top of",
    "under", "over", "between",
)
_EXTRA_LINES = (
    "You are a helpful assistant. Look at the image and answer the question.",
    "Statement: the object is on the left. Answer with true or false only.",
    "Question: Which object is closest to the camera? Answer: the first one.",
    "How many objects are there in the image? There are 0 1 2 3 4 5 6 7 8 9 10 objects.",
    "Describe the scene. What happens next? Where will the ball be after it moves?",
    "user model system assistant image video frame world token tokens scene camera hello digits number color shape",
    "The circle is far from the square. The triangle is near the circle. A is left of B; B is right of A.",
    "user\nIs the red ball left of the blue cube?\nmodel\nYes, it is.\nuser\nWhat is above it?\nmodel\nNothing.",
    "Yes. No. True. False. A, B, C or D? (a) (b) (c) (d) [1] [2] {x} <x> \"quoted\" 'single'",
    "0 1 2 3 4 5 6 7 8 9 00 10 12 20 42 64 100 256 1024 2024 3.14 -1 +1 = * / % & # @ $ _ ^ ~ | \\ `",
)


def _corpus() -> list[str]:
    """A small, fixed English corpus in the spatial-reasoning domain (fully deterministic)."""
    lines: list[str] = []
    for i, color in enumerate(_COLORS):
        for j, shape in enumerate(_SHAPES):
            rel = _RELATIONS[(i + j) % len(_RELATIONS)]
            color2 = _COLORS[(i + 3 * j + 1) % len(_COLORS)]
            shape2 = _SHAPES[(2 * i + j + 1) % len(_SHAPES)]
            answer = "yes" if (i + j) % 2 else "no"
            lines.append(f"Statement: The {color} {shape} is {rel} the {color2} {shape2}.")
            lines.append(f"Answer only yes or no. Is a {color} {shape} {rel} a {color2} {shape2}?\nAnswer: {answer}")
    lines.extend(_EXTRA_LINES)
    return lines


def _build_gemma_backend():
    """Train the tiny Gemma BPE and assemble it with Gemma's exact tokenizer pipeline.

    ``GemmaTokenizer`` in transformers 5.x rebuilds its backend from vocab + merges with a fixed pipeline (normalizer
    ``" " -> "▁"``, no real pre-tokenization, byte-fallback BPE, Replace/ByteFallback/Fuse decoder), so the object
    built here uses exactly that pipeline; the ids are: special tokens 0..9, the 256 byte-fallback tokens
    ``<0x00>..<0xFF>``, then the trained vocabulary.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    alphabet = [chr(c) for c in range(32, 127) if c != 32] + ["▁", "\n"]
    trainer = BpeTrainer(vocab_size=1200, min_frequency=1, initial_alphabet=alphabet, show_progress=False)
    trained = Tokenizer(BPE())
    trained.normalizer = normalizers.Replace(" ", "▁")
    # Word-like merges for training only: split before every "▁" and around newlines.
    trained.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("▁", behavior="merged_with_next"),
            pre_tokenizers.Split("\n", behavior="isolated"),
        ]
    )
    trained.train_from_iterator(_corpus(), trainer)
    model = json.loads(trained.to_str())["model"]
    trained_vocab: dict[str, int] = model["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]

    vocab: dict[str, int] = {}
    for tok in GEMMA_SPECIAL_TOKENS[:-1]:
        vocab[tok] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for tok, _ in sorted(trained_vocab.items(), key=lambda kv: kv[1]):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    vocab[GEMMA_SPECIAL_TOKENS[-1]] = len(vocab)  # <image_soft_token> is the last id, as in Gemma 3 (262144)

    backend = Tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True, dropout=None)
    )
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GEMMA_SPECIAL_TOKENS])
    bos_id = vocab["<bos>"]
    backend.post_processor = processors.TemplateProcessing(
        single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1", special_tokens=[("<bos>", bos_id)]
    )
    return backend


def _build_gemma_tokenizer():
    from transformers import GemmaTokenizer

    backend = _build_gemma_backend()
    return GemmaTokenizer(
        tokenizer_object=backend,
        add_bos_token=True,
        add_eos_token=False,
        boi_token="<start_of_image>",
        eoi_token="<end_of_image>",
        image_token="<image_soft_token>",
        extra_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        chat_template=GEMMA_CHAT_TEMPLATE,
        model_max_length=1_000_000_000_000_000_019_884_624_838_656,
    )


_T5_EXTRA_IDS = 100


def _build_t5_backend():
    """A Unigram tokenizer with T5's exact pipeline (WhitespaceSplit + Metaspace, ``</s>`` appended).

    Ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``▁`` 3, word pieces, single characters, then the 100 sentinel tokens
    with ``<extra_id_0>`` last, like t5-11b.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    words: list[str] = []
    for line in _corpus():
        for w in line.replace("\n", " ").split():
            w = w.strip(".,?:;!()[]{}\"'")
            if w and w not in words:
                words.append(w)
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    seen = {p for p, _ in pieces}
    for i, w in enumerate(words):
        for piece in (f"▁{w}", w):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, -6.0 - 0.001 * i))
    for c in range(33, 127):
        for piece in (chr(c), f"▁{chr(c)}"):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, -12.0 - 0.001 * c))
    extra = [f"<extra_id_{i}>" for i in range(_T5_EXTRA_IDS)]
    pieces.extend((t, 0.0) for t in reversed(extra))

    backend = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<pad>", "</s>", "<unk>", *extra)]
    )
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    return backend, pieces


def _build_t5_tokenizer():
    from transformers import T5TokenizerFast

    backend, pieces = _build_t5_backend()
    return T5TokenizerFast(
        vocab=pieces,
        tokenizer_object=backend,
        extra_ids=_T5_EXTRA_IDS,
        model_max_length=512,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Seeded weights
# ----------------------------------------------------------------------------------------------------------------------


def _tensor_seed(seed: int, name: str) -> int:
    return (int(seed) * 0x9E3779B1 + zlib.crc32(name.encode("utf-8"))) % (2**63 - 1)


def _randomize_(model: nn.Module, seed: int, namespace: str, std_overrides: dict[str, float] | None = None) -> None:
    """Overwrite every floating parameter and persistent floating buffer of ``model`` from seeded generators.

    Each tensor gets its own generator seeded from ``(seed, namespace/name)``, so values do not depend on iteration
    order and the components of one build never share a stream.
    Rules: named overrides first; norm scales: ``N(0, 0.1)`` for Gemma's ``(1 + w)`` RMSNorm, ``1 + N(0, 0.1)`` for
    norms that multiply by ``w`` directly; biases ``N(0, 0.02)``; convolution kernels ``N(0, 1/sqrt(fan_in))`` (keeps
    deep conv stacks such as the VAE well scaled); other matrices (linear, embedding) ``N(0, 0.02)``.
    """
    std_overrides = std_overrides or {}
    gen = torch.Generator(device="cpu")
    seen: set[int] = set()
    persistent_buffers = set(model.state_dict(keep_vars=True).keys())
    with torch.no_grad():
        for mod_name, mod in model.named_modules():
            cls_name = type(mod).__name__
            is_norm = "norm" in cls_name.lower()
            tensors = list(mod.named_parameters(recurse=False))
            tensors += [
                (n, b)
                for n, b in mod.named_buffers(recurse=False)
                if f"{mod_name}.{n}".lstrip(".") in persistent_buffers
            ]
            for t_name, tensor in tensors:
                if tensor is None or not tensor.is_floating_point() or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                full = f"{mod_name}.{t_name}" if mod_name else t_name
                gen.manual_seed(_tensor_seed(seed, f"{namespace}/{full}"))
                values = torch.empty(tensor.shape, dtype=torch.float32)
                if full in std_overrides or t_name in std_overrides:
                    std = std_overrides.get(full, std_overrides.get(t_name))
                    values.normal_(0.0, std, generator=gen)
                elif is_norm and t_name in ("weight", "gamma", "scale"):
                    values.normal_(0.0, 0.1, generator=gen)
                    if cls_name != "Gemma3RMSNorm":  # Gemma3RMSNorm computes x * (1 + w)
                        values += 1.0
                elif t_name in ("bias", "beta") or tensor.ndim == 1:
                    values.normal_(0.0, 0.02, generator=gen)
                elif isinstance(mod, nn.modules.conv._ConvNd) or tensor.ndim >= 3:
                    fan_in = tensor[0].numel()
                    values.normal_(0.0, 1.0 / math.sqrt(max(fan_in, 1)), generator=gen)
                else:
                    values.normal_(0.0, 0.02, generator=gen)
                tensor.copy_(values.to(tensor.dtype))


def _num_params(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


# ----------------------------------------------------------------------------------------------------------------------
# Gemma 3
# ----------------------------------------------------------------------------------------------------------------------


def _image_processor(preset: _Preset):
    """Gemma's image processor settings (bilinear resize to ``image_size``, mean/std 0.5) at the tiny resolution.

    Built with the PIL backend, which needs no torchvision; the saved config names ``Gemma3ImageProcessor`` like the
    hub's, and ``AutoProcessor`` loads the torchvision or PIL backend, whichever is installed.
    """
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    return Gemma3ImageProcessorPil(
        size={"height": preset.image_size, "width": preset.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_resize=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        do_convert_rgb=None,
        do_pan_and_scan=None,
        resample=2,
    )


def _build_gemma(path: Path, preset: _Preset, seed: int) -> int:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        Gemma3TextConfig,
        GenerationConfig,
        SiglipVisionConfig,
    )

    tokenizer = _build_gemma_tokenizer()
    n_tok = len(tokenizer)
    padded = n_tok + SPARE_EMBEDDING_ROWS
    vocab_size = max(preset.min_vocab, -(-padded // preset.vocab_multiple) * preset.vocab_multiple)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in GEMMA_SPECIAL_TOKENS}
    if preset.sliding_pattern:
        layer_types = [
            "full_attention" if (i + 1) % preset.sliding_pattern == 0 else "sliding_attention"
            for i in range(preset.layers)
        ]
    else:
        layer_types = ["full_attention"] * preset.layers

    text_config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=preset.hidden,
        intermediate_size=preset.intermediate,
        num_hidden_layers=preset.layers,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.kv_heads,
        head_dim=preset.head_dim,
        query_pre_attn_scalar=preset.head_dim,
        max_position_embeddings=2048,
        sliding_window=preset.sliding_window,
        layer_types=layer_types,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        pad_token_id=ids["<pad>"],
        eos_token_id=ids["<eos>"],
        bos_token_id=ids["<bos>"],
        tie_word_embeddings=True,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=preset.vision_hidden,
        intermediate_size=preset.vision_intermediate,
        num_hidden_layers=preset.vision_layers,
        num_attention_heads=preset.vision_heads,
        image_size=preset.image_size,
        patch_size=preset.patch_size,
        vision_use_head=False,
        layer_norm_eps=1e-6,
    )
    config = Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        mm_tokens_per_image=preset.mm_tokens_per_image,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
        tie_word_embeddings=True,
    )
    config.architectures = ["Gemma3ForConditionalGeneration"]
    model = Gemma3ForConditionalGeneration(config).eval()
    # Image features land on the text-embedding scale: the soft-emb RMSNorm outputs ~unit RMS, so a projection std of
    # 0.02 * sqrt(text_hidden / vision_hidden) gives features with RMS ~ 0.02 * sqrt(text_hidden), the RMS of the
    # (sqrt(hidden)-scaled) token embeddings.
    mm_std = 0.02 * math.sqrt(preset.hidden / preset.vision_hidden)
    _randomize_(model, seed, "gemma", {"mm_input_projection_weight": mm_std})
    # Rows past the tokenizer (vocab padding, as in the real model) are shrunk 100x, still non-zero: with tied
    # embeddings their logits stay ~0, so greedy decoding from the random model emits ids the tokenizer can decode.
    with torch.no_grad():
        model.get_input_embeddings().weight[n_tok:] *= 0.01
    model.save_pretrained(path, safe_serialization=True)
    if preset.hub_key_layout:
        _to_hub_key_layout(path / "model.safetensors")

    GenerationConfig(
        bos_token_id=ids["<bos>"],
        eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
        pad_token_id=ids["<pad>"],
    ).save_pretrained(path)

    processor = Gemma3Processor(
        image_processor=_image_processor(preset),
        tokenizer=tokenizer,
        chat_template=GEMMA_CHAT_TEMPLATE,
        image_seq_length=preset.mm_tokens_per_image,
    )
    processor.save_pretrained(path)
    _patch_gemma_configs(path)
    return _num_params(model)


#: transformers 5.x key prefixes -> the layout of the Gemma 3 checkpoints on the hub (renamed back on load).
_HUB_KEY_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)


def _to_hub_key_layout(weights: Path) -> None:
    """Rewrite a Gemma 3 ``model.safetensors`` with the hub checkpoint's key names."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
        tensors = {}
        for key in f.keys():
            name = key
            for new, old in _HUB_KEY_PREFIXES:
                if key.startswith(new):
                    name = old + key[len(new) :]
                    break
            tensors[name] = f.get_tensor(key)
    save_file(tensors, str(weights), metadata=metadata)


def _patch_gemma_configs(path: Path) -> None:
    """Make the saved configs read like the hub's.

    * transformers 5.x drops ``add_bos_token``/``add_eos_token`` from ``tokenizer_config.json`` on save; the hub file
      has them. (5.x ignores them when loading next to a ``tokenizer.json``: ``<bos>`` comes from the post-processor
      stored there, and ``tokenizer.add_bos_token`` reads ``False`` although ``<bos>`` is added.)
    * transformers 5.x nests the image processor config inside ``processor_config.json``; the hub repo has it in
      ``preprocessor_config.json`` (class name ``Gemma3ImageProcessor``, whichever backend wrote it; the loader picks
      the torchvision or PIL backend that is installed) next to a small ``processor_config.json``.
    """
    tok_cfg_file = path / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_file.read_text())
    tok_cfg["add_bos_token"] = True
    tok_cfg["add_eos_token"] = False
    _write_json(tok_cfg_file, tok_cfg)

    proc_file = path / "processor_config.json"
    proc_cfg = json.loads(proc_file.read_text())
    image_cfg = proc_cfg.pop("image_processor", None)
    if image_cfg is not None:
        image_type = image_cfg.get("image_processor_type", "Gemma3ImageProcessor")
        image_cfg["image_processor_type"] = image_type.removesuffix("Pil")
        image_cfg["processor_class"] = proc_cfg.get("processor_class", "Gemma3Processor")
        _write_json(path / "preprocessor_config.json", image_cfg)
    _write_json(proc_file, proc_cfg)


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------------------------------
# Cosmos-Predict2 Video2World
# ----------------------------------------------------------------------------------------------------------------------


def _build_cosmos(path: Path, preset: _Preset, seed: int) -> dict[str, int]:
    import diffusers
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel, FlowMatchEulerDiscreteScheduler
    from transformers import T5Config, T5EncoderModel

    counts: dict[str, int] = {}
    path.mkdir(parents=True, exist_ok=True)

    # VAE: the Wan 2.1 VAE (z_dim 16, 8x spatial / 4x temporal compression); dims shrunk, latents_mean/std are the
    # real model's (the diffusers defaults).
    vae = AutoencoderKLWan(
        base_dim=preset.vae_base_dim,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=preset.vae_res_blocks,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
    ).eval()
    _randomize_(vae, seed, "cosmos/vae")
    vae.save_pretrained(path / "vae", safe_serialization=True)
    counts["vae"] = _num_params(vae)

    # Text encoder + tokenizer (T5; the real one is t5-11b's encoder, d_model 1024).
    t5_tokenizer = _build_t5_tokenizer()
    t5_vocab = -(-len(t5_tokenizer) // 64) * 64
    t5_config = T5Config(
        vocab_size=t5_vocab,
        d_model=preset.t5_d_model,
        d_kv=preset.t5_d_kv,
        d_ff=preset.t5_d_ff,
        num_layers=preset.t5_layers,
        num_decoder_layers=preset.t5_layers,
        num_heads=preset.t5_heads,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        feed_forward_proj="relu",
        is_encoder_decoder=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
    )
    text_encoder = T5EncoderModel(t5_config).eval()
    text_encoder.config.architectures = ["T5EncoderModel"]
    _randomize_(text_encoder, seed, "cosmos/text_encoder")
    text_encoder.save_pretrained(path / "text_encoder", safe_serialization=True)
    t5_tokenizer.save_pretrained(path / "tokenizer")
    counts["text_encoder"] = _num_params(text_encoder)

    # Transformer: Cosmos-2.0-Diffusion-2B-Video2World's config with tiny widths. in_channels is 16 + 1: the pipeline
    # concatenates the condition mask, and the model itself adds the padding-mask channel (concat_padding_mask).
    transformer = CosmosTransformer3DModel(
        in_channels=16 + 1,
        out_channels=16,
        num_attention_heads=preset.dit_heads,
        attention_head_dim=preset.dit_head_dim,
        num_layers=preset.dit_layers,
        mlp_ratio=4.0,
        text_embed_dim=preset.t5_d_model,
        adaln_lora_dim=preset.dit_adaln_lora_dim,
        max_size=(128, 240, 240),
        patch_size=(1, 2, 2),
        rope_scale=(1.0, 3.0, 3.0),
        concat_padding_mask=True,
        extra_pos_embed_type=None,
    ).eval()
    _randomize_(transformer, seed, "cosmos/transformer")
    transformer.save_pretrained(path / "transformer", safe_serialization=True)
    counts["transformer"] = _num_params(transformer)

    # Scheduler: what the conversion script builds (use_karras_sigmas) plus what Cosmos2VideoToWorldPipeline.__init__
    # registers into the config (and hence into the hub's scheduler_config.json).
    scheduler = FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)
    scheduler.register_to_config(sigma_max=80.0, sigma_min=0.002, sigma_data=1.0, final_sigmas_type="sigma_min")
    scheduler.save_pretrained(path / "scheduler")

    model_index = {
        "_class_name": "Cosmos2VideoToWorldPipeline",
        "_diffusers_version": diffusers.__version__,
        # The hub entry is ["cosmos_guardrail", "CosmosSafetyChecker"]: a separate pip package whose checker downloads
        # its own guardrail models. It cannot be built offline, so it is recorded as absent.
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "CosmosTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    _write_json(path / "model_index.json", model_index)
    return counts


# ----------------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------------


@contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Silence transformers'/diffusers' tqdm bars (e.g. "Writing model shards") and restore their state afterwards."""
    from diffusers.utils import logging as d_logging
    from transformers.utils import logging as t_logging

    restore = []
    for mod in (t_logging, d_logging):
        if mod.is_progress_bar_enabled():
            mod.disable_progress_bar()
            restore.append(mod)
    try:
        yield
    finally:
        for mod in restore:
            mod.enable_progress_bar()


def build_tiny_bases(out_dir: str | os.PathLike[str], seed: int = 0, size: str = "tiny") -> TinyBases:
    """Build (or reuse) seeded-random tiny base models in hub layout under ``out_dir``.

    Writes ``out_dir/gemma`` (a ``Gemma3ForConditionalGeneration`` with a real ``GemmaTokenizer``, chat template and
    ``Gemma3Processor``, laid out like ``google/gemma-3-4b-it``) and ``out_dir/cosmos`` (a Cosmos-Predict2 Video2World
    pipeline folder: ``model_index.json``, ``vae/`` AutoencoderKLWan, ``transformer/`` CosmosTransformer3DModel,
    ``scheduler/`` FlowMatchEulerDiscreteScheduler, ``text_encoder/`` T5EncoderModel, ``tokenizer/`` T5 tokenizer, laid
    out like ``nvidia/Cosmos-Predict2-2B-Video2World``).

    ``model_index.json`` lists ``safety_checker`` as ``[null, null]``: the hub names
    ``["cosmos_guardrail", "CosmosSafetyChecker"]``, a separate package that downloads guardrail models and cannot be
    built offline. ``Cosmos2VideoToWorldPipeline.from_pretrained`` therefore needs an explicit ``safety_checker=``
    argument; loading the components one by one with ``subfolder=`` needs nothing.

    ``size`` is one of :data:`SIZES` (``"tiny"``, ``"small"``, ``"tiny-real"``, ``"base100m"``). All weights are float32 and set from
    ``torch.Generator``\\ s seeded by ``seed`` (every floating tensor is non-zero, including Gemma's RMSNorm weights and
    multimodal projection, which transformers itself initialises to zero), so equal ``(seed, size)`` give
    byte-identical ``*.safetensors``. Gemma's ``vocab_size`` is the tokenizer length rounded up (the real model pads
    too); the padding rows of the tied embedding are 100x smaller so a random model still decodes to real tokens.
    When ``out_dir/.tiny_bases.json`` records the same seed, size and format version and both folders exist, they are
    reused without rebuilding. Prints nothing; progress goes to the ``theworld.tiny`` logger.
    """
    if size not in _PRESETS:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    preset = _PRESETS[size]
    out = Path(out_dir).expanduser().resolve()
    gemma_dir, cosmos_dir = out / "gemma", out / "cosmos"
    marker_file = out / _MARKER
    wanted = {"format_version": _FORMAT_VERSION, "seed": int(seed), "size": size}

    if marker_file.is_file() and gemma_dir.is_dir() and cosmos_dir.is_dir():
        try:
            recorded = json.loads(marker_file.read_text())
        except (OSError, json.JSONDecodeError):
            recorded = {}
        if all(recorded.get(k) == v for k, v in wanted.items()):
            logger.debug("Reusing tiny bases in %s", out)
            return TinyBases(gemma=str(gemma_dir), cosmos=str(cosmos_dir))

    logger.info("Building tiny bases (size=%s, seed=%d) in %s", size, seed, out)
    out.mkdir(parents=True, exist_ok=True)
    marker_file.unlink(missing_ok=True)
    for d in (gemma_dir, cosmos_dir):
        if d.exists():
            shutil.rmtree(d)

    with _quiet_progress_bars():
        gemma_params = _build_gemma(gemma_dir, preset, int(seed))
        cosmos_params = _build_cosmos(cosmos_dir, preset, int(seed))

    record = {**wanted, "preset": asdict(preset), "params": {"gemma": gemma_params, **cosmos_params}}
    _write_json(marker_file, record)
    return TinyBases(gemma=str(gemma_dir), cosmos=str(cosmos_dir))
