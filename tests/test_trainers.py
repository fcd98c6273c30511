"""transformers' ``Trainer`` and TRL's ``SFTTrainer`` train TheWorld as they are (issue 11): TheWorld's own collator,
gradient accumulation with the loss normalised over the whole accumulated batch (``num_items_in_batch``), save hooks
that write TheWorld partial checkpoints (``checkpoint-N/``) which reload bit for bit, resume, and a LoRA adapter.
Tiny real models, the real trainers; no mocks.

The user code (the README shows it)::

    from transformers import Trainer, TrainingArguments
    from theworld.data import VSRCollator, load_vsr_jsonl

    examples = load_vsr_jsonl("synthetic/train.jsonl")  # dicts with image (PIL), caption, label (0/1)
    args = TrainingArguments(output_dir="runs/hf_trainer", per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, max_steps=100, learning_rate=1e-2,
                             remove_unused_columns=False, report_to=[], save_steps=50)
    Trainer(model=model, args=args, train_dataset=examples, data_collator=VSRCollator(model.processor)).train()

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir="runs/sft", per_device_train_batch_size=2,
                     gradient_accumulation_steps=2, max_steps=100, learning_rate=1e-2,
                     remove_unused_columns=False, report_to=[], save_steps=50)
    SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(list(examples)),
               data_collator=VSRCollator(model.processor), processing_class=model.processor).train()

``remove_unused_columns=False`` keeps the raw ``image`` / ``caption`` / ``label`` fields for the collator (the trainers
otherwise drop every field the model's forward does not name). ``SFTTrainer`` takes a ``datasets.Dataset``; TRL turns
bf16 autocast on by default, so on a machine without a bf16 GPU ``SFTConfig`` also needs ``use_cpu=True`` (or
``bf16=False``). A LoRA adapter: ``theworld.training.add_lora(model, r=16)`` (or PEFT's ``inject_adapter_in_model``
followed by ``theworld.checkpoint_theworld.apply_freeze_flags(model)``) before building the trainer; the checkpoints
then hold the adapter with the world projector.
"""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from test_checkpoint import logits_and_tokens, model_inputs
from transformers import Trainer, TrainingArguments
from trl import SFTConfig, SFTTrainer

from theworld import TheWorld
from theworld.checkpoint_theworld import ADAPTER_FILE, adapter_layers, adapter_tensors, trainable_state_dict
from theworld.data import VSRCollator, generate_synthetic_vsr, load_vsr_jsonl
from theworld.training import add_lora

WORLD = ("model.world_projector.", "model.world_boundary_embeddings.")
LM_TARGETS = r".*language_model.*\.(q_proj|v_proj)"
STEPS, SAVE_STEPS = 8, 4


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """8 synthetic VSR examples (two relations): a `VSRDataset` of dicts with ``image`` (PIL), ``caption``,
    ``label``."""
    paths = generate_synthetic_vsr(
        tmp_path_factory.mktemp("vsr"), num_train=8, num_val=0, num_test=0, relations=("left of", "above"), seed=1
    )
    return load_vsr_jsonl(paths["train"])


def pinned(**kw) -> dict:
    """The README's arguments plus what a test pins: CPU, a log record per step, no progress bar, a fixed seed."""
    args = dict(
        per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=STEPS, learning_rate=1e-2,
        remove_unused_columns=False, report_to=[], save_steps=SAVE_STEPS,
        use_cpu=True, logging_steps=1, disable_tqdm=True, seed=0,
    )
    args.update(kw)
    return args


def losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def assert_loss_falls(trainer) -> None:
    got = losses(trainer)
    assert len(got) == STEPS
    first, last = sum(got[:3]) / 3, sum(got[-3:]) / 3
    assert last < first - 0.15, got


def trained_tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainable_state_dict(model).items()}


def assert_theworld_checkpoint(folder, model, inputs) -> None:
    """``folder`` is a TheWorld partial checkpoint of exactly ``model``'s trainable tensors, and reloads with the same
    logits as ``model`` (bit for bit)."""
    config = json.loads((folder / "config.json").read_text())
    assert config["checkpoint_kind"] == "partial" and config["model_type"] == "theworld"
    assert [n for n in os.listdir(folder) if n.endswith(".safetensors")] == ["model.safetensors"]
    saved = load_file(folder / "model.safetensors")
    expected = trained_tensors(model)
    assert saved.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(saved[key], value), key
    reloaded = TheWorld.from_pretrained(folder)
    model.eval()
    assert torch.equal(logits_and_tokens(reloaded, inputs, new_tokens=0)[0], logits_and_tokens(model, inputs, 0)[0])


# ----------------------------------------------------------------------------------------------------------------------
# transformers' Trainer
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_run(world_model_factory, examples, tmp_path_factory):
    """`Trainer` on TheWorld (world projector only) for 8 steps of 2 x 2 examples, checkpoints every 4 steps, then
    ``save_model()`` into ``output_dir``."""
    out = tmp_path_factory.mktemp("hf") / "run"
    model = world_model_factory(seed=0)
    trainer = Trainer(
        model=model, args=TrainingArguments(output_dir=str(out), **pinned()), train_dataset=examples,
        data_collator=VSRCollator(model.processor),
    )
    trainer.train()
    trainer.save_model()
    return {"out": out, "model": model, "trainer": trainer}


def test_trainer_loss_falls_with_accumulation_normalised_over_the_whole_batch(hf_run):
    trainer = hf_run["trainer"]
    assert trainer.state.global_step == STEPS
    # the loss takes num_items_in_batch (as Gemma 3's does): no per-micro-batch averaging under accumulation
    assert trainer.model_accepts_loss_kwargs
    assert_loss_falls(trainer)


def test_trainer_checkpoints_are_theworld_partial_checkpoints(hf_run, sample_images):
    out, model = hf_run["out"], hf_run["model"]
    inputs = model_inputs(model.processor, sample_images)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    final = out / f"checkpoint-{STEPS}"
    assert_theworld_checkpoint(final, model, inputs)
    # the trainer's own state sits next to the checkpoint files (save_pretrained carries what it does not own)
    assert {"trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"} <= set(os.listdir(final))
    assert json.loads((final / "trainer_state.json").read_text())["global_step"] == STEPS
    # checkpoint-4 is the model after 4 steps: its own trainable tensors, and it reloads
    early = load_file(out / "checkpoint-4" / "model.safetensors")
    assert early.keys() == trained_tensors(model).keys()
    key = "model.world_projector.linear_1.weight"
    assert not torch.equal(early[key], trained_tensors(model)[key])
    again = TheWorld.from_pretrained(out / "checkpoint-4")
    assert torch.equal(again.state_dict()[key], early[key])
    # save_model() writes the same partial checkpoint into output_dir and keeps the checkpoint-N folders in it
    assert_theworld_checkpoint(out, model, inputs)
    assert (out / "checkpoint-4" / "model.safetensors").is_file() and (final / "trainer_state.json").is_file()


def test_trainer_resumes_from_a_theworld_checkpoint_exactly(hf_run, world_model_factory, examples, tmp_path):
    """8 steps straight == a fresh model resumed by `Trainer` from checkpoint-4 for 4 more: bit-identical weights."""
    model = world_model_factory(seed=0)
    trainer = Trainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path), **pinned()), train_dataset=examples,
        data_collator=VSRCollator(model.processor),
    )
    trainer.train(resume_from_checkpoint=str(hf_run["out"] / "checkpoint-4"))
    straight, resumed = trained_tensors(hf_run["model"]), trained_tensors(model)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert losses(trainer) == losses(hf_run["trainer"])  # steps 1-4 from the checkpoint, 5-8 run again


class UnevenCollator:
    """`VSRCollator` supervising the answer and ``<end_of_turn>`` of examples with ``long``, only the answer of the
    others: micro-batches with different numbers of supervised tokens. Records each batch's count."""

    def __init__(self, processor):
        self.collate = VSRCollator(processor, supervise_end_of_turn=True)
        self.counts: list[int] = []

    def __call__(self, examples):
        batch = self.collate(examples)
        for row, example in enumerate(examples):
            if not example["long"]:
                supervised = (batch["labels"][row] != -100).nonzero().flatten()
                batch["labels"][row, supervised[1:]] = -100
        self.counts.append(int((batch["labels"] != -100).sum()))
        return batch


@pytest.mark.parametrize("kind", ["transformers", "trl"])
def test_accumulated_micro_batches_give_the_update_of_one_batch(kind, world_model_factory, examples, tmp_path):
    """One SGD step over 2 examples with 2 and 1 supervised tokens: 2 micro-batches of 1 (gradient accumulation) move
    the weights exactly as one batch of 2. Averaging per micro-batch would weight the lone token twice as much."""
    data = [dict(examples[i], long=long) for i, long in ((0, True), (1, False))]
    base = trained_tensors(world_model_factory(seed=0))
    updates, collators = [], []
    for batch_size, accumulation in ((2, 1), (1, 2)):
        model = world_model_factory(seed=0)
        collator = UnevenCollator(model.processor)
        kw = pinned(
            output_dir=str(tmp_path / f"{batch_size}x{accumulation}"), per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd", learning_rate=1.0,
            lr_scheduler_type="constant", max_grad_norm=0.0, save_strategy="no",
        )
        if kind == "trl":
            kw["bf16"] = False  # TRL's default bf16 autocast would round the gradients: compare exact float32 steps
        if kind == "transformers":
            trainer = Trainer(model=model, args=TrainingArguments(**kw), train_dataset=data, data_collator=collator)
        else:
            trainer = SFTTrainer(
                model=model, args=SFTConfig(**kw), train_dataset=Dataset.from_list(data), data_collator=collator,
                processing_class=model.processor,
            )
        trainer.train()
        updates.append({k: v - base[k] for k, v in trained_tensors(model).items()})
        collators.append(collator)
    assert collators[0].counts == [3] and sorted(collators[1].counts) == [1, 2]
    for key, update in updates[0].items():
        assert update.abs().max() > 1e-3, key  # the step moved every trainable tensor
        torch.testing.assert_close(updates[1][key], update, rtol=1e-4, atol=1e-5)


def test_world_block_labels_counted_by_num_items_in_batch_are_reported(world_model_factory, examples, caplog):
    """Labels on the world block are dropped by the forward; when the caller's ``num_items_in_batch`` counted them the
    loss would be scaled wrong, and TheWorld says so (once)."""
    model = world_model_factory(seed=0)
    batch = VSRCollator(model.processor)([examples[0], examples[1]])
    everything = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # labels = input_ids
    with caplog.at_level(logging.WARNING, logger="theworld.modeling_theworld"):
        count = int((batch["labels"][:, 1:] != -100).sum())
        answers = model(**batch, num_items_in_batch=count).loss
        assert not [r for r in caplog.records if r.name == "theworld.modeling_theworld"]  # no world-block labels
        torch.testing.assert_close(answers, model(**batch).loss)  # one micro-batch: the count is its own
        model(**{**batch, "labels": everything}, num_items_in_batch=int((everything[:, 1:] != -100).sum()))
        model(**{**batch, "labels": everything}, num_items_in_batch=int((everything[:, 1:] != -100).sum()))
    messages = [r.getMessage() for r in caplog.records if r.name == "theworld.modeling_theworld"]
    assert len(messages) == 1 and "world-block positions" in messages[0] and "-100" in messages[0]
    world = 2 * (model.config.num_world_tokens + 2)  # two rows, each with <start_of_world> ... <end_of_world>
    assert f"supervise {world} world-block positions" in messages[0]


# ----------------------------------------------------------------------------------------------------------------------
# TRL's SFTTrainer
# ----------------------------------------------------------------------------------------------------------------------
def test_sft_trainer_trains_and_saves_theworld_checkpoints(world_model_factory, examples, sample_images, tmp_path):
    model = world_model_factory(seed=0)
    trainer = SFTTrainer(
        model=model, args=SFTConfig(output_dir=str(tmp_path), **pinned()),
        train_dataset=Dataset.from_list(list(examples)), data_collator=VSRCollator(model.processor),
        processing_class=model.processor,
    )
    trainer.train()
    assert trainer.args.bf16  # TRL's default: bf16 autocast, float32 master weights
    assert all(p.dtype == torch.float32 for p in trained_tensors(model).values())
    assert trainer.model_accepts_loss_kwargs
    assert_loss_falls(trainer)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    # accelerate runs the trained model's forward under autocast; unwrapped, it is the float32 model that was saved
    model = trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    assert_theworld_checkpoint(tmp_path / f"checkpoint-{STEPS}", model, model_inputs(model.processor, sample_images))


# ----------------------------------------------------------------------------------------------------------------------
# A LoRA adapter
# ----------------------------------------------------------------------------------------------------------------------
def test_trainer_trains_a_lora_adapter_saved_with_the_projector(world_model_factory, examples, sample_images, tmp_path):
    model = add_lora(world_model_factory(seed=0), r=4, alpha=8, target_modules=LM_TARGETS)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trainable_state_dict(model))
    trainer = Trainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path), **pinned()), train_dataset=examples,
        data_collator=VSRCollator(model.processor),
    )
    trainer.train()
    assert_loss_falls(trainer)
    final = tmp_path / f"checkpoint-{STEPS}"
    assert ADAPTER_FILE in os.listdir(final)
    adapter = json.loads((final / ADAPTER_FILE).read_text())["peft_config"]
    assert (adapter["peft_type"], adapter["r"], adapter["target_modules"]) == ("LORA", 4, LM_TARGETS)
    saved = load_file(final / "model.safetensors")
    lora = set(adapter_tensors(model))
    assert len(lora) == 4 * model.config.text_config.num_hidden_layers  # lora_A and lora_B of q_proj and v_proj
    assert set(saved) == lora | {k for k in model.state_dict() if k.startswith(WORLD)}  # nothing of the frozen base
    assert all(saved[k].abs().max() > 0 for k in lora if ".lora_B." in k)  # PEFT starts lora_B at zero: it trained
    assert_theworld_checkpoint(final, model, model_inputs(model.processor, sample_images))
    assert sorted(adapter_layers(TheWorld.from_pretrained(final))) == sorted(adapter_layers(model))
