"""The training loop: `Trainer` (accelerate; one process or DDP) and `train`."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from typing import Any

import torch

from .config import RESUME_FREE_FIELDS, TrainConfig
from .data_order import DataOrder, StepBatches, dataset_fingerprint, load_dataset
from .loss import accumulate_gradients
from .model import (
    build_model,
    resolve_latent_caching,
    resolve_mixed_precision,
    trainable_named_parameters,
)
from .plots import plot_loss_curve
from .schedule import build_optimizer, build_scheduler
from .state import (
    STATE_DIR,
    STATE_FORMAT_VERSION,
    TRAINER_STATE,
    find_checkpoint,
    jsonable,
    load_safetensors_copy,
    read_optimizer_state,
    read_process_state,
    read_trainer_state,
    write_json,
    write_optimizer_state,
    write_process_state,
)

logger = logging.getLogger(__name__)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Trainer:
    """One training run. ``Trainer(config).train()`` returns a summary dict (also written to
    ``output_dir/train_summary.json``).

    Attributes after `setup`: ``model`` (the unwrapped TheWorld), ``named_trainable`` / ``param_names`` (what the
    optimizer updates), ``train_set`` / ``eval_set`` (`VSRDataset`), ``cache`` (`LatentCache` or ``None``),
    ``max_steps``, ``global_batch``, ``start_step``.
    """

    def __init__(self, config: TrainConfig, accelerator=None) -> None:
        from accelerate import Accelerator

        config.validate()
        self.config = config
        self.mixed_precision = resolve_mixed_precision(config.mixed_precision)
        if accelerator is None:
            # accelerate sets up gloo (MULTI_CPU) for several processes only when asked to run on the CPU.
            distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
            # Mixed precision is applied here with torch.autocast (see accumulate_gradients), not through accelerate,
            # whose process-wide state cannot change precision between runs in one process.
            accelerator = Accelerator(cpu=distributed and not torch.cuda.is_available())
        self.accelerator = accelerator
        self.is_main = self.accelerator.is_main_process
        self.output_dir = os.path.abspath(config.output_dir)
        self.metrics_path = os.path.join(self.output_dir, "metrics.jsonl")

    # ------------------------------------------------------------------ helpers
    def log(self, record: dict[str, Any]) -> None:
        if self.is_main:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _check_output_dir(self) -> None:
        if self.config.resume_from is None and os.path.isdir(self.output_dir) and not self.config.overwrite_output_dir:
            existing = [d for d in os.listdir(self.output_dir) if d.startswith("checkpoint-") or d == "final"]
            if existing:
                raise FileExistsError(
                    f"output_dir {self.output_dir} already holds {sorted(existing)[:3]} from an earlier run. Set "
                    "resume_from: latest to continue it, overwrite_output_dir: true to start over, or pick another "
                    "output_dir."
                )

    def _plot_title(self) -> str:
        kind = "TheWorld" if self.model.config.enable_world else "Gemma only"
        return f"{kind} ({self.config.freeze_preset}): training loss, {os.path.basename(self.output_dir)}"

    def _plot(self) -> None:
        plot_loss_curve(self.metrics_path, os.path.join(self.output_dir, "loss_curve.png"), self._plot_title())

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Build the model, data, latent cache, optimizer and schedule; resume when ``resume_from`` is set."""
        from accelerate.utils import set_seed

        from theworld.data.collator import VSRCollator

        cfg, acc = self.config, self.accelerator
        self._check_output_dir()
        if self.is_main:
            os.makedirs(self.output_dir, exist_ok=True)
            if cfg.resume_from is None and os.path.exists(self.metrics_path):
                os.remove(self.metrics_path)
        acc.wait_for_everyone()
        set_seed(cfg.seed)
        self.model = model = build_model(cfg)
        if cfg.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.to(acc.device)
        self.named_trainable = trainable_named_parameters(model)
        if not self.named_trainable:
            raise ValueError(f"freeze_preset {cfg.freeze_preset!r} leaves nothing to train.")
        self.param_names = [n for n, _ in self.named_trainable]

        self.train_set = load_dataset(cfg, cfg.hub_split, cfg.train_file, cfg.max_train_samples)
        if len(self.train_set) == 0:
            raise ValueError(f"The training data has no usable examples ({self.train_set.summary()['skipped']}).")
        self.eval_set = None
        if cfg.eval_file is not None or cfg.eval_hub_split is not None:
            self.eval_set = load_dataset(cfg, cfg.eval_hub_split, cfg.eval_file, cfg.max_eval_samples)
        self.use_cache = resolve_latent_caching(cfg, model)
        self._setup_latents()

        self.global_batch = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * acc.num_processes
        if cfg.max_steps is not None:
            self.max_steps = cfg.max_steps
        else:
            self.max_steps = max(1, math.ceil(cfg.num_epochs * len(self.train_set) / self.global_batch))
        self.collator = VSRCollator(model.processor, train=True, supervise_end_of_turn=cfg.supervise_end_of_turn)
        self.order = DataOrder(len(self.train_set), cfg.seed)
        optimizer = build_optimizer(self.named_trainable, cfg)
        self.scheduler = build_scheduler(optimizer, cfg, self.max_steps)
        self.ddp_model, self.optimizer = acc.prepare(model, optimizer)
        self.start_step = 0
        if cfg.resume_from is not None:
            self.resume(find_checkpoint(self.output_dir, cfg.resume_from))
        self._is_setup = True

    def _setup_latents(self) -> None:
        """With a frozen world encoder, encode every distinct image once and train (and evaluate) on the latents."""
        from theworld.latent_cache import CachedLatentDataset, LatentCache

        cfg, acc, model = self.config, self.accelerator, self.model
        self.cache = None
        self.cache_train_info: dict[str, int] = {}
        self.train_data, self.eval_data = self.train_set, self.eval_set
        if not self.use_cache:
            return
        self.cache = LatentCache(cfg.latent_cache_dir or os.path.join(self.output_dir, "latent_cache"), model)
        model.eval()
        progress = cfg.progress_bar and self.is_main
        keys = self.cache.prepare(self.train_set, model.processor, cfg.encode_batch_size, acc, progress=progress)
        self.train_data = CachedLatentDataset(self.train_set, self.cache, keys)
        self.cache_train_info = {"train_distinct_images": len(set(keys)), "train_encoded": self.cache.stats["encoded"]}
        if self.eval_set is not None:
            eval_keys = self.cache.prepare(self.eval_set, model.processor, cfg.encode_batch_size, acc)
            self.eval_data = CachedLatentDataset(self.eval_set, self.cache, eval_keys)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int) -> str:
        """Write ``checkpoint-{step}`` (partial model + training state) atomically; return its path."""
        acc = self.accelerator
        final = os.path.join(self.output_dir, f"checkpoint-{step}")
        tmp = os.path.join(self.output_dir, f".checkpoint-{step}.incomplete")
        state_dir = os.path.join(tmp, STATE_DIR)
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save_pretrained(tmp)
            os.makedirs(state_dir, exist_ok=True)
        acc.wait_for_everyone()
        write_process_state(state_dir, acc.process_index)
        if self.is_main:
            state = {
                "format": STATE_FORMAT_VERSION,
                "global_step": step,
                "max_steps": self.max_steps,
                "global_batch_size": self.global_batch,
                "num_processes": acc.num_processes,
                "dataset_fingerprint": dataset_fingerprint(self.train_set),
                "num_examples": len(self.train_set),
                "config": dataclasses.asdict(self.config),
                "optimizer": write_optimizer_state(state_dir, self.optimizer, self.param_names),
                "scheduler": jsonable(self.scheduler.state_dict()),
            }
        acc.wait_for_everyone()
        if self.is_main:
            write_json(os.path.join(state_dir, TRAINER_STATE), state)  # written last: marks completeness
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self._rotate_checkpoints()
        acc.wait_for_everyone()
        return final

    def _rotate_checkpoints(self) -> None:
        limit = self.config.save_total_limit
        if not limit:
            return
        ckpts = sorted(
            (d for d in os.listdir(self.output_dir) if d.startswith("checkpoint-") and d.split("-", 1)[1].isdigit()),
            key=lambda d: int(d.split("-", 1)[1]),
        )
        for d in ckpts[:-limit]:
            shutil.rmtree(os.path.join(self.output_dir, d), ignore_errors=True)

    def resume(self, path: str) -> None:
        """Restore weights, optimizer, scheduler, RNG and step from a ``checkpoint-N`` folder."""
        from theworld.checkpoint_theworld import trainable_state_dict

        acc = self.accelerator
        state_dir = os.path.join(path, STATE_DIR)
        state = read_trainer_state(path)
        saved = state["config"]
        now = dataclasses.asdict(self.config)
        changed = sorted(k for k in now if k not in RESUME_FREE_FIELDS and saved.get(k) != now[k])
        if changed:
            diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
            raise ValueError(
                f"Cannot resume from {path}: these settings differ from the run that wrote it ({diffs}). Resuming "
                "continues the same run; start a new run (init_from) to change them."
            )
        if state["global_batch_size"] != self.global_batch:
            raise ValueError(
                f"Cannot resume from {path}: its global batch was {state['global_batch_size']} examples, now it is "
                f"{self.global_batch} (per_device_batch_size x gradient_accumulation_steps x processes). Keep the "
                "global batch the same."
            )
        if state["dataset_fingerprint"] != dataset_fingerprint(self.train_set):
            raise ValueError(f"Cannot resume from {path}: the training data changed since the checkpoint was written.")
        # weights: the partial checkpoint holds exactly the trainable tensors
        weights = load_safetensors_copy(os.path.join(path, "model.safetensors"))
        expected = trainable_state_dict(self.model)
        if set(weights) != set(expected):
            raise ValueError(
                f"{path}/model.safetensors holds {sorted(set(weights) ^ set(expected))[:10]} that do not match the "
                "trainable parameters; resume with the same freeze_preset."
            )
        targets = {**dict(self.model.named_buffers()), **dict(self.model.named_parameters())}
        with torch.no_grad():
            for name, value in weights.items():
                targets[name].copy_(value.to(targets[name].device, targets[name].dtype))
        self.optimizer.load_state_dict(read_optimizer_state(state_dir, state["optimizer"], self.param_names))
        self.scheduler.load_state_dict(state["scheduler"])
        if not read_process_state(state_dir, acc.process_index):
            logger.warning(
                "No RNG state for process %d in %s (different process count); RNGs are reseeded.", acc.process_index, path
            )
        self.start_step = int(state["global_step"])
        if self.is_main and os.path.isfile(self.metrics_path):  # drop records written after the checkpoint
            with open(self.metrics_path, encoding="utf-8") as f:
                lines = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= self.start_step]
            with open(self.metrics_path, "w", encoding="utf-8") as f:
                f.writelines(lines)
        logger.info("Resumed from %s at step %d", path, self.start_step)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int) -> dict[str, Any] | None:
        """Score the validation set (main process) and log an ``eval`` record."""
        if self.eval_set is None:
            return None
        from theworld.evaluation import evaluate

        result = None
        if self.is_main:
            self.model.eval()
            result = evaluate(self.model, self.eval_data, mode="score", batch_size=self.config.per_device_batch_size * 2)
            self.model.train()
            self.log({"type": "eval", "step": step, **{k: result[k] for k in ("accuracy", "macro_f1", "n")}})
        self.accelerator.wait_for_everyone()
        return result

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        """Run from ``start_step`` to ``max_steps``; save, evaluate and summarise."""
        from tqdm.auto import tqdm

        from theworld.checkpoint_theworld import parameter_counts

        if not getattr(self, "_is_setup", False):
            self.setup()
        cfg, acc, model = self.config, self.accelerator, self.ddp_model
        accum = cfg.gradient_accumulation_steps
        batches = StepBatches(
            self.train_data, self.collator, self.order, cfg.per_device_batch_size, accum, acc.process_index,
            acc.num_processes,
        )
        sampler = range(self.start_step * accum, self.max_steps * accum)
        # CODEPATH: the loader draws its worker seed from its own generator, never from the global RNG that a resume
        # restored (a draw there would shift every dropout mask after the checkpoint).
        loader = torch.utils.data.DataLoader(
            batches, batch_size=None, sampler=sampler, num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0, generator=torch.Generator().manual_seed(cfg.seed),
        )
        iterator = iter(loader)
        params = [p for _, p in self.named_trainable]
        bar = tqdm(
            total=self.max_steps, initial=self.start_step, desc="training", disable=not (cfg.progress_bar and self.is_main),
            dynamic_ncols=True,
        )
        self.model.train()
        t_start = time.perf_counter()
        window: list[tuple[float, float, int]] = []  # (loss, seconds, samples)
        step_times: list[float] = []
        last_loss = float("nan")
        last_eval = None
        autocast = torch.bfloat16 if self.mixed_precision == "bf16" else None
        for step in range(self.start_step, self.max_steps):
            t0 = time.perf_counter()
            micro = [_to_device(next(iterator), acc.device) for _ in range(accum)]
            local_tokens = sum(int((b["labels"] != -100).sum()) for b in micro)
            tokens = int(acc.reduce(torch.tensor([local_tokens], device=acc.device), "sum").item())
            if tokens == 0:
                raise RuntimeError(f"Step {step}: the global batch has no supervised tokens.")
            loss_local = accumulate_gradients(model, micro, acc, tokens, autocast)
            if cfg.max_grad_norm_enabled:
                grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
            else:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            loss = float(acc.reduce(torch.tensor([loss_local], device=acc.device), "sum").item()) / tokens
            dt = time.perf_counter() - t0
            step_times.append(dt)
            window.append((loss, dt, self.global_batch))
            last_loss = loss
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if done % cfg.logging_steps == 0 or done == self.max_steps:
                seconds = sum(w[1] for w in window)
                self.log(
                    {
                        "type": "train",
                        "step": done,
                        "epoch": done * self.global_batch / len(self.train_set),
                        "loss": sum(w[0] for w in window) / len(window),
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "supervised_tokens": tokens,
                        "samples_per_s": sum(w[2] for w in window) / max(seconds, 1e-9),
                        "step_time_s": seconds / len(window),
                        "elapsed_s": time.perf_counter() - t_start,
                    }
                )
                window = []
            if cfg.eval_steps and done % cfg.eval_steps == 0 and done != self.max_steps:
                last_eval = self.evaluate(done)
            if cfg.save_steps and (done % cfg.save_steps == 0 or done == self.max_steps):
                self.save_checkpoint(done)
                if self.is_main:
                    self._plot()
        bar.close()
        if self.eval_set is not None:
            last_eval = self.evaluate(self.max_steps)
        final_dir = os.path.join(self.output_dir, "final")
        if self.is_main:
            self.model.save_pretrained(final_dir, save_full_model=cfg.save_full_model)
            self._plot()
        acc.wait_for_everyone()
        steady = step_times[2:] if len(step_times) > 4 else step_times
        summary = {
            "output_dir": self.output_dir,
            "final_checkpoint": final_dir,
            "global_step": self.max_steps,
            "start_step": self.start_step,
            "num_processes": acc.num_processes,
            "global_batch_size": self.global_batch,
            "mixed_precision": self.mixed_precision,
            "train_examples": len(self.train_set),
            "train_skipped": self.train_set.num_skipped,
            "final_loss": last_loss,
            "cached_world_latents": self.use_cache,
            "latent_cache": {**self.cache.stats, **self.cache_train_info} if self.cache is not None else None,
            "trainable_parameters": parameter_counts(self.model)[0],
            "lora": cfg.lora_settings(),
            "step_time_s": (sum(steady) / len(steady)) if steady else None,
            "samples_per_s": (self.global_batch * len(steady) / sum(steady)) if steady and sum(steady) > 0 else None,
            "train_seconds": time.perf_counter() - t_start,
            "eval": {k: last_eval[k] for k in ("accuracy", "macro_f1", "n")} if last_eval else None,
        }
        if self.is_main:
            write_json(os.path.join(self.output_dir, "train_summary.json"), summary)
            if cfg.push_to_hub:
                from theworld.hub import push_folder

                push_folder(final_dir, cfg.hub_model_id, private=cfg.hub_private)
                summary["pushed_to"] = cfg.hub_model_id
        acc.wait_for_everyone()
        return summary


def train(config: TrainConfig) -> dict[str, Any]:
    """Run one training job; return its summary (also written to ``output_dir/train_summary.json``)."""
    return Trainer(config).train()


__all__ = ["Trainer", "train"]
