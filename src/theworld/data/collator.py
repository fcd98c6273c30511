"""Batch VSR-style examples into TheWorld / Gemma 3 inputs through the processor's chat template.

Prompt layout (one user turn, one assistant turn)::

    user:      <image> "Statement: {caption}\\nAnswer (only '0' or '1'):"
    assistant: "{label}"            # "0" or "1"

which Gemma 3's template renders as ``<bos><start_of_turn>user\\n<start_of_image>Statement: ...<end_of_turn>\\n
<start_of_turn>model\\n1<end_of_turn>\\n``; the processor then expands the image into SigLIP tokens and writes the
world block (``<start_of_world>`` + N x ``<world_soft_token>`` + ``<end_of_world>``) where the model's
``world_placement`` says: right after the image's SigLIP block (``"after_image"``, the default) or after ``<bos>``
(``"after_bos"``, theworld 0.1.0).

Supervision (``train=True``): labels are ``-100`` everywhere except at the answer token(s) (the tokens of ``"0"`` /
``"1"``). ``<end_of_turn>`` after the answer is supervised only with ``supervise_end_of_turn=True``; it is off by
default because the quantity trained and measured is the answer, and with the language model frozen (the default
preset) the only way to lower an ``<end_of_turn>`` loss would be to bend the world features toward it. Labels follow
the transformers convention: ``labels[b, t] = input_ids[b, t]`` at a supervised token ``t``; the logits that predict
it are at ``t - 1``.

Padding: ``train=True`` pads on the **right** (the real tokens keep the positions they have alone, and padding after
the answer cannot influence it under causal attention); ``train=False`` (generation prompts) pads on the **left**, so
that every row's next token is the last column. Padding carries ``attention_mask = 0``, ``labels = -100`` and
``token_type_ids = 0`` (the processor's token types: 0 text, 1 SigLIP image token, 2 world token).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

PROMPT_TEMPLATE = "Statement: {caption}\nAnswer (only '0' or '1'):"
"""User text after the image; ``{caption}`` is replaced by the example's caption."""

IGNORE_INDEX = -100


def answer_text(label: Any) -> str:
    """The assistant's answer for a label: ``"0"`` or ``"1"``."""
    if isinstance(label, bool) or label in (0, 1):
        return str(int(label))
    raise ValueError(f"label must be 0 or 1 (or a bool), got {label!r}")


def build_conversation(image: Any, caption: str, label: Any = None, template: str = PROMPT_TEMPLATE) -> list[dict]:
    """One chat: a user turn (image + statement) and, when ``label`` is given, an assistant turn with the answer."""
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"caption must be a non-empty string, got {caption!r}")
    conversation: list[dict] = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": template.format(caption=caption)}],
        }
    ]
    if label is not None:
        conversation.append({"role": "assistant", "content": [{"type": "text", "text": answer_text(label)}]})
    return conversation


class VSRCollator:
    """Turn a list of examples into a batch for `TheWorld.forward` / `generate`.

    Examples are mappings with ``image`` (PIL), ``caption`` (str), ``label`` (0/1; required when ``train``) and
    optionally ``world_latents`` (a cached ``(z, T, h, w)`` tensor from :mod:`theworld.latent_cache`).

    Args:
        processor: the model's `TheWorldProcessor` (or a Gemma 3 processor for ``enable_world=False`` models).
        train: build full conversations with labels (``True``) or generation prompts (``False``).
        supervise_end_of_turn: also supervise the ``<end_of_turn>`` token after the answer (see the module docs).
        padding_side: ``"right"`` / ``"left"``; default right for training and left for prompts.
        template: the user text, with a ``{caption}`` field.

    Returns (``__call__``): a dict with ``input_ids`` ``(B, L)``, ``attention_mask`` ``(B, L)``,
    ``token_type_ids`` ``(B, L)``, ``pixel_values`` ``(B, 3, H, W)``, ``world_pixel_values`` ``(B, 3, S, S)`` (world
    models; replaced by ``world_latents`` ``(B, z, T, h, w)`` when every example carries cached latents) and, for
    ``train``, ``labels`` ``(B, L)``.
    """

    def __init__(
        self,
        processor: Any,
        train: bool = True,
        supervise_end_of_turn: bool = False,
        padding_side: str | None = None,
        template: str = PROMPT_TEMPLATE,
    ) -> None:
        if padding_side is None:
            padding_side = "right" if train else "left"
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if "{caption}" not in template:
            raise ValueError(f"template must contain a '{{caption}}' field, got {template!r}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.train = train
        self.supervise_end_of_turn = supervise_end_of_turn
        self.padding_side = padding_side
        self.template = template
        self._suffix_cache: dict[str, tuple[list[int], int]] = {}

    # ------------------------------------------------------------------ answer tokens
    def answer_suffix(self, label: Any) -> tuple[list[int], int]:
        """``(suffix_ids, n_answer)``: the ids the template appends for the assistant turn, and how many of them are
        the answer itself. ``suffix_ids`` are the tokens of (full chat text) minus (generation prompt text)."""
        text = answer_text(label)
        if text not in self._suffix_cache:
            probe = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
            prompt = self.processor.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
            full = self.processor.apply_chat_template(
                [*probe, {"role": "assistant", "content": [{"type": "text", "text": text}]}], tokenize=False
            )
            if not full.startswith(prompt):
                raise ValueError(
                    "The chat template does not render the assistant turn as a continuation of the generation prompt "
                    f"(prompt {prompt!r}, full {full!r}); the collator cannot locate the answer tokens."
                )
            suffix_ids = self.tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
            answer_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if suffix_ids[: len(answer_ids)] != answer_ids:
                raise ValueError(
                    f"The answer {text!r} tokenizes differently inside the assistant turn ({suffix_ids}) than alone "
                    f"({answer_ids}); the collator cannot supervise it exactly."
                )
            self._suffix_cache[text] = (suffix_ids, len(answer_ids))
        return self._suffix_cache[text]

    def answer_token_ids(self) -> dict[int, list[int]]:
        """Token ids of the answers: ``{0: ids of "0", 1: ids of "1"}``."""
        return {label: self.answer_suffix(label)[0][: self.answer_suffix(label)[1]] for label in (0, 1)}

    # ------------------------------------------------------------------ batching
    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("Cannot collate an empty list of examples.")
        conversations = []
        for i, ex in enumerate(examples):
            label = ex.get("label") if self.train else None
            if self.train and label is None:
                raise ValueError(f"Example {i} has no 'label'; training examples need a 0/1 label.")
            conversations.append(build_conversation(ex["image"], ex["caption"], label, self.template))
        batch = self.processor.apply_chat_template(
            conversations,
            add_generation_prompt=not self.train,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": self.padding_side},
        )
        out = {k: v for k, v in batch.items()}
        if "token_type_ids" not in out:
            out["token_type_ids"] = torch.zeros_like(out["input_ids"])
        latents = [ex.get("world_latents") for ex in examples]
        if all(x is not None for x in latents) and "world_pixel_values" in out:
            out["world_latents"] = torch.stack([torch.as_tensor(x) for x in latents])
            del out["world_pixel_values"]
        if self.train:
            out["labels"] = self._labels(out["input_ids"], out["attention_mask"], [ex["label"] for ex in examples])
        return out

    def _labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: list[Any]) -> torch.Tensor:
        """``(B, L)`` labels: the answer token ids at their positions, -100 elsewhere (see the module docs)."""
        out = torch.full_like(input_ids, IGNORE_INDEX)
        lengths = attention_mask.sum(-1).tolist()
        for b, label in enumerate(labels):
            suffix, n_answer = self.answer_suffix(label)
            if self.padding_side == "right":
                end = int(lengths[b])
            else:
                end = input_ids.shape[1]
            start = end - len(suffix)
            row = input_ids[b, start:end].tolist()
            if row != suffix:
                raise ValueError(
                    f"Row {b} does not end with the assistant turn's tokens {suffix} (got {row}); the processor or "
                    "chat template changed the answer. Check the tokenizer's chat template."
                )
            n = n_answer + (1 if self.supervise_end_of_turn and len(suffix) > n_answer else 0)
            out[b, start : start + n] = input_ids[b, start : start + n]
        return out


def supervised_positions(labels: torch.Tensor) -> list[tuple[int, int]]:
    """``[(row, position), ...]`` of every supervised token (``labels != -100``), in row-major order."""
    return [tuple(x) for x in (labels != IGNORE_INDEX).nonzero().tolist()]


__all__ = ["IGNORE_INDEX", "PROMPT_TEMPLATE", "VSRCollator", "answer_text", "build_conversation", "supervised_positions"]
