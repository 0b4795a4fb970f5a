"""How well the student follows full prompts, against the teacher and against the teacher's own
UNet taking the student's two jumps undistilled (guidance 3): what the distillation bought.

    python -m recipes.elrond.student_report --n 64 --seed 7
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from torch import Tensor

from .student import STUDENT_TIMESTEPS, alphas_cumprod, ddim_jump, load_student, previous_alpha, student_sample

__all__ = ["two_jump_teacher", "prompt_following", "main"]


def two_jump_teacher(pipe: Any, cond: Tensor, uncond: Tensor, noise: Tensor, guidance: float = 3.0) -> Tensor:
    """The teacher's UNet with guidance on the student's schedule (901 -> 401 -> 0), not distilled."""
    alphas, x = alphas_cumprod(), noise
    with torch.no_grad():
        for t in STUDENT_TIMESTEPS:
            eps_u, eps_c = pipe.unet(
                torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])
            ).sample.chunk(2)
            _, x = ddim_jump(x, eps_u + guidance * (eps_c - eps_u), alphas[t], previous_alpha(t, alphas))
    return x


def prompt_following(pipe: Any, student: Any, evaluators: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    """Evaluator accuracy per factor and for all three, on ``n`` random full (paraphrased) prompts,
    of the teacher (DDIM 10, guidance 3), the undistilled 2-jump teacher and the student, same noise."""
    from recipes.worlds import shapes as world
    from recipes.worlds.shapes_eval import score

    from .gradients import Setting, sample

    batch = world.sample(n, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(batch.prompts, "cpu", 1, True, negative_prompt=[""] * n)
    noise = torch.randn((n, 3, world.SIZE, world.SIZE), generator=torch.Generator().manual_seed(seed))
    images = {
        "teacher_10_steps": sample(pipe, cond, uncond, Setting(), seed),
        "teacher_2_jumps_undistilled": two_jump_teacher(pipe, cond, uncond, noise),
        "student_2_jumps": student_sample(student, cond, noise),
    }
    return {
        k: {f: round(v, 4) for f, v in score(evaluators, x.clamp(-1, 1), batch.labels()).items()}
        for k, x in images.items()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipes.elrond.student_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--student", default=None, help="student folder (default: shipped)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from recipes.worlds.shapes_model import load_evaluators, load_pipeline

    print(
        json.dumps(prompt_following(load_pipeline(), load_student(args.student), load_evaluators(), args.n, args.seed))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
