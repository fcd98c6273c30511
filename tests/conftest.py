"""Shared fixtures: tiny seeded base models in hub layout, built once per test session."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Caches the tests write (the rollout's T5 prompt embeddings) go to a throwaway HF_HOME, never the user's.
if "THEWORLD_TEST_KEEP_HF_HOME" not in os.environ:
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="theworld-test-hf-home-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory):
    """``TinyBases(gemma, cosmos)``: tiny Gemma 3 and Cosmos-Predict2 folders (seed 0)."""
    from theworld.tiny import build_tiny_bases

    return build_tiny_bases(str(tmp_path_factory.mktemp("bases")), seed=0)


@pytest.fixture(scope="session")
def tiny_real_bases(tmp_path_factory):
    """``TinyBases`` of the ``tiny-real`` preset: Gemma 3 4B's structure (5 sliding-window layers per global layer,
    window 32, spare embedding rows after <image_soft_token>, the hub's checkpoint key layout) at tiny size."""
    from theworld.tiny import build_tiny_bases

    return build_tiny_bases(str(tmp_path_factory.mktemp("bases-real")), seed=0, size="tiny-real")


def _factory(bases):
    from theworld import TheWorld

    def build(seed: int = 0, **overrides):
        overrides.setdefault("cosmos_model_name", bases.cosmos)
        overrides.setdefault("world_image_size", 64)
        overrides.setdefault("world_pooling", 1)
        torch.manual_seed(seed)
        return TheWorld.from_pretrained(bases.gemma, **overrides)

    return build


@pytest.fixture(scope="session")
def world_model_factory(tiny_bases):
    """Build a fresh TheWorld around the tiny bases: ``factory(seed=0, **overrides)`` (64 px world image, pooling 1:
    64 world tokens, unless overridden)."""
    return _factory(tiny_bases)


@pytest.fixture(scope="session")
def real_world_model_factory(tiny_real_bases):
    """`world_model_factory` over the ``tiny-real`` bases."""
    return _factory(tiny_real_bases)


@pytest.fixture(scope="session")
def world_model(world_model_factory):
    """A shared TheWorld (spatial mlp, 64 px world image). Do not mutate it in tests."""
    return world_model_factory()


@pytest.fixture(scope="session")
def sample_images():
    """Two distinct RGB PIL images of different sizes."""
    from PIL import Image, ImageDraw

    a = Image.new("RGB", (80, 64), (255, 255, 255))
    ImageDraw.Draw(a).ellipse((5, 20, 30, 45), fill=(220, 30, 30))
    b = Image.new("RGB", (64, 72), (255, 255, 255))
    ImageDraw.Draw(b).rectangle((35, 10, 60, 35), fill=(30, 30, 220))
    return [a, b]


def conversations(images, texts):
    """One single-turn user conversation per (image, text)."""
    return [
        [{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": t}]}]
        for im, t in zip(images, texts)
    ]


@pytest.fixture(scope="session")
def batch_inputs(world_model, sample_images):
    """Left-padded processor output for two prompts of different lengths."""
    convs = conversations(sample_images, ["Is the red circle left of the blue square?", "Describe."])
    return world_model.processor.apply_chat_template(
        convs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", padding=True
    )
