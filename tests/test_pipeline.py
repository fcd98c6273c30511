"""``pipeline("image-text-to-text", model=checkpoint_dir)`` (issue 11): chat messages and ``images=``/``text=``, a batch
of 2 (one by one and batched), greedy text equal to ``model.generate`` plus the processor's ``batch_decode``; loaded
without ``trust_remote_code`` after ``import theworld``, and as remote code (``trust_remote_code=True``) in a clean
environment without theworld. Tiny real models; no mocks.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from conftest import conversations
from test_autoload import make_clean_venv, run_clean
from test_checkpoint import PROMPTS
from transformers import pipeline

from theworld import TheWorld

#: The same prompts for the ``images=``/``text=`` form: ``<start_of_image>`` marks where each image goes.
TEXTS = [f"<start_of_image>{prompt}" for prompt in PROMPTS]
NEW_TOKENS = 5


def scramble(model, seed: int, scale: float = 0.5):
    """Add noise (``scale`` x each tensor's spread) to every trainable tensor: a tiny model whose two prompts give
    different greedy answers, so that a pipeline that mixed up or dropped a row cannot match by accident."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * scale * param.std().clamp(min=0.02))
    return model


def generated_texts(model, inputs) -> list[str]:
    """The new text of a greedy ``model.generate``, decoded with the processor's ``batch_decode``."""
    out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    return model.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def pipeline_texts(pipe, images, batch_size: int) -> dict[str, list[str]]:
    """The pipeline's new text for the chat form and for the ``images=``/``text=`` form."""
    kwargs = dict(
        max_new_tokens=NEW_TOKENS, generate_kwargs={"do_sample": False}, return_full_text=False, batch_size=batch_size
    )
    chat = pipe(text=conversations(images, PROMPTS), **kwargs)
    plain = pipe(images=list(images), text=TEXTS, **kwargs)
    return {
        "chat": [rows[0]["generated_text"] for rows in chat],
        "plain": [row["generated_text"] for row in plain],
    }


@pytest.fixture(scope="module")
def checkpoint(world_model_factory, sample_images, tmp_path_factory):
    """A partial checkpoint of a scrambled TheWorld (language model trained) and its reference texts."""
    model = scramble(world_model_factory(seed=3, freeze_gemma_language=False), seed=3)
    folder = tmp_path_factory.mktemp("pipeline") / "ckpt"
    model.save_pretrained(folder)
    processor = model.processor
    chat_inputs = processor.apply_chat_template(
        conversations(sample_images, PROMPTS),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )
    plain_inputs = processor(images=[[im] for im in sample_images], text=TEXTS, return_tensors="pt", padding=True)
    reference = {"chat": generated_texts(model, chat_inputs), "plain": generated_texts(model, plain_inputs)}
    for texts in reference.values():
        assert texts[0] != texts[1] and all(texts), texts  # the two rows are told apart
    return {"folder": folder, "reference": reference}


def test_pipeline_after_import_theworld(checkpoint, sample_images):
    pipe = pipeline("image-text-to-text", model=str(checkpoint["folder"]))  # no trust_remote_code: the installed class
    assert type(pipe.model) is TheWorld
    for batch_size in (1, 2):
        assert pipeline_texts(pipe, sample_images, batch_size) == checkpoint["reference"], batch_size


REMOTE_PIPELINE_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    assert importlib.util.find_spec("theworld") is None, "theworld must not be importable in the clean environment"
    import torch
    from PIL import Image
    from transformers import pipeline
    torch.set_num_threads(2)
    folder, spec = sys.argv[1], json.loads(sys.argv[2])
    images = [Image.open(p).convert("RGB") for p in spec["images"]]
    pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    chats = [[{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": t}]}]
             for im, t in zip(images, spec["prompts"])]
    kwargs = dict(max_new_tokens=spec["new_tokens"], generate_kwargs={"do_sample": False}, return_full_text=False)
    result = {"class": type(pipe.model).__module__ + "." + type(pipe.model).__name__}
    for bs in (1, 2):
        result[f"chat{bs}"] = [r[0]["generated_text"] for r in pipe(text=chats, batch_size=bs, **kwargs)]
        result[f"plain{bs}"] = [r["generated_text"] for r in pipe(images=images, text=spec["texts"], batch_size=bs,
                                                                  **kwargs)]
    # the same model and processor, by hand: generate + batch_decode
    inputs = pipe.processor.apply_chat_template(chats, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                return_tensors="pt", processor_kwargs={"padding": True})
    out = pipe.model.generate(**inputs, max_new_tokens=spec["new_tokens"], do_sample=False)
    result["generate"] = pipe.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print("RESULT " + json.dumps(result))
    """
)


def test_pipeline_with_remote_code_in_a_clean_env(checkpoint, sample_images, tmp_path):
    python = make_clean_venv(str(tmp_path / "venv"))
    paths = []
    for i, image in enumerate(sample_images):
        paths.append(str(tmp_path / f"image{i}.png"))
        image.save(paths[-1])
    spec = {"images": paths, "prompts": PROMPTS, "texts": TEXTS, "new_tokens": NEW_TOKENS}
    proc = run_clean(
        python,
        REMOTE_PIPELINE_SCRIPT,
        str(checkpoint["folder"]),
        json.dumps(spec),
        env_extra={"HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["class"].startswith("transformers_modules.") and result["class"].endswith(
        "modeling_theworld.TheWorldForConditionalGeneration"
    )
    reference = checkpoint["reference"]
    assert result["generate"] == reference["chat"]
    for batch_size in (1, 2):
        assert result[f"chat{batch_size}"] == reference["chat"], batch_size
        assert result[f"plain{batch_size}"] == reference["plain"], batch_size
