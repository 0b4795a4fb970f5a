"""Trained torch models (generators, classifiers) on the Hub via ``huggingface_hub.PyTorchModelHubMixin``.

>>> import torch
>>> from hub_cards.models import ModelHubMixin
>>> class Classifier(torch.nn.Module, ModelHubMixin, tags=["classifier"]):
...     def __init__(self, d_in: int = 8, n_classes: int = 2):
...         super().__init__()
...         self.head = torch.nn.Linear(d_in, n_classes)
>>> Classifier(d_in=4).save_pretrained("out/clf")  # doctest: +SKIP
>>> Classifier.from_pretrained("me/clf")  # doctest: +SKIP

``config.json`` holds the constructor's JSON-able arguments, ``model.safetensors`` the weights,
``README.md`` our ``templates/model.md`` card. Compared with the plain mixin, loading reads
safetensors only (a repo that has just ``pytorch_model.bin`` is refused, never unpickled), checks
the file before use (truncated or corrupt: :class:`ArtifactError`), and loads strictly by default
(a missing or unexpected weight is an error, not a silently random layer).

This module imports ``huggingface_hub`` at import time (the mixin is a base class); ``hub_cards``
itself reaches it only through ``hub_cards.ModelHubMixin``, resolved on first use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import ModelCard, PyTorchModelHubMixin, constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError

from .cards import LIBRARY_NAME, TEMPLATES, render_card
from .errors import ArtifactError
from .layouts import check_safetensors, find_pickles, read_json

__all__ = ["ModelHubMixin"]

T = TypeVar("T")
WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE  # "model.safetensors"


class ModelHubMixin(
    PyTorchModelHubMixin,
    library_name=LIBRARY_NAME,
    tags=["interventions"],
    license="apache-2.0",
    model_card_template=(TEMPLATES / "model.md").read_text(encoding="utf-8"),
):
    """Base class for our trained ``nn.Module`` s: ``class Net(nn.Module, ModelHubMixin, tags=[...])``.

    Gives ``save_pretrained(dir)``, ``push_to_hub(repo_id)`` and ``Net.from_pretrained(repo_or_dir,
    revision=..., cache_dir=..., local_files_only=...)``. Card fields (``site``, ``layout``,
    ``steps``, ``branch``, ``base_model``, ``datasets``, ``metrics``...) go in
    ``save_pretrained(dir, model_card_kwargs={...})``.
    """

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        info = self._hub_mixin_info
        fields: dict[str, Any] = {
            "class_name": type(self).__name__,
            "module": type(self).__module__,
            "repo_url": info.repo_url,
            "paper_url": info.paper_url,
            "docs_url": info.docs_url,
        }
        fields.update(kwargs)
        return render_card("model", card_data=info.model_card_data, **fields)

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """``PyTorchModelHubMixin.push_to_hub``, with ``repo_id`` in the card's load snippet."""
        fields = {"repo_id": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=fields, **kwargs)  # type: ignore[no-any-return]

    @classmethod
    def from_pretrained(cls: type[T], pretrained_model_name_or_path: str | Path, **kwargs: Any) -> T:
        """``PyTorchModelHubMixin.from_pretrained`` with ``config.json`` read as every artifact file is
        (bounded, finite, not linked from outside the folder): a hostile config is an ArtifactError."""
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir() and (folder / constants.CONFIG_NAME).exists():
            read_json(folder / constants.CONFIG_NAME)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)  # type: ignore[misc, no-any-return]
        except RecursionError:  # a remote config.json, parsed by huggingface_hub itself
            raise ArtifactError(
                f"{pretrained_model_name_or_path}: {constants.CONFIG_NAME} is nested too deeply to be a model config"
            ) from None

    @classmethod
    def _from_pretrained(
        cls: type[T],
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> T:
        model = cls(**model_kwargs)
        if os.path.isdir(model_id):
            model_file = Path(model_id) / WEIGHTS_NAME
            if not model_file.is_file():
                pickles = find_pickles(model_id)
                found = f"it holds a pickle ({', '.join(pickles)})" if pickles else "it has none"
                raise ArtifactError(
                    f"{model_id}: expected weights in {WEIGHTS_NAME}, {found}; interventions loads only safetensors"
                )
        else:
            try:
                model_file = Path(
                    hf_hub_download(
                        repo_id=model_id,
                        filename=WEIGHTS_NAME,
                        revision=revision,
                        cache_dir=cache_dir,
                        force_download=force_download,
                        token=token,
                        local_files_only=local_files_only,
                    )
                )
            except EntryNotFoundError:
                raise ArtifactError(
                    f"{model_id}@{revision or 'main'} has no {WEIGHTS_NAME}; interventions loads only safetensors "
                    "and never downloads pickled weights (pytorch_model.bin)"
                ) from None
        check_safetensors(model_file)  # a clear error for a truncated or corrupt file
        return cls._load_as_safetensor(model, str(model_file), map_location, strict)  # type: ignore[attr-defined, no-any-return]

    @classmethod
    def _load_as_pickle(cls, model: T, model_file: str, map_location: str, strict: bool) -> T:
        raise ArtifactError(f"refusing to unpickle {model_file}: interventions loads only safetensors")
