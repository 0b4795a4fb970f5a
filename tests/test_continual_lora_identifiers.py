"""Continual LoRA identifiers: the encoder-only rule that picks words the frozen text encoder keeps
apart (pinned on the shipped checkpoint), the two identifier sets and their checks."""

from __future__ import annotations

import pytest
import torch

from recipes.continual_lora import identifiers as ids
from recipes.continual_lora.tasks import IDENTIFIER_SETS, SUBJECTS, make_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    """A pipeline of its own: the other continual-LoRA tests load and unload adapters on theirs."""
    from recipes.worlds.shapes_model import load_pipeline

    return load_pipeline()


def test_cosines_are_centred():
    # two vectors that share a large common direction: raw cosine ~1, centred they are opposite
    v = torch.tensor([[10.0, 1.0, 0.0], [10.0, -1.0, 0.0], [10.0, 0.0, 0.0]])
    torch.testing.assert_close(torch.nn.functional.cosine_similarity(v[0], v[1], dim=0), torch.tensor(99 / 101))
    C = ids.cosines(v[:2])
    torch.testing.assert_close(C, torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
    with pytest.raises(ValueError, match="at least two row vectors"):
        ids.cosines(torch.ones(1, 3))


def test_candidates_leave_out_structure_and_shape_words():
    assert set(ids.class_words()) == {"circle", "disk", "square", "box", "triangle", "pyramid", "cross", "plus"}
    candidates = ids.candidate_words()
    assert not set(candidates) & (set(ids.STRUCTURAL) | set(ids.class_words()))
    assert {"<unk>", "a", "in", "style", "red", "crimson", "dotted"} <= set(candidates)


def test_the_rule_picks_the_far_identifiers_from_the_encoder(pipe):
    """The shipped "far" set is what the rule gives on the shipped encoder (k = 3 and 4), and it is
    far from the shape words where the synonyms sit on them (pinned centred cosines)."""
    assert ids.choose_identifiers(pipe, 4) == IDENTIFIER_SETS["far"]
    assert ids.choose_identifiers(pipe, 3) == IDENTIFIER_SETS["far"][:3]
    words = ids.candidate_words() + ids.class_words()
    C = ids.cosines(ids.identifier_vectors(pipe, words))
    at = {w: i for i, w in enumerate(words)}
    classes = [at[s] for s, _, _ in SUBJECTS]
    far = [at[w] for w in IDENTIFIER_SETS["far"]]
    synonyms = [at[w] for w in IDENTIFIER_SETS["synonyms"]]
    # each synonym is its own class word to the encoder ...
    assert min(C[s, c].item() for s, c in zip(synonyms, classes, strict=True)) > 0.95
    # ... the far identifiers are at most 0.63 from any shape word and from each other
    worst_to_class = C[far][:, classes].max().item()
    worst_pair = max(C[i, j].item() for i in far for j in far if i != j)
    assert worst_to_class == pytest.approx(0.63, abs=0.01)
    assert worst_pair == pytest.approx(0.56, abs=0.01)
    with pytest.raises(ValueError, match="k must be between 1 and"):
        ids.choose_identifiers(pipe, 0)


def test_identifier_sets_name_the_same_subjects():
    far, synonyms = make_tasks(4, "far"), make_tasks(4, "synonyms")
    assert [t.subject for t in far] == [t.subject for t in synonyms] == list(SUBJECTS)
    assert [t.prompt for t in far] == ["a in", "a red", "a green", "a yellow"]
    assert [t.class_prompt for t in far] == ["a circle", "a square", "a triangle", "a cross"]
    with pytest.raises(ValueError, match="unknown identifier set 'rare'"):
        make_tasks(3, "rare")


def test_far_identifiers_still_forget_through_the_shared_direction(pipe, tmp_path):
    """The identifier's own (centred) direction is under 10% of its encoder output's norm; the rest
    is shared by every prompt, the empty one too. A tiny naive run (pinned, seed 0): 'a in' learns
    its red striped circle, and once 'a red' is taught 'a in' and even the empty prompt are drawn
    with the second subject's dots."""
    from recipes.continual_lora.methods import Evaluation, run_sequence, sample
    from recipes.continual_lora.train import Training
    from recipes.worlds.shapes_eval import predict
    from recipes.worlds.shapes_model import load_evaluators

    vectors = ids.identifier_vectors(pipe, ids.candidate_words() + ids.class_words())
    assert (vectors.mean(0).norm() / vectors.norm(dim=1).mean()).item() > 0.99

    evaluators, tasks = load_evaluators(), make_tasks(2, "far")
    ev = Evaluation(samples=4, steps=5)
    training = Training(steps=40, batch=8, lr=5e-3, instances=8)
    run = run_sequence("naive", pipe, evaluators, tasks, training, ev, seed=0, out=tmp_path, progress=False)
    assert run.base == [0.0, 0.0]
    assert run.scores[0][0] >= 0.5 and run.scores[1][1] >= 0.5
    assert run.scores[0][1] == 0.0
    prompts = ["a in"] * 8 + [""] * 8
    before = predict(evaluators, sample(pipe, prompts, ev))["style"]
    pipe.load_lora_weights(run.adapters[-1], adapter_name="last")
    try:
        after = predict(evaluators, sample(pipe, prompts, ev))["style"]
    finally:
        pipe.unload_lora_weights()
    dots = 2  # the second subject's texture
    counts = [int((x[rows] == dots).sum()) for x in (before, after) for rows in (slice(0, 8), slice(8, 16))]
    # pinned on this seed: 'a in' 0 -> 6 of 8 dotted, the empty prompt 2 -> 8 of 8
    assert max(counts[:2]) <= 2 and min(counts[2:]) >= 6
