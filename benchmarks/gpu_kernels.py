"""Every Triton kernel natively against its float64 torch reference, at the shapes training uses.

Part of ``benchmarks/gpu_check.sh``; also runs alone: ``python benchmarks/gpu_kernels.py OUT.json``.
Each check is independent (one failing never stops the others) and records its error against the
float64 reference, the tolerance it is held to and the kernel's median time:

- front end: ``logmel(backend="triton")`` on 32 clips of 10 s at 16 kHz (Kaldi 128-mel preset);
- masking: Triton mask sampling for 256 rows of 512 tokens (random and time-span kinds): exactly
  ``K`` kept per row, ascending unique ids, ``ids_restore`` inverting the drop;
- drop + embed: the fused patch embedding of the kept tokens (ViT-B: 32 x 1024 x 128 mel,
  16 x 16 patches, 768 wide, 75 % dropped), forward and gradients;
- restore: the decoder's scatter of kept tokens and mask tokens (32 x 512 tokens, 512 wide).

``--small`` shrinks every shape so that the script runs on CPU under ``TRITON_INTERPRET=1`` (a
smoke test of the script itself; seconds per launch there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch


def _time(fn, device: str, repeats: int = 5) -> float:
    """Median seconds of ``fn()``, synchronising CUDA inside the timed call."""
    fn()  # warm-up: compiles the kernel
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def check_frontend(device: str, small: bool) -> dict:
    from fastspec.frontend import get_preset, logmel, logmel_reference

    batch, seconds = (2, 0.5) if small else (32, 10.0)
    cfg = get_preset("kaldi", sample_rate=16000)
    g = torch.Generator().manual_seed(0)
    wave = (0.1 * torch.randn(batch, int(seconds * 16000), generator=g)).to(device)
    out = logmel(wave, preset=cfg, backend="triton")
    ref = logmel_reference(wave.cpu().double(), None, cfg)
    err = (out.cpu().double() - ref).abs().max().item()
    seconds_per_call = _time(lambda: logmel(wave, preset=cfg, backend="triton"), device)
    return {
        "shape": f"{batch}x{seconds:g}s",
        "max_abs_err_log": err,
        "tolerance": 1e-3,  # DESIGN.md §6: log units against the float64 reference
        "ok": err <= 1e-3,
        "ms": 1e3 * seconds_per_call,
        "hours_audio_per_s": batch * seconds / 3600 / seconds_per_call,
    }


def check_masking(device: str, small: bool) -> dict:
    os.environ["FASTSPEC_MASKING"] = "triton"
    from fastspec.masking import masking_backend, sample_mask

    rows, grid = (4, (8, 8)) if small else (256, (64, 8))  # 512 tokens: 1024 x 128 mel, 16 x 16
    result = {"shape": f"{rows}x{grid[0] * grid[1]}", "backend": masking_backend(device)}
    ok = result["backend"] == "triton"
    for kind, options in (("random", {}), ("time_span", {"span_length": 5, "min_spans": 1})):
        mask = sample_mask(kind, rows, grid, 0.75, seed=1, device=device, **options)
        keep, restore, hidden = (t.cpu() for t in (mask.ids_keep, mask.ids_restore, mask.mask))
        # independent checks: ascending unique kept ids, a true inverse, a consistent mask
        ascending = bool((keep[:, 1:] > keep[:, :-1]).all())
        inverse = bool((torch.gather(restore, 1, keep) == torch.arange(keep.shape[1])).all())
        counted = bool(((~hidden).sum(1) == keep.shape[1]).all())
        result[kind] = {
            "kept": keep.shape[1],
            "ascending_unique": ascending,
            "restore_inverts_keep": inverse,
            "mask_matches_keep": counted,
            "ms": 1e3
            * _time(
                lambda k=kind, o=options: sample_mask(
                    k, rows, grid, 0.75, seed=1, device=device, **o
                ),
                device,
            ),
        }
        ok = ok and ascending and inverse and counted
    result["ok"] = ok
    return result


def check_embed(device: str, small: bool) -> dict:
    from fastspec.kernels.masking_reference import embed_kept_patches_ref
    from fastspec.kernels.patch_embed import embed_kept_patches

    from fastspec.masking import sample_mask

    b, t, f, d = (2, 32, 32, 16) if small else (32, 1024, 128, 768)
    patch = (16, 16)
    grid = (t // 16, f // 16)
    g = torch.Generator().manual_seed(0)
    mel64 = torch.randn(b, t, f, generator=g, dtype=torch.float64, requires_grad=True)
    w64 = (torch.randn(d, 256, generator=g, dtype=torch.float64) / 16).requires_grad_()
    b64 = torch.randn(d, generator=g, dtype=torch.float64, requires_grad=True)
    pos64 = torch.randn(grid[0] * grid[1], d, generator=g, dtype=torch.float64)
    ids = sample_mask("random", b, grid, 0.75, seed=0).ids_keep
    ref = embed_kept_patches_ref(mel64, ids, w64, b64, pos64, patch)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref.backward(grad)
    leaves = [x.detach().float().to(device).requires_grad_() for x in (mel64, w64, b64)]
    ids_d, pos_d = ids.to(device), pos64.float().to(device)
    out = embed_kept_patches(leaves[0], ids_d, leaves[1], leaves[2], pos_d, patch)
    out.backward(grad.float().to(device))
    errors = {"out": (out.detach().cpu().double() - ref).abs().max().item()}
    for name, leaf, ref_leaf in zip(("d_mel", "d_weight", "d_bias"), leaves, (mel64, w64, b64)):
        errors[name] = (leaf.grad.cpu().double() - ref_leaf.grad).abs().max().item()
    scale = max(ref.abs().max().item(), 1.0)
    tolerance = 1e-4 * scale * (256**0.5)  # fp32 dot products of 256 terms
    return {
        "shape": f"B{b}-{t}x{f}-D{d}-keep{ids.shape[1]}",
        "max_abs_err": errors,
        "tolerance": tolerance,
        "ok": all(e <= tolerance * (16 if k != "out" else 1) for k, e in errors.items()),
        "ms_forward": 1e3
        * _time(
            lambda: embed_kept_patches(
                leaves[0].detach(), ids_d, leaves[1].detach(), leaves[2].detach(), pos_d, patch
            ),
            device,
        ),
    }


def check_restore(device: str, small: bool) -> dict:
    from fastspec.kernels.masking_reference import restore_tokens_ref
    from fastspec.kernels.masking_restore import restore_tokens

    from fastspec.masking import sample_mask

    b, grid, d = (2, (4, 4), 16) if small else (32, (64, 8), 512)
    m = sample_mask("random", b, grid, 0.75, seed=2)
    g = torch.Generator().manual_seed(3)
    x64 = torch.randn(b, m.n_keep, d, generator=g, dtype=torch.float64)
    tok64 = torch.randn(d, generator=g, dtype=torch.float64)
    pos64 = torch.randn(grid[0] * grid[1], d, generator=g, dtype=torch.float64)
    ref = restore_tokens_ref(x64, m.ids_restore, tok64, pos64)
    args = (
        x64.float().to(device),
        m.ids_restore.to(device),
        tok64.float().to(device),
        pos64.float().to(device),
    )
    out = restore_tokens(*args)
    err = (out.cpu().double() - ref).abs().max().item()
    tolerance = 4 * torch.finfo(torch.float32).eps * ref.abs().max().item()
    return {
        "shape": f"B{b}-N{grid[0] * grid[1]}-K{m.n_keep}-D{d}",
        "max_abs_err": err,
        "tolerance": tolerance,
        "ok": err <= tolerance,
        "ms": 1e3 * _time(lambda: restore_tokens(*args), device),
    }


CHECKS = {
    "frontend": check_frontend,
    "masking": check_masking,
    "drop_embed": check_embed,
    "restore": check_restore,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSON file for the results")
    parser.add_argument("--small", action="store_true", help="tiny shapes (CPU interpreter)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu"}
    for name, check in CHECKS.items():
        try:
            results[name] = check(device, args.small)
        except Exception as exc:  # one kernel failing must not hide the others' results
            results[name] = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=4),
            }
        print(
            f"{name:<11} {'ok' if results[name]['ok'] else 'FAIL'}  "
            f"{json.dumps({k: v for k, v in results[name].items() if k != 'traceback'})}",
            flush=True,
        )
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    return 0 if all(r["ok"] for k, r in results.items() if isinstance(r, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
