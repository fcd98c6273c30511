"""Evaluation: answer parsing, metrics, score/generate modes, world ablations, the eval CLI."""

from __future__ import annotations

import json

import pytest
import torch

from theworld.data.collator import VSRCollator
from theworld.evaluation import compute_metrics, derangement, evaluate, parse_answer


@pytest.fixture(scope="module")
def test_set(tmp_path_factory):
    from theworld.data import generate_synthetic_vsr, load_vsr_jsonl

    out = tmp_path_factory.mktemp("evaldata")
    paths = generate_synthetic_vsr(out, num_train=0, num_val=0, num_test=6, relations=("left of", "below"), seed=3)
    return paths["test"], load_vsr_jsonl(paths["test"])


def test_parse_answer():
    assert [parse_answer(t) for t in ("1", " 0", "\n1.", "1 because", "0<eos>")] == [1, 0, 1, 1, 0]
    assert [parse_answer(t) for t in ("", "10", "yes", "01", "a 1", "\ufffd")] == [None] * 6


def test_derangement_has_no_fixed_point_and_is_seeded():
    for n in (2, 3, 17):
        perm = derangement(n, seed=5)
        assert sorted(perm) == list(range(n)) and all(perm[i] != i for i in range(n))
    assert derangement(17, 1) == derangement(17, 1) != derangement(17, 2)
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1)


def test_metrics_count_unparseable_as_wrong():
    labels = [1, 1, 1, 0, 0, 0]
    preds = [1, 1, None, 0, 1, 0]
    rel = ["a", "a", "a", "b", "b", "b"]
    m = compute_metrics(labels, preds, rel)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["accuracy_parsed"] == pytest.approx(4 / 5)
    assert m["unparseable"] == 1
    assert m["confusion_matrix"]["matrix"] == [[2, 1, 0], [0, 2, 1]]
    # class 1: tp 2, fp 1, fn 1 -> 4/6; class 0: tp 2, fp 0, fn 1 -> 4/5
    assert m["macro_f1"] == pytest.approx((4 / 6 + 4 / 5) / 2)
    assert m["per_relation"]["a"] == {"n": 3, "correct": 2, "unparseable": 1, "accuracy": pytest.approx(2 / 3)}
    assert m["per_relation"]["b"]["accuracy"] == pytest.approx(2 / 3)
    assert m["majority_rate"] == 0.5


def answer_logits(model, items, **world):
    """Logits of "0" and "1" at the answer position, one example at a time (no padding)."""
    collate = VSRCollator(model.processor, train=False)
    ids = collate.answer_token_ids()
    out = []
    for i, item in enumerate(items):
        batch = collate([item])
        extra = {k: v[i : i + 1] for k, v in world.items()}
        if extra:
            batch.pop("world_pixel_values")
        with torch.no_grad():
            logits = model(**batch, **extra).logits[0, -1]
        out.append(torch.stack([logits[ids[0][0]], logits[ids[1][0]]]))
    return torch.stack(out)


def test_score_mode_compares_the_answer_logits(world_model, test_set):
    _, ds = test_set
    items = [ds[i] for i in range(len(ds))]
    result = evaluate(world_model, ds, mode="score", batch_size=4)  # batches of 4 and 2, left padded
    pair = answer_logits(world_model, items)
    assert [r["prediction"] for r in result["predictions"]] == (pair[:, 1] > pair[:, 0]).long().tolist()
    torch.testing.assert_close(
        torch.tensor([r["p1"] for r in result["predictions"]]), torch.softmax(pair, -1)[:, 1], rtol=1e-4, atol=1e-5
    )
    assert result["n"] == 6 and result["unparseable"] == 0
    assert set(result["per_relation"]) == {"left of", "below"}


def test_ablations_replace_the_world_features(world_model, test_set):
    _, ds = test_set
    items = [ds[i] for i in range(len(ds))]
    proc = world_model.processor
    with torch.no_grad():
        latents = world_model.encode_world(proc.world_pixel_values([it["image"] for it in items]))
    zero = evaluate(world_model, ds, ablation="zero", batch_size=4)
    d = world_model.config.text_config.hidden_size
    expected = answer_logits(world_model, items, world_embeds_override=torch.zeros(6, world_model.config.num_world_tokens, d))
    torch.testing.assert_close(torch.tensor([r["p1"] for r in zero["predictions"]]), torch.softmax(expected, -1)[:, 1],
                               rtol=1e-4, atol=1e-5)
    shuffled = evaluate(world_model, ds, ablation="shuffle", batch_size=4, seed=7)
    donors = [r["world_from"] for r in shuffled["predictions"]]
    assert donors == derangement(6, 7)
    expected = answer_logits(world_model, items, world_latents=latents[donors])
    torch.testing.assert_close(torch.tensor([r["p1"] for r in shuffled["predictions"]]), torch.softmax(expected, -1)[:, 1],
                               rtol=1e-4, atol=1e-5)
    plain = evaluate(world_model, ds, batch_size=4)
    assert [r["p1"] for r in plain["predictions"]] != [r["p1"] for r in shuffled["predictions"]]


def test_generate_mode_parses_generated_text(world_model, test_set):
    _, ds = test_set
    result = evaluate(world_model, ds, mode="generate", batch_size=3, max_new_tokens=2)
    preds = result["predictions"]
    assert all(r["prediction"] == parse_answer(r["generated"]) for r in preds)
    assert result["unparseable"] == sum(r["prediction"] is None for r in preds)
    assert result["accuracy"] == pytest.approx(sum(r["correct"] for r in preds) / 6)
    # the batched generation is the greedy continuation of each prompt with its world tokens
    collate = VSRCollator(world_model.processor, train=False)
    single = world_model.generate(**collate([ds[0]]), max_new_tokens=2, do_sample=False)
    text = world_model.processor.tokenizer.decode(single[0, -2:], skip_special_tokens=True)
    assert preds[0]["generated"] == text


def test_evaluation_errors(world_model, world_model_factory, test_set):
    _, ds = test_set
    with pytest.raises(ValueError, match="mode must be one of"):
        evaluate(world_model, ds, mode="vote")
    with pytest.raises(ValueError, match="ablation must be one of"):
        evaluate(world_model, ds, ablation="noise")
    gemma = world_model_factory(enable_world=False)
    with pytest.raises(ValueError, match="enable_world=False"):
        evaluate(gemma, ds, ablation="zero")
    assert evaluate(gemma, ds)["n"] == 6


def test_eval_cli_writes_metrics_and_predictions(world_model, test_set, tmp_path, capsys):
    from theworld.cli import main

    data, ds = test_set
    ckpt = tmp_path / "ckpt"
    world_model.save_pretrained(str(ckpt))
    out = tmp_path / "eval"
    rc = main(["eval", "--checkpoint", str(ckpt), "--data", data, "--ablation", "shuffle", "--batch-size", "4", "--seed",
               "7", "--out", str(out), "--latent-cache", str(tmp_path / "cache")])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "mode=score ablation=shuffle n=6" in printed and "confusion" in printed
    assert f"wrote {out / 'predictions.jsonl'} and {out / 'metrics.json'}" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "confusion_matrix", "per_relation", "unparseable", "n", "mode", "ablation"):
        assert key in metrics
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    expected = evaluate(world_model, ds, ablation="shuffle", batch_size=4, seed=7)
    assert [p["prediction"] for p in preds] == [p["prediction"] for p in expected["predictions"]]
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 6
