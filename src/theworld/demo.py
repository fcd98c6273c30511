"""The offline end-to-end demonstration that TheWorld uses its world tokens: `run_demo` (``theworld demo``).

Steps (everything local, nothing downloaded):

1. build tiny seeded Gemma 3 and Cosmos bases (:func:`theworld.tiny.build_tiny_bases`);
2. generate the synthetic spatial data set; by default the simplest honest slice: one relation ("left of") and fixed
   objects (a red circle and a blue square), every caption the same text, so the label depends only on the image;
3. train TheWorld (``freeze_preset`` projector: only the world projector and boundary embeddings learn) and a
   Gemma-only baseline (``enable_world: false``, language model trained, SigLIP frozen) with the same steps and batch
   (its own learning rate, ``--baseline-lr``), through :mod:`theworld.training`;
4. score both on the test split, plus TheWorld with its world features zeroed and with another example's world
   features (a derangement);
5. reload the saved partial checkpoint with ``AutoModel.from_pretrained(dir, trust_remote_code=True)`` in a
   subprocess in which ``import theworld`` is blocked, and check that its predictions are identical;
6. write ``report.md`` (with the loss curves), ``results.json`` (``theworld_accuracy``, ``baseline_accuracy``,
   ``majority_rate``, ``ablated_accuracy``, ``shuffled_accuracy``, ``reload_identical``) and ``details.json``
   (everything else measured, with the checks of ``details["targets"]``).

TheWorld's world settings are explicit (`DemoOptions`): a 64 px world image, pooling 1 and ``channel`` projection
(16 world tokens, one per latent channel holding its whole 8 x 8 map), the world block right after the image, world
tokens attending to each other bidirectionally.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

RESULT_KEYS = (
    "theworld_accuracy",
    "baseline_accuracy",
    "majority_rate",
    "ablated_accuracy",
    "shuffled_accuracy",
    "reload_identical",
)

# Runs in a fresh interpreter: `theworld` cannot be imported, so the checkpoint's own remote code must be used.
_RELOAD_SCRIPT = r'''
import importlib.abc, json, sys

class _BlockTheWorld(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "theworld" or name.startswith("theworld."):
            raise ModuleNotFoundError(f"import of {name} is blocked in this reload check")
        return None

sys.meta_path.insert(0, _BlockTheWorld())
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
model = AutoModel.from_pretrained(spec["checkpoint"], trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(spec["checkpoint"], trust_remote_code=True)
rows = [json.loads(line) for line in open(spec["data"], encoding="utf-8") if line.strip()]
id0, id1 = spec["answer_ids"]
preds, p1s = [], []
with torch.no_grad():
    for start in range(0, len(rows), spec["batch_size"]):
        chunk = rows[start : start + spec["batch_size"]]
        convs = []
        for row in chunk:
            image = Image.open(spec["image_root"] + "/" + row["image"]).convert("RGB")
            text = spec["template"].format(caption=row["caption"])
            convs.append([{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}])
        batch = processor.apply_chat_template(
            convs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "left"},
        )
        logits = model(**batch, logits_to_keep=1, use_cache=False).logits[:, -1, :].float()
        pair = torch.stack([logits[:, id0], logits[:, id1]], dim=-1)
        p1s += torch.softmax(pair, dim=-1)[:, 1].tolist()
        preds += [int(pair[b, 1] > pair[b, 0]) for b in range(len(chunk))]
json.dump({
    "predictions": preds,
    "p1": p1s,
    "model_class": type(model).__module__ + "." + type(model).__name__,
    "theworld_imported": any(m == "theworld" or m.startswith("theworld.") for m in sys.modules),
}, open(spec["out"], "w"))
'''


def _o(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class DemoOptions:
    """Settings of one demo run (``theworld demo --help`` lists them as options)."""

    out: str = _o("demo_out", "output folder")
    bases: str | None = _o(None, "folder for the tiny bases (default: OUT/bases; reused)")
    size: str = _o("tiny", "tiny bases preset (theworld.tiny.SIZES)")
    num_train: int = _o(4000, "training examples")
    num_test: int = _o(500, "test examples")
    steps: int = _o(600, "optimizer steps for each model")
    batch_size: int = _o(32, "examples per optimizer step")
    lr: float = _o(1e-2, "peak learning rate of TheWorld")
    baseline_lr: float | None = _o(
        3e-3, "peak learning rate of the Gemma-only baseline (it stalls at loss ln 2 with --lr 1e-2 on the tiny bases)"
    )
    warmup_steps: int = _o(20, "linear warmup steps")
    preset: str = _o("projector", "TheWorld freeze preset (e.g. projector, projector+lm)")
    projection_mode: str = _o(
        "channel", "world_projection_mode of TheWorld (channel: one token per latent channel holding its whole map)"
    )
    projection_architecture: str = _o("mlp", "projection_architecture of TheWorld's world projector")
    world_pooling: int = _o(1, "world_pooling of TheWorld (1: the full 8x8 latent grid of a 64 px image)")
    world_placement: str = _o("after_image", "world_placement of TheWorld (after_image or after_bos)")
    world_attention: str = _o("bidirectional", "world_attention of TheWorld (bidirectional or causal)")
    baseline_preset: str = _o("lm", "Gemma-only baseline freeze preset (lm, lm+vision)")
    relations: str = _o("left of", "comma-separated relations (synthetic generator)")
    objects: str = _o(
        "red circle,blue square", "two fixed objects 'colour shape,colour shape', or 'random' for random ones"
    )
    image_size: int = _o(64, "synthetic image and world image size (pixels)")
    seed: int = _o(0, "seed of the bases, the data, the model init and the shuffle ablation")
    eval_batch_size: int = _o(64, "prompts per evaluation batch")
    num_workers: int = _o(0, "DataLoader workers for training batches")

    def __post_init__(self) -> None:
        if min(self.steps, self.num_train, self.batch_size, self.eval_batch_size, self.world_pooling) < 1:
            raise ValueError("--steps, --num-train, --batch-size, --eval-batch-size and --world-pooling must be >= 1.")
        if self.num_test < 2:
            raise ValueError(f"--num-test must be >= 2 (the shuffle ablation needs two examples), got {self.num_test}.")
        if self.image_size < 32 or self.image_size % (8 * self.world_pooling):
            raise ValueError(
                f"--image-size must be >= 32 and divisible by 8 x --world-pooling ({8 * self.world_pooling}), got "
                f"{self.image_size}."
            )


def _train_config(args: DemoOptions, out: str, bases, data: dict[str, str], world: bool):
    from theworld.training import TrainConfig

    lr = args.lr if world or args.baseline_lr is None else args.baseline_lr
    common = dict(
        gemma_model_name=bases.gemma,
        world_image_size=args.image_size,
        train_file=data["train"],
        max_steps=args.steps,
        per_device_batch_size=args.batch_size,
        learning_rate=lr,
        warmup_steps=min(args.warmup_steps, max(args.steps - 1, 0)),
        lr_scheduler="cosine",
        logging_steps=max(1, args.steps // 100),
        seed=args.seed,
        num_workers=args.num_workers,
        overwrite_output_dir=True,
        latent_cache_dir=os.path.join(out, "latent_cache"),
    )
    if world:
        return TrainConfig(
            output_dir=os.path.join(out, "theworld"), cosmos_model_name=bases.cosmos, enable_world=True,
            freeze_preset=args.preset, world_projection_mode=args.projection_mode,
            projection_architecture=args.projection_architecture, world_pooling=args.world_pooling,
            world_placement=args.world_placement, world_attention=args.world_attention, **common,
        )
    return TrainConfig(
        output_dir=os.path.join(out, "baseline"), enable_world=False, freeze_preset=args.baseline_preset, **common
    )


def _reload_check(checkpoint: str, data: dict[str, str], reference: dict, args: DemoOptions, out: str, answer_ids) -> dict:
    """Score the test split with the checkpoint's remote code in a subprocess; compare with ``reference``."""
    from theworld.data.collator import PROMPT_TEMPLATE

    result_path = os.path.join(out, "reload_predictions.json")
    spec = {
        "checkpoint": checkpoint,
        "data": data["test"],
        "image_root": os.path.dirname(os.path.abspath(data["test"])),
        "template": PROMPT_TEMPLATE,
        "answer_ids": answer_ids,
        "batch_size": args.eval_batch_size,
        "threads": max(1, (os.cpu_count() or 1)),
        "out": result_path,
    }
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-c", _RELOAD_SCRIPT, json.dumps(spec)], env=env, capture_output=True, text=True,
        cwd=out,
    )
    if proc.returncode != 0:
        logger.error("reload subprocess failed:\n%s", proc.stderr[-4000:])
        return {"identical": False, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    with open(result_path, encoding="utf-8") as f:
        got = json.load(f)
    ref_preds = [r["prediction"] for r in reference["predictions"]]
    ref_p1 = [r["p1"] for r in reference["predictions"]]
    max_dp = max((abs(a - b) for a, b in zip(ref_p1, got["p1"])), default=0.0)
    identical = got["predictions"] == ref_preds and not got["theworld_imported"]
    return {
        "identical": identical,
        "num_predictions": len(got["predictions"]),
        "num_different": sum(1 for a, b in zip(ref_preds, got["predictions"]) if a != b),
        "max_abs_p1_difference": max_dp,
        "model_class": got["model_class"],
        "theworld_imported": got["theworld_imported"],
    }


def _report(out: str, results: dict, details: dict) -> str:
    lines = [
        "# TheWorld demo report",
        "",
        f"Task: {details['task']}",
        "",
        f"Budget per model: {details['steps']} optimizer steps x batch {details['batch_size']} (warmup + cosine "
        f"schedule). TheWorld (`world_projection_mode: {details['projection_mode']}`, `projection_architecture: "
        f"{details['projection_architecture']}`, `world_pooling: {details['world_pooling']}`, "
        f"`world_placement: {details['world_placement']}`, `world_attention: {details['world_attention']}`; "
        f"{details['num_world_tokens']} world tokens per image) trains `{details['preset']}` at learning rate {details['lr']}; the "
        f"Gemma-only baseline (`enable_world: false`) trains `{details['baseline_preset']}` with SigLIP frozen at "
        f"learning rate {details['baseline_lr']}.",
        "",
        "| model (test split, score mode) | accuracy |",
        "|---|---|",
        f"| majority class | {results['majority_rate']:.3f} |",
        f"| Gemma-only baseline | {results['baseline_accuracy']:.3f} |",
        f"| **TheWorld** | **{results['theworld_accuracy']:.3f}** |",
        f"| TheWorld, world features zeroed | {results['ablated_accuracy']:.3f} |",
        f"| TheWorld, world features of another example (shuffled) | {results['shuffled_accuracy']:.3f} |",
        "",
        f"Targets: TheWorld >= majority + 0.15 ({details['targets']['theworld_vs_majority']}); zeroing and shuffling "
        f"each cost >= 0.10 ({details['targets']['zero_drop']}, {details['targets']['shuffle_drop']}).",
        "",
        f"Reload check: the partial checkpoint `{details['checkpoint']}` reloaded with "
        "`AutoModel.from_pretrained(dir, trust_remote_code=True)` in a subprocess with `theworld` blocked "
        f"(class `{details['reload'].get('model_class')}`) gave "
        f"{'identical' if results['reload_identical'] else 'DIFFERENT'} predictions "
        f"(max |p1 difference| {details['reload'].get('max_abs_p1_difference')}).",
        "",
    ]
    if details.get("theworld_generate_accuracy") is not None:
        lines += [
            f"Generation mode (greedy, parsed answers): TheWorld accuracy {details['theworld_generate_accuracy']:.3f}, "
            f"{details['theworld_generate_unparseable']} unparseable.",
            "",
        ]
    lines += [
        "## Loss curves",
        "",
        "The loss is the cross-entropy of the answer token over the whole vocabulary. With the default preset the tiny "
        "random language model and its output head stay frozen, so TheWorld's loss cannot fall far (its world features "
        "can steer the answer position only so much); what the world features do learn is which of `0` and `1` wins, "
        "which is what the score and generation modes read.",
        "",
        "TheWorld:",
        "",
        "![TheWorld loss](theworld_loss.png)",
        "",
        "Gemma-only baseline:",
        "",
        "![baseline loss](baseline_loss.png)",
        "",
        f"Total time: {details['seconds_total']:.0f} s on {details['cpu_count']} CPU cores.",
        "",
    ]
    path = os.path.join(out, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path


def run_demo(args: DemoOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the demo (see the module docs); ``progress`` receives one line per step. Returns ``{"results",
    "details", "report", "seconds"}`` and writes everything into ``args.out``."""
    from theworld.data import generate_synthetic_vsr, load_vsr_jsonl, split_stats
    from theworld.data.collator import VSRCollator
    from theworld.evaluation import evaluate
    from theworld.latent_cache import CachedLatentDataset, LatentCache
    from theworld.tiny import build_tiny_bases
    from theworld.training import Trainer

    say = progress or logger.info
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    relations = tuple(r.strip() for r in args.relations.split(",") if r.strip())
    fixed = None if args.objects.strip() == "random" else tuple(o.strip() for o in args.objects.split(","))

    say(f"[1/6] tiny bases ({args.size})")
    bases = build_tiny_bases(args.bases or os.path.join(out, "bases"), seed=args.seed, size=args.size)
    say(f"[2/6] synthetic data: {args.num_train} train / {args.num_test} test, relations {list(relations)}, "
        f"objects {list(fixed) if fixed else 'random'}")
    data_dir = os.path.join(out, "data")
    if os.path.isdir(data_dir):
        shutil.rmtree(data_dir)
    data = generate_synthetic_vsr(
        data_dir, num_train=args.num_train, num_val=0, num_test=args.num_test, image_size=args.image_size,
        seed=args.seed, relations=relations, fixed_objects=fixed,
    )
    stats = split_stats(data["test"])

    say(f"[3/6] training TheWorld ({args.preset}) for {args.steps} steps")
    world_trainer = Trainer(_train_config(args, out, bases, data, world=True))
    world_summary = world_trainer.train()
    say(f"      final loss {world_summary['final_loss']:.4f}, {world_summary['train_seconds']:.0f} s")
    say(f"[4/6] training the Gemma-only baseline ({args.baseline_preset}) for {args.steps} steps")
    base_trainer = Trainer(_train_config(args, out, bases, data, world=False))
    base_summary = base_trainer.train()
    say(f"      final loss {base_summary['final_loss']:.4f}, {base_summary['train_seconds']:.0f} s")

    say("[5/6] evaluating (score mode) with and without the world")
    test = load_vsr_jsonl(data["test"])
    world_model = world_trainer.model.eval()
    cache = LatentCache(os.path.join(out, "latent_cache"), world_model)
    test_cached = CachedLatentDataset(test, cache, cache.prepare(test, world_model.processor, batch_size=64))
    ev = {}
    for ablation in ("none", "zero", "shuffle"):
        ev[ablation] = evaluate(
            world_model, test_cached, mode="score", ablation=ablation, batch_size=args.eval_batch_size, seed=args.seed
        )
    gen = evaluate(world_model, test_cached, mode="generate", batch_size=args.eval_batch_size, max_new_tokens=2)
    base_eval = evaluate(base_trainer.model.eval(), test, mode="score", batch_size=args.eval_batch_size)

    say("[6/6] reloading the checkpoint with AutoModel (theworld blocked) in a subprocess")
    checkpoint = world_summary["final_checkpoint"]
    reference = evaluate(world_model, test, mode="score", batch_size=args.eval_batch_size)  # VAE path, like the reload
    answer_ids = [v[0] for _, v in sorted(VSRCollator(world_model.processor).answer_token_ids().items())]
    reload = _reload_check(checkpoint, data, reference, args, out, answer_ids)

    results = {
        "theworld_accuracy": ev["none"]["accuracy"],
        "baseline_accuracy": base_eval["accuracy"],
        "majority_rate": stats["majority_rate"],
        "ablated_accuracy": ev["zero"]["accuracy"],
        "shuffled_accuracy": ev["shuffle"]["accuracy"],
        "reload_identical": bool(reload["identical"]),
    }
    seconds = time.perf_counter() - t0
    task = (
        f"synthetic spatial relations, relations {list(relations)}, "
        + (f"fixed objects {list(fixed)} (every caption identical; the label depends only on the image)"
           if fixed and len(relations) == 1 else f"objects {list(fixed) if fixed else 'random'}")
        + f", {args.image_size}px images, {args.num_train} train / {args.num_test} test examples"
    )
    details = {
        "task": task,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "baseline_lr": args.baseline_lr if args.baseline_lr is not None else args.lr,
        "projection_mode": args.projection_mode,
        "projection_architecture": args.projection_architecture,
        "world_pooling": args.world_pooling,
        "world_placement": args.world_placement,
        "world_attention": args.world_attention,
        "num_world_tokens": world_model.config.num_world_tokens,
        "preset": args.preset,
        "baseline_preset": args.baseline_preset,
        "checkpoint": checkpoint,
        "test_stats": stats,
        "targets": {
            "theworld_vs_majority": bool(results["theworld_accuracy"] >= results["majority_rate"] + 0.15),
            "zero_drop": bool(results["theworld_accuracy"] - results["ablated_accuracy"] >= 0.10),
            "shuffle_drop": bool(results["theworld_accuracy"] - results["shuffled_accuracy"] >= 0.10),
        },
        "theworld_macro_f1": ev["none"]["macro_f1"],
        "baseline_macro_f1": base_eval["macro_f1"],
        "theworld_generate_accuracy": gen["accuracy"],
        "theworld_generate_unparseable": gen["unparseable"],
        "theworld_confusion_matrix": ev["none"]["confusion_matrix"],
        "baseline_confusion_matrix": base_eval["confusion_matrix"],
        "theworld_train": world_summary,
        "baseline_train": base_summary,
        "reload": reload,
        "seconds_total": seconds,
        "cpu_count": os.cpu_count(),
        "out": out,
    }
    for name, trainer in (("theworld", world_trainer), ("baseline", base_trainer)):
        src = os.path.join(trainer.output_dir, "loss_curve.png")
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(out, f"{name}_loss.png"))
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, "details.json"), "w", encoding="utf-8") as f:
        json.dump(details, f, indent=2, default=str)
    report = _report(out, results, details)

    return {"results": results, "details": details, "report": report, "seconds": seconds}


__all__ = ["RESULT_KEYS", "DemoOptions", "run_demo"]
