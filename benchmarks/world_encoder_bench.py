"""Per-image encode time of TheWorld's 2-D world encoder against diffusers' ``AutoencoderKLWan.encode``, side by side.

    python benchmarks/world_encoder_bench.py [--size 256] [--batch 1] [--repeats 10] [--threads N]

Both encoders have the real Cosmos-Predict2 geometry (the Wan 2.1 VAE, ``base_dim=96``; read from
``--vae-config``) and the same seeded random weights: diffusers' ``encoder.*``/``quant_conv.*`` tensors are copied into
`TheWorldWanEncoder` by key prefix, dropping the unused ``time_conv`` tensors. Reported:

* median seconds per call of ``vae.encode(x[:, :, None]).latent_dist.mode()`` and of ``TheWorldWanEncoder(x)``, the
  calls interleaved (order flipped every repeat) after a warm-up, under ``torch.inference_mode``;
* the ratio ours / diffusers, target ``<= 0.5``;
* the largest absolute difference between the two latents.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import echo as _echo  # noqa: E402
from _timing import interleaved  # noqa: E402

from theworld.real_configs import load_real_config  # noqa: E402

COSMOS = "nvidia/Cosmos-Predict2-2B-Video2World"
TARGET_RATIO = 0.5




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and the image")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights and compute dtype")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument(
        "--vae-config",
        default=None,
        help=f"diffusers AutoencoderKLWan config.json (default: the published {COSMOS} vae/config.json shipped in "
        "theworld.real_configs)",
    )
    args = parser.parse_args(argv)

    from diffusers import AutoencoderKLWan

    from theworld.configuration_theworld import TheWorldEncoderConfig
    from theworld.world_encoder_theworld import TheWorldWanEncoder, is_unused_diffusers_key

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.vae_config is None:
        raw = load_real_config(COSMOS, "config.json", subfolder="vae")
    else:
        with open(args.vae_config) as f:
            raw = json.load(f)
    vae_config = {k: v for k, v in raw.items() if not k.startswith("_")}

    torch.manual_seed(args.seed)
    vae = AutoencoderKLWan(**vae_config).eval()
    # diffusers initialises every RMS-norm gamma to one; perturb them so the norms are exercised too
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.endswith(".gamma"):
                param.add_(0.1 * torch.randn_like(param))
    if device.type != "cpu" or dtype != torch.float32:
        vae.to(device=device, dtype=dtype)

    ours = TheWorldWanEncoder(TheWorldEncoderConfig.from_vae_config(vae.config)).eval()
    state = {
        k: v
        for k, v in vae.state_dict().items()
        if k.startswith(("encoder.", "quant_conv.")) and not is_unused_diffusers_key(k)
    }
    ours.load_state_dict(state, strict=True)
    ours.to(device=device, dtype=dtype)

    x = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed)) * 2 - 1
    x = x.to(device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run_diffusers() -> torch.Tensor:
        out = vae.encode(x[:, :, None]).latent_dist.mode()[:, :, 0]
        sync()
        return out

    def run_ours() -> torch.Tensor:
        out = ours(x)
        sync()
        return out

    with torch.inference_mode():
        max_diff = (run_ours().float() - run_diffusers().float()).abs().max().item()
        times = interleaved({"diffusers": run_diffusers, "ours": run_ours}, args.repeats, args.warmup)

    n_ours = sum(p.numel() for p in ours.parameters())
    _echo(
        f"world encoder: {args.batch} x 3 x {args.size} x {args.size} {args.dtype} on {device}, "
        f"threads={torch.get_num_threads()}, repeats={args.repeats} (median), encoder params={n_ours:,}"
    )
    _echo(f"{'variant':<44} {'per call':>12} {'per image':>12}")
    for label, key in (("diffusers AutoencoderKLWan.encode(...).mode()", "diffusers"), ("TheWorldWanEncoder", "ours")):
        _echo(f"{label:<44} {times[key] * 1e3:9.2f} ms {times[key] * 1e3 / args.batch:9.2f} ms")
    ratio = times["ours"] / times["diffusers"]
    verdict = "ok" if ratio <= TARGET_RATIO else "MISS"
    _echo(f"{'ratio ours / diffusers':<44} {ratio:12.3f}   <= {TARGET_RATIO:.2f}  {verdict}")
    _echo(f"{'max |ours - diffusers| (latents)':<44} {max_diff:12.3g}")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
