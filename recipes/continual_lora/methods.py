"""The four continual methods of the paper, each a rule for what to train from and what to keep.

After task ``t`` every method holds one adapter (``state``) that is saved in diffusers' format and
*is* the model that gets scored (loaded onto the untouched base with ``pipe.load_lora_weights``):

- ``naive``: one rank-r adapter keeps training from task to task.
- ``merge_and_init``: after each task its adapter is fused into the weights and a fresh one is
  trained; the state is all task adapters side by side (rank ``r * t``, exactly the fused sum).
- ``ortho_init``: the previous state is fused, the new adapter's ``A`` starts orthogonal to it
  column by column (:func:`~.adapters.orthogonal_columns`, ``B = 0``); the state is the factor
  sum ``(A_prev + A_new, B_prev + B_new)`` as the authors save it.
- ``ortho_init_product``: the same init (against the previous tasks' summed ``A``), kept as the
  exact product sum ``sum_i B_i @ A_i`` (adapters side by side, rank ``r * t``), the
  alternative the paper also names.
- ``magmax``: trained on top of the merged model, then the task vectors ``B @ A`` are merged by
  elementwise max magnitude (:func:`~.adapters.max_abs`); the state is that dense merge as an
  exact full-rank LoRA (:func:`~.adapters.to_factors`).

With DreamBooth prior preservation (``Training.prior_weight > 0``) every method trains each task
with the same class images: ``training.class_images`` samples of the task's class prompt (or of the
empty prompt, ``Training.prior_prompt == "null"``) drawn by the frozen base pipeline
(:func:`class_images`) once per task and seed.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import adapters as lora
from .metrics import final_average, forgetting
from .tasks import Task, accuracy, instance_images
from .train import PRIOR_PROMPTS, Training, encode, train_task

__all__ = ["METHODS", "Evaluation", "Sequence", "class_images", "evaluate_adapter", "prior_prompt", "run_sequence"]

METHODS = ("naive", "merge_and_init", "ortho_init", "ortho_init_product", "magmax")


@dataclass(frozen=True)
class Evaluation:
    """Samples per task, DDIM steps, guidance and the noise seed shared by every scored model."""

    samples: int = 16
    steps: int = 10
    guidance: float = 3.0
    seed: int = 1234


@dataclass
class Sequence:
    """One method on one seed: ``scores[t][t']`` (task t after task t'), base scores, adapters."""

    method: str
    seed: int
    scores: list[list[float]]
    base: list[float]
    adapters: list[str] = field(default_factory=list)
    losses: list[list[float]] = field(default_factory=list)

    @property
    def final_average(self) -> float:
        return final_average(torch.tensor(self.scores))

    @property
    def forgetting(self) -> float:
        return forgetting(torch.tensor(self.scores))


def sample(pipe, prompts: list[str], ev: Evaluation) -> torch.Tensor:
    """Images in [-1, 1] for ``prompts`` from the evaluation noise (``ev.seed``)."""
    with torch.no_grad():
        out = pipe(
            prompts,
            num_inference_steps=ev.steps,
            guidance_scale=ev.guidance,
            output_type="pt",
            generator=torch.Generator().manual_seed(ev.seed),
        ).images
    return out * 2 - 1


def prior_prompt(task: Task, which: str = "class") -> str:
    """The prompt whose base-model images the prior keeps: the task's class prompt (``"class"``,
    DreamBooth's) or the empty prompt (``"null"``: what every prompt shares, so the prior holds
    back the part of each update that reaches every prompt alike)."""
    if which not in PRIOR_PROMPTS:
        raise ValueError(f"unknown prior prompt {which!r}; use one of {PRIOR_PROMPTS}")
    return task.class_prompt if which == "class" else ""


def class_images(pipe, task: Task, n: int, ev: Evaluation, seed: int, which: str = "class") -> torch.Tensor:
    """DreamBooth's class images: ``n`` samples of :func:`prior_prompt` (``task.class_prompt`` by
    default) from ``pipe`` (the frozen base model), with the evaluation sampler and the noise of ``seed``."""
    prompt = prior_prompt(task, which)
    return sample(pipe, [prompt] * n, Evaluation(samples=n, steps=ev.steps, guidance=ev.guidance, seed=seed))


def _scores(pipe, evaluators, tasks: tuple[Task, ...], ev: Evaluation) -> list[float]:
    prompts = [t.prompt for t in tasks for _ in range(ev.samples)]
    images = sample(pipe, prompts, ev)
    return [accuracy(evaluators, images[i * ev.samples : (i + 1) * ev.samples], t) for i, t in enumerate(tasks)]


def evaluate_adapter(pipe, folder, evaluators, tasks: tuple[Task, ...], ev: Evaluation) -> list[float]:
    """Every task's score with the adapter saved in ``folder`` loaded by ``pipe.load_lora_weights``
    (then unloaded again, leaving ``pipe`` as it was)."""
    pipe.load_lora_weights(os.fspath(folder), adapter_name="scored")
    try:
        return _scores(pipe, evaluators, tasks, ev)
    finally:
        pipe.unload_lora_weights()


def _init(method: str, state: lora.Factors | None, rank: int) -> lora.Factors | None:
    if state is None or method in ("merge_and_init", "magmax"):
        return None  # peft's gaussian A, zero B
    if method == "naive":
        return state
    # ortho_init: A's columns orthogonal to those of the previous tasks' summed A (rank-r blocks)
    return {
        name: (lora.orthogonal_columns(A.view(-1, rank, A.shape[1]).sum(0)), torch.zeros(B.shape[0], rank))
        for name, (A, B) in state.items()
    }


def run_sequence(
    method: str,
    pipe,
    evaluators,
    tasks: tuple[Task, ...],
    training: Training | None = None,
    ev: Evaluation | None = None,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Sequence:
    """Teach ``tasks`` in order with ``method``; after each, save the state adapter under
    ``out/<method>/seed<seed>/task<t>`` and score every task with it loaded onto ``pipe``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    if not tasks:
        raise ValueError("run_sequence needs at least one task")
    training, ev = training or Training(), ev or Evaluation()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out if out is not None else tmp) / method / f"seed{seed}"
        result = Sequence(method, seed, [[0.0] * len(tasks) for _ in tasks], _scores(pipe, evaluators, tasks, ev))
        state: lora.Factors | None = None  # the adapter that is saved and scored
        fused: dict[str, torch.Tensor] | None = None  # what the next task trains on top of
        vector: dict[str, torch.Tensor] | None = None  # MagMax's merged task vector
        for t, task in enumerate(tqdm(tasks, desc=f"{method} seed {seed}", disable=not progress)):
            unet = copy.deepcopy(pipe.unet)
            if fused is not None:
                lora.fuse(unet, fused)
            params = lora.attach(
                unet, training.rank, _init(method, state, training.rank), seed=seed * 1000 + t, targets=training.targets
            )
            images = instance_images(task, training.instances, seed=seed * 1000 + t)
            prior = None
            if training.prior_weight > 0:  # before any adapter is loaded: pipe is the frozen base
                prior = (
                    encode(pipe, prior_prompt(task, training.prior_prompt)),
                    class_images(
                        pipe, task, training.class_images, ev, 10_000 + seed * 1000 + t, training.prior_prompt
                    ),
                )
            result.losses.append(
                train_task(
                    unet,
                    params,
                    encode(pipe, task.prompt),
                    images,
                    pipe.scheduler,
                    training,
                    seed * 1000 + t,
                    f"{method} {task.identifier}",
                    progress,
                    prior,
                )
            )
            new = lora.read_factors(unet)
            del unet
            if method == "naive":
                state = new
            elif method in ("merge_and_init", "ortho_init_product"):
                state = new if state is None else lora.concat([state, new])
                fused = lora.updates(state)
            elif method == "ortho_init":
                state = new if state is None else lora.factor_sum(state, new)
                fused = lora.updates(state)
            else:
                last = lora.updates(new)
                vector = last if vector is None else lora.max_abs(vector, last)
                state, fused = lora.to_factors(vector), vector
            folder = lora.save_adapter(state, root / f"task{t}")
            result.adapters.append(str(folder))
            for i, s in enumerate(evaluate_adapter(pipe, folder, evaluators, tasks, ev)):
                result.scores[i][t] = s
            if progress:
                column = " ".join(f"{row[t]:.2f}" for row in result.scores)
                tqdm.write(f"{method} seed {seed} after {task.identifier}: {column} (loss {result.losses[-1][-1]:.4f})")
        if out is None:
            result.adapters = []
    return result
